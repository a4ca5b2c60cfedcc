"""Kernel tests run Triton compiled on a CUDA machine and in its CPU interpreter everywhere else.

Without a CUDA device, TRITON_INTERPRET=1 is set before `kernels.logprobs_triton` decorates its kernels (the
`kernels` package imports Triton lazily, only when impl="triton" is asked for, so this takes effect however the
session's imports are ordered). With one, it is left alone, so the same tests run the compiled kernels on the
GPU. It changes nothing else: only @triton.jit functions read it, and only ours exist.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, stated to silence its warning

import pytest  # noqa: E402


@pytest.fixture
def poisoned_empty():
    """Every torch.empty inside the test is filled with NaN (integers: their max): an output element that a
    kernel forgets to write shows up as NaN instead of passing by luck."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    assert torch.utils.deterministic.fill_uninitialized_memory
    yield
    torch.use_deterministic_algorithms(before)
