"""Naive selected-token log-probs: the spec, the test oracle and the baseline.

For hidden states h [N, H], LM-head weight W [V, H], optional bias b [V] and targets t [N]:

    z       = h·Wᵀ + b                                   # (N, V) logits, materialised here
    logp_n  = z[n, t_n] − logsumexp_v z[n, v]
    ent_n   = −Σ_v π_n(v)·log π_n(v)                      # entropy of the policy, π = softmax(z)
    kl_n    = Σ_v π_ref,n(v)·(log π_ref,n(v) − log π_n(v))  # forward KL, π_ref = softmax(h_ref·W_refᵀ + b_ref)

Every output is 0.0 where t_n == ignore_index. Math in float32 for fp32/bf16/fp16 inputs, in float64 for
float64 inputs. Gradients come from autograd; the reference side (h_ref, W_ref, b_ref) is a constant.
These functions materialise N×V tensors on purpose: they are what the fused paths must equal.
"""

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (the oracle); every other floating dtype computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _log_softmax(hidden, weight, bias, cdt):
    logits = hidden.to(cdt) @ weight.to(cdt).T  # (N, V)
    if bias is not None:
        logits = logits + bias.to(cdt)
    return torch.log_softmax(logits, dim=-1)  # (N, V)


def naive_token_stats(hidden, weight, targets, *, bias=None, ignore_index=-100, entropy=False,
                      ref_hidden=None, ref_weight=None, ref_bias=None):
    """(logps [N], entropy [N] or None, kl [N] or None) through full N×V log-softmax tensors."""
    cdt = compute_dtype(hidden.dtype)
    keep = targets != ignore_index  # (N,)
    zero = torch.zeros((), dtype=cdt, device=hidden.device)
    logp_all = _log_softmax(hidden, weight, bias, cdt)  # (N, V)
    safe_targets = torch.where(keep, targets, torch.zeros_like(targets))
    logps = torch.where(keep, logp_all.gather(1, safe_targets[:, None])[:, 0], zero)
    ent = None
    if entropy:
        ent = torch.where(keep, -(logp_all.exp() * logp_all).sum(-1), zero)
    kl = None
    if ref_hidden is not None:
        ref_bias = None if ref_bias is None else ref_bias.detach()
        ref_logp = _log_softmax(ref_hidden.detach(), ref_weight.detach(), ref_bias, cdt)  # (N, V)
        kl = torch.where(keep, (ref_logp.exp() * (ref_logp - logp_all)).sum(-1), zero)
    return logps, ent, kl


def naive_token_logprobs(hidden, weight, targets, *, bias=None, ignore_index=-100):
    """log softmax(hidden·weightᵀ + bias)[target] per token, 0.0 at ignore_index; see the module docstring."""
    return naive_token_stats(hidden, weight, targets, bias=bias, ignore_index=ignore_index)[0]
