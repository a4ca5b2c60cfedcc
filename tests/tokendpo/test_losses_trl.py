"""Tests for tokendpo/losses.py against TRL's own code: when `trl` is importable, TRL 1.16's
DPOTrainer._compute_loss (every loss type, the f-divergences, LD-DPO, WPO weights and mixtures, on fresh random
batches: loss, gradient and logged rewards) and CPOTrainer.cpo_loss (sigmoid, hinge, SimPO).
The hand-worked TRL-oracle checks of the mixtures and options are in tests/tokendpo/test_loss_mixtures.py.
"""

import re
import types
from collections import defaultdict

import pytest
import torch

from tokendpo.losses import LOSS_TYPES, preference_loss


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
