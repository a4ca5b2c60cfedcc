"""Tests for tokendpo/losses.py: properties every loss must have (π = π_ref gives ln 2, label smoothing is a
convex mix, losses fall as the chosen likelihood rises), closed-form gradients, rewards' graph and dtype, and a
scalar pure-Python reimplementation of TRL's and the TDPO authors' formulas on random float64 inputs (none of them
the code under test).
"""

import math

import pytest
import torch

from tests.tokendpo.loss_cases import PAIR, _close, nls, t64
from tokendpo.losses import LOSS_TYPES, LOSSES, preference_loss

LN2 = math.log(2.0)


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
