"""The loss types: one small function per DPO-family loss, and the registry `LOSSES` that says what each needs.

Each function takes a `LossInputs` (the pair's log-ratios, margin, lengths, options; see `tokendpo/losses.py` for
the notation and the options that act on every loss) and returns the per-pair loss [B]. `LossSpec` records, as
data, what a loss needs: the reference, the lengths, TDPO's sequential KLs, whether an f-divergence applies, what
label smoothing means for it. `tokendpo.losses.preference_loss` is the public entry point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from kernels.rewards import implicit_reward


F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


class Interval(NamedTuple):
    """Allowed label smoothing ε for a loss: low ≤ ε ≤ high, with either end open."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, x: float) -> bool:  # type: ignore[override]
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return above and below

    def __str__(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


@dataclass
class LossInputs:
    """What one loss function sees, per pair ([B] tensors, in the math dtype). See the module notation."""

    beta: float
    eps: float  # label smoothing
    alpha: float  # TDPO2
    gamma: float  # SimPO
    discopop_tau: float
    pi_c: torch.Tensor  # policy sums (LD-desensitised under ld_alpha)
    pi_r: torch.Tensor
    ref_c: torch.Tensor | None
    ref_r: torch.Tensor | None
    s_c: torch.Tensor | None  # f-divergence scores of the log-ratios
    s_r: torch.Tensor | None
    len_c: torch.Tensor | None
    len_r: torch.Tensor | None
    kl_c: torch.Tensor | None
    kl_r: torch.Tensor | None
    plain_pi_c: torch.Tensor  # plain (never desensitised) chosen sums: the SFT term and the WPO weights
    plain_pi_r: torch.Tensor  # plain rejected sums: the WPO weights

    @property
    def rho_c(self) -> torch.Tensor:
        return self.pi_c - self.ref_c

    @property
    def rho_r(self) -> torch.Tensor:
        return self.pi_r - self.ref_r


@dataclass(frozen=True)
class LossSpec:
    """One loss type: its function (LossInputs -> [B] losses) and, as data, what it needs and accepts."""

    fn: Callable[[LossInputs], torch.Tensor]
    reference: bool = True  # reference log-probs (for the loss or its implicit rewards)
    lengths: bool = False  # response token counts
    kl: bool = False  # sequential KLs Σ_t KL(π_ref ‖ π): the reference's hidden states and LM head
    f_divergence: bool = False  # built on the chosen − rejected score difference h
    label_smoothing: Interval | None = None  # the ε it accepts (None: ε has no meaning for it)
    needs_label_smoothing: bool = False  # ε = 0 is undefined (EXO's log ε)
    batch_coupled: bool = False  # pairs interact (sorting): per-pair WPO weights do not apply


@dataclass(frozen=True)
class LossNeeds:
    """Inputs a call of `preference_loss` needs beyond the four summed log-prob tensors."""

    reference: bool
    lengths: bool
    kl: bool
    token_logps: bool  # per-token log-probs of policy and reference (LD-DPO)
    log_sum_sq: bool  # Σ_t log Σ_v p_v² of each response (WPO)


# --------------------------------------------------------------------------------------------- the losses


def _smoothed_logistic(z: torch.Tensor, eps: float) -> torch.Tensor:
    """−(1−ε)·log σ(z) − ε·log σ(−z): the logistic loss with labels flipped at rate ε."""
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def _sigmoid(x: LossInputs) -> torch.Tensor:
    r"""DPO, Rafailov et al. 2023 (https://arxiv.org/abs/2305.18290, Eq. 7); with ε > 0 the conservative DPO of
    Mitchell 2023 (https://ericmitchell.ai/cdpo.pdf):  L = −(1−ε)·log σ(βh) − ε·log σ(−βh),  0 ≤ ε ≤ 0.5."""
    return _smoothed_logistic(x.beta * (x.s_c - x.s_r), x.eps)


def _robust(x: LossInputs) -> torch.Tensor:
    r"""Chowdhury et al. 2024, "Provably Robust DPO" (https://arxiv.org/abs/2403.00409): the unbiased estimate
    of the clean-label loss under label-flip rate ε, as TRL's `robust`:
        L = [(1−ε)·(−log σ(βh)) − ε·(−log σ(−βh))] / (1 − 2ε),   0 ≤ ε < 0.5.
    (It can be negative for a single pair; only its expectation is the clean loss.)"""
    z = x.beta * (x.s_c - x.s_r)
    return ((1 - x.eps) * -F.logsigmoid(z) - x.eps * -F.logsigmoid(-z)) / (1 - 2 * x.eps)


def _ipo(x: LossInputs) -> torch.Tensor:
    r"""IPO, Azar et al. 2023 (https://arxiv.org/abs/2310.12036, Eq. 17) with TRL's per-token convention (β is
    τ):  h̄ = s_c/|y_c| − s_r/|y_r|,  L = (h̄ − 1/(2β))².  Per-token means, so the square does not grow with
    the response length."""
    h_bar = x.s_c / x.len_c - x.s_r / x.len_r
    return (h_bar - 1 / (2 * x.beta)) ** 2


def _hinge(x: LossInputs) -> torch.Tensor:
    r"""SLiC-style hinge (Zhao et al. 2023, https://arxiv.org/abs/2305.10425):  L = max(0, 1 − βh)."""
    return torch.relu(1 - x.beta * (x.s_c - x.s_r))


def _tdpo(x: LossInputs, second: bool) -> torch.Tensor:
    r"""TDPO1/TDPO2, Zeng et al. 2024, "Token-level Direct Preference Optimization"
    (https://arxiv.org/abs/2404.11999; official code https://github.com/Vance0124/Token-level-Direct-Preference-Optimization,
    `tdpo_loss`). With u = βh and D_c, D_r the sequential KLs Σ_t KL(π_ref(·|x, y_<t) ‖ π(·|x, y_<t)):
        TDPO1:  δ  = β·D_r − β·D_c,          L = −log σ(u − δ)
        TDPO2:  δ₂ = β·D_r − sg(β·D_c),      L = −log σ(u − α·δ₂)
    sg is stop-gradient (`detach`). α is a TDPO2-only knob: TDPO1 has none (paper and official code agree). The
    official code logs rewards β·(π − ref + D); here the rewards are the plain implicit rewards β·(π − ref)."""
    u = x.beta * (x.rho_c - x.rho_r)
    if second:  # sg on the chosen KL: the paper stops its gradient for stability; α scales the KL margin
        delta = x.alpha * (x.beta * x.kl_r - x.beta * x.kl_c.detach())
    else:
        delta = x.beta * x.kl_r - x.beta * x.kl_c
    return -F.logsigmoid(u - delta)


def _simpo(x: LossInputs) -> torch.Tensor:
    r"""SimPO, Meng et al. 2024 (https://arxiv.org/abs/2405.14734), reference-free and length-normalised, with
    TRL CPOTrainer's optional label smoothing:
        z = β·π_c/|y_c| − β·π_r/|y_r| − γ,   L = −(1−ε)·log σ(z) − ε·log σ(−z).
    γ is the margin on the reward scale, as in the paper and TRL's `simpo_gamma` (TRL writes β·(Δ − γ/β), the
    same number); the official SimPO repo sets `gamma_beta_ratio` = γ/β instead — pass gamma = beta ·
    gamma_beta_ratio to reproduce its configs. Its rewards are β·π/|y| (see `_simpo_rewards`)."""
    r_c, r_r = _simpo_rewards(x)
    return _smoothed_logistic(r_c - r_r - x.gamma, x.eps)


def _simpo_rewards(x: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """SimPO's reward: β · mean per-token log-prob, i.e. the implicit reward against a zero reference."""
    avg_c, avg_r = x.pi_c / x.len_c, x.pi_r / x.len_r
    return implicit_reward(avg_c, torch.zeros_like(avg_c), x.beta), implicit_reward(avg_r, torch.zeros_like(avg_r), x.beta)


def _exo_pair(x: LossInputs) -> torch.Tensor:
    r"""EXO-pref, Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model Alignment"
    (https://arxiv.org/abs/2402.00856, Eq. 16 with K = 2): the reverse KL from the model's preference
    distribution q = softmax over {chosen, rejected} of β·ρ, i.e. q_w = σ(βh), q_l = σ(−βh), to the label
    distribution p = (1 − ε, ε):
        L = q_w·(log q_w − log(1 − ε)) + q_l·(log q_l − log ε),   0 < ε < 1 (the paper suggests ε = 1e-3)."""
    z = x.beta * (x.s_c - x.s_r)
    return (torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-x.eps))
            + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(x.eps)))


