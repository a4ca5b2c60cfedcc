"""Chunked log-probs (+ entropy, KL, log Σp², mean logit, is-top-1; through every head): outputs and every
gradient against the float64 naive oracle."""

import pytest
import torch

from kernels.head import LogitHead
from kernels.logprobs_chunked import chunked_token_stats
from tests.kernels._oracle import HEADS, STATS, assert_matches, make_problem, oracle, run, with_top1_targets

# (N, V, H, ignored rows): odd sizes, N not a multiple of the token chunk, a single token, all rows ignored.
SHAPES = [(37, 1031, 24, (0, 5)), (1, 1031, 24, ()), (130, 257, 24, (7,)), (6, 1031, 24, (0, 1, 2, 3, 4, 5))]
SMALL_CHUNKS = dict(token_chunk=16, vocab_chunk=100)  # many tiles, ragged edges in both directions


@pytest.mark.parametrize("N,V,H,ignored", SHAPES)
@pytest.mark.parametrize("stats", [False, True], ids=["logps", "logps+entropy+kl"])
def test_chunked_float64_equals_naive(N, V, H, ignored, stats, poisoned_empty):
    p = make_problem(N, V, H, dtype=torch.float64, ref=stats, ignored=ignored, seed=N + V)
    got = run(chunked_token_stats, p, entropy=stats, **SMALL_CHUNKS)
    assert_matches(got, oracle(p, entropy=stats), rtol=1e-10, atol_scale=1e-12)
    if len(ignored) == N:  # every output 0, and no gradient at all
        assert all((o == 0).all() for o in got[0]) and all((g == 0).all() for g in got[1])


@pytest.mark.parametrize("bias", [True, False])
def test_chunked_float32_within_1e5_of_float64_oracle(bias, poisoned_empty):
    p = make_problem(37, 1031, 24, dtype=torch.float32, bias=bias, ref=True, ignored=(3,), seed=11)
    got = run(chunked_token_stats, p, entropy=True)  # default chunk sizes
    assert all(o.dtype == torch.float32 for o in got[0]) and all(g.dtype == torch.float32 for g in got[1])
    assert_matches(got, oracle(p, entropy=True), rtol=1e-5, atol_scale=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_chunked_low_precision_inputs(dtype, poisoned_empty):
    """fp32 math on bf16/fp16 inputs: outputs as accurate as fp32 (the inputs are exact in fp32); gradients
    are rounded once to the input dtype (2^-8 relative for bf16, 2^-11 for fp16), hence rtol 1e-2."""
    p = make_problem(37, 1031, 24, dtype=dtype, ref=True, ignored=(3,), seed=12)
    outs, grads = run(chunked_token_stats, p, entropy=True, **SMALL_CHUNKS)
    want_outs, want_grads = oracle(p, entropy=True)
    assert all(o.dtype == torch.float32 for o in outs) and all(g.dtype == dtype for g in grads)
    assert_matches((outs, []), (want_outs, []), rtol=1e-5, atol_scale=1e-5)
    assert_matches(([], grads), ([], want_grads), rtol=1e-2, atol_scale=1e-2)


def test_chunked_grad_only_for_what_requires_it():
    p = make_problem(20, 300, 16, dtype=torch.float64, seed=5)
    h = p["hidden"].clone().requires_grad_()
    out = chunked_token_stats(h, p["weight"], p["targets"], bias=p["bias"], **SMALL_CHUNKS)[0]
    (dh,) = torch.autograd.grad(out.sum(), h)
    want = torch.autograd.grad(oracle_sum(p, h), h)[0]
    torch.testing.assert_close(dh, want, rtol=1e-10, atol=1e-12)


def oracle_sum(p, h):
    from kernels.logprobs_naive import naive_token_logprobs

    return naive_token_logprobs(h, p["weight"], p["targets"], bias=p["bias"]).sum()


# ---------------------------------------------------------------------------------- heads that transform logits

REF_HEAD = LogitHead(softcap=4.0, logit_scale=0.9)  # the reference's own head, for the KL


@pytest.mark.parametrize("head", list(HEADS), ids=list(HEADS))
def test_chunked_head_float64_equals_naive(head, poisoned_empty):
    """Every output (log-probs, entropy, KL, log Σp², mean logit, is-top-1) and every gradient through a
    transformed head, on many ragged tiles, against the float64 naive spec."""
    p = with_top1_targets(make_problem(37, 1031, 24, dtype=torch.float64, ref=True, ignored=(0, 5), seed=41),
                          HEADS[head])
    kw = dict(**HEADS[head], **STATS, ref_head=REF_HEAD)
    got = run(chunked_token_stats, p, entropy=True, **kw, **SMALL_CHUNKS)
    want = oracle(p, entropy=True, **kw)
    assert_matches(got, want, rtol=1e-10, atol_scale=1e-12)
    top1 = got[0][-1]
    assert top1.dtype == torch.bool and 0 < int(top1.sum()) < 35  # both values occur


@pytest.mark.parametrize("head", ["softcap", "softcap+scale+temperature"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_head_low_precision_within_tolerance(head, dtype, poisoned_empty):
    """fp32 math: outputs within 1e-5 of the float64 oracle; gradients 1e-5 (fp32) or, rounded once to bf16,
    1e-2 — the same tolerances as the untransformed head."""
    p = with_top1_targets(make_problem(37, 1031, 24, dtype=dtype, ref=True, ignored=(3,), seed=42), HEADS[head])
    kw = dict(**HEADS[head], **STATS, ref_head=REF_HEAD)
    outs, grads = run(chunked_token_stats, p, entropy=True, **kw)
    want_outs, want_grads = oracle(p, entropy=True, **kw)
    assert_matches((outs, []), (want_outs, []), rtol=1e-5, atol_scale=1e-5)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert_matches(([], grads), ([], want_grads), rtol=tol, atol_scale=tol)


def test_chunked_identity_head_options_change_nothing():
    """softcap=None, logit_scale=1, temperature=1 is the untransformed head, bit for bit."""
    p = make_problem(37, 1031, 24, seed=43)
    a = run(chunked_token_stats, p, **SMALL_CHUNKS)
    b = run(chunked_token_stats, p, softcap=None, logit_scale=1.0, temperature=1.0, **SMALL_CHUNKS)
    for x, y in zip(a[0] + a[1], b[0] + b[1]):
        assert torch.equal(x, y)
