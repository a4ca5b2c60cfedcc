"""Checks that a model, its tokenizer and its reference fit together — run before anything is written.

Each raises a ValueError naming both sides, which the CLIs print as one `error: ...` line:
- the tokenizer's ids must index the model's embedding and LM head (a smaller vocabulary would fail deep inside
  torch, or silently read another token's row on some backends);
- policy and reference must share one vocabulary, token for token (equal sizes are not enough: the per-token
  reward log π(a) − log π_ref(a) compares the same id under both);
- sequences must fit the model's maximum positions.
"""

from __future__ import annotations

import torch


def model_vocab_size(model: torch.nn.Module) -> int:
    """Rows of the output head (what log-probs index); the input embedding must not be smaller."""
    out = model.get_output_embeddings()
    inp = model.get_input_embeddings()
    rows = [m.weight.shape[0] for m in (out, inp) if m is not None and hasattr(m, "weight")]
    return min(rows) if rows else int(model.config.vocab_size)


def check_model_fits_tokenizer(model: torch.nn.Module, tokenizer, where: str) -> None:
    n_tok = len(tokenizer)
    n_model = model_vocab_size(model)
    if n_tok > n_model:
        raise ValueError(
            f"{where}: the tokenizer has {n_tok} ids but the model's vocabulary has {n_model} rows; ids "
            f"{n_model}..{n_tok - 1} would index past the embedding (a tokenizer from another model?)")


def check_same_vocabulary(tok_a, tok_b, name_a: str, name_b: str) -> None:
    """The two tokenizers map every token string to the same id (and agree on EOS)."""
    va, vb = tok_a.get_vocab(), tok_b.get_vocab()
    if va != vb:
        only_a = sorted(set(va) - set(vb))[:3]
        moved = sorted(t for t in set(va) & set(vb) if va[t] != vb[t])[:3]
        detail = (f"{len(va)} vs {len(vb)} tokens" + (f"; only in {name_a}: {only_a}" if only_a else "")
                  + (f"; different ids for {moved}" if moved else ""))
        raise ValueError(f"{name_a} and {name_b} have different tokenizer vocabularies ({detail}); per-token "
                         f"rewards need one shared vocabulary")
    if tok_a.eos_token_id != tok_b.eos_token_id:
        raise ValueError(f"{name_a} and {name_b} disagree on the EOS id ({tok_a.eos_token_id} vs "
                         f"{tok_b.eos_token_id})")


def check_same_model_vocab(policy: torch.nn.Module, reference: torch.nn.Module, name_a: str, name_b: str) -> None:
    a, b = model_vocab_size(policy), model_vocab_size(reference)
    if a != b:
        raise ValueError(f"{name_a} has a vocabulary of {a} rows but {name_b} has {b}; policy and reference must "
                         f"share one vocabulary")


def max_positions(model: torch.nn.Module) -> int | None:
    cfg = model.config
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def check_max_positions(model: torch.nn.Module, length: int, where: str, flag: str) -> None:
    limit = max_positions(model)
    if limit is not None and length > limit:
        raise ValueError(f"{flag} {length} exceeds {where}'s maximum positions ({limit}); lower {flag}")
