"""The public API: one dispatch point, the contract's shapes/dtypes, clear errors, and coexistence with
transformers (which probes for the unrelated PyPI package also named `kernels`)."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels
from kernels import resolve_impl, token_logprobs, token_stats
from tests.kernels._oracle import make_problem

ROOT = Path(__file__).resolve().parents[2]


def test_auto_is_chunked_on_cpu_and_unknown_impl_fails():
    h = torch.randn(2, 3)
    assert resolve_impl("auto", h) == "chunked"
    assert [resolve_impl(i, h) for i in ("naive", "chunked", "triton")] == ["naive", "chunked", "triton"]
    with pytest.raises(ValueError, match="impl must be one of"):
        resolve_impl("fast", h)


@pytest.mark.parametrize("impl", ["auto", "naive", "chunked", "triton"])
def test_token_logprobs_contract(impl):
    """[N] float32 from fp32 inputs, 0.0 at ignore_index, same values through every impl (vs float64 naive)."""
    p = make_problem(37, 1031, 24, ignored=(1, 30), seed=31)
    out = token_logprobs(p["hidden"], p["weight"], p["targets"], bias=p["bias"], impl=impl)
    want = kernels.naive_token_logprobs(p["hidden"].double(), p["weight"].double(), p["targets"],
                                        bias=p["bias"].double())
    assert out.shape == (37,) and out.dtype == torch.float32
    assert out[1] == 0.0 and out[30] == 0.0 and (out[p["targets"] != -100] < 0).all()
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["auto", "naive", "chunked", "triton"])
def test_token_logprobs_head_options_through_every_impl(impl):
    """Gemma-2-style soft-cap with a scale and a temperature: every impl equals the float64 naive spec, and the
    options change the values (so the default path is not silently taken)."""
    p = make_problem(37, 1031, 24, ignored=(2,), seed=33)
    head = dict(softcap=2.0, logit_scale=1.5, temperature=0.9)
    out = token_logprobs(p["hidden"], p["weight"], p["targets"], bias=p["bias"], impl=impl, **head)
    want = kernels.naive_token_logprobs(p["hidden"].double(), p["weight"].double(), p["targets"],
                                        bias=p["bias"].double(), **head)
    plain = kernels.naive_token_logprobs(p["hidden"].double(), p["weight"].double(), p["targets"],
                                         bias=p["bias"].double())
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    assert (want - plain).abs().max() > 0.1


@pytest.mark.parametrize("head,match", [
    (dict(softcap=0.0), "softcap must be a finite number > 0"),
    (dict(softcap=float("nan")), "softcap must be a finite number > 0"),
    (dict(logit_scale=float("inf")), "logit_scale must be a finite non-zero"),
    (dict(logit_scale=0.0), "logit_scale must be a finite non-zero"),
    (dict(temperature=0.0), "temperature must be a finite number > 0"),
    (dict(temperature=-1.0), "temperature must be a finite number > 0"),
])
def test_bad_head_option_is_a_clear_value_error(head, match):
    with pytest.raises(ValueError, match=match):
        token_logprobs(torch.randn(4, 6), torch.randn(10, 6), torch.randint(0, 10, (4,)), **head)


def test_token_stats_fields_and_custom_ignore_index():
    p = make_problem(8, 50, 6, ref=True, seed=32)
    t = p["targets"].clone()
    t[2] = 7
    s = token_stats(p["hidden"], p["weight"], t, ignore_index=7, entropy=True, ref_hidden=p["ref_hidden"],
                    ref_weight=p["ref_weight"], impl="chunked")
    assert isinstance(s, kernels.TokenStats) and s.logps[2] == s.entropy[2] == s.kl[2] == 0.0
    assert (s.entropy[t != 7] > 0).all() and (s.kl[t != 7] > 0).all()  # Gibbs: KL ≥ 0, strict for distinct π
    plain = token_stats(p["hidden"], p["weight"], t, impl="naive")
    assert plain.entropy is None and plain.log_sum_sq is None and plain.mean_logit is None and plain.is_top1 is None
    x = token_stats(p["hidden"], p["weight"], t, ignore_index=7, entropy=True, log_sum_sq=True, mean_logit=True,
                    is_top1=True, softcap=3.0, impl="chunked")
    assert x.log_sum_sq[2] == x.mean_logit[2] == 0.0 and not x.is_top1[2]
    # Σπ² ≤ max π ≤ 1 and Σπ² ≥ 1/V: log Σπ² in [−log V, 0]; a soft-capped mean logit lies in (−c, c)
    assert (x.log_sum_sq[t != 7] < 0).all() and (x.log_sum_sq >= -math.log(50) - 1e-6).all()
    assert (x.mean_logit.abs() < 3.0).all()


@pytest.mark.parametrize("change,match", [
    (dict(hidden=torch.randn(4, 5, 6)), "hidden must be 2-D"),
    (dict(weight=torch.randn(50, 7)), "disagree on H"),
    (dict(targets=torch.zeros(3, dtype=torch.long)), "hidden has 8 rows but targets has 3"),
    (dict(targets=torch.zeros(8)), "targets must be a 1-D integer tensor"),
    (dict(targets=torch.full((8,), 50)), r"targets\[0\] = 50 is outside \[0, 50\)"),
    (dict(weight=torch.randn(50, 6, dtype=torch.float64)), "must share one dtype"),
    (dict(bias=torch.randn(49)), "bias must be a floating"),
    (dict(ref_hidden=torch.randn(8, 6)), "needs both ref_hidden and ref_weight"),
    (dict(ref_hidden=torch.randn(8, 6), ref_weight=torch.randn(40, 6)), "ref_weight has V=40"),
])
def test_bad_input_is_a_clear_value_error(change, match):
    args = dict(hidden=torch.randn(8, 6), weight=torch.randn(50, 6), targets=torch.randint(0, 50, (8,)))
    args.update(change)
    with pytest.raises(ValueError, match=match):
        token_stats(**args)


def test_exports_include_the_one_implicit_reward():
    from kernels.rewards import implicit_reward

    assert kernels.implicit_reward is implicit_reward
    assert set(kernels.__all__) >= {"token_logprobs", "token_stats", "implicit_reward"}


def test_transformers_loads_a_model_beside_our_kernels_package(tiny_model_dir):
    """Fresh process, our `kernels` imported first: transformers must still import and load a model."""
    code = (
        "import kernels, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tiny_model_dir)!r})\n"
        "assert kernels.token_logprobs and kernels.__file__.startswith(" + repr(str(ROOT)) + ")\n"
        "print(tuple(m(torch.tensor([[1, 2, 3]])).logits.shape))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().startswith("(1, 3, "), out.stdout
