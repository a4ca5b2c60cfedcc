"""Tokenising validated texts with an exact prompt/response boundary, loading datasets, collating batches."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from tokendpo.data.encode import BATCH, adds_bos, collate_rows, encode_texts
from tokendpo.data.formats import Extractor, Texts
from tokendpo.data.rows import DataError, read_rows

logger = logging.getLogger(__name__)


@dataclass
class TokenizedPair:
    prompt_ids: list[int]  # includes BOS if the tokenizer adds one; never a double BOS
    chosen_ids: list[int]  # response tokens, EOS appended (unless truncated away)
    rejected_ids: list[int]
    source: str  # "FILE:LINE"


@dataclass
class DataStats:
    """Counts over everything loaded (train and eval sources together)."""

    rows: int = 0  # rows read (blank JSONL lines are not rows)
    skipped: int = 0  # bad rows skipped with skip_bad_rows
    prompts_truncated: int = 0  # prompts left-truncated to max_prompt_length
    responses_truncated: int = 0  # responses (chosen and rejected counted separately) cut to fit max_length
    skip_reasons: list[str] = field(default_factory=list)  # the DataError message of each skipped row
    duplicates: int = 0  # rows repeating an earlier row's (prompt, chosen, rejected); kept
    identical_after_truncation: int = 0  # pairs whose chosen and rejected ids became equal by truncation; kept
    train_pairs: int = 0
    eval_pairs: int = 0
    format: str = ""  # format of --dataset: explicit, conversational or implicit

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.train_pairs} train / {self.eval_pairs} eval pairs ({self.format} format) from {self.rows} "
                f"rows: {self.skipped} skipped, {self.duplicates} duplicates, {self.prompts_truncated} prompts "
                f"and {self.responses_truncated} responses truncated")


def _tokenize_all(items: list[Texts], tokenizer, max_length: int, max_prompt_length: int, names: tuple[str, str, str]
                  ) -> Iterator[tuple[TokenizedPair | DataError, tuple[bool, bool, bool]]]:
    """(pair or DataError, (prompt, chosen, rejected) truncated) per item, in order."""
    bos, eos, bos_text = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.bos_token
    has_bos_token = adds_bos(tokenizer)
    for start in range(0, len(items), 4 * BATCH):
        chunk = items[start:start + 4 * BATCH]
        # A template that writes the BOS text itself gets the BOS id once, from here, not from tokenising it.
        has_bos = [has_bos_token or (bos_text is not None and it.prompt.startswith(bos_text)) for it in chunk]
        bodies = [it.prompt[len(bos_text):] if hb and bos_text and it.prompt.startswith(bos_text) else it.prompt
                  for it, hb in zip(chunk, has_bos)]
        prompts = encode_texts(tokenizer, bodies, max_prompt_length, keep_end=True)
        chosen = encode_texts(tokenizer, [it.chosen for it in chunk], max_length, keep_end=False)
        rejected = encode_texts(tokenizer, [it.rejected for it in chunk], max_length, keep_end=False)
        for it, hb, p, c, r in zip(chunk, has_bos, prompts, chosen, rejected):
            head = [bos] if hb else []
            keep = max_prompt_length - len(head)
            p_trunc = len(p) > keep
            prompt_ids = head + (p[len(p) - keep:] if p_trunc else p)
            room = max_length - len(prompt_ids)
            if room <= 0:
                yield DataError(it.source, names[0], f"the prompt takes {len(prompt_ids)} tokens (after truncation "
                                f"to max_prompt_length={max_prompt_length}), leaving no room for a response "
                                f"within max_length={max_length}"), (p_trunc, False, False)
                continue
            c = c + [eos] if it.chosen_eos else c
            r = r + [eos] if it.rejected_eos else r
            yield (TokenizedPair(prompt_ids, c[:room], r[:room], it.source),
                   (p_trunc, len(c) > room, len(r) > room))


def tokenize_pair(prompt, chosen, rejected, tokenizer, *, max_length: int, max_prompt_length: int,
                  chat_template: bool = False, source: str = "",
                  fields: tuple[str, str, str] = ("prompt", "chosen", "rejected")) -> TokenizedPair:
    """Tokenise one pair (any format of the module docstring; `prompt=None` for implicit/TRL-style rows).

    Raises `DataError` (`source: field 'X': reason`) for a malformed pair.
    """
    _check_lengths(max_length, max_prompt_length)
    pf, cf, rf = fields
    row = {cf: chosen, rf: rejected} if prompt is None else {pf: prompt, cf: chosen, rf: rejected}
    texts = Extractor(fields, tokenizer, chat_template)(row, source)
    pair, _ = next(_tokenize_all([texts], tokenizer, max_length, max_prompt_length, fields))
    if isinstance(pair, DataError):
        raise pair
    return pair


def _check_lengths(max_length: int, max_prompt_length: int) -> None:
    if max_prompt_length < 1 or max_length <= 1:
        raise ValueError(f"need max_prompt_length >= 1 and max_length >= 2, got {max_prompt_length} and {max_length}")


def _load_pairs(spec: str, split: str, cfg, tokenizer, stats: DataStats) -> tuple[list[TokenizedPair], str]:
    """Read, validate and tokenise one source; bad rows raise or (skip_bad_rows) are skipped and counted."""
    fields = (cfg.prompt_field, cfg.chosen_field, cfg.rejected_field)
    extract = Extractor(fields, tokenizer, cfg.chat_template)
    items, seen, dup_sources, n_rows, skips0 = [], {}, [], 0, stats.skipped

    def bad(err: DataError) -> None:
        if not cfg.skip_bad_rows:
            raise err
        stats.skipped += 1
        stats.skip_reasons.append(str(err))

    for src, row in read_rows(spec, split):
        n_rows += 1
        try:
            it = extract(row, src)
        except DataError as err:
            bad(err)
            continue
        key = hashlib.sha1(json.dumps([it.prompt, it.chosen, it.rejected]).encode()).digest()
        if key in seen:
            dup_sources.append(f"{src} repeats {seen[key]}")
        else:
            seen[key] = src
        items.append(it)
    stats.rows += n_rows
    if n_rows == 0:
        raise DataError(f"{spec}:0", "<file>", "empty: no rows")
    pairs = []
    for pair, (p_trunc, c_trunc, r_trunc) in _tokenize_all(items, tokenizer, cfg.max_length,
                                                          cfg.max_prompt_length, fields):
        if isinstance(pair, DataError):
            bad(pair)
            continue
        stats.prompts_truncated += p_trunc
        stats.responses_truncated += c_trunc + r_trunc
        stats.identical_after_truncation += pair.chosen_ids == pair.rejected_ids
        pairs.append(pair)
    if not pairs:
        raise DataError(f"{spec}:0", "<file>", f"no usable rows: all {n_rows} were skipped; first: "
                                               f"{stats.skip_reasons[skips0]}")
    if dup_sources:
        stats.duplicates += len(dup_sources)
        logger.warning("%s: %d duplicate rows (kept), e.g. %s", spec, len(dup_sources), "; ".join(dup_sources[:3]))
    if stats.skipped > skips0:
        logger.warning("%s: skipped %d bad rows, e.g. %s", spec, stats.skipped - skips0, stats.skip_reasons[skips0])
    return pairs, extract.format


def split_eval(pairs: list[TokenizedPair], fraction: float, seed: int
               ) -> tuple[list[TokenizedPair], list[TokenizedPair]]:
    """Hold out round(fraction·n) pairs (at least 1, leaving at least 1), chosen by `seed`; order is kept."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {fraction}")
    if len(pairs) < 2:
        raise ValueError(f"eval_fraction={fraction} needs at least 2 pairs, got {len(pairs)}")
    n_eval = min(max(1, round(fraction * len(pairs))), len(pairs) - 1)
    held = set(random.Random(seed).sample(range(len(pairs)), n_eval))
    return ([p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held])


