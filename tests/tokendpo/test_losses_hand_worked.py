"""Tests for tokendpo/losses.py: every loss type hand-worked on the running example (docstrings show the
arithmetic; the test recomputes it with `math`).

The other oracles are in the sibling files: closed-form gradients, properties and a scalar pure-Python
reimplementation of TRL's and the TDPO authors' formulas (test_losses_properties.py), TRL's own
DPOTrainer/CPOTrainer code (test_losses_trl.py), and the refusals (test_losses_errors.py).
"""

import math

import torch

from tests.tokendpo.loss_cases import PAIR, _close, nls, t64
from tokendpo.losses import preference_loss, sft_loss


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
