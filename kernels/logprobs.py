"""Selected-token log-probs from hidden states and the LM-head weight, without the N×V logits.

    token_logprobs(h, W, t)[n] = log softmax(h·Wᵀ + b)[n, t_n]      (0.0 where t_n == ignore_index)

is all DPO needs from the LM head. `token_stats` adds, from the same pass and behind flags, the entropy of
π and the forward KL Σ_v π_ref·(log π_ref − log π) given the reference's hidden states and head (TDPO).

Three implementations behind one signature, chosen in one place (`resolve_impl`):
  naive   — kernels.logprobs_naive: full logits + float32 log_softmax + gather; the spec and oracle;
  chunked — kernels.logprobs_chunked: tiles with an online log-sum-exp, backward recomputes per tile;
  triton  — kernels.logprobs_triton: fused forward/backward kernels (CUDA, or TRITON_INTERPRET=1 in tests).
"""

from typing import NamedTuple, Optional

import torch

from kernels.logprobs_chunked import chunked_token_stats
from kernels.logprobs_naive import naive_token_stats

IMPLS = ("auto", "naive", "chunked", "triton")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class TokenStats(NamedTuple):
    """Per-token outputs, each [N] float32 (float64 for float64 inputs), 0.0 at ignored positions."""

    logps: torch.Tensor
    entropy: Optional[torch.Tensor]  # None unless entropy=True
    kl: Optional[torch.Tensor]  # None unless ref_hidden/ref_weight are given


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
                ref_hidden=None, ref_weight=None, ref_bias=None, impl="auto") -> TokenStats:
    """Selected-token log-probs, plus optional per-token entropy and forward KL, in one pass.

    hidden [N, H], weight [V, H], targets [N] (integer), bias [V] or None. With `entropy=True` also
    −Σ_v π log π; with ref_hidden [N, H_ref] and ref_weight [V, H_ref] (ref_bias [V] optional) also
    Σ_v π_ref·(log π_ref − log π). All differentiable w.r.t. hidden, weight and bias; the reference side is
    a constant (no gradient flows to it). Every output is 0.0 where targets == ignore_index.
    """
    _validate(hidden, weight, targets, bias, ignore_index, ref_hidden, ref_weight, ref_bias)
    targets = targets.long()
    kwargs = dict(bias=bias, ignore_index=ignore_index, entropy=entropy,
                  ref_hidden=ref_hidden, ref_weight=ref_weight, ref_bias=ref_bias)
    impl = resolve_impl(impl, hidden)
    if impl == "naive":
        return TokenStats(*naive_token_stats(hidden, weight, targets, **kwargs))
    if impl == "chunked":
        return TokenStats(*chunked_token_stats(hidden, weight, targets, **kwargs))
    from kernels.logprobs_triton import triton_token_stats  # imports triton only when asked for

    return TokenStats(*triton_token_stats(hidden, weight, targets, **kwargs))


def token_logprobs(hidden, weight, targets, *, bias=None, ignore_index=-100, impl="auto") -> torch.Tensor:
    """[N] log softmax(hidden·weightᵀ + bias)[target], 0.0 where target == ignore_index.

    hidden [N, H], weight [V, H], targets [N]; float32 out for fp32/bf16/fp16 inputs, float64 for float64.
    impl: "auto" (triton on CUDA, chunked otherwise), "naive", "chunked" or "triton".
    """
    return token_stats(hidden, weight, targets, bias=bias, ignore_index=ignore_index, impl=impl).logps