def _nca_pair(x: LossInputs) -> torch.Tensor:
    r"""NCA, Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards"
    (https://arxiv.org/abs/2402.05369), pairwise form as TRL's `nca_pair`: absolute, not relative, rewards —
        L = −log σ(r_c) − ½·log σ(−r_c) − ½·log σ(−r_r)."""
    r_c, r_r = x.beta * x.rho_c, x.beta * x.rho_r
    return -F.logsigmoid(r_c) - 0.5 * F.logsigmoid(-r_c) - 0.5 * F.logsigmoid(-r_r)


def _bco_pair(x: LossInputs) -> torch.Tensor:
    r"""BCO, Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment"
    (https://arxiv.org/abs/2404.04656), paired and without the running reward shift, as TRL's `bco_pair`: a
    binary classifier with logit r, chosen = 1, rejected = 0:   L = −log σ(r_c) − log σ(−r_r)."""
    return -F.logsigmoid(x.beta * x.rho_c) - F.logsigmoid(-x.beta * x.rho_r)


def _sppo_hard(x: LossInputs) -> torch.Tensor:
    r"""SPPO, Wu et al. 2024, "Self-Play Preference Optimization for Language Model Alignment"
    (https://arxiv.org/abs/2405.00675, Eq. 4.7) with hard win probabilities (1 for the chosen, 0 for the
    rejected), as TRL's `sppo_hard`:   L = (ρ_c − 1/(2β))² + (ρ_r + 1/(2β))²."""
    return (x.rho_c - 0.5 / x.beta) ** 2 + (x.rho_r + 0.5 / x.beta) ** 2


