"""Tests for tokendpo/losses.py.

Oracles, none of them the code under test: hand-worked numbers (docstrings show the arithmetic; the test
recomputes it with `math`), closed-form gradients, a scalar pure-Python reimplementation of TRL's and the TDPO
authors' formulas on random float64 inputs, and — when `trl` is importable — TRL's own DPOTrainer/CPOTrainer code
(the TRL-oracle tests for the losses TRL 1.16 added, the f-divergences, LD-DPO, WPO and mixtures are in
tests/tokendpo/test_loss_mixtures.py).
"""

import math
import re
import types
from collections import defaultdict

import pytest
import torch

from tokendpo.losses import LOSS_TYPES, LOSSES, preference_loss, sft_loss

LN2 = math.log(2.0)


def nls(z: float) -> float:
    """−log σ(z) = log(1 + e^{−z}), written stably for either sign of z."""
    return max(-z, 0.0) + math.log1p(math.exp(-abs(z)))


def t64(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# The running example: one pair, β = 0.1.
#   π_c = −10, π_r = −14, ref_c = −12, ref_r = −13
#   h = (π_c − π_r) − (ref_c − ref_r) = 4 − 1 = 3,  βh = 0.3
#   r_c = β(π_c − ref_c) = 0.2,  r_r = β(π_r − ref_r) = −0.1
PAIR = {
    "policy_chosen_logps": t64(-10.0),
    "policy_rejected_logps": t64(-14.0),
    "reference_chosen_logps": t64(-12.0),
    "reference_rejected_logps": t64(-13.0),
}


def _close(actual: torch.Tensor, expected: float, tol: float = 1e-12) -> None:
    torch.testing.assert_close(actual, t64(expected), rtol=tol, atol=tol)


# --------------------------------------------------------------------------------------------- hand-worked


def test_sigmoid_hand_worked():
    """βh = 0.3:  L = −log σ(0.3) = log(1 + e^{−0.3}) = log(1 + 0.740818) = log(1.740818) = 0.554355.
    Rewards r_c = 0.1·(−10 + 12) = 0.2, r_r = 0.1·(−14 + 13) = −0.1."""
    losses, rc, rr = preference_loss(**PAIR, beta=0.1)
    _close(losses, math.log(1 + math.exp(-0.3)))
    assert abs(math.log(1 + math.exp(-0.3)) - 0.554355) < 1e-6  # the docstring's arithmetic
    _close(rc, 0.2, 1e-15)
    _close(rr, -0.1, 1e-15)


def test_conservative_dpo_hand_worked():
    """ε = 0.1, βh = 0.3:
    L = 0.9·log(1 + e^{−0.3}) + 0.1·log(1 + e^{0.3}) = 0.9·0.554355 + 0.1·0.854355 = 0.498920 + 0.085436 = 0.584355.
    (Check: log(1 + e^{z}) − log(1 + e^{−z}) = z, so 0.854355 − 0.554355 = 0.3.)"""
    losses, _, _ = preference_loss(**PAIR, beta=0.1, label_smoothing=0.1)
    expected = 0.9 * math.log(1 + math.exp(-0.3)) + 0.1 * math.log(1 + math.exp(0.3))
    assert abs(expected - 0.584355) < 1e-6
    _close(losses, expected)


def test_robust_hand_worked():
    """ε = 0.1, βh = 0.3:  L = [0.9·0.554355 − 0.1·0.854355] / (1 − 0.2) = (0.498920 − 0.085436)/0.8 = 0.516855."""
    losses, _, _ = preference_loss(**PAIR, beta=0.1, loss_type="robust", label_smoothing=0.1)
    expected = (0.9 * math.log(1 + math.exp(-0.3)) - 0.1 * math.log(1 + math.exp(0.3))) / 0.8
    assert abs(expected - 0.516855) < 1e-6
    _close(losses, expected)


def test_ipo_hand_worked():
    """|y_c| = 4, |y_r| = 2:  h̄ = (−10 + 12)/4 − (−14 + 13)/2 = 0.5 + 0.5 = 1;  1/(2β) = 5;  L = (1 − 5)² = 16.
    Rewards stay sequence-level: r_c = 0.2, r_r = −0.1."""
    losses, rc, rr = preference_loss(**PAIR, beta=0.1, loss_type="ipo", chosen_lengths=torch.tensor([4]),
                                     rejected_lengths=torch.tensor([2]))
    _close(losses, (1.0 - 5.0) ** 2)
    _close(rc, 0.2, 1e-15)
    _close(rr, -0.1, 1e-15)


def test_hinge_hand_worked():
    """β = 0.1: βh = 0.3, L = max(0, 1 − 0.3) = 0.7.   β = 0.5: βh = 1.5, L = max(0, −0.5) = 0."""
    _close(preference_loss(**PAIR, beta=0.1, loss_type="hinge")[0], 0.7)
    _close(preference_loss(**PAIR, beta=0.5, loss_type="hinge")[0], 0.0)


def test_tdpo1_hand_worked():
    """D_c = 0.5, D_r = 2.5:  δ = β·D_r − β·D_c = 0.25 − 0.05 = 0.2;  L = −log σ(βh − δ) = −log σ(0.1)
    = log(1 + e^{−0.1}) = log(1.904837) = 0.644397.  α plays no part in TDPO1 (α = 0.9 here changes nothing)."""
    kl = {"chosen_kl": t64(0.5), "rejected_kl": t64(2.5)}
    losses, rc, rr = preference_loss(**PAIR, beta=0.1, loss_type="tdpo1", alpha=0.9, **kl)
    expected = math.log(1 + math.exp(-0.1))
    assert abs(expected - 0.644397) < 1e-6
    _close(losses, expected)
    _close(rc, 0.2, 1e-15)
    _close(rr, -0.1, 1e-15)


def test_tdpo2_hand_worked():
    """D_c = 0.5, D_r = 2.5, α = 0.5:  δ₂ = 0.25 − sg(0.05) = 0.2;  L = −log σ(0.3 − 0.5·0.2) = log(1 + e^{−0.2})
    = log(1.818731) = 0.598139."""
    losses, _, _ = preference_loss(**PAIR, beta=0.1, loss_type="tdpo2", alpha=0.5,
                                   chosen_kl=t64(0.5), rejected_kl=t64(2.5))
    expected = math.log(1 + math.exp(-0.2))
    assert abs(expected - 0.598139) < 1e-6
    _close(losses, expected)


def test_simpo_hand_worked():
    """β = 2, γ = 0.5, π_c = −6 over 4 tokens, π_r = −9 over 3 tokens (no reference):
    r_c = 2·(−6/4) = −3,  r_r = 2·(−9/3) = −6,  z = −3 + 6 − 0.5 = 2.5,
    L = log(1 + e^{−2.5}) = log(1.082085) = 0.078889."""
    losses, rc, rr = preference_loss(t64(-6.0), t64(-9.0), None, None, beta=2.0, gamma=0.5, loss_type="simpo",
                                     chosen_lengths=torch.tensor([4]), rejected_lengths=torch.tensor([3]))
    expected = math.log(1 + math.exp(-2.5))
    assert abs(expected - 0.078889) < 1e-6
    _close(losses, expected)
    _close(rc, -3.0, 1e-15)
    _close(rr, -6.0, 1e-15)


def test_simpo_label_smoothing_hand_worked():
    """Same pair, ε = 0.2:
    L = 0.8·log(1 + e^{−2.5}) + 0.2·log(1 + e^{2.5}) = 0.8·0.078889 + 0.2·2.578889 = 0.578889."""
    losses, _, _ = preference_loss(t64(-6.0), t64(-9.0), None, None, beta=2.0, gamma=0.5, loss_type="simpo",
                                   label_smoothing=0.2, chosen_lengths=[4], rejected_lengths=[3])
    expected = 0.8 * math.log(1 + math.exp(-2.5)) + 0.2 * math.log(1 + math.exp(2.5))
    assert abs(expected - 0.578889) < 1e-6
    _close(losses, expected)


def test_sft_loss_hand_worked():
    """Chosen sums −6 (4 tokens) and −9 (3 tokens): token-mean NLL = (6 + 9)/(4 + 3) = 15/7 = 2.142857,
    not the mean of per-sequence means (1.5 + 3)/2 = 2.25.  ∂L/∂π_c[b] = −1/7 for every b."""
    logps = t64(-6.0, -9.0).requires_grad_()
    loss = sft_loss(logps, torch.tensor([4, 3]))
    assert loss.dim() == 0
    _close(loss.reshape(1), 15 / 7)
    loss.backward()
    torch.testing.assert_close(logps.grad, t64(-1 / 7, -1 / 7), rtol=1e-14, atol=1e-14)


# The losses TRL 1.16 added, on the running example unless said otherwise:
#   ρ_c = π_c − ref_c = 2, ρ_r = −1, r_c = 0.2, r_r = −0.1, βh = 0.3, β = 0.1.


def test_exo_pair_hand_worked():
    """ε = 0.1: q_w = σ(0.3) = 0.574443, q_l = σ(−0.3) = 0.425557, log q_w = −0.554355, log q_l = −0.854355,
    log 0.9 = −0.105361, log 0.1 = −2.302585:
    L = 0.574443·(−0.554355 + 0.105361) + 0.425557·(−0.854355 + 2.302585)
      = 0.574443·(−0.448994) + 0.425557·1.448230 = −0.257922 + 0.616306 = 0.358383."""
    losses, rc, rr = preference_loss(**PAIR, beta=0.1, loss_type="exo_pair", label_smoothing=0.1)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    expected = sig(0.3) * (-nls(0.3) - math.log(0.9)) + sig(-0.3) * (-nls(-0.3) - math.log(0.1))
    assert abs(expected - 0.358383) < 1e-6
    _close(losses, expected)
    _close(rc, 0.2, 1e-15)
    _close(rr, -0.1, 1e-15)


def test_nca_pair_hand_worked():
    """L = −log σ(r_c) − ½·log σ(−r_c) − ½·log σ(−r_r) = −log σ(0.2) − ½·log σ(−0.2) − ½·log σ(0.1)
    = 0.598139 + ½·0.798139 + ½·0.644397 = 0.598139 + 0.399069 + 0.322198 = 1.319407."""
    expected = nls(0.2) + 0.5 * nls(-0.2) + 0.5 * nls(0.1)
    assert abs(expected - 1.319407) < 1e-6
    _close(preference_loss(**PAIR, beta=0.1, loss_type="nca_pair")[0], expected)


def test_bco_pair_hand_worked():
    """L = −log σ(r_c) − log σ(−r_r) = −log σ(0.2) − log σ(0.1) = 0.598139 + 0.644397 = 1.242536."""
    expected = nls(0.2) + nls(0.1)
    assert abs(expected - 1.242536) < 1e-6
    _close(preference_loss(**PAIR, beta=0.1, loss_type="bco_pair")[0], expected)


def test_sppo_hard_hand_worked():
    """1/(2β) = 5:  L = (ρ_c − 5)² + (ρ_r + 5)² = (2 − 5)² + (−1 + 5)² = 9 + 16 = 25."""
    _close(preference_loss(**PAIR, beta=0.1, loss_type="sppo_hard")[0], 25.0)


TWO_PAIRS = {  # pair 0 is the running example; pair 1: policy margin −8 − (−7) = −1, reference margin −9 + 12 = 3
    "policy_chosen_logps": t64(-10.0, -8.0), "policy_rejected_logps": t64(-14.0, -7.0),
    "reference_chosen_logps": t64(-12.0, -9.0), "reference_rejected_logps": t64(-13.0, -12.0),
}


def test_aot_hand_worked():
    """Two pairs, β = 0.1. Policy margins π_c − π_r = (4, −1), reference margins ref_c − ref_r = (1, 3).
    Sorted: (−1, 4) and (1, 3), so Δ = (−2, 1) — not the paired h = (3, −4).
    L = mean(−log σ(−0.2), −log σ(0.1)) = (0.798139 + 0.644397)/2 = 0.721268
    (paired DPO would give (0.554355 + 0.913015)/2 = 0.733685).  With ε = 0.1 each term is smoothed."""
    losses, _, _ = preference_loss(**TWO_PAIRS, beta=0.1, loss_type="aot")
    expected = (nls(-0.2) + nls(0.1)) / 2
    assert abs(expected - 0.721268) < 1e-6
    _close(losses.mean().reshape(1), expected)
    smooth, _, _ = preference_loss(**TWO_PAIRS, beta=0.1, loss_type="aot", label_smoothing=0.1)
    _close(smooth.mean().reshape(1), (0.9 * (nls(-0.2) + nls(0.1)) + 0.1 * (nls(0.2) + nls(-0.1))) / 2)


def test_aot_unpaired_hand_worked():
    """Log-ratios ρ_c = (2, 1), ρ_r = (−1, 5). Sorted: (1, 2) and (−1, 5), Δ = (2, −3).
    L = mean(−log σ(0.2), −log σ(−0.3)) = (0.598139 + 0.854355)/2 = 0.726247."""
    losses, _, _ = preference_loss(**TWO_PAIRS, beta=0.1, loss_type="aot_unpaired")
    expected = (nls(0.2) + nls(-0.3)) / 2
    assert abs(expected - 0.726247) < 1e-6
    _close(losses.mean().reshape(1), expected)


def test_apo_zero_hand_worked():
    """L = 1 − σ(r_c) + σ(r_r) = 1 − σ(0.2) + σ(−0.1) = 1 − 0.549834 + 0.475021 = 0.925187."""
    expected = 1 - 1 / (1 + math.exp(-0.2)) + 1 / (1 + math.exp(0.1))
    assert abs(expected - 0.925187) < 1e-6
    _close(preference_loss(**PAIR, beta=0.1, loss_type="apo_zero")[0], expected)


def test_apo_down_hand_worked():
    """L = σ(r_c) + 1 − σ(r_c − r_r) = σ(0.2) + 1 − σ(0.3) = 0.549834 + 1 − 0.574443 = 0.975391."""
    expected = 1 / (1 + math.exp(-0.2)) + 1 - 1 / (1 + math.exp(-0.3))
    assert abs(expected - 0.975391) < 1e-6
    _close(preference_loss(**PAIR, beta=0.1, loss_type="apo_down")[0], expected)


def test_discopop_hand_worked():
    """τ = 0.05, z = βh = 0.3: m = σ(z/τ) = σ(6) = 0.997527;
    L = (1 − m)·(−log σ(0.3)) + m·e^{−0.3} = 0.002473·0.554355 + 0.997527·0.740818 = 0.001371 + 0.738986 = 0.740357.
    τ = 1: m = σ(0.3) = 0.574443, L = 0.425557·0.554355 + 0.574443·0.740818 = 0.235910 + 0.425558 = 0.661468."""
    expected = (1 - 1 / (1 + math.exp(-6))) * nls(0.3) + 1 / (1 + math.exp(-6)) * math.exp(-0.3)
    assert abs(expected - 0.740357) < 1e-6
    _close(preference_loss(**PAIR, beta=0.1, loss_type="discopop")[0], expected)  # τ defaults to 0.05
    m = 1 / (1 + math.exp(-0.3))
    assert abs((1 - m) * nls(0.3) + m * math.exp(-0.3) - 0.661468) < 1e-6
    _close(preference_loss(**PAIR, beta=0.1, loss_type="discopop", discopop_tau=1.0)[0],
           (1 - m) * nls(0.3) + m * math.exp(-0.3))


def test_sft_loss_type_hand_worked():
    """Chosen sums −10 (4 tokens) and −8 (2 tokens): the token-mean NLL (10 + 8)/(4 + 2) = 3, repeated for both
    pairs (TRL's convention); rewards stay β·(π − ref) = (0.2, 0.1)."""
    losses, rc, _ = preference_loss(**TWO_PAIRS, beta=0.1, loss_type="sft", chosen_lengths=[4, 2],
                                    rejected_lengths=[2, 3])
    torch.testing.assert_close(losses, t64(3.0, 3.0), rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(rc, t64(0.2, 0.1), rtol=1e-14, atol=1e-15)


def test_sigmoid_norm_hand_worked():
    """|y_c| = 4, |y_r| = 2: h̄ = ρ_c/4 − ρ_r/2 = 0.5 + 0.5 = 1;  L = −log σ(0.1) = 0.644397."""
    losses, _, _ = preference_loss(**PAIR, beta=0.1, loss_type="sigmoid_norm", chosen_lengths=[4],
                                   rejected_lengths=[2])
    assert abs(nls(0.1) - 0.644397) < 1e-6
    _close(losses, nls(0.1))


# --------------------------------------------------------------------------------------------- properties


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("loss_type,eps", [("sigmoid", 0.0), ("sigmoid", 0.25), ("robust", 0.3), ("tdpo1", 0.0),
                                           ("tdpo2", 0.0)])
def test_policy_equal_reference_gives_ln2_and_zero_rewards(loss_type, eps, beta):
    """π = π_ref ⇒ h = 0, every reward 0, and L = ln 2: −(1−ε)·log ½ − ε·log ½ = ln 2 for cDPO;
    [(1−ε) − ε]·ln 2/(1 − 2ε) = ln 2 for robust; TDPO with zero KLs (π = π_ref) is DPO."""
    g = torch.Generator().manual_seed(0)
    logps_c = -torch.rand(16, generator=g, dtype=torch.float64) * 50
    logps_r = -torch.rand(16, generator=g, dtype=torch.float64) * 50
    zeros = torch.zeros(16, dtype=torch.float64)
    losses, rc, rr = preference_loss(logps_c, logps_r, logps_c.clone(), logps_r.clone(), beta=beta,
                                     loss_type=loss_type, label_smoothing=eps, chosen_kl=zeros, rejected_kl=zeros)
    torch.testing.assert_close(losses, torch.full_like(losses, LN2), rtol=1e-14, atol=1e-14)
    assert torch.equal(rc, zeros) and torch.equal(rr, zeros)


def test_label_smoothing_behaviour():
    """cDPO is a convex mix: with ε the loss is (1−ε)·L(h) + ε·L(−h), i.e. DPO on the swapped pair with weight ε;
    it is bounded below by a positive constant (no incentive to push βh → ∞); ε = 0.5 makes it h-independent
    up to the symmetric term; robust with ε = 0 is plain DPO, and robust is unbiased: averaging it over a label
    flip with probability ε gives back the clean DPO loss, (1−ε)·L_rob(h) + ε·L_rob(−h) = −log σ(βh)."""
    g = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (-torch.rand(32, generator=g, dtype=torch.float64) * 40 for _ in range(4))
    beta, eps = 0.2, 0.15
    clean, _, _ = preference_loss(pc, pr, rc, rr, beta=beta)
    swapped, _, _ = preference_loss(pr, pc, rr, rc, beta=beta)
    smooth, _, _ = preference_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps)
    torch.testing.assert_close(smooth, (1 - eps) * clean + eps * swapped, rtol=1e-13, atol=1e-13)

    # Large margin: plain DPO → 0, cDPO → grows (≈ ε·βh), i.e. it stops rewarding ever larger margins.
    big = {"policy_chosen_logps": t64(0.0), "policy_rejected_logps": t64(-400.0),
           "reference_chosen_logps": t64(0.0), "reference_rejected_logps": t64(0.0)}
    assert preference_loss(**big, beta=0.1)[0].item() < 1e-15
    assert preference_loss(**big, beta=0.1, label_smoothing=0.1)[0].item() == pytest.approx(0.1 * 40, rel=1e-9)

    robust0, _, _ = preference_loss(pc, pr, rc, rr, beta=beta, loss_type="robust")
    torch.testing.assert_close(robust0, clean, rtol=1e-14, atol=1e-14)
    rob, _, _ = preference_loss(pc, pr, rc, rr, beta=beta, loss_type="robust", label_smoothing=eps)
    rob_flip, _, _ = preference_loss(pr, pc, rr, rc, beta=beta, loss_type="robust", label_smoothing=eps)
    torch.testing.assert_close((1 - eps) * rob + eps * rob_flip, clean, rtol=1e-12, atol=1e-12)


def test_sigmoid_gradient_closed_form():
    """With z = βh:  ∂L/∂π_c = β·[−(1−ε)·σ(−z) + ε·σ(z)] = −∂L/∂π_r, computed here with math."""
    g = torch.Generator().manual_seed(2)
    pc, pr = (-torch.rand(8, generator=g, dtype=torch.float64) * 30 for _ in range(2))
    rc, rr = (-torch.rand(8, generator=g, dtype=torch.float64) * 30 for _ in range(2))
    beta, eps = 0.1, 0.2
    pc.requires_grad_(), pr.requires_grad_()
    preference_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps)[0].sum().backward()
    sig = lambda x: 1 / (1 + math.exp(-x))
    expected = []
    for i in range(8):
        z = beta * ((pc[i].item() - pr[i].item()) - (rc[i].item() - rr[i].item()))
        expected.append(beta * (-(1 - eps) * sig(-z) + eps * sig(z)))
    torch.testing.assert_close(pc.grad, t64(*expected), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(pr.grad, -t64(*expected), rtol=1e-12, atol=1e-14)


def test_tdpo_kl_gradients():
    """z = βh − δ.  TDPO1: ∂L/∂D_c = −β·σ(−z), ∂L/∂D_r = +β·σ(−z) (lower loss = smaller rejected-response KL).
    TDPO2: ∂L/∂D_c = 0 (stop-gradient), ∂L/∂D_r = α·β·σ(−z).  Hand check for the running example, TDPO2:
    z = 0.2, σ(−0.2) = 0.450166, ∂L/∂D_r = 0.5·0.1·0.450166 = 0.022508."""
    for loss_type, alpha in (("tdpo1", 0.7), ("tdpo2", 0.5)):
        kc, kr = t64(0.5).requires_grad_(), t64(2.5).requires_grad_()
        losses, _, _ = preference_loss(**PAIR, beta=0.1, loss_type=loss_type, alpha=alpha, chosen_kl=kc,
                                       rejected_kl=kr)
        losses.sum().backward()
        if loss_type == "tdpo1":
            s = 1 / (1 + math.exp(0.1))  # σ(−z), z = 0.3 − 0.2
            _close(kc.grad, -0.1 * s)
            _close(kr.grad, 0.1 * s)
        else:
            s = 1 / (1 + math.exp(0.2))  # σ(−z), z = 0.3 − 0.1
            assert abs(0.5 * 0.1 * s - 0.022508) < 1e-6
            assert kc.grad is None or torch.equal(kc.grad, t64(0.0))  # no path from D_c to the loss
            _close(kr.grad, 0.5 * 0.1 * s)


def _inputs_for(loss_type: str, n: int, seed: int):
    """Random pairs in the regime where no loss is saturated (hinge βh < 1, IPO h̄ < 1/(2β))."""
    g = torch.Generator().manual_seed(seed)
    rc = -5 - torch.rand(n, generator=g, dtype=torch.float64) * 30
    rr = -5 - torch.rand(n, generator=g, dtype=torch.float64) * 30
    pc = rc + (torch.rand(n, generator=g, dtype=torch.float64) - 0.5)  # log-ratios in ±0.5
    pr = rr + (torch.rand(n, generator=g, dtype=torch.float64) - 0.5)
    extra = {
        "chosen_lengths": torch.randint(1, 30, (n,), generator=g),
        "rejected_lengths": torch.randint(1, 30, (n,), generator=g),
        "chosen_kl": torch.rand(n, generator=g, dtype=torch.float64) * 3,
        "rejected_kl": torch.rand(n, generator=g, dtype=torch.float64) * 3,
    }
    return pc, pr, rc, rr, extra


def _smoothing_for(loss_type: str, wanted: float = 0.1) -> float:
    """A label smoothing the loss accepts: `wanted` where ε means something, else 0 (EXO needs ε > 0)."""
    return wanted if LOSSES[loss_type].label_smoothing is not None else 0.0


# apo_down lowers the chosen likelihood by design, sft ignores the rejected response, and DiscoPOP with a small τ
# is not monotone in h near h = 0 (the blend weight σ(βh/τ) moves faster than either component falls).
MONOTONE = [t for t in LOSS_TYPES if t not in ("apo_down", "sft", "discopop")]


@pytest.mark.parametrize("loss_type", MONOTONE)
def test_loss_falls_when_chosen_logp_rises(loss_type):
    """Every preference loss prefers a likelier chosen and a less likely rejected response: ∂L/∂π_c < 0 < ∂L/∂π_r,
    and a finite step π_c + 0.05 (or π_r − 0.05) lowers every per-pair loss (for the batch-coupled AOT losses,
    whose b-th loss belongs to the b-th sorted margin rather than to pair b, the batch mean)."""
    pc, pr, rc, rr, extra = _inputs_for(loss_type, 24, seed=3)
    kw = dict(beta=0.1, loss_type=loss_type, label_smoothing=_smoothing_for(loss_type), gamma=0.0, **extra)
    pc_, pr_ = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    losses, _, _ = preference_loss(pc_, pr_, rc, rr, **kw)
    losses.sum().backward()
    assert (pc_.grad < 0).all(), pc_.grad
    assert (pr_.grad > 0).all(), pr_.grad
    reduce = (lambda t: t.mean()) if LOSSES[loss_type].batch_coupled else (lambda t: t)
    with torch.no_grad():
        assert (reduce(preference_loss(pc + 0.05, pr, rc, rr, **kw)[0]) < reduce(losses)).all()
        assert (reduce(preference_loss(pc, pr - 0.05, rc, rr, **kw)[0]) < reduce(losses)).all()


def test_apo_down_sft_and_discopop_gradients():
    """The three losses left out above, each checked against its closed-form gradient on the running example
    (r_c = 0.2, r_r = −0.1, β = 0.1; σ'(z) = σ(z)σ(−z)):
    apo_down  ∂L/∂π_c = β·[σ'(r_c) − σ'(r_c − r_r)] = 0.1·(0.247517 − 0.244458) = +0.000306 (it pushes the
              chosen likelihood DOWN), ∂L/∂π_r = β·σ'(0.3) = +0.024446;
    sft       ∂L/∂π_r = 0, ∂L/∂π_c = −1/|y_c| = −1/4;
    discopop  z = 0.3, m = σ(z/τ) with τ = 0.05: ∂L/∂z = m'·(e^{−z} − softplus(−z)) − (1−m)·σ(−z) − m·e^{−z},
              m' = m(1−m)/τ; ∂L/∂π_c = β·∂L/∂z."""
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    dsig = lambda z: sig(z) * sig(-z)  # noqa: E731
    for loss_type, kw in (("apo_down", {}), ("sft", {"chosen_lengths": [4], "rejected_lengths": [2]}),
                          ("discopop", {"discopop_tau": 0.05})):
        pc, pr = t64(-10.0).requires_grad_(), t64(-14.0).requires_grad_()
        losses, _, _ = preference_loss(pc, pr, t64(-12.0), t64(-13.0), beta=0.1, loss_type=loss_type, **kw)
        losses.sum().backward()
        if loss_type == "apo_down":
            assert abs(0.1 * (dsig(0.2) - dsig(0.3)) - 0.000306) < 1e-6
            _close(pc.grad, 0.1 * (dsig(0.2) - dsig(0.3)))
            _close(pr.grad, 0.1 * dsig(0.3))
        elif loss_type == "sft":
            _close(pc.grad, -0.25)
            assert pr.grad is None or torch.equal(pr.grad, t64(0.0))  # no path from π_r to the loss
        else:
            z, tau = 0.3, 0.05
            m = sig(z / tau)
            dm = m * (1 - m) / tau
            dz = dm * (math.exp(-z) - math.log1p(math.exp(-z))) - (1 - m) * sig(-z) - m * math.exp(-z)
            _close(pc.grad, 0.1 * dz)
            _close(pr.grad, -0.1 * dz)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_rewards_carry_graph_and_dtype(loss_type):
    """Rewards are returned with their graph (the loop detaches them for logging); bf16/fp16 in → fp32 out,
    fp64 stays fp64; referenced losses return β·(π − ref), SimPO β·π/|y|."""
    pc, pr, rc, rr, extra = _inputs_for(loss_type, 5, seed=4)
    eps = 0.1 if LOSSES[loss_type].needs_label_smoothing else 0.0
    for dtype, out_dtype in ((torch.bfloat16, torch.float32), (torch.float16, torch.float32),
                             (torch.float32, torch.float32), (torch.float64, torch.float64)):
        pc_ = pc.to(dtype).requires_grad_()
        kl = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in extra.items()}
        losses, rc_out, rr_out = preference_loss(pc_, pr.to(dtype), rc.to(dtype), rr.to(dtype), beta=0.3,
                                                 loss_type=loss_type, label_smoothing=eps, **kl)
        assert losses.dtype == rc_out.dtype == rr_out.dtype == out_dtype
        assert losses.shape == rc_out.shape == rr_out.shape == (5,)
        assert rc_out.requires_grad
    losses, rc_out, rr_out = preference_loss(pc, pr, rc, rr, beta=0.3, loss_type=loss_type, label_smoothing=eps,
                                             **extra)
    if loss_type == "simpo":
        torch.testing.assert_close(rc_out, 0.3 * pc / extra["chosen_lengths"], rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(rr_out, 0.3 * pr / extra["rejected_lengths"], rtol=1e-14, atol=1e-14)
    else:
        torch.testing.assert_close(rc_out, 0.3 * (pc - rc), rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(rr_out, 0.3 * (pr - rr), rtol=1e-14, atol=1e-14)


# --------------------------------------------------------------------------------------------- independent oracle


def _reference_formula(loss_type, b, e, a, gam, pc, pr, rc, rr, lc, lr, kc, kr) -> float:
    """One pair, pure Python: TRL's DPOTrainer/CPOTrainer formulas and the official TDPO `tdpo_loss`, written
    out straight from those sources (logits = log-ratio margin, loss on β·logits)."""
    logits = (pc - rc) - (pr - rr)
    if loss_type == "sigmoid":
        return (1 - e) * nls(b * logits) + e * nls(-b * logits)
    if loss_type == "robust":
        return ((1 - e) * nls(b * logits) - e * nls(-b * logits)) / (1 - 2 * e)
    if loss_type == "ipo":  # TRL: log-ratios averaged over completion tokens, (Δ − 1/(2β))²
        return ((pc - rc) / lc - (pr - rr) / lr - 1 / (2 * b)) ** 2
    if loss_type == "hinge":
        return max(0.0, 1 - b * logits)
    if loss_type == "tdpo1":  # official: logits = margin − (kl_r − kl_c); −logsigmoid(β·logits)
        return nls(b * (logits - (kr - kc)))
    if loss_type == "tdpo2":  # official: logits = margin − α·(kl_r − kl_c.detach())
        return nls(b * (logits - a * (kr - kc)))
    if loss_type == "simpo":  # TRL CPO: logits = avg_c − avg_r − γ/β, label-smoothed sigmoid on β·logits
        z = b * (pc / lc - pr / lr - gam / b)
        return (1 - e) * nls(z) + e * nls(-z)
    sig = lambda z: 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))  # noqa: E731
    rwc, rwr = b * (pc - rc), b * (pr - rr)  # absolute rewards
    if loss_type == "exo_pair":  # EXO Eq. 16, K = 2: KL(q ‖ (1−ε, ε)), q = (σ(βΔ), σ(−βΔ))
        z = b * logits
        return sig(z) * (-nls(z) - math.log(1 - e)) + sig(-z) * (-nls(-z) - math.log(e))
    if loss_type == "nca_pair":
        return nls(rwc) + 0.5 * nls(-rwc) + 0.5 * nls(-rwr)
    if loss_type == "bco_pair":
        return nls(rwc) + nls(-rwr)
    if loss_type == "sppo_hard":  # squared distance of each log-ratio to ±1/(2β)
        return ((pc - rc) - 0.5 / b) ** 2 + ((pr - rr) + 0.5 / b) ** 2
    if loss_type == "apo_zero":
        return 1 - sig(rwc) + sig(rwr)
    if loss_type == "apo_down":
        return sig(rwc) + 1 - sig(rwc - rwr)
    if loss_type == "discopop":  # τ = 0.05, TRL's default
        z = b * logits
        m = sig(z / 0.05)
        return (1 - m) * nls(z) + m * math.exp(-z)
    if loss_type == "sigmoid_norm":
        return nls(b * ((pc - rc) / lc - (pr - rr) / lr))
    raise AssertionError(loss_type)


