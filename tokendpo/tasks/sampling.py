"""Sampling responses from a policy for the pipeline and its evaluation: a text wrapper of
`tokendpo.generation.generate` (encode → our KV-cached token loop → decode).

Pure temperature sampling (no top-k / top-p, no banned tokens) or greedy decoding, `n` responses per prompt from
one prefill of the prompt. Each response draws from its own random stream, seeded by (seed, the prompt's index
in `prompts`, its index j < n), so the same (model, prompts, seed, n) gives the same responses on a device at
any `batch_size` (batching only bounds memory).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from tokendpo.data.encode import encode_prompts
from tokendpo.generation import Sampler, generate


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float = 1.0,
           greedy: bool = False, seed: int = 0, batch_size: int = 256, desc: str | None = None,
           progress: bool = True, chat_template: bool = False, n: int = 1) -> tuple[list[str], list[list[int]]]:
    """`n` responses per prompt (grouped: prompt i's j-th is item i·n + j): (decoded texts without special
    tokens, generated ids with EOS when generated). Each prompt is prefilled once for its n responses, and a
    batch holds about `batch_size` responses. `chat_template`: each prompt is rendered as one user turn with
    the generation prompt (`tokendpo.data.encode_prompts`)."""
    sampler = Sampler(greedy=greedy, temperature=1.0 if greedy else temperature)  # checks temperature > 0
    texts: list[str] = []
    ids_out: list[list[int]] = []
    per_batch = max(1, batch_size // max(1, n))  # prompts per batch
    starts = range(0, len(prompts), per_batch)
    for start in tqdm(starts, desc=desc, disable=not progress or desc is None, dynamic_ncols=True):
        chunk = prompts[start: start + per_batch]
        enc = encode_prompts(tokenizer, chunk, chat_template=chat_template, nonempty=True)  # empty → [BOS]
        out = generate(model, enc, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, sampler=sampler, seed=seed,
                       keys=range(start, start + len(chunk)), n=n)
        for gen in out.tokens:
            ids_out.append(gen)
            texts.append(tokenizer.decode(gen, skip_special_tokens=True).strip())
    return texts, ids_out
