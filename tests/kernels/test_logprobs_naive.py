"""The naive reference against a per-row loop written from the definitions (an independent oracle)."""

import math

import torch

from kernels.logprobs_naive import naive_token_logprobs, naive_token_stats
from tests.kernels._oracle import make_problem


def _row_by_row(p):
    """Python loop over rows: logsumexp by math.fsum, entropy and KL from their definitions."""
    logps, ents, kls = [], [], []
    for n in range(p["targets"].shape[0]):
        z = (p["weight"] @ p["hidden"][n] + p["bias"]).tolist()
        zr = (p["ref_weight"] @ p["ref_hidden"][n] + p["ref_bias"]).tolist()
        lse = max(z) + math.log(math.fsum(math.exp(v - max(z)) for v in z))
        lse_r = max(zr) + math.log(math.fsum(math.exp(v - max(zr)) for v in zr))
        t = int(p["targets"][n])
        if t == -100:
            logps.append(0.0), ents.append(0.0), kls.append(0.0)
            continue
        logps.append(z[t] - lse)
        ents.append(-math.fsum(math.exp(v - lse) * (v - lse) for v in z))
        kls.append(math.fsum(math.exp(r - lse_r) * ((r - lse_r) - (v - lse)) for r, v in zip(zr, z)))
    return [torch.tensor(x, dtype=torch.float64) for x in (logps, ents, kls)]


def test_naive_matches_definitions_float64():
    p = make_problem(9, 53, 7, dtype=torch.float64, ref=True, ignored=(2,), seed=3)
    got = naive_token_stats(**{k: v for k, v in p.items()}, entropy=True)
    for a, b in zip(got, _row_by_row(p)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(naive_token_logprobs(p["hidden"], p["weight"], p["targets"], bias=p["bias"]), got[0])


def test_naive_computes_in_float32_for_low_precision_inputs():
    p = make_problem(5, 31, 8, dtype=torch.bfloat16, seed=4)
    out = naive_token_logprobs(p["hidden"], p["weight"], p["targets"], bias=p["bias"])
    assert out.dtype == torch.float32
    want = naive_token_logprobs(p["hidden"].double(), p["weight"].double(), p["targets"], bias=p["bias"].double())
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