def _aot(x: LossInputs) -> torch.Tensor:
    r"""AOT, Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal Transport"
    (https://arxiv.org/abs/2406.05882), paired: first-order stochastic dominance of the policy's margins over
    the reference's, through the 1-D optimal transport plan, i.e. sorting across the batch. With
    m = sort_b(π_c − π_r) and m_ref = sort_b(ref_c − ref_r) (ascending), the b-th loss is the smoothed
    logistic loss of Δ_b = m_b − m_ref,b:   L_b = −(1−ε)·log σ(βΔ_b) − ε·log σ(−βΔ_b).
    Loss b is therefore not pair b's own loss: only the batch mean has meaning."""
    m = torch.sort(x.pi_c - x.pi_r).values
    m_ref = torch.sort(x.ref_c - x.ref_r).values
    return _smoothed_logistic(x.beta * (m - m_ref), x.eps)


def _aot_unpaired(x: LossInputs) -> torch.Tensor:
    r"""AOT, unpaired (same paper): the chosen log-ratios must dominate the rejected ones as distributions, so
    each is sorted on its own:  Δ = sort_b(ρ_c) − sort_b(ρ_r),  L_b = −(1−ε)·log σ(βΔ_b) − ε·log σ(−βΔ_b)."""
    delta = torch.sort(x.rho_c).values - torch.sort(x.rho_r).values
    return _smoothed_logistic(x.beta * delta, x.eps)


def _apo_zero(x: LossInputs) -> torch.Tensor:
    r"""APO-zero, D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive Revisions"
    (https://arxiv.org/abs/2408.06266, Eq. 7), for chosen responses better than the model's own:
    raise the chosen likelihood, lower the rejected one —   L = (1 − σ(r_c)) + σ(r_r)."""
    return 1 - torch.sigmoid(x.beta * x.rho_c) + torch.sigmoid(x.beta * x.rho_r)


