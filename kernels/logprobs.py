"""Selected-token log-probs from hidden states and the LM-head weight, without the N×V logits.

    token_logprobs(h, W, t)[n] = log softmax(h·Wᵀ + b)[n, t_n]      (0.0 where t_n == ignore_index)

is all DPO needs from the LM head. Heads that transform their logits (Gemma-2's soft-cap, Cohere's and
Granite's scales, a sampling temperature) are keyword options: the softmax then sees

    y = c·tanh(s·z/c) / T  (softcap=c, logit_scale=s, temperature=T),  y = s·z/T without a cap,  z = h·Wᵀ + b

(kernels.head.LogitHead). `token_stats` adds, from the same pass and behind flags, per token:

    entropy       −Σ_v π_v·log π_v                            differentiable
    kl            Σ_v π_ref,v·(log π_ref,v − log π_v)         differentiable in π; needs the reference's h, W (TDPO)
    log_sum_sq    log Σ_v π_v²                                no gradient (WPO's weight)
    mean_logit    (1/V)·Σ_v y_v                               no gradient (the logged `logits/*`)
    is_top1       argmax_v y_v == target (first max wins)     bool

Three implementations behind one signature, chosen in one place (`resolve_impl`):
  naive   — kernels.logprobs_naive: full logits + float32 log_softmax + gather; the spec and oracle;
  chunked — kernels.logprobs_chunked: tiles with an online log-sum-exp, backward recomputes per tile;
  triton  — kernels.logprobs_triton: fused forward/backward kernels (CUDA, or TRITON_INTERPRET=1 in tests).
"""

from typing import NamedTuple, Optional

import torch

from kernels.head import LogitHead
from kernels.logprobs_chunked import chunked_token_stats
from kernels.logprobs_naive import naive_token_stats

IMPLS = ("auto", "naive", "chunked", "triton")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class TokenStats(NamedTuple):
    """Per-token outputs, each [N] float32 (float64 for float64 inputs; is_top1 bool), 0.0 / False at ignored
    positions."""

    logps: torch.Tensor
    entropy: Optional[torch.Tensor]  # None unless entropy=True
    kl: Optional[torch.Tensor]  # None unless ref_hidden/ref_weight are given
    log_sum_sq: Optional[torch.Tensor] = None  # None unless log_sum_sq=True
    mean_logit: Optional[torch.Tensor] = None  # None unless mean_logit=True
    is_top1: Optional[torch.Tensor] = None  # None unless is_top1=True


