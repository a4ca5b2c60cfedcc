"""Repetition and length guards."""

import random

import torch

from search.guards import ban_repeats, banned_tokens, normalised


def brute_banned(history, n):
    grams = {tuple(history[i:i + n]) for i in range(len(history) - n + 1)}
    tail = tuple(history[len(history) - n + 1:]) if n > 1 else ()
    return {t for t in range(10) if tail + (t,) in grams}


def test_banned_tokens_match_enumeration():
    rng = random.Random(0)
    for _ in range(200):
        hist = [rng.randrange(4) for _ in range(rng.randrange(0, 12))]
        for n in (1, 2, 3):
            assert set(banned_tokens(hist, n)) == brute_banned(hist, n)
    assert banned_tokens([1, 2, 1], 0) == []


def test_ban_repeats_sets_minus_inf_only_where_banned():
    scores = torch.randn(2, 6)
    out = ban_repeats(scores, [[1, 2, 1], [3, 4]], 2)
    assert out[0, 2] == float("-inf") and torch.isfinite(out[1]).all()
    mask = torch.ones_like(scores, dtype=torch.bool)
    mask[0, 2] = False
    torch.testing.assert_close(out[mask], scores[mask])
    assert ban_repeats(scores, [[1, 1], [2]], 0) is scores


def test_normalised():
    assert normalised(3.0, 4, 0.0, 0.0) == 3.0
    assert normalised(3.0, 4, 1.0, 0.5) == (3.0 - 2.0) / 4
    assert normalised(3.0, 0, 1.0, 0.0) == 3.0
