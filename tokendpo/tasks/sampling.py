"""Sampling responses from a policy for the pipeline and its evaluation.

Batched `model.generate` over left-padded prompts with pure temperature sampling (no top-k / top-p) or greedy
decoding. The torch seed is set from (seed, batch index) right before each batch, so the same (model, prompts,
seed, batch_size) always gives the same responses on CPU.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float = 1.0,
           greedy: bool = False, seed: int = 0, batch_size: int = 256, desc: str | None = None,
           progress: bool = True) -> tuple[list[str], list[list[int]]]:
    """One response per prompt: (decoded texts without special tokens, generated ids with EOS when generated)."""
    if temperature <= 0 and not greedy:
        raise ValueError(f"temperature must be > 0 for sampling (use greedy=True), got {temperature}")
    model.eval()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    gen_cfg = GenerationConfig(
        do_sample=not greedy, temperature=None if greedy else temperature, top_k=None if greedy else 0,
        top_p=None, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad,
    )
    texts: list[str] = []
    ids_out: list[list[int]] = []
    starts = range(0, len(prompts), batch_size)
    for b, start in enumerate(tqdm(starts, desc=desc, disable=not progress or desc is None, dynamic_ncols=True)):
        chunk = prompts[start: start + batch_size]
        enc = [tokenizer(p)["input_ids"] for p in chunk]
        width = max(map(len, enc))
        input_ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc])  # (B, P) left-padded
        attention_mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
        torch.manual_seed(seed * 100_003 + b)
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=gen_cfg)
        for row in out[:, width:].tolist():  # (B, ≤ max_new_tokens)
            # generate pads a row only after its EOS, so a row without EOS is max_new_tokens real tokens
            gen = row[: row.index(eos) + 1] if eos in row else row
            ids_out.append(gen)
            texts.append(tokenizer.decode(gen, skip_special_tokens=True).strip())
    return texts, ids_out
