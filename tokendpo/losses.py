"""DPO-family preference losses: pure functions of summed sequence log-probs.

Every loss here takes, per preference pair b, the policy's and the reference's summed log-probs of the chosen
(y_w) and rejected (y_l) responses — tensors of shape [B] — and returns `(losses, chosen_rewards,
rejected_rewards)`, each [B], one value per pair (the caller reduces, usually with `.mean()`).

Notation used in the docstrings (all per pair):

    π_c, π_r     policy      Σ_t log π(y_t | x, y_<t)     over the chosen / rejected response tokens
    ref_c, ref_r reference   Σ_t log π_ref(y_t | x, y_<t)
    h            (π_c − π_r) − (ref_c − ref_r)           the DPO log-ratio margin
    |y_c|, |y_r| response lengths in tokens (the positions whose labels are not masked, EOS included)
    σ            the logistic function; −log σ(z) = softplus(−z) is computed stably by `F.logsigmoid`

Rewards: every loss with a reference returns the implicit reward of the whole sequence,
r = β·(π − ref) (`kernels.rewards.implicit_reward`, the project's one definition), with its graph attached —
the training loop detaches them for logging. SimPO has no reference; it returns its own reward
β·π/|y| (see `preference_loss`).

The optional SFT term of RPO (Pang et al. 2024, https://arxiv.org/abs/2404.19733) is `sft_loss`; the training
loop adds `rpo_alpha · sft_loss(...)` to the mean preference loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.rewards import implicit_reward

LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge", "tdpo1", "tdpo2", "simpo")

# Inputs each loss type needs beyond the four log-prob tensors, and where label smoothing means something.
_NEEDS_LENGTHS = ("ipo", "simpo")
_NEEDS_KL = ("tdpo1", "tdpo2")
_USES_LABEL_SMOOTHING = ("sigmoid", "robust", "simpo")


def preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor | None,
    reference_rejected_logps: torch.Tensor | None,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    chosen_kl: torch.Tensor | None = None,
    rejected_kl: torch.Tensor | None = None,
    alpha: float = 0.5,
    gamma: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Per-pair preference loss and the chosen/rejected rewards, all [B].

    Args:
        policy_chosen_logps, policy_rejected_logps: [B] summed response log-probs under the policy.
        reference_chosen_logps, reference_rejected_logps: [B] the same under the reference model. Not used by
            `simpo` (reference-free; they may be None there).
        beta: β > 0.
        loss_type: one of `LOSS_TYPES`.
        label_smoothing: ε, the assumed probability that a label is flipped; used by `sigmoid`, `robust` and
            `simpo` only (any other type with ε ≠ 0 is an error rather than a silently ignored flag).
        chosen_lengths, rejected_lengths: [B] response token counts (> 0); needed by `ipo` and `simpo`.
        chosen_kl, rejected_kl: [B] sequential KL of each response, Σ_t KL(π_ref(·|x, y_<t) ‖ π(·|x, y_<t)) over
            its response positions; needed by `tdpo1` and `tdpo2`.
        alpha: α of TDPO2 (TDPO1 has no α).
        gamma: γ of SimPO, the target reward margin.

    Loss types (z ↦ −log σ(z) is the logistic loss):

    * `sigmoid` — DPO (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290, Eq. 7); with ε > 0 the
      conservative DPO of Mitchell (2023, https://ericmitchell.ai/cdpo.pdf):
          L = −(1−ε)·log σ(βh) − ε·log σ(−βh),   0 ≤ ε ≤ 0.5.
    * `robust` — Chowdhury et al. 2024, "Provably Robust DPO" (https://arxiv.org/abs/2403.00409): the
      unbiased estimate of the clean-label loss under label-flip rate ε, as TRL's `robust`:
          L = [(1−ε)·(−log σ(βh)) − ε·(−log σ(−βh))] / (1 − 2ε),   0 ≤ ε < 0.5.
      (It can be negative for a single pair; only its expectation is the clean loss.)
    * `ipo` — Azar et al. 2023 (https://arxiv.org/abs/2310.12036, Eq. 17) with TRL's per-token convention (β
      plays the role of τ):
          h̄ = (π_c − ref_c)/|y_c| − (π_r − ref_r)/|y_r|,   L = (h̄ − 1/(2β))².
    * `hinge` — SLiC-style (Zhao et al. 2023, https://arxiv.org/abs/2305.10425): L = max(0, 1 − βh).
    * `tdpo1`, `tdpo2` — Zeng et al. 2024, "Token-level Direct Preference Optimization"
      (https://arxiv.org/abs/2404.11999, the TDPO1/TDPO2 objectives; official code
      https://github.com/Vance0124/Token-level-Direct-Preference-Optimization, `tdpo_loss`).
      With u = βh and D_c, D_r the sequential KLs above:
          TDPO1:  δ  = β·D_r − β·D_c,          L = −log σ(u − δ)
          TDPO2:  δ₂ = β·D_r − sg(β·D_c),      L = −log σ(u − α·δ₂)
      where sg is stop-gradient (`detach`). α is a TDPO2-only knob: TDPO1 has none (paper and official code
      agree), so `alpha` is unused by `tdpo1`. The official code logs rewards β·(π − ref + D); here the
      rewards are the plain implicit rewards β·(π − ref), like every other referenced loss.
    * `simpo` — Meng et al. 2024, "SimPO" (https://arxiv.org/abs/2405.14734), reference-free and
      length-normalised, with TRL CPOTrainer's optional label smoothing:
          z = β·π_c/|y_c| − β·π_r/|y_r| − γ,   L = −(1−ε)·log σ(z) − ε·log σ(−z).
      γ is the margin on the reward scale, as in the paper and TRL's `simpo_gamma` (TRL writes
      β·(Δ − γ/β), which is the same number); the official SimPO repo instead sets `gamma_beta_ratio` = γ/β —
      pass gamma = beta · gamma_beta_ratio to reproduce its configs. Rewards returned: β·π/|y|, SimPO's own
      reward (what TRL's CPOTrainer logs for simpo), i.e. the implicit reward of the per-token mean log-prob
      against an implicit reference of 0.

    Returns:
        (losses, chosen_rewards, rejected_rewards), each [B], in float32 for fp16/bf16/fp32 inputs (float64 for
        float64). Rewards keep their autograd graph; detach them for logging.

    Raises:
        ValueError: unknown `loss_type`; missing lengths/KLs for a type that needs them; inputs that are not
            1-D tensors of one common length B; β ≤ 0; ε out of range or given to a type that does not use it;
            non-positive lengths.
        TypeError: a log-prob or KL input that is not a torch.Tensor.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; valid loss types: {', '.join(LOSS_TYPES)}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    _check_label_smoothing(loss_type, label_smoothing)

    batch = _check_vector("policy_chosen_logps", policy_chosen_logps, None)
    _check_vector("policy_rejected_logps", policy_rejected_logps, batch)
    referenced = loss_type != "simpo"
    if referenced:
        missing = [name for name, t in (("reference_chosen_logps", reference_chosen_logps),
                                        ("reference_rejected_logps", reference_rejected_logps)) if t is None]
        if missing:
            raise ValueError(f"loss_type {loss_type!r} needs {' and '.join(missing)} (only 'simpo' is reference-free)")
        _check_vector("reference_chosen_logps", reference_chosen_logps, batch)
        _check_vector("reference_rejected_logps", reference_rejected_logps, batch)
    if loss_type in _NEEDS_LENGTHS:
        _require(loss_type, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
        chosen_lengths = _check_lengths("chosen_lengths", chosen_lengths, batch)
        rejected_lengths = _check_lengths("rejected_lengths", rejected_lengths, batch)
    if loss_type in _NEEDS_KL:
        _require(loss_type, chosen_kl=chosen_kl, rejected_kl=rejected_kl)
        _check_vector("chosen_kl", chosen_kl, batch)
        _check_vector("rejected_kl", rejected_kl, batch)

    # Math in fp32 at least (fp64 stays fp64): the margins are differences of large sums.
    dtype = torch.promote_types(policy_chosen_logps.dtype, torch.float32)
    pi_c, pi_r = policy_chosen_logps.to(dtype), policy_rejected_logps.to(dtype)
    if loss_type in _NEEDS_LENGTHS:  # lengths may arrive as ints or on the CPU
        chosen_lengths = chosen_lengths.to(device=pi_c.device, dtype=dtype)
        rejected_lengths = rejected_lengths.to(device=pi_c.device, dtype=dtype)
    eps = label_smoothing

    if loss_type == "simpo":
        # SimPO's reward: β · mean per-token log-prob, i.e. implicit reward against a zero reference.
        avg_c, avg_r = pi_c / chosen_lengths, pi_r / rejected_lengths
        chosen_rewards = implicit_reward(avg_c, torch.zeros_like(avg_c), beta)
        rejected_rewards = implicit_reward(avg_r, torch.zeros_like(avg_r), beta)
        z = chosen_rewards - rejected_rewards - gamma
        losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
        return losses, chosen_rewards, rejected_rewards

    ref_c, ref_r = reference_chosen_logps.to(dtype), reference_rejected_logps.to(dtype)
    chosen_rewards = implicit_reward(pi_c, ref_c, beta)  # β·(π_c − ref_c)
    rejected_rewards = implicit_reward(pi_r, ref_r, beta)  # β·(π_r − ref_r)
    # βh = β·[(π_c − π_r) − (ref_c − ref_r)] = r_c − r_r
    beta_h = chosen_rewards - rejected_rewards

    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(beta_h) - eps * F.logsigmoid(-beta_h)
    elif loss_type == "robust":
        losses = ((1 - eps) * -F.logsigmoid(beta_h) - eps * -F.logsigmoid(-beta_h)) / (1 - 2 * eps)
    elif loss_type == "ipo":
        # h̄: per-token mean log-ratios, so the squared loss does not grow with response length.
        h_bar = (pi_c - ref_c) / chosen_lengths - (pi_r - ref_r) / rejected_lengths
        losses = (h_bar - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta_h)
    else:  # tdpo1 / tdpo2
        kl_c, kl_r = chosen_kl.to(dtype), rejected_kl.to(dtype)
        if loss_type == "tdpo1":
            delta = beta * kl_r - beta * kl_c
        else:
            # sg on the chosen KL: the paper stops its gradient for stability; α scales the KL margin
            delta = alpha * (beta * kl_r - beta * kl_c.detach())
        losses = -F.logsigmoid(beta_h - delta)
    return losses, chosen_rewards, rejected_rewards


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


def _check_label_smoothing(loss_type: str, eps: float) -> None:
    if eps == 0:
        return
    if loss_type not in _USES_LABEL_SMOOTHING:
        raise ValueError(
            f"label_smoothing={eps} has no meaning for loss_type {loss_type!r}; it is used by "
            f"{', '.join(_USES_LABEL_SMOOTHING)} only (set it to 0)"
        )
    if loss_type == "robust" and not 0 <= eps < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5) for 'robust' (it divides by 1 − 2ε), got {eps}")
    if not 0 <= eps <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5] for {loss_type!r}, got {eps}")


def _require(loss_type: str, **inputs) -> None:
    missing = [name for name, value in inputs.items() if value is None]
    if missing:
        raise ValueError(f"loss_type {loss_type!r} needs {' and '.join(missing)}")


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


def _check_lengths(name: str, lengths, batch: int) -> torch.Tensor:
    """Token counts [B] (int or float tensor, or a sequence of numbers), all > 0."""
    if not isinstance(lengths, torch.Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"{name} must have shape [{batch}] (one token count per pair), got {tuple(lengths.shape)}")
    if bool((lengths <= 0).any()):
        raise ValueError(f"{name} must be > 0 (a response with no tokens has no per-token mean): {lengths.tolist()}")
    return lengths
