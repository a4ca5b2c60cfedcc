"""DPO-family preference losses: pure functions of summed sequence log-probs, found through a registry.

Every loss here takes, per preference pair b, the policy's and the reference's summed log-probs of the chosen
(y_w) and rejected (y_l) responses — tensors of shape [B] — and returns `(losses, chosen_rewards,
rejected_rewards)`, each [B], one value per pair (the caller reduces, usually with `.mean()`).

Notation used in the docstrings (all per pair):

    π_c, π_r     policy      Σ_t log π(y_t | x, y_<t)     over the chosen / rejected response tokens
    ref_c, ref_r reference   Σ_t log π_ref(y_t | x, y_<t)
    ρ_c, ρ_r     log-ratios  π_c − ref_c, π_r − ref_r
    r_c, r_r     rewards     β·ρ_c, β·ρ_r  (the implicit rewards)
    s_c, s_r     scores      f'(π/π_ref) of the f-divergence regulariser, written in ρ; s = ρ for the default
                             reverse KL (plain DPO)
    h            s_c − s_r   the DPO margin; (π_c − π_r) − (ref_c − ref_r) under reverse KL
    |y_c|, |y_r| response lengths in tokens (the positions whose labels are not masked, EOS included)
    σ            the logistic function; −log σ(z) = softplus(−z) is computed stably by `F.logsigmoid`
    ε            `label_smoothing`

The registry `LOSSES` maps each loss type to its function and to what it needs, as data (`LossSpec`): the
reference log-probs, the response lengths, the sequential KLs of TDPO, whether it accepts an f-divergence,
what label smoothing means for it. The training loop reads those needs (`loss_needs`) rather than naming
losses. Names and conventions follow TRL 1.16's `DPOTrainer` (its `loss_type`, `loss_weights`,
`f_divergence_type`, `f_alpha_divergence_coef`, `ld_alpha`, `use_weighting`, `discopop_tau`), plus TDPO and
SimPO, which TRL's DPOTrainer lacks. The one deliberate difference: our `sigmoid` keeps conservative-DPO label
smoothing (TRL 1.x dropped it from `sigmoid`).

Options that act on every loss of a call:

* mixtures — `loss_type="a,b"` (or a sequence) with `loss_weights` (default all 1, as TRL):
  L = Σ_k w_k·L_k per pair (MPO-style, https://arxiv.org/abs/2411.10442 uses TRL's mixtures);
* `f_divergence` — Wang et al. 2023, "Beyond Reverse KL: Generalizing DPO with Diverse Divergence
  Constraints" (https://arxiv.org/abs/2309.16240): the log-ratio ρ of each response becomes s = f'(e^ρ):
      reverse_kl        s = ρ                          (DPO)
      forward_kl        s = 1 − e^{−ρ}
      js_divergence     s = log 2 + log σ(ρ)           (= log(2t/(1+t)), t = e^ρ)
      alpha_divergence  s = (e^{(α−1)ρ} − 1)/(α − 1),  α = `f_alpha` (α = 1 is reverse KL); (α−1)ρ is clamped
                        at 80 so e^{(α−1)ρ} stays finite in fp32, as TRL does.
  The β·log Z(x) term of the reparameterisation cancels only in the chosen − rejected difference, so only the
  losses built on h accept it (`LossSpec.f_divergence`); rewards stay β·ρ.
* `ld_alpha` — LD-DPO, Liu et al. 2024, "Length Desensitization in Direct Preference Optimization"
  (https://arxiv.org/abs/2409.06411): with ℓ = min(|y_c|, |y_r|) the shared length of the pair, every summed
  log-prob (policy and reference) becomes Σ_{t<ℓ} log p_t + α_ld·Σ_{t≥ℓ} log p_t, so the tokens past the
  shorter response count α_ld ∈ [0, 1]. Needs the per-token log-probs (`*_token_logps`). `sft` and the WPO
  weights keep the plain sums, as in TRL.
* `use_weighting` — WPO, Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference Optimization"
  (https://arxiv.org/abs/2406.11827, Eq. 2): each pair's loss is scaled by the detached weight
      w = exp((π_c − Q_c)/|y_c|) · exp((π_r − Q_r)/|y_r|),   Q = Σ_t log Σ_v π(v|s_t)²
  (the length-normalised probability of the response, aligned by the policy's own sampling probability).
  Needs Q per response (`chosen_log_sum_sq`, `rejected_log_sum_sq`), from the fused kernel, never from logits.

Rewards: every loss with a reference returns the implicit reward of the whole sequence, r = β·(π − ref)
(`kernels.rewards.implicit_reward`, the project's one definition; under `ld_alpha`, of the desensitised sums),
with its graph attached — the training loop detaches them for logging. SimPO has no reference; it returns its
own reward β·π/|y|.

The optional SFT term of RPO (Pang et al. 2024, https://arxiv.org/abs/2404.19733) is `sft_loss`; the training
loop adds `rpo_alpha · sft_loss(...)` to the mean preference loss. The `sft` loss type is the same quantity
inside a mixture.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from kernels.rewards import implicit_reward
from tokendpo.loss_types import (F_DIVERGENCES, LOSS_TYPES, LOSSES, LossInputs, LossNeeds,  # noqa: F401
                                 LossSpec, _simpo_rewards)  # the registry is re-exported here



# --------------------------------------------------------------------------------------------- options


def parse_loss_types(loss_type: str | Sequence[str]) -> tuple[str, ...]:
    """'a,b,c' (or a sequence of names) -> ('a', 'b', 'c'), each a registered loss type, no repeats."""
    names = [n.strip() for n in loss_type.split(",")] if isinstance(loss_type, str) else [str(n).strip() for n in loss_type]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"loss_type is empty; valid loss types: {', '.join(LOSS_TYPES)}")
    for name in names:
        if name not in LOSSES:
            raise ValueError(f"unknown loss_type {name!r}; valid loss types: {', '.join(LOSS_TYPES)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"loss_type lists {', '.join(repeated)} more than once; give each loss once and set "
                         f"its weight with loss_weights")
    if len(names) > 1 and any(not LOSSES[n].reference for n in names):
        raise ValueError(f"loss_type {','.join(names)}: reference-free 'simpo' cannot be mixed with other losses "
                         f"(its rewards are β·π/|y|, theirs β·(π − π_ref)); use rpo_alpha for SimPO + SFT")
    return tuple(names)


def loss_needs(loss_type: str | Sequence[str], *, ld_alpha: float | None = None,
               use_weighting: bool = False) -> LossNeeds:
    """What `preference_loss(loss_type=..., ld_alpha=..., use_weighting=...)` needs, merged over a mixture."""
    specs = [LOSSES[n] for n in parse_loss_types(loss_type)]
    return LossNeeds(
        reference=any(s.reference for s in specs),
        lengths=any(s.lengths for s in specs) or ld_alpha is not None or use_weighting,
        kl=any(s.kl for s in specs),
        token_logps=ld_alpha is not None,
        log_sum_sq=use_weighting,
    )


def check_options(loss_type: str | Sequence[str], *, beta: float = 0.1, label_smoothing: float = 0.0,
                  loss_weights: Sequence[float] | None = None, f_divergence: str = "reverse_kl",
                  f_alpha: float = 0.5, discopop_tau: float = 0.05, ld_alpha: float | None = None,
                  use_weighting: bool = False) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Validate a loss configuration; returns (loss names, their weights). Raises ValueError naming the option.

    Shared by `preference_loss` and the config validation of the training CLI, so both refuse the same things.
    """
    names = parse_loss_types(loss_type)
    if not (isinstance(beta, (int, float)) and beta > 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be > 0, got {beta}")
    if loss_weights is None:
        weights = (1.0,) * len(names)
    else:
        weights = tuple(float(w) for w in loss_weights)
        if len(weights) != len(names):
            raise ValueError(f"loss_weights has {len(weights)} values for {len(names)} loss types "
                             f"({','.join(names)}); give one weight per loss type")
        if not all(math.isfinite(w) and w >= 0 for w in weights):
            raise ValueError(f"loss_weights must be finite and >= 0, got {list(weights)}")
    _check_label_smoothing(names, label_smoothing)
    if f_divergence not in F_DIVERGENCES:
        raise ValueError(f"unknown f_divergence {f_divergence!r}; valid: {', '.join(F_DIVERGENCES)}")
    if f_divergence != "reverse_kl":
        refused = [n for n in names if not LOSSES[n].f_divergence]
        if refused:
            accepted = ", ".join(n for n, s in LOSSES.items() if s.f_divergence)
            raise ValueError(
                f"f_divergence={f_divergence!r} is defined only for losses built on the chosen − rejected score "
                f"difference ({accepted}); {', '.join(refused)} would keep a β·log Z(x) term. Use the default "
                f"reverse_kl with {'it' if len(refused) == 1 else 'them'}")
    if not math.isfinite(f_alpha):
        raise ValueError(f"f_alpha must be finite, got {f_alpha}")
    if not discopop_tau > 0:
        raise ValueError(f"discopop_tau must be > 0, got {discopop_tau}")
    if ld_alpha is not None and not 0 <= ld_alpha <= 1:
        raise ValueError(f"ld_alpha must be in [0, 1] (1 = plain sums, 0 = only the shared length counts), "
                         f"got {ld_alpha}")
    if use_weighting:
        coupled = [n for n in names if LOSSES[n].batch_coupled]
        if coupled:
            raise ValueError(f"use_weighting (WPO) weights each pair, but {', '.join(coupled)} sorts across the "
                             f"batch, so its losses belong to no pair; drop one of them")
    return names, weights


def _check_label_smoothing(names: tuple[str, ...], eps: float) -> None:
    for n in names:
        spec = LOSSES[n]
        if spec.needs_label_smoothing and eps == 0:
            raise ValueError(f"loss_type {n!r} needs label_smoothing ε in {spec.label_smoothing} (it takes log ε; "
                             f"the EXO paper suggests 1e-3)")
    if eps == 0:
        return
    users = [n for n in names if LOSSES[n].label_smoothing is not None]
    if not users:
        every = ", ".join(n for n, s in LOSSES.items() if s.label_smoothing is not None)
        raise ValueError(f"label_smoothing={eps} has no meaning for loss_type {','.join(names)!r}; it is used by "
                         f"{every} only (set it to 0)")
    for n in users:
        allowed = LOSSES[n].label_smoothing
        if eps not in allowed:
            why = " (it divides by 1 − 2ε)" if n == "robust" else ""
            raise ValueError(f"label_smoothing must be in {allowed} for {n!r}{why}, got {eps}")


# --------------------------------------------------------------------------------------------- entry points


def preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor | None,
    reference_rejected_logps: torch.Tensor | None,
    *,
    beta: float = 0.1,
    loss_type: str | Sequence[str] = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    chosen_kl: torch.Tensor | None = None,
    rejected_kl: torch.Tensor | None = None,
    alpha: float = 0.5,
    gamma: float = 0.5,
    loss_weights: Sequence[float] | None = None,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
    discopop_tau: float = 0.05,
    ld_alpha: float | None = None,
    policy_chosen_token_logps: torch.Tensor | None = None,
    policy_rejected_token_logps: torch.Tensor | None = None,
    reference_chosen_token_logps: torch.Tensor | None = None,
    reference_rejected_token_logps: torch.Tensor | None = None,
    use_weighting: bool = False,
    chosen_log_sum_sq: torch.Tensor | None = None,
    rejected_log_sum_sq: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Per-pair preference loss and the chosen/rejected rewards, all [B].

    L = Σ_k w_k·L_k over the loss types of `loss_type` (one, or a comma-separated mixture); each L_k is
    defined in the docstring of its function in `LOSSES` (formula and paper); the module docstring defines the
    notation and the options `f_divergence`, `ld_alpha` and `use_weighting`. The steps are in `_terms`.

    Length: the public contract (every option a keyword, each documented here); the body is one call.

    Args:
        policy_chosen_logps, policy_rejected_logps: [B] summed response log-probs under the policy.
        reference_chosen_logps, reference_rejected_logps: [B] the same under the reference model. Not used by
            `simpo` (reference-free; they may be None there).
        beta: β > 0.
        loss_type: a name in `LOSS_TYPES`, or several ('sigmoid,sft' or a sequence) for a mixture.
        label_smoothing: ε. Used by sigmoid (cDPO), robust, simpo, aot, aot_unpaired (within [0, 0.5], robust
            [0, 0.5)) and exo_pair (required, in (0, 1)); ε ≠ 0 with only other losses is an error rather than a
            silently ignored flag.
        chosen_lengths, rejected_lengths: [B] response token counts (> 0); needed by ipo, simpo, sft,
            sigmoid_norm and by `ld_alpha` and `use_weighting`.
        chosen_kl, rejected_kl: [B] sequential KL of each response, Σ_t KL(π_ref(·|x, y_<t) ‖ π(·|x, y_<t)) over
            its response positions; needed by `tdpo1` and `tdpo2`.
        alpha: α of TDPO2 (TDPO1 has no α).
        gamma: γ of SimPO, the target reward margin.
        loss_weights: one weight ≥ 0 per loss type (default: all 1, as TRL).
        f_divergence: reverse_kl (DPO), forward_kl, js_divergence or alpha_divergence (with `f_alpha`).
        discopop_tau: τ of `discopop` (> 0; TRL's default 0.05).
        ld_alpha: α of LD-DPO in [0, 1]; None = off. Needs the four `*_token_logps` and the lengths.
        policy_chosen_token_logps, ...: [B, L] per-token log-probs of each response, left-aligned (token t of
            the response in column t), 0 past its length; only for `ld_alpha`. The summed arguments above must
            be their row sums (they still feed `sft` and the WPO weights).
        use_weighting: WPO weights. Needs `chosen_log_sum_sq`, `rejected_log_sum_sq` ([B], Σ_t log Σ_v p_v²
            over each response's positions, under the policy) and the lengths.

    Returns:
        (losses, chosen_rewards, rejected_rewards), each [B], in float32 for fp16/bf16/fp32 inputs (float64 for
        float64). Rewards keep their autograd graph; detach them for logging.

    Raises:
        ValueError: an unknown or repeated loss type; an option a loss does not accept (ε, f-divergence, WPO
            with a batch-coupled loss); missing lengths/KLs/token log-probs for what needs them; inputs that
            are not 1-D tensors of one common length B; β ≤ 0; non-positive lengths.
        TypeError: a log-prob or KL input that is not a torch.Tensor.
    """
    terms, chosen_rewards, rejected_rewards, weights = _terms(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
        beta=beta, loss_type=loss_type, label_smoothing=label_smoothing, chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths, chosen_kl=chosen_kl, rejected_kl=rejected_kl, alpha=alpha, gamma=gamma,
        loss_weights=loss_weights, f_divergence=f_divergence, f_alpha=f_alpha, discopop_tau=discopop_tau,
        ld_alpha=ld_alpha, policy_chosen_token_logps=policy_chosen_token_logps,
        policy_rejected_token_logps=policy_rejected_token_logps,
        reference_chosen_token_logps=reference_chosen_token_logps,
        reference_rejected_token_logps=reference_rejected_token_logps, use_weighting=use_weighting,
        chosen_log_sum_sq=chosen_log_sum_sq, rejected_log_sum_sq=rejected_log_sum_sq)
    return combine(terms, weights), chosen_rewards, rejected_rewards


def preference_loss_terms(*args, **kwargs) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor,
                                                      dict[str, float]]:
    """`preference_loss` split by component: ({name: [B] unweighted loss}, chosen_rewards, rejected_rewards,
    {name: weight}), so a caller can log each component; `combine(terms, weights)` is the total."""
    return _terms(*args, **kwargs)


def combine(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Σ_k w_k·L_k, per pair."""
    total = None
    for name, losses in terms.items():
        part = weights[name] * losses
        total = part if total is None else total + part
    return total


def _terms(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, *,
           beta=0.1, loss_type="sigmoid", label_smoothing=0.0, chosen_lengths=None, rejected_lengths=None,
           chosen_kl=None, rejected_kl=None, alpha=0.5, gamma=0.5, loss_weights=None, f_divergence="reverse_kl",
           f_alpha=0.5, discopop_tau=0.05, ld_alpha=None, policy_chosen_token_logps=None,
           policy_rejected_token_logps=None, reference_chosen_token_logps=None,
           reference_rejected_token_logps=None, use_weighting=False, chosen_log_sum_sq=None,
           rejected_log_sum_sq=None):
    """`preference_loss_terms`, in the order of the algorithm: check the options → check the inputs they need →
    the per-pair quantities of the losses (`LossInputs`: LD-DPO sums, f-divergence scores) → the rewards → the
    WPO weights → each loss term."""
    names, weights = check_options(loss_type, beta=beta, label_smoothing=label_smoothing, loss_weights=loss_weights,
                                   f_divergence=f_divergence, f_alpha=f_alpha, discopop_tau=discopop_tau,
                                   ld_alpha=ld_alpha, use_weighting=use_weighting)
    needs = loss_needs(names, ld_alpha=ld_alpha, use_weighting=use_weighting)
    token = {"policy_chosen_token_logps": policy_chosen_token_logps,
             "policy_rejected_token_logps": policy_rejected_token_logps,
             "reference_chosen_token_logps": reference_chosen_token_logps,
             "reference_rejected_token_logps": reference_rejected_token_logps}
    chosen_lengths, rejected_lengths = _check_inputs(
        ",".join(names), needs, token, policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps, reference_chosen_logps=reference_chosen_logps,
        reference_rejected_logps=reference_rejected_logps, chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths, chosen_kl=chosen_kl, rejected_kl=rejected_kl,
        chosen_log_sum_sq=chosen_log_sum_sq, rejected_log_sum_sq=rejected_log_sum_sq)
    x = _loss_inputs(needs, tuple(token.values()), policy_chosen_logps, policy_rejected_logps,
                     reference_chosen_logps, reference_rejected_logps, chosen_lengths, rejected_lengths, chosen_kl,
                     rejected_kl, beta=beta, eps=label_smoothing, alpha=alpha, gamma=gamma,
                     discopop_tau=discopop_tau, f_divergence=f_divergence, f_alpha=f_alpha, ld_alpha=ld_alpha)
    if needs.reference:
        chosen_rewards = implicit_reward(x.pi_c, x.ref_c, beta)  # β·(π_c − ref_c)
        rejected_rewards = implicit_reward(x.pi_r, x.ref_r, beta)  # β·(π_r − ref_r)
    else:  # simpo alone (parse_loss_types refuses it in a mixture)
        chosen_rewards, rejected_rewards = _simpo_rewards(x)
    pair_weight = _wpo_weights(x, chosen_log_sum_sq, rejected_log_sum_sq) if use_weighting else None
    terms = {}
    for name in names:
        losses = LOSSES[name].fn(x)
        terms[name] = losses * pair_weight if pair_weight is not None else losses
    return terms, chosen_rewards, rejected_rewards, dict(zip(names, weights))


def _check_inputs(label: str, needs: LossNeeds, token: dict[str, torch.Tensor | None], *, policy_chosen_logps,
                  policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, chosen_lengths,
                  rejected_lengths, chosen_kl, rejected_kl, chosen_log_sum_sq,
                  rejected_log_sum_sq) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Every input the losses `label` need is present, [B] (token log-probs [B, L]) and floating; raises
    ValueError/TypeError naming it. Returns the lengths as tensors (None when not needed)."""
    batch = _check_vector("policy_chosen_logps", policy_chosen_logps, None)
    _check_vector("policy_rejected_logps", policy_rejected_logps, batch)
    if needs.reference:
        missing = [name for name, t in (("reference_chosen_logps", reference_chosen_logps),
                                        ("reference_rejected_logps", reference_rejected_logps)) if t is None]
        if missing:
            raise ValueError(f"loss_type {label!r} needs {' and '.join(missing)} (only 'simpo' is reference-free)")
        _check_vector("reference_chosen_logps", reference_chosen_logps, batch)
        _check_vector("reference_rejected_logps", reference_rejected_logps, batch)
    if needs.lengths:
        _require(label, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
        chosen_lengths = _check_lengths("chosen_lengths", chosen_lengths, batch)
        rejected_lengths = _check_lengths("rejected_lengths", rejected_lengths, batch)
    if needs.kl:
        _require(label, chosen_kl=chosen_kl, rejected_kl=rejected_kl)
        _check_vector("chosen_kl", chosen_kl, batch)
        _check_vector("rejected_kl", rejected_kl, batch)
    if needs.log_sum_sq:
        _require("use_weighting", chosen_log_sum_sq=chosen_log_sum_sq, rejected_log_sum_sq=rejected_log_sum_sq)
        _check_vector("chosen_log_sum_sq", chosen_log_sum_sq, batch)
        _check_vector("rejected_log_sum_sq", rejected_log_sum_sq, batch)
    if needs.token_logps:
        _require("ld_alpha", **{n: t for n, t in token.items() if needs.reference or "policy" in n})
        for n, t in token.items():
            if t is not None:
                _check_matrix(n, t, batch)
    return chosen_lengths, rejected_lengths


def _loss_inputs(needs: LossNeeds, token: tuple, pi_c, pi_r, ref_c, ref_r, len_c, len_r, kl_c, kl_r, *,
                 beta: float, eps: float, alpha: float, gamma: float, discopop_tau: float, f_divergence: str,
                 f_alpha: float, ld_alpha: float | None) -> LossInputs:
    """The per-pair quantities every loss reads, in fp32 at least (fp64 stays fp64: the margins are differences
    of large sums): the sums (LD-DPO-desensitised under `ld_alpha`; `token` = the four [B, L] per-token
    log-probs), the f-divergence scores s = f'(e^ρ), lengths and KLs."""
    dtype = torch.promote_types(pi_c.dtype, torch.float32)
    device = pi_c.device
    pi_c, pi_r = pi_c.to(dtype), pi_r.to(dtype)
    plain_pi_c, plain_pi_r = pi_c, pi_r
    if needs.reference:
        ref_c, ref_r = ref_c.to(dtype), ref_r.to(dtype)
    else:
        ref_c = ref_r = None
    if needs.lengths:  # lengths may arrive as ints or on the CPU
        len_c, len_r = len_c.to(device=device, dtype=dtype), len_r.to(device=device, dtype=dtype)
    else:
        len_c = len_r = None
    if ld_alpha is not None:
        pi_c, pi_r = _desensitise(token[0], token[1], len_c, len_r, ld_alpha, dtype)
        if needs.reference:
            ref_c, ref_r = _desensitise(token[2], token[3], len_c, len_r, ld_alpha, dtype)
    s_c = s_r = None
    if needs.reference:
        s_c, s_r = f_score(pi_c - ref_c, f_divergence, f_alpha), f_score(pi_r - ref_r, f_divergence, f_alpha)
    return LossInputs(beta=beta, eps=eps, alpha=alpha, gamma=gamma, discopop_tau=discopop_tau, pi_c=pi_c, pi_r=pi_r,
                      ref_c=ref_c, ref_r=ref_r, s_c=s_c, s_r=s_r, len_c=len_c, len_r=len_r,
                      kl_c=None if kl_c is None else kl_c.to(dtype), kl_r=None if kl_r is None else kl_r.to(dtype),
                      plain_pi_c=plain_pi_c, plain_pi_r=plain_pi_r)


def _wpo_weights(x: LossInputs, chosen_log_sum_sq: torch.Tensor, rejected_log_sum_sq: torch.Tensor) -> torch.Tensor:
    """WPO: w = exp(mean_t(log p_t − log Σ_v p_v²)) of each response, multiplied over the pair; [B], no gradient."""
    with torch.no_grad():
        q_c, q_r = chosen_log_sum_sq.to(x.pi_c.dtype), rejected_log_sum_sq.to(x.pi_c.dtype)
        return torch.exp((x.plain_pi_c.detach() - q_c) / x.len_c) * torch.exp((x.plain_pi_r.detach() - q_r) / x.len_r)


def f_score(rho: torch.Tensor, f_divergence: str = "reverse_kl", f_alpha: float = 0.5) -> torch.Tensor:
    """s = f'(e^ρ) of the f-divergence, elementwise on log-ratios ρ (formulas in the module docstring)."""
    if f_divergence == "reverse_kl":
        return rho
    if f_divergence == "forward_kl":  # f'(t) = 1 − 1/t
        return 1 - torch.exp(-rho)
    if f_divergence == "js_divergence":  # f'(t) = log(2t/(1 + t)) = log 2 + log σ(log t)
        return math.log(2) + F.logsigmoid(rho)
    if f_divergence == "alpha_divergence":  # f'(t) = (t^(α−1) − 1)/(α − 1); α → 1 is log t
        if abs(f_alpha - 1.0) < 1e-6:
            return rho
        t = torch.clamp((f_alpha - 1.0) * rho, max=80.0)  # e^80 ≈ 5.5e34 is still finite in fp32
        return (torch.exp(t) - 1.0) / (f_alpha - 1.0)
    raise ValueError(f"unknown f_divergence {f_divergence!r}; valid: {', '.join(F_DIVERGENCES)}")


def _desensitise(tok_c: torch.Tensor, tok_r: torch.Tensor, len_c: torch.Tensor, len_r: torch.Tensor,
                 ld_alpha: float, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """LD-DPO sums: Σ_{t<ℓ} x_t + α·Σ_{t≥ℓ} x_t per row, ℓ = min(|y_c|, |y_r|) of the pair; tok_* [B, L]."""
    shared = torch.minimum(len_c, len_r)[:, None]  # (B, 1)

    def weighted(tok: torch.Tensor) -> torch.Tensor:
        tok = tok.to(dtype)
        pos = torch.arange(tok.shape[1], device=tok.device, dtype=dtype)[None]  # (1, L)
        return torch.where(pos < shared, tok, ld_alpha * tok).sum(1)  # past each length tok is 0

    return weighted(tok_c), weighted(tok_r)


def sft_loss(chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    r"""Mean per-token negative log-likelihood of the chosen responses (the SFT term of RPO), a scalar.

        L_sft = −Σ_b π_c[b] / Σ_b |y_c[b]|

    i.e. cross-entropy averaged over every chosen response token in the batch (token-weighted, as TRL's
    `rpo_alpha` / `sft` term, which is `CrossEntropyLoss` over the chosen tokens), not a mean of per-sequence
    means. RPO (Pang et al. 2024, https://arxiv.org/abs/2404.19733) trains on
    `losses.mean() + rpo_alpha * sft_loss(policy_chosen_logps, chosen_lengths)`.

    Args:
        chosen_logps: [B] summed policy log-probs of the chosen responses.
        chosen_lengths: [B] their token counts (> 0).
    """
    batch = _check_vector("chosen_logps", chosen_logps, None)
    chosen_lengths = _check_lengths("chosen_lengths", chosen_lengths, batch)
    dtype = torch.promote_types(chosen_logps.dtype, torch.float32)
    return -chosen_logps.to(dtype).sum() / chosen_lengths.to(device=chosen_logps.device, dtype=dtype).sum()


def _require(what: str, **inputs) -> None:
    missing = [name for name, value in inputs.items() if value is None]
    if missing:
        subject = what if what in ("ld_alpha", "use_weighting") else f"loss_type {what!r}"
        raise ValueError(f"{subject} needs {' and '.join(missing)}")


def _check_vector(name: str, t, batch: int | None) -> int:
    """A 1-D floating tensor of length `batch` (any length when None); returns its length."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [B], got {type(t).__name__}")
    if t.dim() != 1:
        raise ValueError(f"{name} must have shape [B] (one summed value per pair), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if batch is not None and t.shape[0] != batch:
        raise ValueError(f"{name} has {t.shape[0]} entries but policy_chosen_logps has {batch}")
    return t.shape[0]


def _check_matrix(name: str, t, batch: int) -> None:
    """Per-token log-probs [B, L], floating."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [B, L], got {type(t).__name__}")
    if t.dim() != 2 or t.shape[0] != batch:
        raise ValueError(f"{name} must have shape [{batch}, L] (left-aligned per-token log-probs), got "
                         f"{tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def _check_lengths(name: str, lengths, batch: int) -> torch.Tensor:
    """Token counts [B] (int or float tensor, or a sequence of numbers), all > 0."""
    if not isinstance(lengths, torch.Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"{name} must have shape [{batch}] (one token count per pair), got {tuple(lengths.shape)}")
    if bool((lengths <= 0).any()):
        raise ValueError(f"{name} must be > 0 (a response with no tokens has no per-token mean): {lengths.tolist()}")
    return lengths
