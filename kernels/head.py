"""The final-logit transform of an LM head: scale, soft-cap, temperature.

Many models do not take log softmax(h·Wᵀ + b) directly: Cohere multiplies the logits by `logit_scale`, Granite
divides them by `logits_scaling`, Gemma-2/3 soft-cap them, and sampling or distillation divides them by a
temperature. Every log-prob kernel takes the transform

    z = h·Wᵀ + b                                   # raw logits
    y = c·tanh(s·z / c) / T      (softcap c)       # the logits the model's softmax sees
    y = s·z / T                  (no softcap)

in that order (scale inside the cap, temperature outside, as transformers' modeling code and TRL apply them).
The fused kernels write it as y = β·g(α·z) with g = tanh (soft-capped) or the identity, so one code path serves
both forms:

    soft-capped:  α = s/c,  β = c/T,   dy/dz = α·β·(1 − tanh²(α·z))
    otherwise:    α = s,    β = 1/T,   dy/dz = α·β
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# `mode` of a head in the kernels (a tl.constexpr): no transform at all, a linear one, a soft-capped one.
IDENTITY, LINEAR, SOFTCAP = 0, 1, 2


@dataclass(frozen=True)
class LogitHead:
    """softcap c (None: no cap), logit_scale s, temperature T: y = c·tanh(s·z/c)/T, or s·z/T without a cap."""

    softcap: float | None = None
    logit_scale: float = 1.0
    temperature: float = 1.0

    def __post_init__(self):
        if self.softcap is not None and not (math.isfinite(self.softcap) and self.softcap > 0):
            raise ValueError(f"softcap must be a finite number > 0 (or None), got {self.softcap!r}")
        if not math.isfinite(self.logit_scale) or self.logit_scale == 0:
            raise ValueError(f"logit_scale must be a finite non-zero number, got {self.logit_scale!r}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")

    @property
    def mode(self) -> int:
        if self.softcap is not None:
            return SOFTCAP
        return IDENTITY if self.logit_scale == 1.0 and self.temperature == 1.0 else LINEAR

    def factors(self) -> tuple[float, float]:
        """(α, β) of y = β·g(α·z), in float64 (the kernels round them to their compute dtype)."""
        if self.softcap is not None:
            return self.logit_scale / self.softcap, self.softcap / self.temperature
        return self.logit_scale, 1.0 / self.temperature

    def kwargs(self) -> dict:
        """The keyword arguments of `kernels.token_logprobs` / `token_stats` that select this head."""
        return dict(softcap=self.softcap, logit_scale=self.logit_scale, temperature=self.temperature)

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        """The spec, written from the definition (the naive implementation and the tests use it)."""
        y = z * self.logit_scale if self.logit_scale != 1.0 else z
        if self.softcap is not None:
            y = self.softcap * torch.tanh(y / self.softcap)
        return y / self.temperature if self.temperature != 1.0 else y


def head_params(head: LogitHead, ref_head: LogitHead, dtype: torch.dtype, device) -> torch.Tensor:
    """[α, β, α_ref, β_ref] as a tensor of the compute dtype, read by the Triton kernels (a tensor, not Python
    float arguments, so float64 runs get float64 factors)."""
    return torch.tensor([*head.factors(), *ref_head.factors()], dtype=dtype, device=device)
