"""Triton log-probs in the interpreter (outputs and every gradient vs the float64 naive oracle), and every
kernel × dtype compiled ahead of time for Hopper (the interpreter accepts code the compiler rejects)."""

import pytest
import torch

from kernels import logprobs_triton as lt
from kernels.head import LogitHead
from tests.kernels._oracle import HEADS, STATS, assert_matches, make_problem, oracle, run, with_top1_targets

# (N, V, H, ignored): N=37 and 130 are not multiples of the 128/64-token blocks, V=1031 leaves a ragged
# vocab tile, a single token, and a set of rows that are all ignored.
SHAPES = [(37, 1031, 24, (0, 5)), (130, 1031, 24, (7,)), (1, 1031, 24, ()), (6, 1031, 24, (0, 1, 2, 3, 4, 5))]


def test_kernels_run_in_the_interpreter_only_without_cuda():
    """tests/kernels/conftest.py sets TRITON_INTERPRET=1 before triton is imported only when there is no CUDA
    device; on a GPU the same tests run the compiled kernels (on CUDA tensors: `_oracle.DEVICE`)."""
    assert lt.interpreted() == (not torch.cuda.is_available())


@pytest.mark.parametrize("N,V,H,ignored", SHAPES)
def test_triton_float64_equals_naive(N, V, H, ignored, poisoned_empty):
    p = make_problem(N, V, H, dtype=torch.float64, ignored=ignored, seed=N + 1)
    assert_matches(run(lt.triton_token_stats, p), oracle(p), rtol=1e-10, atol_scale=1e-12)


