"""Paired comparisons of decoders on the same prompts: wins/ties/losses, win rate with a paired-bootstrap 95 %
interval, and the matched-compute baseline. Used by `benchmarks.paper_search` to build its results rows.

For a decoder D and a baseline B that decoded the same n prompts, with gold rewards d_i and b_i:

    W = #{i: d_i > b_i},  T = #{i: d_i = b_i},  L = #{i: d_i < b_i}
    win rate = (W + T/2) / n
    95 % interval: the 2.5th and 97.5th percentiles of the win rate over `n_boot` resamples of the n prompts
    with replacement (the pairs (d_i, b_i) move together: a paired bootstrap).

Baselines: the policy's own temperature-1 sample ("sample"), and the best likelihood decoder ("best_likelihood")
— the highest mean gold among the likelihood-score decoders whose forward tokens per prompt are within ±25 % of
D's. A decoder with no such match gets no best_likelihood row; `unmatched` lists it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

# (W, T, L) and (W + T/2)/n per prompt: the tasks' own definitions, one copy
from tokendpo.tasks.metrics import win_rate  # noqa: F401  (part of this module's API)
from tokendpo.tasks.metrics import win_tie_loss as wtl

MATCH_TOLERANCE = 0.25  # |fwd(B) / fwd(D) − 1| ≤ this for a matched-compute baseline
ROW_KEYS = ("task", "policy", "decoder", "score", "ref_weight", "support", "forward_tokens", "baseline",
            "baseline_decoder", "forward_tokens_ratio", "wins", "ties", "losses", "n", "win_rate", "ci",
            "distinct_ratio", "repetition_delta")


def bootstrap_interval(ours: Sequence[float], theirs: Sequence[float], *, n_boot: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Paired-bootstrap percentile interval of the win rate (prompts resampled with replacement)."""
    n = len(ours)
    wtl(ours, theirs)  # validates
    score = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(ours, theirs)]  # per-prompt win credit
    rng = random.Random(seed)
    rates = sorted(sum(score[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    lo_i = int((1 - level) / 2 * n_boot)
    hi_i = min(n_boot - 1, int((1 + level) / 2 * n_boot))
    return rates[lo_i], rates[hi_i]


def matched_baseline(forward_tokens: float, candidates: Sequence[dict], tol: float = MATCH_TOLERANCE) -> dict | None:
    """The candidate with the highest mean gold among those whose `forward_tokens` per prompt are within ±tol of
    `forward_tokens` (ties: the closer compute, then the earlier candidate); None when none is."""
    near = [c for c in candidates if abs(c["forward_tokens"] / forward_tokens - 1) <= tol]
    if not near:
        return None
    return max(near, key=lambda c: (sum(c["per_prompt_gold"]) / len(c["per_prompt_gold"]),
                                    -abs(c["forward_tokens"] / forward_tokens - 1)))


def compare(row: dict, base: dict, kind: str, sample: dict, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """One results row (ROW_KEYS) of decoder `row` against `base`; `sample` is the policy's sampling row, the
    reference of distinct_ratio (row's distinct rate / sample's) and repetition_delta (row's − sample's).

    Rows are dicts with task, policy, decoder, score, ref_weight, support, forward_tokens (per prompt),
    per_prompt_gold, distinct and repetition."""
    ours, theirs = row["per_prompt_gold"], base["per_prompt_gold"]
    w, t, l_ = wtl(ours, theirs)
    lo, hi = bootstrap_interval(ours, theirs, n_boot=n_boot, seed=seed)
    return {
        "task": row["task"], "policy": row["policy"], "decoder": row["decoder"], "score": row["score"],
        "ref_weight": row["ref_weight"], "support": row["support"], "forward_tokens": row["forward_tokens"],
        "baseline": kind, "baseline_decoder": base["decoder"],
        "forward_tokens_ratio": row["forward_tokens"] / base["forward_tokens"],
        "wins": w, "ties": t, "losses": l_, "n": len(ours), "win_rate": (w + t / 2) / len(ours), "ci": [lo, hi],
        "distinct_ratio": row["distinct"] / sample["distinct"] if sample["distinct"] else float("nan"),
        "repetition_delta": row["repetition"] - sample["repetition"],
    }


def comparison_rows(rows: Sequence[dict], *, n_boot: int = 2000, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(results rows, unmatched) for every decoder of every (task, policy) group of `rows`.

    Each group needs a row with decoder "sample" (the policy's temperature-1 sample). Every other row is
    compared with it ("sample"), and, when one exists within ±25 % forward tokens, with the best likelihood
    decoder of the group ("best_likelihood", never itself); `unmatched` lists the rows without one."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["policy"]), []).append(r)
    out, unmatched = [], []
    for (task, policy), group in groups.items():
        samples = [r for r in group if r["decoder"] == "sample"]
        if not samples:
            raise ValueError(f"no 'sample' row for task {task!r}, policy {policy!r}")
        sample = samples[0]
        likelihood = [r for r in group if r["score"] == "likelihood" and r["decoder"] != "sample"]
        for r in group:
            if r is sample:
                continue
            out.append(compare(r, sample, "sample", sample, n_boot=n_boot, seed=seed))
            base = matched_baseline(r["forward_tokens"], [c for c in likelihood if c is not r])
            if base is None:
                unmatched.append({"task": task, "policy": policy, "decoder": r["decoder"], "score": r["score"],
                                  "ref_weight": r["ref_weight"], "support": r["support"],
                                  "forward_tokens": r["forward_tokens"]})
            else:
                out.append(compare(r, base, "best_likelihood", sample, n_boot=n_boot, seed=seed))
    return out, unmatched
