"""Paired decoder comparisons (benchmarks/paired.py): W/T/L by hand, the bootstrap interval against the binomial
normal approximation, the ±25 % matched-compute baseline, and the results row schema."""

import random

import pytest

from benchmarks.paired import (ROW_KEYS, bootstrap_interval, compare, comparison_rows, matched_baseline, win_rate,
                               wtl)


def test_wtl_by_hand():
    """ours [1, 0, 2, 1, 5] vs theirs [0, 0, 3, 1, -1]: wins at 0 and 4, ties at 1 and 3, a loss at 2 →
    W, T, L = 2, 2, 1 and win rate (2 + 2/2)/5 = 0.6."""
    ours, theirs = [1, 0, 2, 1, 5], [0, 0, 3, 1, -1]
    assert wtl(ours, theirs) == (2, 2, 1)
    assert win_rate(ours, theirs) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        wtl([1], [1, 2])


def test_bootstrap_interval_matches_the_normal_approximation():
    """400 prompts won with probability 0.7: the 95 % interval is about p̂ ± 1.96·sqrt(p̂(1−p̂)/n) (±0.02)."""
    rng = random.Random(5)
    ours = [1.0 if rng.random() < 0.7 else 0.0 for _ in range(400)]
    theirs = [0.5] * 400
    p = win_rate(ours, theirs)
    lo, hi = bootstrap_interval(ours, theirs, n_boot=2000, seed=1)
    half = 1.96 * (p * (1 - p) / 400) ** 0.5
    assert lo < p < hi
    assert lo == pytest.approx(p - half, abs=0.02) and hi == pytest.approx(p + half, abs=0.02)
    assert bootstrap_interval([2.0] * 10, [1.0] * 10) == (1.0, 1.0)  # all wins: no uncertainty left
    assert bootstrap_interval(ours, theirs, seed=1) == bootstrap_interval(ours, theirs, seed=1)


def _row(decoder, fwd, gold, score="likelihood", distinct=1.0, repetition=0.1):
    return {"task": "t", "policy": "final", "decoder": decoder, "score": score, "ref_weight": None,
            "support": "top_k=8", "forward_tokens": fwd, "per_prompt_gold": gold, "distinct": distinct,
            "repetition": repetition}


def test_matched_baseline_within_25_percent():
    """For 110 forward tokens per prompt: 100 (ratio 0.91) and 130 (1.18) match, 80 (0.73) and 140 (1.27) do not;
    the best mean gold among the matches wins even when an unmatched one is better."""
    cands = [_row("a", 100, [0.2, 0.2]), _row("b", 130, [0.5, 0.3]), _row("c", 80, [0.9, 0.9]),
             _row("d", 140, [1.0, 1.0])]
    assert matched_baseline(110, cands)["decoder"] == "b"
    assert matched_baseline(110, cands[:1])["decoder"] == "a"
    assert matched_baseline(500, cands) is None


def test_comparison_rows_schema_and_values():
    sample = _row("sample", 50, [0, 1, 0, 1], distinct=1.0, repetition=0.2)
    lik = _row("beam-lik-4", 200, [1, 1, 0, 0])
    mixed = _row("beam-mixed-4", 220, [1, 1, 1, 1], score="mixed", distinct=0.5, repetition=0.1)
    far = _row("mcts-32", 2000, [0, 0, 0, 0], score="implicit")
    rows, unmatched = comparison_rows([sample, lik, mixed, far], n_boot=200)
    assert all(tuple(r) == ROW_KEYS for r in rows)
    by = {(r["decoder"], r["baseline"]): r for r in rows}
    m = by[("beam-mixed-4", "best_likelihood")]
    assert (m["baseline_decoder"], m["wins"], m["ties"], m["losses"], m["n"]) == ("beam-lik-4", 2, 2, 0, 4)
    assert m["win_rate"] == pytest.approx(0.75) and m["forward_tokens_ratio"] == pytest.approx(1.1)
    assert m["distinct_ratio"] == pytest.approx(0.5) and m["repetition_delta"] == pytest.approx(-0.1)
    s = by[("beam-mixed-4", "sample")]
    assert (s["wins"], s["ties"], s["losses"]) == (2, 2, 0) and s["ci"][0] <= s["win_rate"] <= s["ci"][1]
    assert ("mcts-32", "best_likelihood") not in by and ("beam-lik-4", "best_likelihood") not in by
    assert {u["decoder"] for u in unmatched} == {"mcts-32", "beam-lik-4"}  # never its own baseline
    assert compare(lik, sample, "sample", sample, n_boot=50)["forward_tokens_ratio"] == pytest.approx(4.0)
