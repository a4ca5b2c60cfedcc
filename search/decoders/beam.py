"""`--beam K`: beam search over summed --score (`search.beam.beam_search`)."""

from __future__ import annotations

from search.beam import beam_search
from search.decoders.base import Decoder, common, ranked


def run_beam(scorer, prompts, cfg, *, eos_token_id, generator, banned):
    return beam_search(scorer, prompts, num_beams=cfg.beam, **ranked(cfg, banned), **common(cfg, eos_token_id))


BEAM = Decoder("beam", run_beam, "beam search with K beams over summed --score", flag={"type": int, "metavar": "K"},
               sets="beam", fields=("beam",))
