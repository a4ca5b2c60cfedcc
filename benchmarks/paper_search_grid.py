"""The configurations of `benchmarks.paper_search`: decoders, budget grids, the order jobs run in, a time estimate.

Budgets follow a ×1.5 grid (K, N ∈ {1, 2, 3, 4, 6, 8, 12, 16, 24, 32}; MCTS S ∈ {4, 6, 8, 12, 16, 24, 32}), so
that every ranked decoder has a likelihood decoder (beam, best-of-N, CBS or MCTS with score likelihood) within
±25 % of its forward tokens where the budgets overlap. Every decoder name is unique within a policy:

    beam-{lik|implicit|mixed0.5}-K[-top-p0.9|-unrestricted]   beam search (suffix: a support other than the default)
    bon-{lik|implicit|mixed0.5}-N-{policy|ref}                 best-of-N, candidates from that proposal
    cbs-{lik|implicit|mixed0.5}-W,K,L-{policy|ref}             chunk-level beam search
    mcts-{lik|implicit|mixed0.5}-S                             MCTS, S simulations per committed token

Scores (`search.scoring`): each token scores r_t + λ·β·log π_ref with λ = 1 (lik), 0 (implicit) or 0.5 (mixed).
Supports: the decoder's documented default unless the name says otherwise (likelihood beam unrestricted,
implicit/mixed the proposal's top-p 0.9 nucleus, MCTS the top-8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

K_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)  # beams, the ×1.5 grid of the issue
N_GRID = (2, 3, 4, 6, 8, 12, 16, 24, 32)  # best-of-N
CBS_GRID = ((2, 2, 4), (2, 4, 4), (4, 4, 4), (4, 8, 4), (8, 8, 4))  # (W, K, L): W·K candidates every L tokens
S_GRID = (4, 6, 8, 12, 16, 24, 32)  # MCTS simulations per committed token
LAMBDAS = {"lik": ("likelihood", None), "implicit": ("implicit", None), "mixed0.5": ("mixed", 0.5)}
RESTRICTED = {"top_k": 0, "top_p": 0.9}  # the guided decoders' default support, given explicitly
UNRESTRICTED = {"top_k": 0, "top_p": 1.0}
MAIN_BETA = 0.1


@dataclass(frozen=True)
class Decoder:
    """One decoding configuration: a row name, a family (for plots), its size x (K, N, W·K or S), λ, support tag
    ("default" | "restricted" | "unrestricted") and the SearchConfig fields."""

    name: str
    family: str
    x: int
    lam: float
    support_tag: str = "default"
    fields: dict = field(default_factory=dict)


def scored_fields(method: str, tag: str, extra: dict) -> dict:
    """SearchConfig fields of `method` ranked by the score of `tag` (lik | implicit | mixed0.5), plus `extra`."""
    score, weight = LAMBDAS[tag]
    return {"method": method, "score": score, **({"ref_weight": weight} if weight is not None else {}), **extra}


def weight_of(tag: str) -> float:
    """λ of a score tag: 1 (lik), 0 (implicit), 0.5 (mixed0.5)."""
    return {"lik": 1.0, "implicit": 0.0, "mixed0.5": 0.5}[tag]


def beams(tag: str, ks, support: str = "default") -> list[Decoder]:
    extra = {"default": {}, "restricted": RESTRICTED, "unrestricted": UNRESTRICTED}[support]
    suffix = {"default": "", "restricted": "-top-p0.9", "unrestricted": "-unrestricted"}[support]
    return [Decoder(f"beam-{tag}-{k}{suffix}", f"beam-{tag}", k, weight_of(tag), support,
                    scored_fields("beam", tag, {"beam": k, **extra})) for k in ks]


def main_grid(quick: bool = False) -> list[Decoder]:
    """Every decoder family at its budgets: what each β = 0.1 policy (early and final) decodes with."""
    ks, ns, cbs, ss = ((1, 2), (2, 4), ((2, 2, 4),), (4,)) if quick else (K_GRID, N_GRID, CBS_GRID, S_GRID)
    out = [Decoder("sample", "sample", 1, 1.0, fields={"method": "sample"}),
           Decoder("greedy", "greedy", 1, 1.0, fields={"method": "greedy"})]
    for tag in LAMBDAS:  # beam with each score, at its default support
        out += beams(tag, ks)
    for tag, proposal in (("lik", "policy"), ("implicit", "ref"), ("implicit", "policy"), ("mixed0.5", "ref")):
        prop = "reference" if proposal == "ref" else "policy"
        out += [Decoder(f"bon-{tag}-{n}-{proposal}", f"bon-{tag}-{proposal}", n, weight_of(tag),
                        fields=scored_fields("bon", tag, {"bon": n, "proposal": prop})) for n in ns]
        out += [Decoder(f"cbs-{tag}-{w},{k},{c}-{proposal}", f"cbs-{tag}-{proposal}", w * k, weight_of(tag),
                        fields=scored_fields("cbs", tag, {"cbs": (w, k, c), "proposal": prop})) for w, k, c in cbs]
    for tag in LAMBDAS:
        out += [Decoder(f"mcts-{tag}-{s}", f"mcts-{tag}", s, weight_of(tag),
                        fields=scored_fields("mcts", tag, {"simulations": s}))
                for s in ss]
    return out


def frontier_grid(quick: bool = False) -> list[Decoder]:
    """The over-optimisation frontier's beams that the main grid lacks: λ ∈ {0, 0.5, 1} × {top-p 0.9,
    unrestricted} × K ≤ 32 (likelihood unrestricted and implicit/mixed top-p 0.9 are the main grid's defaults)."""
    ks = (1, 2) if quick else K_GRID
    return beams("lik", ks, "restricted") + beams("implicit", ks, "unrestricted") + beams("mixed0.5", ks, "unrestricted")


def frontier_rows(rows: list[dict]) -> dict[tuple[float, str], list[dict]]:
    """{(λ, "restricted" | "unrestricted"): beam rows sorted by K} of one policy's rows."""
    out: dict[tuple[float, str], list[dict]] = {}
    for r in rows:
        if not r["family"].startswith("beam-"):
            continue
        tag = r["support_tag"]
        if tag == "default":  # likelihood beam's default is unrestricted; implicit/mixed's is top-p 0.9
            tag = "unrestricted" if r["ref_weight"] == 1.0 else "restricted"
        out.setdefault((r["ref_weight"], tag), []).append(r)
    return {k: sorted(v, key=lambda r: r["x"]) for k, v in sorted(out.items())}


def pick_best(rows: list[dict]) -> tuple[dict | None, dict | None]:
    """(best likelihood beam, best implicit-guided decoder) of one policy's rows, by mean gold (ties: fewer forward
    tokens). The likelihood beam is one of beam-lik-K at its default (unrestricted) support; the implicit-guided
    decoder is any row with λ < 1 of any family."""
    def best(cands):
        return max(cands, key=lambda r: (r["gold"], -r["forward_tokens"]), default=None)

    lik = best([r for r in rows if r["family"] == "beam-lik" and r["support_tag"] == "default"])
    guided = best([r for r in rows if r["ref_weight"] < 1.0])
    return lik, guided


def nearest_likelihood_beam(rows: list[dict], forward_tokens: float) -> dict | None:
    """The likelihood beam (any support) of one policy's rows whose forward tokens per prompt are nearest to
    `forward_tokens` on a log scale: the β variants' matched-compute likelihood decoder."""
    beams_ = [r for r in rows if r["family"] == "beam-lik"]
    return min(beams_, key=lambda r: abs(math.log(r["forward_tokens"] / forward_tokens)), default=None)


# ---------------------------------------------------------------------------------------------- time estimate
# seconds per (size x · generated token · prompt) on one idle core, measured on the built-in tasks' tiny models
# (sentiment, 64 prompts × 24 tokens: beam-32 0.7 s, bon-16 0.9 s, cbs 4,4,4 0.4 s, mcts-32 1.7 s (lik) / 6.4 s
# (implicit, longer outputs)); a decode also pays ~0.1 s of fixed cost
COST = {"sample": 2e-5, "greedy": 2e-5, "beam": 1.5e-5, "bon": 4e-5, "cbs": 2e-5, "mcts": 8e-5}
FIXED_S = 0.1


def estimate_seconds(dec: Decoder, prompts: int, max_new_tokens: int) -> float:
    return FIXED_S + COST[dec.fields["method"]] * dec.x * max_new_tokens * prompts
