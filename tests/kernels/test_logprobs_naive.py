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
        torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(naive_token_logprobs(p["hidden"], p["weight"], p["targets"], bias=p["bias"]), got[0])


def test_naive_computes_in_float32_for_low_precision_inputs():
    p = make_problem(5, 31, 8, dtype=torch.bfloat16, seed=4)
    out = naive_token_logprobs(p["hidden"], p["weight"], p["targets"], bias=p["bias"])
    assert out.dtype == torch.float32
    want = naive_token_logprobs(p["hidden"].double(), p["weight"].double(), p["targets"], bias=p["bias"].double())
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)


def test_naive_head_and_statistics_match_definitions_float64():
    """y = c·tanh(s·z/c)/T written per element with math.tanh; log Σπ², the mean of y and the argmax rule from
    their definitions; the reference through its own head (uncapped, scaled)."""
    from kernels.head import LogitHead

    c, s, T = 2.5, 1.3, 0.8
    p = make_problem(9, 53, 7, dtype=torch.float64, ref=True, ignored=(2,), seed=5)
    z = (p["weight"] @ p["hidden"][4] + p["bias"]).tolist()
    p["targets"][4] = max(range(53), key=lambda v: z[v])  # one target that is the top-1 token
    ref_head = LogitHead(logit_scale=0.5, temperature=2.0)
    got = naive_token_stats(**p, entropy=True, softcap=c, logit_scale=s, temperature=T, ref_head=ref_head,
                            log_sum_sq=True, mean_logit=True, is_top1=True)
    want = {k: [] for k in ("lp", "ent", "kl", "lsq", "mean", "top1")}
    for n in range(9):
        y = [c * math.tanh(s * v / c) / T for v in (p["weight"] @ p["hidden"][n] + p["bias"]).tolist()]
        yr = [0.5 * v / 2.0 for v in (p["ref_weight"] @ p["ref_hidden"][n] + p["ref_bias"]).tolist()]
        lse = max(y) + math.log(math.fsum(math.exp(v - max(y)) for v in y))
        lse_r = max(yr) + math.log(math.fsum(math.exp(v - max(yr)) for v in yr))
        t = int(p["targets"][n])
        if t == -100:
            for k in want:
                want[k].append(0.0)
            continue
        want["lp"].append(y[t] - lse)
        want["ent"].append(-math.fsum(math.exp(v - lse) * (v - lse) for v in y))
        want["kl"].append(math.fsum(math.exp(r - lse_r) * ((r - lse_r) - (v - lse)) for r, v in zip(yr, y)))
        want["lsq"].append(math.log(math.fsum(math.exp(2 * (v - lse)) for v in y)))
        want["mean"].append(math.fsum(y) / len(y))
        want["top1"].append(float(y.index(max(y)) == t))
    for a, k in zip(got, want):
        torch.testing.assert_close(a.double().cpu(), torch.tensor(want[k], dtype=torch.float64), rtol=1e-12,
                                   atol=1e-12)
    assert got[5][4] and got[5].sum() >= 1 and not got[5][2]