# sft is one value per batch and the AOT losses sort across the batch: they have hand-worked and TRL tests instead
PER_PAIR = [t for t in LOSS_TYPES if t not in ("sft", "aot", "aot_unpaired")]


@pytest.mark.parametrize("loss_type", PER_PAIR)
@pytest.mark.parametrize("beta,eps", [(0.05, 0.0), (0.1, 0.1), (0.5, 0.3), (2.0, 0.0)])
def test_matches_independent_formulas(loss_type, beta, eps):
    """Random float64 pairs (including saturated ones: log-ratios up to ±20) against `_reference_formula`."""
    if LOSSES[loss_type].label_smoothing is None:
        eps = 0.0
    elif LOSSES[loss_type].needs_label_smoothing and eps == 0:
        eps = 1e-3
    g = torch.Generator().manual_seed(5)
    n = 64
    rc = -torch.rand(n, generator=g, dtype=torch.float64) * 80
    rr = -torch.rand(n, generator=g, dtype=torch.float64) * 80
    pc = rc + (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 40
    pr = rr + (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 40
    lc = torch.randint(1, 60, (n,), generator=g)
    lr = torch.randint(1, 60, (n,), generator=g)
    kc = torch.rand(n, generator=g, dtype=torch.float64) * 6
    kr = torch.rand(n, generator=g, dtype=torch.float64) * 6
    alpha, gamma = 0.7, 0.8
    losses, _, _ = preference_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=eps,
                                   chosen_lengths=lc, rejected_lengths=lr, chosen_kl=kc, rejected_kl=kr,
                                   alpha=alpha, gamma=gamma)
    expected = [_reference_formula(loss_type, beta, eps, alpha, gamma, *(float(t[i]) for t in
                                   (pc, pr, rc, rr, lc, lr, kc, kr))) for i in range(n)]
    torch.testing.assert_close(losses, t64(*expected), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------- TRL itself


class _StandIn(torch.nn.Module):
    """Stands in for a model under TRL's `DPOTrainer._compute_loss`: returns fixed per-token outputs, in TRL's
    layout (position j predicts token j + 1; 0 off the completion, as TRL's fused LM head returns)."""

    is_gradient_checkpointing = False

    def __init__(self, **outputs):
        super().__init__()
        self.outputs = types.SimpleNamespace(**outputs)

    def forward(self, **kwargs):
        return self.outputs


def _random_batch(n_pairs: int, seed: int, dtype=torch.float64) -> dict:
    """Fresh random per-token data for n_pairs pairs: rows 0..B-1 chosen, B..2B-1 rejected (TRL's order).
    Policy log-probs in [−3, 0] per token (a leaf, for gradients), reference = policy ± 0.5 per token (so sequence
    log-ratios spread over about ±3), log Σ_v p_v² in [−2, 0], response lengths 1..12 after prompts of 1..3."""
    g = torch.Generator().manual_seed(seed)
    rows = 2 * n_pairs
    lengths = torch.randint(1, 13, (rows,), generator=g)
    prompts = torch.randint(1, 4, (rows,), generator=g)
    n = int(lengths.sum())
    policy = (-torch.rand(n, generator=g, dtype=torch.float64) * 3).to(dtype).requires_grad_()
    reference = (policy.detach() + (torch.rand(n, generator=g, dtype=torch.float64) - 0.5).to(dtype))
    log_sum_sq = (-torch.rand(n, generator=g, dtype=torch.float64) * 2).to(dtype)
    return {"lengths": lengths, "prompts": prompts, "policy": policy, "reference": reference,
            "log_sum_sq": log_sum_sq, "B": n_pairs}


def _trl_layout(batch: dict, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token (2B, T−1) in TRL's layout, completion_mask (2B, T))."""
    lengths, prompts = batch["lengths"], batch["prompts"]
    t = int((lengths + prompts).max()) + 1
    col = torch.arange(t)[None]
    completion = ((col >= prompts[:, None]) & (col < (prompts + lengths)[:, None])).long()  # (2B, T)
    per_token = torch.zeros(completion.shape[0], t - 1, dtype=values.dtype).masked_scatter(
        completion[:, 1:].bool(), values)
    return per_token, completion


def _left_aligned(batch: dict, values: torch.Tensor) -> torch.Tensor:
    """(2B, L) per-token values, token t of each response in column t, 0 past its length."""
    lengths = batch["lengths"]
    mask = torch.arange(int(lengths.max()))[None] < lengths[:, None]
    return torch.zeros(mask.shape, dtype=values.dtype).masked_scatter(mask, values)


def trl_loss(batch: dict, *, loss_type, beta, label_smoothing=0.0, loss_weights=None, f_divergence="reverse_kl",
             f_alpha=0.5, discopop_tau=0.05, ld_alpha=None, use_weighting=False):
    """TRL 1.16's own `DPOTrainer._compute_loss` on the batch: (loss, mean chosen reward, mean rejected reward).
    The reference runs "online" through a second stand-in, so LD-DPO's reference weighting is TRL's too."""
    dpo_trainer = pytest.importorskip("trl.trainer.dpo_trainer")
    per_token, completion = _trl_layout(batch, batch["policy"])
    rows, width = per_token.shape
    policy = _StandIn(log_probs=per_token, entropy=torch.zeros(rows, width), mean_logits=torch.zeros(rows, width),
                      is_top1=torch.zeros(rows, width, dtype=torch.bool),
                      log_sum_sq_probs=_trl_layout(batch, batch["log_sum_sq"])[0])
    reference = _StandIn(log_probs=_trl_layout(batch, batch["reference"])[0])
    names = loss_type.split(",")
    accelerator = types.SimpleNamespace(device="cpu", gather=lambda x: x, gather_for_metrics=lambda x: x)
    trainer = types.SimpleNamespace(
        model=policy, ref_model=reference, accelerator=accelerator, aux_loss_enabled=False, ld_alpha=ld_alpha,
        precompute_ref_logps=False, f_divergence_type=f_divergence, f_alpha_divergence_coef=f_alpha,
        loss_types=names, loss_weights=list(loss_weights) if loss_weights else [1.0] * len(names), beta=beta,
        label_smoothing=label_smoothing, use_weighting=use_weighting,
        args=types.SimpleNamespace(discopop_tau=discopop_tau, gradient_checkpointing_kwargs=None),
        _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros_like(completion), "attention_mask": torch.ones_like(completion),
              "completion_mask": completion}
    loss = dpo_trainer.DPOTrainer._compute_loss(trainer, policy, inputs, return_outputs=False)
    metrics = trainer._metrics["train"]
    return loss, metrics["rewards/chosen"][0], metrics["rewards/rejected"][0]


def our_loss(batch: dict, *, loss_type, beta, **options):
    """Ours on the same batch: summed log-probs per response (+ left-aligned per-token ones for LD-DPO, summed
    log Σ p² for WPO). Returns (mean loss, mean chosen reward, mean rejected reward)."""
    lengths, b = batch["lengths"], batch["B"]
    owner = torch.repeat_interleave(torch.arange(2 * b), lengths)
    sums = {k: torch.zeros(2 * b, dtype=v.dtype).index_add(0, owner, v)
            for k, v in batch.items() if k in ("policy", "reference", "log_sum_sq")}
    kw = dict(chosen_lengths=lengths[:b], rejected_lengths=lengths[b:])
    if options.get("ld_alpha") is not None:
        pol, ref = _left_aligned(batch, batch["policy"]), _left_aligned(batch, batch["reference"])
        kw.update(policy_chosen_token_logps=pol[:b], policy_rejected_token_logps=pol[b:],
                  reference_chosen_token_logps=ref[:b], reference_rejected_token_logps=ref[b:])
    if options.get("use_weighting"):
        kw.update(chosen_log_sum_sq=sums["log_sum_sq"][:b], rejected_log_sum_sq=sums["log_sum_sq"][b:])
    losses, rc, rr = preference_loss(sums["policy"][:b], sums["policy"][b:], sums["reference"][:b],
                                     sums["reference"][b:], beta=beta, loss_type=loss_type, **kw, **options)
    return losses.mean(), rc.mean().item(), rr.mean().item()


def assert_matches_trl(case: dict, seed: int, n_pairs: int = 6, gradients: bool = True) -> None:
    """Loss, its gradient w.r.t. every policy token log-prob, and the logged rewards, ours vs TRL's, on fresh
    random data. float64 (tolerance 1e-10), except:
    - alpha_divergence: TRL's clamp table has no float64 entry, so those run in float32 (tolerance 2e-5 relative,
      1e-6 absolute; both sides round differently in fp32);
    - exo_pair: TRL makes ε a float32 tensor, so its log ε and log(1 − ε) carry fp32 rounding (≈ 1e-7 relative);
      tolerance 1e-6 relative there (the float64 formula test checks exo_pair at 1e-12)."""
    fp32 = case.get("f_divergence") == "alpha_divergence"
    dtype = torch.float32 if fp32 else torch.float64
    tol = dict(rtol=2e-5, atol=1e-6) if fp32 else dict(rtol=1e-10, atol=1e-12)
    if "exo_pair" in case["loss_type"] and not fp32:
        tol = dict(rtol=1e-6, atol=1e-9)
    batch = _random_batch(n_pairs, seed, dtype)
    trl, trl_rc, trl_rr = trl_loss(batch, **case)
    ours, ours_rc, ours_rr = our_loss(batch, **case)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, trl, **tol)
    if gradients:
        (trl_grad,) = torch.autograd.grad(trl, batch["policy"])
        (our_grad,) = torch.autograd.grad(ours, batch["policy"])
        torch.testing.assert_close(our_grad, trl_grad, **tol)
    assert ours_rc == pytest.approx(trl_rc, rel=tol["rtol"], abs=tol["atol"])
    assert ours_rr == pytest.approx(trl_rr, rel=tol["rtol"], abs=tol["atol"])


# Every loss type TRL 1.16's DPOTrainer has, alone, with the label smoothing it uses (TRL's sigmoid ignores ε; ours
# would apply cDPO, so sigmoid runs at ε = 0 here).
TRL_LOSS_CASES = [
    {"loss_type": "sigmoid", "beta": 0.1},
    {"loss_type": "hinge", "beta": 0.3},
    {"loss_type": "ipo", "beta": 0.2},
    {"loss_type": "exo_pair", "beta": 0.1, "label_smoothing": 1e-3},
    {"loss_type": "exo_pair", "beta": 0.5, "label_smoothing": 0.2},
    {"loss_type": "nca_pair", "beta": 0.1},
    {"loss_type": "robust", "beta": 0.1, "label_smoothing": 0.2},
    {"loss_type": "bco_pair", "beta": 0.2},
    {"loss_type": "sppo_hard", "beta": 0.1},
    {"loss_type": "aot", "beta": 0.1},
    {"loss_type": "aot", "beta": 0.3, "label_smoothing": 0.1},
    {"loss_type": "aot_unpaired", "beta": 0.1, "label_smoothing": 0.2},
    {"loss_type": "apo_zero", "beta": 0.1},
    {"loss_type": "apo_down", "beta": 0.4},
    {"loss_type": "discopop", "beta": 0.1},
    {"loss_type": "discopop", "beta": 0.2, "discopop_tau": 0.3},
    {"loss_type": "sft", "beta": 0.1},
    {"loss_type": "sigmoid_norm", "beta": 0.5},
]


def _case_id(case: dict) -> str:
    return "-".join(f"{v}" for v in case.values())


def test_trl_cases_cover_every_trl_loss_type():
    """The oracle cases cover exactly the loss types TRL's DPOConfig documents (its help lists `'name'`s)."""
    dpo_config = pytest.importorskip("trl.trainer.dpo_config")
    documented = set(re.findall(r"`'(\w+)'`", dpo_config.DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]))
    assert len(documented) == 15
    assert {c["loss_type"] for c in TRL_LOSS_CASES} == documented
    assert documented <= set(LOSS_TYPES)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("case", TRL_LOSS_CASES, ids=_case_id)
def test_matches_trl_dpo_trainer(case, seed):
    """Each TRL loss type against TRL's own DPOTrainer on fresh random batches of 6 pairs: mean loss, gradient
    w.r.t. every policy token log-prob, logged rewards. Skipped only when trl is not installed."""
    assert_matches_trl(case, seed=100 * seed + TRL_LOSS_CASES.index(case))


F_LOSSES = ["sigmoid", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft", "sigmoid_norm"]  # TRL's f-div set
OPTION_CASES = (
    # every f-divergence with every loss TRL accepts it for (ε only where the loss uses it, as TRL)
    [{"loss_type": t, "beta": 0.2, "f_divergence": f, **({"f_alpha": a} if a is not None else {}),
      **({"label_smoothing": 0.1} if t in ("exo_pair", "robust") else {})}
     for t in F_LOSSES
     for f, a in (("forward_kl", None), ("js_divergence", None), ("alpha_divergence", 0.5),
                  ("alpha_divergence", 1.5))]
    # LD-DPO, α = 0 (only the shared length counts) and α = 0.5, on losses of every shape
    + [{"loss_type": t, "beta": 0.1, "ld_alpha": a} for t in ("sigmoid", "ipo", "apo_zero", "sppo_hard", "sft",
                                                              "sigmoid_norm") for a in (0.0, 0.5)]
    # WPO weights on every non-sorting TRL loss but sft: TRL 1.16 multiplies the loss in place
    # (`per_sequence_loss *= weights`), which fails for sft's expanded scalar (and breaks hinge's backward, below)
    + [{"loss_type": t, "beta": 0.1, "use_weighting": True, **({"label_smoothing": 0.1} if t == "exo_pair" else {})}
       for t in ("sigmoid", "ipo", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down",
                 "discopop", "sigmoid_norm")]
    # mixtures: default equal weights, MPO's weights, and everything at once
    + [{"loss_type": "sigmoid,sft", "beta": 0.1},
       {"loss_type": "sigmoid,bco_pair,sft", "beta": 0.1, "loss_weights": [0.8, 0.2, 1.0]},
       {"loss_type": "apo_zero,exo_pair,aot", "beta": 0.3, "loss_weights": [0.5, 2.0, 0.25], "label_smoothing": 0.1},
       {"loss_type": "ipo,sigmoid_norm,discopop", "beta": 0.1, "loss_weights": [1.0, 0.3, 0.7],
        "f_divergence": "js_divergence", "ld_alpha": 0.4, "use_weighting": True, "discopop_tau": 0.2},
       {"loss_type": "sigmoid,sft", "beta": 0.1, "loss_weights": [1.0, 0.5], "f_divergence": "forward_kl",
        "ld_alpha": 0.3}]
)


@pytest.mark.parametrize("case", OPTION_CASES, ids=_case_id)
def test_options_match_trl_dpo_trainer(case):
    """f_divergence (+ f_alpha), ld_alpha, use_weighting and weighted mixtures against TRL's DPOTrainer, the same
    checks as above on a fresh random batch of 5 pairs per case."""
    assert_matches_trl(case, seed=1000 + OPTION_CASES.index(case), n_pairs=5)


def test_hinge_with_wpo_matches_trl_forward():
    """hinge + WPO: TRL 1.16's in-place `per_sequence_loss *= weights` overwrites the ReLU output its backward
    needs, so TRL cannot differentiate it; the loss values still agree (ours also has the gradient, checked by
    hand in test_loss_mixtures.py)."""
    for seed in (0, 1):
        assert_matches_trl({"loss_type": "hinge", "beta": 0.1, "use_weighting": True}, seed=2000 + seed,
                           gradients=False)


def test_matches_trl_cpo_loss():
    """TRL's CPOTrainer.cpo_loss (a pure function of log-probs) as an oracle: fed the log-ratios π − ref it is
    DPO's sigmoid with cDPO smoothing and hinge; fed per-token means of π it is SimPO with γ (and our SimPO
    rewards are its β·π/|y|). Skipped only when trl is not installed."""
    cpo = pytest.importorskip("trl.experimental.cpo")
    g = torch.Generator().manual_seed(7)
    n = 32
    rc, rr = (-torch.rand(n, generator=g, dtype=torch.float64) * 60 for _ in range(2))
    pc, pr = (r + (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 30 for r in (rc, rr))
    lc, lr = (torch.randint(1, 40, (n,), generator=g) for _ in range(2))
    accelerator = types.SimpleNamespace(device="cpu")
    for loss_type, beta, eps, gamma in (("sigmoid", 0.1, 0.2, 0.0), ("hinge", 0.3, 0.0, 0.0),
                                        ("simpo", 2.0, 0.0, 1.0), ("simpo", 2.5, 0.1, 0.7)):
        trainer = types.SimpleNamespace(alpha=0.0, loss_type=loss_type, beta=beta, label_smoothing=eps,
                                        simpo_gamma=gamma, accelerator=accelerator)
        if loss_type == "simpo":
            trl_losses, trl_rc, trl_rr = cpo.CPOTrainer.cpo_loss(trainer, pc / lc, pr / lr)
        else:
            trl_losses, _, _ = cpo.CPOTrainer.cpo_loss(trainer, pc - rc, pr - rr)
        losses, ours_rc, ours_rr = preference_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type,
                                                   label_smoothing=eps, gamma=gamma, chosen_lengths=lc,
                                                   rejected_lengths=lr)
        torch.testing.assert_close(losses, trl_losses, rtol=1e-12, atol=1e-12)
        if loss_type == "simpo":
            torch.testing.assert_close(ours_rc, trl_rc, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(ours_rr, trl_rr, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------- errors


def test_unknown_loss_type_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown loss_type 'kto'.*sigmoid, robust, ipo, hinge, tdpo1, tdpo2, simpo"):
        preference_loss(**PAIR, loss_type="kto")


@pytest.mark.parametrize("loss_type,missing", [
    ("ipo", "chosen_lengths and rejected_lengths"), ("simpo", "chosen_lengths and rejected_lengths"),
    ("tdpo1", "chosen_kl and rejected_kl"), ("tdpo2", "chosen_kl and rejected_kl")])
def test_missing_required_inputs_are_named(loss_type, missing):
    with pytest.raises(ValueError, match=f"loss_type '{loss_type}' needs {missing}"):
        preference_loss(**PAIR, loss_type=loss_type)
    one = {"ipo": {"chosen_lengths": [3]}, "simpo": {"chosen_lengths": [3]},
           "tdpo1": {"chosen_kl": t64(0.1)}, "tdpo2": {"chosen_kl": t64(0.1)}}[loss_type]
    with pytest.raises(ValueError, match=f"needs {missing.split(' and ')[1]}$"):
        preference_loss(**PAIR, loss_type=loss_type, **one)


def test_reference_required_except_for_simpo():
    with pytest.raises(ValueError, match="needs reference_chosen_logps and reference_rejected_logps"):
        preference_loss(t64(-1.0), t64(-2.0), None, None)
    with pytest.raises(ValueError, match="needs reference_rejected_logps"):
        preference_loss(t64(-1.0), t64(-2.0), t64(-1.0), None, loss_type="hinge")


def test_bad_shapes_values_and_options():
    with pytest.raises(ValueError, match=r"reference_chosen_logps has 2 entries but policy_chosen_logps has 1"):
        preference_loss(t64(-1.0), t64(-2.0), t64(-1.0, -3.0), t64(-2.0))
    with pytest.raises(ValueError, match=r"policy_chosen_logps must have shape \[B\].*\(2, 3\)"):
        preference_loss(torch.zeros(2, 3), torch.zeros(2), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="policy_rejected_logps must be a floating-point tensor"):
        preference_loss(t64(-1.0), torch.tensor([2]), t64(-1.0), t64(-2.0))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        preference_loss([-1.0], t64(-2.0), t64(-1.0), t64(-2.0))
    with pytest.raises(ValueError, match="beta must be > 0"):
        preference_loss(**PAIR, beta=0.0)
    with pytest.raises(ValueError, match=r"\[0, 0.5\) for 'robust'"):
        preference_loss(**PAIR, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match=r"\[0, 0.5\] for 'sigmoid'"):
        preference_loss(**PAIR, label_smoothing=0.7)
    with pytest.raises(ValueError, match="label_smoothing=0.1 has no meaning for loss_type 'hinge'"):
        preference_loss(**PAIR, loss_type="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="chosen_lengths must be > 0"):
        preference_loss(**PAIR, loss_type="ipo", chosen_lengths=[0], rejected_lengths=[2])
    with pytest.raises(ValueError, match=r"rejected_lengths must have shape \[1\]"):
        preference_loss(**PAIR, loss_type="ipo", chosen_lengths=[1], rejected_lengths=[2, 3])
    with pytest.raises(ValueError, match="rejected_kl has 2 entries"):
        preference_loss(**PAIR, loss_type="tdpo1", chosen_kl=t64(0.1), rejected_kl=t64(0.1, 0.2))
    with pytest.raises(ValueError, match="chosen_lengths must be > 0"):
        sft_loss(t64(-1.0), torch.tensor([0]))
