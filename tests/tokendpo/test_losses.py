"""Tests for tokendpo/losses.py.

Oracles, none of them the code under test: hand-worked numbers (docstrings show the arithmetic; the test
recomputes it with `math`), closed-form gradients, a scalar pure-Python reimplementation of TRL's and the TDPO
authors' formulas on random float64 inputs, and — when `trl` is importable — TRL's own DPOTrainer/CPOTrainer code.
"""

import math
import types
from collections import defaultdict

import pytest
import torch

from tokendpo.losses import LOSS_TYPES, preference_loss, sft_loss

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


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_falls_when_chosen_logp_rises(loss_type):
    """Every loss prefers a likelier chosen and a less likely rejected response: ∂L/∂π_c < 0 < ∂L/∂π_r, and a
    finite step π_c + 0.05 (or π_r − 0.05) lowers every per-pair loss."""
    pc, pr, rc, rr, extra = _inputs_for(loss_type, 24, seed=3)
    eps = 0.1 if loss_type in ("sigmoid", "robust", "simpo") else 0.0
    kw = dict(beta=0.1, loss_type=loss_type, label_smoothing=eps, gamma=0.0, **extra)
    pc_, pr_ = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    losses, _, _ = preference_loss(pc_, pr_, rc, rr, **kw)
    losses.sum().backward()
    assert (pc_.grad < 0).all(), pc_.grad
    assert (pr_.grad > 0).all(), pr_.grad
    with torch.no_grad():
        assert (preference_loss(pc + 0.05, pr, rc, rr, **kw)[0] < losses).all()
        assert (preference_loss(pc, pr - 0.05, rc, rr, **kw)[0] < losses).all()


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_rewards_carry_graph_and_dtype(loss_type):
    """Rewards are returned with their graph (the loop detaches them for logging); bf16/fp16 in → fp32 out,
    fp64 stays fp64; referenced losses return β·(π − ref), SimPO β·π/|y|."""
    pc, pr, rc, rr, extra = _inputs_for(loss_type, 5, seed=4)
    for dtype, out_dtype in ((torch.bfloat16, torch.float32), (torch.float16, torch.float32),
                             (torch.float32, torch.float32), (torch.float64, torch.float64)):
        pc_ = pc.to(dtype).requires_grad_()
        kl = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in extra.items()}
        losses, rc_out, rr_out = preference_loss(pc_, pr.to(dtype), rc.to(dtype), rr.to(dtype), beta=0.3,
                                                 loss_type=loss_type, **kl)
        assert losses.dtype == rc_out.dtype == rr_out.dtype == out_dtype
        assert losses.shape == rc_out.shape == rr_out.shape == (5,)
        assert rc_out.requires_grad
    losses, rc_out, rr_out = preference_loss(pc, pr, rc, rr, beta=0.3, loss_type=loss_type, **extra)
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
    raise AssertionError(loss_type)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("beta,eps", [(0.05, 0.0), (0.1, 0.1), (0.5, 0.3), (2.0, 0.0)])
def test_matches_independent_formulas(loss_type, beta, eps):
    """Random float64 pairs (including saturated ones: log-ratios up to ±20) against `_reference_formula`."""
    if eps and loss_type not in ("sigmoid", "robust", "simpo"):
        eps = 0.0
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


def _trl_dpo_trainer_loss(DPOTrainer, loss_type, beta, eps, pc, pr, rc, rr, lc, lr):
    """Run TRL's own `DPOTrainer._compute_loss` (trl 1.x, where the loss lives inline, not in `dpo_loss`) on one
    pair. A stand-in model returns per-token log-probs that sum to pc/pr over completions of lc/lr tokens; the
    reference log-probs go in precomputed. Returns (loss, rewards/chosen, rewards/rejected)."""
    T = max(lc, lr) + 1
    per_token = torch.zeros(2, T - 1, dtype=torch.float64)  # position j predicts token j + 1
    completion_mask = torch.zeros(2, T, dtype=torch.long)
    for row, (total, n) in enumerate(((pc, lc), (pr, lr))):
        per_token[row, :n] = total / n
        completion_mask[row, 1:1 + n] = 1
    outputs = types.SimpleNamespace(log_probs=per_token, entropy=torch.zeros(2, T - 1),
                                    mean_logits=torch.zeros(2, T - 1), is_top1=torch.zeros(2, T - 1, dtype=torch.bool))

    def model(**kwargs):
        return outputs

    model.training = True
    accelerator = types.SimpleNamespace(device="cpu", gather=lambda x: x, gather_for_metrics=lambda x: x)
    trainer = types.SimpleNamespace(
        model=model, accelerator=accelerator, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=eps,
        use_weighting=False, _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(2, T, dtype=torch.long), "attention_mask": torch.ones(2, T, dtype=torch.long),
              "completion_mask": completion_mask, "ref_chosen_logps": t64(rc), "ref_rejected_logps": t64(rr)}
    loss = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    metrics = trainer._metrics["train"]
    return float(loss), metrics["rewards/chosen"][0], metrics["rewards/rejected"][0]


def test_matches_trl_dpo_trainer():
    """sigmoid (ε = 0: trl 1.x dropped cDPO smoothing from `sigmoid`), robust, hinge, ipo against TRL's
    DPOTrainer on random pairs, losses and logged rewards. Skipped only when trl is not installed."""
    dpo_trainer = pytest.importorskip("trl.trainer.dpo_trainer")
    g = torch.Generator().manual_seed(6)
    for loss_type, eps in (("sigmoid", 0.0), ("robust", 0.2), ("hinge", 0.0), ("ipo", 0.0)):
        for _ in range(6):
            rc, rr = (-float(torch.rand(1, generator=g)) * 60 for _ in range(2))
            pc, pr = (r + (float(torch.rand(1, generator=g)) - 0.5) * 20 for r in (rc, rr))
            lc, lr = (int(torch.randint(1, 25, (1,), generator=g)) for _ in range(2))
            beta = float(torch.rand(1, generator=g)) * 0.5 + 0.05
            trl_loss, trl_rc, trl_rr = _trl_dpo_trainer_loss(dpo_trainer.DPOTrainer, loss_type, beta, eps,
                                                             pc, pr, rc, rr, lc, lr)
            losses, ours_rc, ours_rr = preference_loss(t64(pc), t64(pr), t64(rc), t64(rr), beta=beta,
                                                       loss_type=loss_type, label_smoothing=eps,
                                                       chosen_lengths=[lc], rejected_lengths=[lr])
            assert losses.item() == pytest.approx(trl_loss, rel=1e-9, abs=1e-12), loss_type
            assert ours_rc.item() == pytest.approx(trl_rc, rel=1e-9, abs=1e-12)
            assert ours_rr.item() == pytest.approx(trl_rr, rel=1e-9, abs=1e-12)


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