def load_preference_data(cfg, tokenizer, *, seed: int = 0
                         ) -> tuple[list[TokenizedPair], list[TokenizedPair] | None, DataStats]:
    """(train pairs, eval pairs or None, stats) for a `DataConfig`.

    Eval pairs come from `cfg.eval_dataset` (split "test" of a dir/hub dataset; a file is read whole), else
    from an `eval_fraction` split of the train pairs chosen with `seed`, else None.
    """
    if cfg.dataset is None:
        raise ValueError("--dataset is required (a .json/.jsonl/.parquet file, a local dir or a hub id)")
    _check_lengths(cfg.max_length, cfg.max_prompt_length)
    if cfg.eval_dataset and cfg.eval_fraction:
        raise ValueError("set --eval_dataset or --eval_fraction, not both")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; responses need one appended")
    stats = DataStats()
    train, stats.format = _load_pairs(cfg.dataset, cfg.dataset_split, cfg, tokenizer, stats)
    evals = None
    if cfg.eval_dataset:
        evals, _ = _load_pairs(cfg.eval_dataset, cfg.eval_dataset_split, cfg, tokenizer, stats)
    elif cfg.eval_fraction:
        train, evals = split_eval(train, cfg.eval_fraction, seed)
    stats.train_pairs, stats.eval_pairs = len(train), len(evals or [])
    return train, evals, stats


