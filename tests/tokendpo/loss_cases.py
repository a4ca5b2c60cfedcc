"""Shared by the tests/tokendpo/test_losses_*.py files: the running example pair, a stable −log σ, and a
float64 comparison."""

import math

import torch


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
