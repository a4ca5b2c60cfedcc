"""`--cbs W,K,L`: chunk-level beam search — W beams, K sampled chunks of L tokens each (`search.beam`)."""

from __future__ import annotations

import argparse

from search.beam import chunk_beam_search
from search.decoders.base import Decoder, common, proposals, ranked


def triple(text: str) -> tuple[int, int, int]:
    """'W,K,L' -> (W, K, L); anything else is an argparse error (`error: ...`, exit 2)."""
    try:
        w, k, l_ = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected W,K,L (three integers), got {text!r}") from None
    return (w, k, l_)


def run_cbs(scorer, prompts, cfg, *, eos_token_id, generator, banned):
    w, k, l_ = cfg.cbs
    return chunk_beam_search(scorer, prompts, width=w, samples=k, chunk=l_, **ranked(cfg, banned),
                             **proposals(cfg, generator), **common(cfg, eos_token_id))


CBS = Decoder("cbs", run_cbs, "chunk-level beam search", flag={"type": triple, "metavar": "W,K,L"}, sets="cbs",
              fields=("cbs", "temperature"), proposal=True)