def _apo_down(x: LossInputs) -> torch.Tensor:
    r"""APO-down (same paper, Eq. 8), for chosen responses worse than the model's own: lower both likelihoods,
    the rejected one more —   L = σ(r_c) + (1 − σ(r_c − r_r))."""
    return torch.sigmoid(x.beta * x.rho_c) + 1 - torch.sigmoid(x.beta * (x.rho_c - x.rho_r))


def _discopop(x: LossInputs) -> torch.Tensor:
    r"""DiscoPOP (log-ratio modulated loss), Lu et al. 2024, "Discovering Preference Optimization Algorithms
    with and for Large Language Models" (https://arxiv.org/abs/2406.08414, Eq. 5): with z = βh and the
    temperature τ = `discopop_tau`, a blend of the logistic and exponential losses —
        m = σ(z/τ),   L = (1 − m)·(−log σ(z)) + m·e^{−z}."""
    z = x.beta * (x.s_c - x.s_r)
    m = torch.sigmoid(z / x.discopop_tau)
    return (1 - m) * -F.logsigmoid(z) + m * torch.exp(-z)


def _sft(x: LossInputs) -> torch.Tensor:
    r"""SFT (negative log-likelihood of the chosen responses), as TRL's `sft` loss type and RPO's term
    (Pang et al. 2024, https://arxiv.org/abs/2404.19733): the token-weighted mean over the batch,
        L_b = −Σ_b' π_c[b'] / Σ_b' |y_c[b']|   for every pair b
    (the batch's value repeated per pair, as TRL does, so mixtures and WPO weights treat it as TRL does). Uses
    the plain summed log-probs even under `ld_alpha`."""
    value = -x.plain_pi_c.sum() / x.len_c.sum()
    return value.expand(x.plain_pi_c.shape[0])


def _sigmoid_norm(x: LossInputs) -> torch.Tensor:
    r"""Length-normalised DPO (TRL's `sigmoid_norm`; the "LN-DPO" baseline discussed with SimPO,
    https://arxiv.org/abs/2405.14734): DPO on per-token mean scores —
        h̄ = s_c/|y_c| − s_r/|y_r|,   L = −log σ(βh̄)."""
    return -F.logsigmoid(x.beta * (x.s_c / x.len_c - x.s_r / x.len_r))


_SMOOTH_HALF = Interval(0.0, 0.5)
LOSSES: dict[str, LossSpec] = {
    "sigmoid": LossSpec(_sigmoid, f_divergence=True, label_smoothing=_SMOOTH_HALF),
    "robust": LossSpec(_robust, f_divergence=True, label_smoothing=Interval(0.0, 0.5, high_open=True)),
    "ipo": LossSpec(_ipo, lengths=True, f_divergence=True),
    "hinge": LossSpec(_hinge, f_divergence=True),
    "tdpo1": LossSpec(lambda x: _tdpo(x, second=False), kl=True),
    "tdpo2": LossSpec(lambda x: _tdpo(x, second=True), kl=True),
    "simpo": LossSpec(_simpo, reference=False, lengths=True, label_smoothing=_SMOOTH_HALF),
    "exo_pair": LossSpec(_exo_pair, f_divergence=True, label_smoothing=Interval(0.0, 1.0, True, True),
                         needs_label_smoothing=True),
    "nca_pair": LossSpec(_nca_pair),
    "bco_pair": LossSpec(_bco_pair),
    "sppo_hard": LossSpec(_sppo_hard),
    "aot": LossSpec(_aot, label_smoothing=_SMOOTH_HALF, batch_coupled=True),
    "aot_unpaired": LossSpec(_aot_unpaired, label_smoothing=_SMOOTH_HALF, batch_coupled=True),
    "apo_zero": LossSpec(_apo_zero),
    "apo_down": LossSpec(_apo_down),
    "discopop": LossSpec(_discopop, f_divergence=True),
    "sft": LossSpec(_sft, lengths=True, f_divergence=True),  # TRL accepts f_divergence with sft (unused by it)
    "sigmoid_norm": LossSpec(_sigmoid_norm, lengths=True, f_divergence=True),
}
LOSS_TYPES = tuple(LOSSES)
