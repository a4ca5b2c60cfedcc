"""The one place text becomes token ids and (prompt, response) id rows become padded tensors.

Convention (shared by DPO data, SFT, evaluation, the tasks and decoding): a prompt is tokenised with the
tokenizer's special tokens (so it starts with BOS when the tokenizer adds one), a response without them, EOS
appended when the response ends there. Prompt and response are tokenised separately and their ids concatenated,
so the prompt ids are exactly those a generator is given (see `tokendpo.data` for why).

    encode_prompts(tok, texts)                    -> [[BOS, p...], ...]
    encode_prompts(tok, texts, chat_template=True) -> ids of the chat template around one user message,
                                                     generation prompt added
    encode_responses(tok, texts, add_eos=True)    -> [[y..., EOS], ...]
    encode_rows(tok, prompts, responses)          -> [(prompt ids, response ids + EOS), ...]
    collate_rows(rows, pad_id)                    -> input_ids / attention_mask / labels, (B, T) right-padded

`encode_texts` is the bounded tokeniser of the preference-data path (only a slice of a huge text is
tokenised); `adds_bos` tells whether the tokenizer's post-processor puts BOS in front.
"""

from __future__ import annotations

import torch

CHARS_PER_TOKEN = 8  # slice of text tokenised per needed token (widened when too short)
MARGIN = 16  # ids beyond the needed ones: where a slice's cut edge may tokenise differently
BATCH = 256  # texts per tokenizer call


def adds_bos(tokenizer) -> bool:
    """True when tokenizing with special tokens puts BOS first and tokenizing without them does not."""
    bos = tokenizer.bos_token_id
    return (bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]
            and tokenizer("a", add_special_tokens=False)["input_ids"][:1] != [bos])


def _batched(tokenizer, texts: list[str], *, special: bool) -> list[list[int]]:
    out: list[list[int]] = []
    for i in range(0, len(texts), BATCH):
        out += tokenizer(texts[i:i + BATCH], add_special_tokens=special, verbose=False)["input_ids"]
    return [list(ids) for ids in out]


def encode_texts(tokenizer, texts: list[str], need: int | None = None, keep_end: bool = False) -> list[list[int]]:
    """Ids of each text without special tokens; with `need`, exact only for the `need` ids at its start (or end,
    `keep_end`), and cheap for huge texts.

    A text longer than `CHARS_PER_TOKEN * need + 256` chars is tokenised from a slice of that size; when the
    slice gives fewer than `need + MARGIN` ids the whole text is tokenised instead. The slice's cut edge only
    changes the pre-token (word) it falls in, which lies beyond the `need` kept ids, so they equal the full
    text's. Exception: one pre-token longer than the slice (a megabyte without whitespace under a GPT-2-style
    pre-tokeniser), where the kept ids are still a valid tokenisation of the kept text, not necessarily the
    full text's. The byte-level preset has no merges, so it is exact always.
    """
    if need is None:
        return _batched(tokenizer, texts, special=False)
    cap = CHARS_PER_TOKEN * need + 256
    sliced = [(t[-cap:] if keep_end else t[:cap]) if len(t) > cap else t for t in texts]
    out = _batched(tokenizer, sliced, special=False)
    for i, (t, s) in enumerate(zip(texts, sliced)):
        if s is not t and len(out[i]) < need + MARGIN:
            out[i] = list(tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"])
    return out


def _chat_prompt(tokenizer, text: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def encode_prompts(tokenizer, texts: list[str], *, chat_template: bool = False, nonempty: bool = False
                   ) -> list[list[int]]:
    """Prompt ids: the tokenizer's special tokens added (BOS), or with `chat_template` the template rendered
    around the text as one user message with the generation prompt. `nonempty`: a prompt with no ids at all
    becomes [BOS] (or [EOS] without a BOS token), so a model has a position to predict from (decoding)."""
    if chat_template:
        out = [_chat_prompt(tokenizer, t) for t in texts]
    else:
        out = _batched(tokenizer, list(texts), special=True)
    if nonempty:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        out = [ids or [start] for ids in out]
    return out


def encode_responses(tokenizer, texts: list[str], *, add_eos: bool) -> list[list[int]]:
    """Response ids without special tokens, the tokenizer's EOS appended to each when `add_eos`."""
    eos = [tokenizer.eos_token_id] if add_eos else []
    return [ids + eos for ids in encode_texts(tokenizer, list(texts))]


def encode_rows(tokenizer, prompts: list[str], responses: list[str], *, add_eos: bool = True
                ) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) per (prompt, response): `encode_prompts` and `encode_responses` zipped."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return list(zip(encode_prompts(tokenizer, prompts), encode_responses(tokenizer, responses, add_eos=add_eos)))


def collate_rows(rows: list[tuple[list[int], list[int]]], pad_token_id: int | None) -> dict[str, torch.Tensor]:
    """Stack (prompt ids, response ids) rows, right-padded to the longest prompt + response (T).

    input_ids (B, T) with `pad_token_id` after each row; attention_mask (B, T) 1 on real positions; labels (B, T)
    aligned with input_ids (the model shifts): the token id on response positions, -100 on prompt and padding.
    """
    if not rows:
        raise ValueError("collate: empty batch")
    if pad_token_id is None:
        raise ValueError("collate: pad_token_id is None (set tokenizer.pad_token, e.g. to EOS)")
    T = max(len(p) + len(r) for p, r in rows)
    input_ids = torch.full((len(rows), T), pad_token_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(rows), T), dtype=torch.long)
    labels = torch.full((len(rows), T), -100, dtype=torch.long)
    for i, (prompt, resp) in enumerate(rows):
        n_p, n = len(prompt), len(prompt) + len(resp)
        input_ids[i, :n] = torch.tensor(list(prompt) + list(resp), dtype=torch.long)
        attention_mask[i, :n] = 1
        labels[i, n_p:n] = torch.tensor(list(resp), dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