def test_triton_float64_stats_equal_naive(poisoned_empty):
    """Entropy and KL (reference with its own H and bias), and the gradient through all three outputs."""
    p = make_problem(37, 1031, 24, dtype=torch.float64, ref=True, ignored=(4,), seed=21, H_ref=40)
    assert_matches(run(lt.triton_token_stats, p, entropy=True), oracle(p, entropy=True),
                   rtol=1e-10, atol_scale=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_triton_float32_within_1e5_of_float64_oracle(bias, poisoned_empty):
    p = make_problem(37, 1031, 24, dtype=torch.float32, bias=bias, ref=bias, ignored=(3,), seed=22)
    got = run(lt.triton_token_stats, p, entropy=bias)
    assert all(o.dtype == torch.float32 for o in got[0]) and all(g.dtype == torch.float32 for g in got[1])
    assert_matches(got, oracle(p, entropy=bias), rtol=1e-5, atol_scale=1e-5)


@pytest.mark.parametrize("dtype,H", [(torch.bfloat16, 24), (torch.float16, 24), (torch.bfloat16, 136)])
def test_triton_low_precision_inputs(dtype, H, poisoned_empty):
    """Outputs: fp32 math on exactly representable inputs, so fp32 accuracy (1e-5). Gradients: the dz tile is
    rounded to the input dtype before the gradient products and the result once more, so a few units of
    2^-8 (bf16) relative: rtol 2e-2, atol 1e-2 × max|grad|. H=136 takes the dz-chunk backward."""
    p = make_problem(37, 1031, H, dtype=dtype, ref=True, ignored=(3,), seed=23)
    outs, grads = run(lt.triton_token_stats, p, entropy=True)
    want_outs, want_grads = oracle(p, entropy=True)
    assert all(o.dtype == torch.float32 for o in outs) and all(g.dtype == dtype for g in grads)
    assert_matches((outs, []), (want_outs, []), rtol=1e-5, atol_scale=1e-5)
    assert_matches(([], grads), ([], want_grads), rtol=2e-2, atol_scale=1e-2)


def test_every_kernel_compiles_for_hopper_with_wgmma():
    """triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32)) for each of the 4 kernels × {fp32, bf16, fp16}
    with every flag on; the tile products of the 16-bit variants must be wgmma (and fp32's 3×TF32 too)."""
    from kernels.logprobs_triton_aot import DTYPES, KERNELS, report_in_subprocess

    rows = report_in_subprocess("--all-flags-only")
    assert {(r["kernel"], r["dtype"]) for r in rows} == {(k, d) for k in KERNELS for d in DTYPES}
    for r in rows:
        assert r["wgmma"], f"{r['kernel']} {r['dtype']}: no wgmma in the PTX"
        assert 0 < r["registers"] <= 255 and r["shared_bytes"] <= 232448, r  # sm_90: 227 KiB per block


@pytest.mark.parametrize("dtype,rtol,atol_scale", [(torch.float64, 1e-10, 1e-12), (torch.float32, 1e-5, 1e-5)])
def test_triton_dz_chunk_backward_equals_naive(dtype, rtol, atol_scale, poisoned_empty):
    """The large-H backward (dz per token chunk + two GEMMs), pinned on H=136 > one output block, with 3
    ragged chunks of 48 tokens, entropy, KL and biases."""
    from functools import partial

    assert lt.backward_strategy(136) == "dz_chunks" and lt.backward_strategy(24) == "fused"
    p = make_problem(130, 1031, 136, dtype=dtype, ref=True, ignored=(0, 77), seed=24)
    fn = partial(lt.triton_token_stats, backward="dz_chunks", dz_chunk_tokens=48)
    assert_matches(run(fn, p, entropy=True), oracle(p, entropy=True), rtol=rtol, atol_scale=atol_scale)


# ---------------------------------------------------------------------------------- heads that transform logits

REF_HEAD = LogitHead(softcap=4.0, logit_scale=0.9)  # the reference's own head, for the KL


@pytest.mark.parametrize("head", list(HEADS), ids=list(HEADS))
def test_triton_head_float64_equals_naive(head, poisoned_empty):
    """Every output and every gradient through each transformed head (fused backward), with entropy, KL (the
    reference through its own soft-capped head), log Σp², mean logit and is-top-1; V=517 leaves a ragged tile."""
    p = with_top1_targets(make_problem(37, 517, 24, dtype=torch.float64, ref=True, ignored=(0, 5), seed=51),
                          HEADS[head])
    kw = dict(**HEADS[head], **STATS, ref_head=REF_HEAD)
    got = run(lt.triton_token_stats, p, entropy=True, **kw)
    assert_matches(got, oracle(p, entropy=True, **kw), rtol=1e-10, atol_scale=1e-12)
    assert got[0][-1].dtype == torch.bool and 0 < int(got[0][-1].sum()) < 35


def test_triton_head_dz_chunk_backward_equals_naive(poisoned_empty):
    """The large-H backward (dz per token chunk + two GEMMs) through a soft-capped, scaled, tempered head."""
    from functools import partial

    kw = HEADS["softcap+scale+temperature"]
    p = make_problem(70, 517, 136, dtype=torch.float64, ref=True, ignored=(0, 33), seed=52)
    fn = partial(lt.triton_token_stats, backward="dz_chunks", dz_chunk_tokens=48, ref_head=REF_HEAD, **kw)
    assert_matches(run(fn, p, entropy=True), oracle(p, entropy=True, ref_head=REF_HEAD, **kw),
                   rtol=1e-10, atol_scale=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_head_low_precision_within_tolerance(dtype, poisoned_empty):
    """Soft-capped head: fp32 outputs within 1e-5 of the float64 oracle; gradients 1e-5 (fp32) or, with dz and
    the result rounded to bf16, rtol 2e-2 / atol 1e-2 × max — the untransformed head's tolerances."""
    kw = dict(**HEADS["softcap"], **STATS, ref_head=REF_HEAD)
    p = with_top1_targets(make_problem(37, 517, 24, dtype=dtype, ref=True, ignored=(3,), seed=53), HEADS["softcap"])
    outs, grads = run(lt.triton_token_stats, p, entropy=True, **kw)
    want_outs, want_grads = oracle(p, entropy=True, **kw)
    assert_matches((outs, []), (want_outs, []), rtol=1e-5, atol_scale=1e-5)
    rtol, atol = (1e-5, 1e-5) if dtype == torch.float32 else (2e-2, 1e-2)
    assert_matches(([], grads), ([], want_grads), rtol=rtol, atol_scale=atol)
