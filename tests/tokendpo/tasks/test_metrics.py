import random

import pytest

from tokendpo.tasks.metrics import bradley_terry_label, distinct_rate, repetition, win_rate, win_tie_loss


def test_win_rate_counts_ties_as_half():
    assert win_rate([1.0, 0.0, 0.5, 0.2], [0.0, 1.0, 0.5, 0.1]) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    with pytest.raises(ValueError):
        win_rate([1.0], [])


def test_win_tie_loss_counts_agree_with_win_rate():
    """Fresh random rewards on a coarse grid (so ties occur): W + T + L = n and (W + T/2)/n = win_rate."""
    rng = random.Random()
    r = [rng.choice([0.0, 0.5, 1.0]) for _ in range(200)]
    b = [rng.choice([0.0, 0.5, 1.0]) for _ in range(200)]
    w, t, l = win_tie_loss(r, b)
    assert (w, t, l) == (sum(x > y for x, y in zip(r, b)), sum(x == y for x, y in zip(r, b)),
                         sum(x < y for x, y in zip(r, b)))
    assert (w + t / 2) / 200 == pytest.approx(win_rate(r, b))
    assert win_tie_loss([1.0, 0.0, 0.5], [0.0, 1.0, 0.5]) == (1, 1, 1)
    with pytest.raises(ValueError):
        win_tie_loss([1.0], [])


def test_distinct_rate():
    assert distinct_rate(["a", "b", "a", "c"]) == 0.75
    assert distinct_rate(["x"] * 10) == 0.1


def test_repetition_hand_example():
    # "a b c a b c": trigrams abc bca cab abc -> the last repeats the first: 1/4
    assert repetition([list("abcabc")]) == pytest.approx(1 / 4)
    # pooled: + "x y z w" (2 trigrams, none repeated) -> 1/6; a 2-token response adds no trigrams
    assert repetition([list("abcabc"), list("xyzw"), list("ab")]) == pytest.approx(1 / 6)
    assert repetition([list("aaaa")], n=2) == pytest.approx(2 / 3)
    assert repetition([]) == 0.0


def test_bradley_terry_frequencies_match_sigmoid():
    """P(a chosen) = σ((r_a − r_b)/T): Δ = 0.1, T = 0.1 → σ(1) = 0.7311; 20k draws, 4σ ≈ 0.013."""
    rng = random.Random(0)
    n = 20_000
    share = sum(bradley_terry_label(0.3, 0.2, 0.1, rng) for _ in range(n)) / n
    assert share == pytest.approx(0.7311, abs=0.013)
    assert bradley_terry_label(0.2, 0.3, 0.1, rng, argmax=True) is False
    assert bradley_terry_label(5.0, -5.0, 1e-3, rng) is True  # huge z, no overflow
    with pytest.raises(ValueError, match="temperature"):
        bradley_terry_label(0.1, 0.0, 0.0, rng)


def test_wilson_and_mean_intervals_hand_computed():
    """Wilson with k = 0 of n = 10: upper z²/(n + z²) = 3.8415/13.8415 = 0.2775; k = n: lower 10/13.8415 = 0.7225.
    mean ± 1.96·s/√n of [1, 2, 3]: 2 ± 1.96/√3 = 2 ± 1.1316."""
    from tokendpo.tasks.metrics import mean_interval, wilson_interval

    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    lo, hi = wilson_interval(37, 100)
    assert lo < 0.37 < hi and hi - lo == pytest.approx(2 * 1.96 * (0.37 * 0.63 / 100) ** 0.5, abs=0.01)
    assert mean_interval([1.0, 2.0, 3.0]) == pytest.approx((2.0, 2 - 1.1316, 2 + 1.1316), abs=1e-4)
    with pytest.raises(ValueError):
        mean_interval([])