def resolve_impl(impl: str, hidden: torch.Tensor) -> str:
    """The one place an implementation is chosen: auto = triton for CUDA tensors, chunked otherwise."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "triton" if hidden.is_cuda else "chunked"
    return impl


def _check_pair(name_h, h, name_w, w, name_b, b, n):
    if h.dim() != 2:
        raise ValueError(f"{name_h} must be 2-D [N, H], got shape {tuple(h.shape)}")
    if w.dim() != 2:
        raise ValueError(f"{name_w} must be 2-D [V, H], got shape {tuple(w.shape)}")
    if h.shape[0] != n:
        raise ValueError(f"{name_h} has {h.shape[0]} rows but targets has {n}")
    if h.shape[1] != w.shape[1]:
        raise ValueError(f"{name_h} [N, H={h.shape[1]}] and {name_w} [V, H={w.shape[1]}] disagree on H")
    if h.dtype not in _FLOAT_DTYPES or w.dtype != h.dtype:
        raise ValueError(f"{name_h} and {name_w} must share one dtype of {_FLOAT_DTYPES}, "
                         f"got {h.dtype} and {w.dtype}")
    if b is not None and (b.dim() != 1 or b.shape[0] != w.shape[0] or not b.is_floating_point()):
        raise ValueError(f"{name_b} must be a floating [V={w.shape[0]}] tensor, got {b.dtype} {tuple(b.shape)}")
    for name, t in ((name_w, w), (name_b, b)):
        if t is not None and t.device != h.device:
            raise ValueError(f"{name} is on {t.device} but {name_h} is on {h.device}")


def _validate(hidden, weight, targets, bias, ignore_index, ref_hidden, ref_weight, ref_bias):
    if not isinstance(targets, torch.Tensor) or targets.dim() != 1 or targets.is_floating_point():
        raise ValueError(f"targets must be a 1-D integer tensor [N], got "
                         f"{getattr(targets, 'dtype', type(targets))} {tuple(getattr(targets, 'shape', ()))}")
    n = targets.shape[0]
    _check_pair("hidden", hidden, "weight", weight, "bias", bias, n)
    if targets.device != hidden.device:
        raise ValueError(f"targets is on {targets.device} but hidden is on {hidden.device}")
    if (ref_hidden is None) != (ref_weight is None):
        raise ValueError("the KL needs both ref_hidden and ref_weight (or neither)")
    if ref_bias is not None and ref_weight is None:
        raise ValueError("ref_bias given without ref_hidden/ref_weight")
    if ref_hidden is not None:
        _check_pair("ref_hidden", ref_hidden, "ref_weight", ref_weight, "ref_bias", ref_bias, n)
        if ref_weight.shape[0] != weight.shape[0]:
            raise ValueError(f"ref_weight has V={ref_weight.shape[0]} rows but weight has V={weight.shape[0]}")
        if ref_hidden.device != hidden.device:
            raise ValueError(f"ref_hidden is on {ref_hidden.device} but hidden is on {hidden.device}")
    vocab = weight.shape[0]
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
    if n and bool(bad.any()):  # one device sync; a bad index would otherwise read out of bounds
        first = int(bad.nonzero()[0, 0])
        raise ValueError(f"targets[{first}] = {int(targets[first])} is outside [0, {vocab}) "
                         f"and is not ignore_index={ignore_index}")


def token_stats(hidden, weight, targets, *, bias=None, ignore_index=-100, entropy=False,
                ref_hidden=None, ref_weight=None, ref_bias=None, impl="auto", softcap=None, logit_scale=1.0,
                temperature=1.0, ref_head=None, log_sum_sq=False, mean_logit=False,
                is_top1=False) -> TokenStats:
    """Selected-token log-probs, plus optional per-token statistics, in one pass (see the module docstring).

    hidden [N, H], weight [V, H], targets [N] (integer), bias [V] or None; softcap / logit_scale / temperature
    transform the logits (y = c·tanh(s·z/c)/T). With `entropy=True` also −Σ_v π log π; with ref_hidden [N, H_ref]
    and ref_weight [V, H_ref] (ref_bias [V] optional; ref_head: the reference's LogitHead, default none) also
    Σ_v π_ref·(log π_ref − log π); with log_sum_sq / mean_logit / is_top1 those. logps, entropy and kl are
    differentiable w.r.t. hidden, weight and bias; the reference side is a constant (no gradient flows to it).
    Every output is 0.0 (False) where targets == ignore_index.
    """
    _validate(hidden, weight, targets, bias, ignore_index, ref_hidden, ref_weight, ref_bias)
    LogitHead(softcap, logit_scale, temperature)  # validates the transform: a clear ValueError
    if ref_head is not None and not isinstance(ref_head, LogitHead):
        raise ValueError(f"ref_head must be a kernels.LogitHead or None, got {type(ref_head).__name__}")
    targets = targets.long()
    kwargs = dict(bias=bias, ignore_index=ignore_index, entropy=entropy,
                  ref_hidden=ref_hidden, ref_weight=ref_weight, ref_bias=ref_bias, softcap=softcap,
                  logit_scale=logit_scale, temperature=temperature, ref_head=ref_head, log_sum_sq=log_sum_sq,
                  mean_logit=mean_logit, is_top1=is_top1)
    impl = resolve_impl(impl, hidden)
    if impl == "naive":
        return TokenStats(*naive_token_stats(hidden, weight, targets, **kwargs))
    if impl == "chunked":
        return TokenStats(*chunked_token_stats(hidden, weight, targets, **kwargs))
    from kernels.logprobs_triton import triton_token_stats  # imports triton only when asked for

    return TokenStats(*triton_token_stats(hidden, weight, targets, **kwargs))


def token_logprobs(hidden, weight, targets, *, bias=None, ignore_index=-100, impl="auto", softcap=None,
                   logit_scale=1.0, temperature=1.0) -> torch.Tensor:
    """[N] log softmax(y)[target], 0.0 where target == ignore_index, with y = hidden·weightᵀ + bias when the
    options are off, else y = c·tanh(s·z/c)/T (softcap=c; without it s·z/T), z = hidden·weightᵀ + bias.

    hidden [N, H], weight [V, H], targets [N]; float32 out for fp32/bf16/fp16 inputs, float64 for float64.
    impl: "auto" (triton on CUDA, chunked otherwise), "naive", "chunked" or "triton".
    """
    return token_stats(hidden, weight, targets, bias=bias, ignore_index=ignore_index, impl=impl, softcap=softcap,
                       logit_scale=logit_scale, temperature=temperature).logps
