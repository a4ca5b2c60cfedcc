"""`--sample` and `--greedy`: one token at a time from the policy (`search.sampling`)."""

from __future__ import annotations

from search.decoders.base import Decoder, common
from search.sampling import greedy, sample


def run_sample(scorer, prompts, cfg, *, eos_token_id, generator, banned):
    return sample(scorer, prompts, temperature=cfg.temperature, generator=generator, top_k=cfg.top_k,
                  top_p=cfg.top_p, banned_tokens=banned, **common(cfg, eos_token_id))


def run_greedy(scorer, prompts, cfg, *, eos_token_id, generator, banned):
    return greedy(scorer, prompts, banned_tokens=banned, **common(cfg, eos_token_id))


SAMPLE = Decoder("sample", run_sample, "ancestral sampling at --temperature", fields=("temperature",))
GREEDY = Decoder("greedy", run_greedy, "argmax decoding (the default)")
