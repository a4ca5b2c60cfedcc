"""The search score family and the candidate support: the one layer every decoder ranks and proposes through.

**Score.** A search ranks (partial) responses by the sum of per-token scores

    s_t = r_t + λ·β·log π_ref(a_t | s_t),     r_t = β·(log π(a_t|s_t) − log π_ref(a_t|s_t))
        = β·(log π(a_t|s_t) − (1 − λ)·log π_ref(a_t|s_t))

    score="implicit"    λ = 0   Σ r_t: the implicit reward alone (drops the KL anchor; over-optimises)
    score="likelihood"  λ = 1   Σ β·log π: the paper's Eq. 13 — likelihood search on π_DPO
    score="mixed"       λ = ref_weight, anywhere between (or beyond) the two

β is a positive constant factor of every ranking, so decoders rank in nats (`token_scores`, β divided out) and
the results are bit-for-bit independent of β; `sequence_score` gives the β-scaled value. At λ = 1 the
reference drops out of the score, and a search may skip π_ref (`needs_reference`).

**Support.** Which tokens a decoder may choose at a step:

  1. Special tokens other than EOS (PAD, BOS, UNK, chat markers ...) and ids the tokenizer does not have
     (padding rows of the LM head) are never candidates, for any score (`banned_token_ids`). transformers
     does the same with `generate(suppress_tokens=...)`: log-prob −inf, no renormalisation.
  2. `top_k` / `top_p` restrict the rest to the proposal distribution's k most likely tokens / smallest
     nucleus of mass ≥ p (transformers' warpers, in that order, over the banned-masked distribution at the
     sampling temperature). top_k = 0 and top_p = 1 mean no restriction.

When `top_k` / `top_p` are None, each decoder uses its documented default (`SUPPORT_DEFAULTS`,
`default_support`): likelihood beam search is unrestricted, for exact parity with transformers' beam search;
the implicit-guided scores (implicit, mixed) share `GUIDED_SUPPORT` (the policy's top-p 0.9 nucleus), because
ranking all V tokens by log π − log π_ref picks tokens the reference never produces — and a fixed top-k still
admits the tail where the policy is peaked; MCTS expands the policy's top-8. The mask and the draw
(`candidate_mask`, `restrict`, `draw`) are defined beside the token loop in `tokendpo.generation` and
re-exported here.

**Proposal.** Best-of-N and chunk-level beam search sample candidates from a proposal (`policy` or
`reference`) at a temperature, within the support, and rank them by the score. The default proposal is the
reference for implicit and mixed scores — weak-to-strong search's design: sample from the untuned model and
let the tuned/untuned ratio rank, so the ratio is counted once — and the policy for likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from kernels.rewards import implicit_reward
from tokendpo.generation import candidate_mask, draw, restrict  # the support, defined with the token loop

SCORES = ("likelihood", "implicit", "mixed")
PROPOSALS = ("policy", "reference")
DEFAULT_REF_WEIGHT = 0.5  # λ of score="mixed" when none is given

UNRESTRICTED = (0, 1.0)  # (top_k, top_p)
# implicit and mixed, every decoder that ranks. Measured on the default sentiment run (64 held-out prompts, K = 4):
# implicit beam gold −1.00 unrestricted, −0.99 with top-k 8, +0.26 with top-p 0.9 (= likelihood beam's); top-p 0.9
# also lifted reference-proposal best-of-8 from +0.10 to +0.16 and CBS 2,4,4 from +0.15 to +0.23.
GUIDED_SUPPORT = (0, 0.9)
MCTS_SUPPORT = (8, 1.0)  # MCTS children per node, every score
SUPPORT_DEFAULTS = {  # (decoder, score) -> (top_k, top_p) when neither flag is given; score None = any score
    ("greedy", None): UNRESTRICTED, ("sample", None): UNRESTRICTED, ("mcts", None): MCTS_SUPPORT,
    ("beam", "likelihood"): UNRESTRICTED, ("bon", "likelihood"): UNRESTRICTED, ("cbs", "likelihood"): UNRESTRICTED,
    ("beam", "implicit"): GUIDED_SUPPORT, ("bon", "implicit"): GUIDED_SUPPORT, ("cbs", "implicit"): GUIDED_SUPPORT,
    ("beam", "mixed"): GUIDED_SUPPORT, ("bon", "mixed"): GUIDED_SUPPORT, ("cbs", "mixed"): GUIDED_SUPPORT,
}


# ---- score -----------------------------------------------------------------------------------------------
def ref_weight(score: str, weight: float | None = None) -> float:
    """λ of a score name: implicit 0, likelihood 1, mixed `weight` (default DEFAULT_REF_WEIGHT)."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if score != "mixed":
        if weight is not None and weight != (1.0 if score == "likelihood" else 0.0):
            raise ValueError(f"ref_weight applies to score 'mixed' only ({score} fixes λ = "
                             f"{1 if score == 'likelihood' else 0}), got {weight}")
        return 1.0 if score == "likelihood" else 0.0
    weight = DEFAULT_REF_WEIGHT if weight is None else float(weight)
    if not math.isfinite(weight):
        raise ValueError(f"ref_weight must be a finite number, got {weight}")
    return weight


