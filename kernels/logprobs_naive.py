"""Naive selected-token log-probs: the spec, the test oracle and the baseline.

For hidden states h [N, H], LM-head weight W [V, H], optional bias b [V], targets t [N] and a final-logit
transform (kernels.head.LogitHead: scale s, soft-cap c, temperature T):

    z        = h·Wᵀ + b                                  # (N, V) raw logits, materialised here
    y        = c·tanh(s·z/c) / T   (or s·z/T uncapped)   # the logits the softmax sees
    logp_n   = y[n, t_n] − logsumexp_v y[n, v]
    ent_n    = −Σ_v π_n(v)·log π_n(v)                      # entropy of the policy, π = softmax(y)
    kl_n     = Σ_v π_ref,n(v)·(log π_ref,n(v) − log π_n(v))  # forward KL, π_ref = softmax(y_ref), y_ref from
                                                           # h_ref, W_ref, b_ref through the reference's head
    lsq_n    = log Σ_v π_n(v)²                            # WPO's weight; detached
    mean_n   = (1/V)·Σ_v y[n, v]                          # mean logit; detached
    top1_n   = argmax_v y[n, v] == t_n                    # first maximum wins ties; bool

Every output is 0.0 (False) where t_n == ignore_index. Math in float32 for fp32/bf16/fp16 inputs, in float64
for float64 inputs. Gradients come from autograd through logp, ent and kl; lsq, mean and top1 carry none (they
weight or describe a loss, as in TRL), and the reference side (h_ref, W_ref, b_ref) is a constant.
These functions materialise N×V tensors on purpose: they are what the fused paths must equal.
"""

import torch

from kernels.head import LogitHead


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (the oracle); every other floating dtype computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _logits(hidden, weight, bias, head, cdt):
    z = hidden.to(cdt) @ weight.to(cdt).T  # (N, V)
    if bias is not None:
        z = z + bias.to(cdt)
    return head.apply(z)  # (N, V)


def naive_token_stats(hidden, weight, targets, *, bias=None, ignore_index=-100, entropy=False,
                      ref_hidden=None, ref_weight=None, ref_bias=None, softcap=None, logit_scale=1.0,
                      temperature=1.0, ref_head=None, log_sum_sq=False, mean_logit=False, is_top1=False):
    """(logps, entropy, kl, log_sum_sq, mean_logit, is_top1), each [N] or None when not asked for, through full
    N×V tensors. ref_head: the reference's LogitHead (None: the plain h·Wᵀ + b)."""
    head = LogitHead(softcap, logit_scale, temperature)
    cdt = compute_dtype(hidden.dtype)
    keep = targets != ignore_index  # (N,)
    zero = torch.zeros((), dtype=cdt, device=hidden.device)
    y = _logits(hidden, weight, bias, head, cdt)  # (N, V)
    logp_all = torch.log_softmax(y, dim=-1)  # (N, V)
    safe_targets = torch.where(keep, targets, torch.zeros_like(targets))
    logps = torch.where(keep, logp_all.gather(1, safe_targets[:, None])[:, 0], zero)
    ent = torch.where(keep, -(logp_all.exp() * logp_all).sum(-1), zero) if entropy else None
    kl = None
    if ref_hidden is not None:
        ref_bias = None if ref_bias is None else ref_bias.detach()
        ref_y = _logits(ref_hidden.detach(), ref_weight.detach(), ref_bias, ref_head or LogitHead(), cdt)
        ref_logp = torch.log_softmax(ref_y, dim=-1)  # (N, V)
        kl = torch.where(keep, (ref_logp.exp() * (ref_logp - logp_all)).sum(-1), zero)
    lsq = mean = top1 = None
    with torch.no_grad():
        if log_sum_sq:
            lsq = torch.where(keep, torch.logsumexp(2 * logp_all, dim=-1), zero)
        if mean_logit:
            mean = torch.where(keep, y.mean(-1), zero)
        if is_top1:
            top1 = keep & (y.argmax(-1) == safe_targets)
    return logps, ent, kl, lsq, mean, top1


def naive_token_logprobs(hidden, weight, targets, *, bias=None, ignore_index=-100, softcap=None,
                         logit_scale=1.0, temperature=1.0):
    """log softmax(y)[target] per token, y the transformed logits, 0.0 at ignore_index; see the module docstring."""
    return naive_token_stats(hidden, weight, targets, bias=bias, ignore_index=ignore_index, softcap=softcap,
                             logit_scale=logit_scale, temperature=temperature)[0]