def collate_pairs(pairs: list[TokenizedPair], pad_token_id: int, share_prompt: bool = False) -> dict[str, torch.Tensor]:
    """Batch B pairs as 2B right-padded rows: 0..B-1 = prompt + chosen, B..2B-1 = prompt + rejected.

    labels are aligned with input_ids (the model shifts): -100 on prompt and padding, the token id on response
    positions (EOS included). share_prompt: also return prompt_lengths (B,), which makes `tokendpo.logps` run
    each prompt once for both rows (`shared_prompt_hidden`); left out when some prompt is empty.
    """
    if not pairs:
        raise ValueError("collate_pairs: empty batch")
    if pad_token_id is None:
        raise ValueError("collate_pairs: pad_token_id is None (set tokenizer.pad_token, e.g. to EOS)")
    rows = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    out = collate_rows(rows, pad_token_id)  # (2B, T) each
    if share_prompt and all(p.prompt_ids for p in pairs):
        out["prompt_lengths"] = torch.tensor([len(p.prompt_ids) for p in pairs], dtype=torch.long)
    return out


def collate_packed(pairs: list[TokenizedPair]) -> dict[str, torch.Tensor]:
    """Padding-free batch: the 2B sequences of `collate_pairs` (same order) concatenated into ONE row.

    input_ids, labels, position_ids, seq_ids: (1, L) with L = Σ sequence lengths, no pad token anywhere.
    position_ids restart at 0 for every sequence; transformers turns that into a block-diagonal causal mask
    when attention_mask is None (masking_utils.find_packed_sequence_indices), so no token attends across a
    boundary. seq_ids[t] is the collate row (0..2B-1) of position t. The first token of every sequence is never a
    label (it has no predecessor in its sequence), as in the padded layout.
    """
    if not pairs:
        raise ValueError("collate_packed: empty batch")
    rows = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    ids, labels, pos, seq = [], [], [], []
    for i, (prompt, resp) in enumerate(rows):
        n = len(prompt) + len(resp)
        ids += prompt + resp
        labels += [-100] * len(prompt) + list(resp)
        labels[len(labels) - n] = -100
        pos += range(n)
        seq += [i] * n
    as_row = lambda x: torch.tensor([x], dtype=torch.long)  # noqa: E731
    return {"input_ids": as_row(ids), "labels": as_row(labels), "position_ids": as_row(pos),
            "seq_ids": as_row(seq), "attention_mask": None}
