"""Evaluation metrics that keep a collapsed policy from passing for a win: win rate, distinct outputs, repetition."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

REPETITION_N = 3  # repetition is measured on token 3-grams


def win_rate(rewards: Sequence[float], baseline: Sequence[float]) -> float:
    """Per-prompt comparison of two gold rewards: mean of 1[r > b] + ½·1[r = b]."""
    if len(rewards) != len(baseline) or not rewards:
        raise ValueError(f"win_rate needs two equal, non-empty lists, got {len(rewards)} and {len(baseline)}")
    return sum(1.0 if r > b else 0.5 if r == b else 0.0 for r, b in zip(rewards, baseline)) / len(rewards)


def win_tie_loss(rewards: Sequence[float], baseline: Sequence[float]) -> tuple[int, int, int]:
    """Per-prompt counts (W, T, L) of r > b, r = b, r < b; win_rate = (W + T/2)/n."""
    if len(rewards) != len(baseline) or not rewards:
        raise ValueError(f"win_tie_loss needs two equal, non-empty lists, got {len(rewards)} and {len(baseline)}")
    w = sum(r > b for r, b in zip(rewards, baseline))
    t = sum(r == b for r, b in zip(rewards, baseline))
    return w, t, len(rewards) - w - t


def distinct_rate(responses: Sequence[str]) -> float:
    """Distinct responses / responses (1.0: all different; 1/len: one output for every prompt)."""
    if not responses:
        raise ValueError("distinct_rate of no responses")
    return len(set(responses)) / len(responses)


def repetition(token_lists: Sequence[Sequence], n: int = REPETITION_N) -> float:
    """Share of n-grams that repeat an earlier n-gram of the same response, pooled over responses.

    "a b c a b c" has 4 trigrams, of which ("a","b","c") at position 3 repeats position 0: 1/4.
    Responses shorter than n contribute no n-grams; 0.0 when no response has any.
    """
    repeated = total = 0
    for toks in token_lists:
        seen = set()
        for i in range(len(toks) - n + 1):
            g = tuple(toks[i: i + n])
            repeated += g in seen
            seen.add(g)
            total += 1
    return repeated / total if total else 0.0


def bradley_terry_label(r_a: float, r_b: float, temperature: float, rng: random.Random, argmax: bool = False) -> bool:
    """True when a is chosen over b: with P = σ((r_a − r_b)/T) under Bradley–Terry, or deterministically by the
    higher reward with `argmax` (T → 0). Ties are the caller's to drop."""
    if argmax:
        return r_a > r_b
    if temperature <= 0:
        raise ValueError(f"label temperature must be > 0 (or use argmax), got {temperature}")
    z = (r_a - r_b) / temperature
    p = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
    return rng.random() < p


Z95 = 1.959964  # two-sided 95 % normal quantile


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial rate k/n:
    (p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n). (nan, nan) for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(xs: Sequence[float], z: float = Z95) -> tuple[float, float, float]:
    """(mean, lo, hi): the normal-approximation 95 % interval mean ± z·s/√n of i.i.d. values (one per prompt)."""
    n = len(xs)
    if n == 0:
        raise ValueError("mean_interval of no values")
    m = sum(xs) / n
    if n == 1:
        return m, m, m
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    return m, m - z * sd / math.sqrt(n), m + z * sd / math.sqrt(n)
