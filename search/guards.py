"""Guards on search scores (all off by default): repeated n-grams, length.

Guards change what the search *chooses*, never the rewards it reports: a banned token gets score −inf in the
search, and the reported `token_rewards` of chosen tokens are always the models' own log-ratios.

Why they exist: on a small DPO policy trained on this machine, greedy and beam search collapsed into one
looping output for almost every prompt (a no-repeat n-gram ban breaks the loop), and summed log-ratios
favour long responses — the verbosity over-optimisation the paper reports (a per-token penalty or length
normalisation counters it).
"""

from __future__ import annotations

import torch


def banned_tokens(history: list[int], n: int) -> list[int]:
    """Tokens t such that history[-(n-1):] + [t] is an n-gram already in `history` (HF's no_repeat_ngram)."""
    if n <= 0 or len(history) < n:
        return []
    if n == 1:
        return sorted(set(history))
    key = tuple(history[len(history) - n + 1:])
    return [history[i + n - 1] for i in range(len(history) - n + 1) if tuple(history[i:i + n - 1]) == key]


def ban_repeats(scores: torch.Tensor, histories: list[list[int]], n: int) -> torch.Tensor:
    """scores (R, V) with −inf at every token that would repeat an n-gram of its row's history."""
    if n <= 0:
        return scores
    rows, cols = [], []
    for r, hist in enumerate(histories):
        toks = banned_tokens(hist, n)
        rows += [r] * len(toks)
        cols += toks
    if not rows:
        return scores
    scores = scores.clone()
    scores[torch.tensor(rows), torch.tensor(cols)] = float("-inf")
    return scores


def normalised(total: float, length: int, length_norm: float, length_penalty: float) -> float:
    """Ranking score of a (partial) response: (total − λ·length) / length**α (α = 0: summed)."""
    total = total - length_penalty * length
    return total / max(length, 1) ** length_norm if length_norm else total