def needs_reference(lam: float) -> bool:
    """Whether the score reads log π_ref (λ ≠ 1); at λ = 1 a search may run the policy alone."""
    return lam != 1.0


def token_scores(policy_logps: torch.Tensor, reference_logps: torch.Tensor | None, lam: float) -> torch.Tensor:
    """Per-token score in nats, s/β = r/β + λ·log π_ref = log π − (1 − λ)·log π_ref, elementwise (any shape,
    e.g. (R, V)).

    λ = 1 returns `policy_logps` itself (the reference may be None); λ = 0 is exactly log π − log π_ref.
    """
    if not needs_reference(lam):
        return policy_logps
    if reference_logps is None:
        raise ValueError(f"the score with λ = {lam} needs the reference's log-probs")
    ratio = implicit_reward(policy_logps, reference_logps, 1.0)  # r/β: the implicit reward, defined once
    return ratio if lam == 0.0 else ratio + lam * reference_logps


def sequence_score(policy_logps: Sequence[float], reference_logps: Sequence[float], lam: float,
                   beta: float) -> float:
    """β·Σ_t (log π − (1 − λ)·log π_ref): the summed score of a response, in reward units."""
    total = math.fsum(policy_logps)
    if needs_reference(lam):
        total -= (1.0 - lam) * math.fsum(reference_logps)
    return beta * total


# ---- support ---------------------------------------------------------------------------------------------
def banned_token_ids(tokenizer, vocab_size: int | None = None) -> list[int]:
    """Ids no decoder may choose: the tokenizer's special tokens other than EOS, and the LM head's rows past the
    tokenizer's vocabulary (`vocab_size` = the model's output size), sorted."""
    eos = tokenizer.eos_token_id
    banned = {int(i) for i in tokenizer.all_special_ids if i is not None and i != eos}
    if vocab_size is not None:
        banned.update(range(len(tokenizer), vocab_size))
    return sorted(banned)


def default_support(decoder: str, score: str) -> tuple[int, float]:
    """(top_k, top_p) a decoder uses with a score when neither is given (see SUPPORT_DEFAULTS)."""
    key = (decoder, None) if (decoder, None) in SUPPORT_DEFAULTS else (decoder, score)
    if key not in SUPPORT_DEFAULTS:
        raise ValueError(f"no support default for decoder {decoder!r} with score {score!r}")
    return SUPPORT_DEFAULTS[key]


def resolve_support(decoder: str, score: str, top_k: int | None, top_p: float | None) -> tuple[int, float]:
    """The (top_k, top_p) to use: each given value wins, a missing one comes from `default_support`.

    Giving either flag replaces the default restriction: `top_p=0.9` alone means top-p 0.9 with no top-k.
    """
    k0, p0 = default_support(decoder, score)
    if top_k is None and top_p is None:
        top_k, top_p = k0, p0
    top_k = UNRESTRICTED[0] if top_k is None else int(top_k)
    top_p = UNRESTRICTED[1] if top_p is None else float(top_p)
    check_support(top_k, top_p)
    return top_k, top_p


def describe_support(support: tuple[int, float]) -> str:
    """'top-k 8', 'top-p 0.9', 'top-k 8, top-p 0.9' or 'unrestricted'."""
    k, p = support
    parts = ([f"top-k {k}"] if k else []) + ([f"top-p {p:g}"] if p < 1 else [])
    return ", ".join(parts) or "unrestricted"


def check_support(top_k: int, top_p: float) -> None:
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = no restriction), got {top_k}")
    if not (0.0 < top_p <= 1.0):  # also rejects NaN
        raise ValueError(f"top_p must be in (0, 1] (1 = no restriction), got {top_p}")
