"""`--bon N`: best of N samples from the proposal, ranked by summed --score (`search.sampling.best_of_n`)."""

from __future__ import annotations

from search.decoders.base import Decoder, common, proposals, ranked
from search.sampling import best_of_n


def run_bon(scorer, prompts, cfg, *, eos_token_id, generator, banned):
    return best_of_n(scorer, prompts, n=cfg.bon, **ranked(cfg, banned), **proposals(cfg, generator),
                     **common(cfg, eos_token_id))


BON = Decoder("bon", run_bon, "best of N samples by summed --score", flag={"type": int, "metavar": "N"}, sets="bon",
              fields=("bon", "temperature"), proposal=True)
