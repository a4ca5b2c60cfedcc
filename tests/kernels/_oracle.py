"""Shared helpers for the kernel tests: random problems and the comparison against the float64 naive oracle.

Problems live on the GPU when there is one (Triton then runs compiled; tests/kernels/conftest.py leaves
TRITON_INTERPRET unset), on the CPU otherwise (Triton in its interpreter)."""

import torch

from kernels.logprobs_naive import naive_token_stats

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_problem(N, V, H, *, dtype=torch.float32, bias=True, ref=False, ignored=(), seed=0, H_ref=None):
    """Fresh random inputs; logits of order 1–5 so the softmax is neither flat nor one-hot."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64) * (2.0 / H**0.5)
    targets = torch.randint(0, V, (N,), generator=g)
    for i in ignored:
        targets[i] = -100
    p = dict(hidden=hidden, weight=weight, targets=targets,
             bias=torch.randn(V, generator=g, dtype=torch.float64) if bias else None)
    if ref:
        hr = H_ref or H + 3
        p["ref_hidden"] = torch.randn(N, hr, generator=g, dtype=torch.float64)
        p["ref_weight"] = torch.randn(V, hr, generator=g, dtype=torch.float64) * (2.0 / hr**0.5)
        p["ref_bias"] = torch.randn(V, generator=g, dtype=torch.float64) if bias else None
    # Round to the test dtype once, so the oracle sees exactly the inputs the implementation sees.
    return {k: (v.to(dtype) if v.is_floating_point() else v).to(DEVICE) if isinstance(v, torch.Tensor) else v
            for k, v in p.items()}


def run(fn, problem, *, entropy=False, seed=1, **kwargs):
    """Outputs and the gradients of a random weighting of the differentiable ones (log-probs, entropy, KL) w.r.t.
    hidden, weight (and bias). kwargs (head options, extra statistics, chunk sizes) go to `fn`."""
    p = {k: (v.detach().clone().requires_grad_(k in ("hidden", "weight", "bias"))
             if isinstance(v, torch.Tensor) else v) for k, v in problem.items()}
    outs = fn(p["hidden"], p["weight"], p["targets"], bias=p["bias"], entropy=entropy,
              ref_hidden=p.get("ref_hidden"), ref_weight=p.get("ref_weight"), ref_bias=p.get("ref_bias"), **kwargs)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device, o.dtype)).sum()
               for o in outs[:3] if o is not None)
    outs = [o for o in outs if o is not None]
    wrt = [p["hidden"], p["weight"]] + ([p["bias"]] if p["bias"] is not None else [])
    grads = torch.autograd.grad(loss, wrt) if loss.requires_grad else [torch.zeros_like(w) for w in wrt]
    return [o.detach() for o in outs], [gr.detach() for gr in grads]


def oracle(problem, *, entropy=False, **kwargs):
    """The naive implementation on float64 copies of the (already rounded) inputs."""
    p64 = {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in problem.items()}
    return run(naive_token_stats, p64, entropy=entropy, **kwargs)


# Heads the tests run: a soft-cap that bites (logits of order 1–5 against c = 2.5), Cohere's scale with a
# temperature, Granite's 1/logits_scaling, and all three at once. The reference (KL) side gets its own head.
HEADS = {
    "softcap": dict(softcap=2.5),
    "scale+temperature": dict(logit_scale=0.625, temperature=1.7),
    "granite": dict(logit_scale=1 / 3.0),
    "softcap+scale+temperature": dict(softcap=3.0, logit_scale=1.9, temperature=0.7),
}
STATS = dict(log_sum_sq=True, mean_logit=True, is_top1=True)


def with_top1_targets(problem, head_kwargs, every=3):
    """Every `every`-th kept target set to the argmax of the transformed logits, so is-top-1 has both values."""
    from kernels.head import LogitHead

    p = dict(problem)
    z = p["hidden"].double() @ p["weight"].double().T + (0 if p["bias"] is None else p["bias"].double())
    top = LogitHead(**head_kwargs).apply(z).argmax(1)  # (N,)
    t = p["targets"].clone()
    rows = torch.arange(0, t.shape[0], every, device=t.device)
    rows = rows[t[rows] != -100]
    t[rows] = top[rows]
    p["targets"] = t
    return p


def assert_matches(got, want, *, rtol, atol_scale):
    """Each output/gradient within rtol, with atol = atol_scale × the tensor's largest magnitude (gradients of
    a sum over V terms cancel; a purely relative test would demand digits below the rounding of the sum)."""
    outs, grads = got
    w_outs, w_grads = want
    assert len(outs) == len(w_outs) and len(grads) == len(w_grads)
    for name, a, b in [("out", a, b) for a, b in zip(outs, w_outs)] + [("grad", a, b) for a, b in zip(grads, w_grads)]:
        assert a.shape == b.shape, (name, a.shape, b.shape)
        if b.dtype == torch.bool:  # is-top-1: exactly equal
            assert a.dtype == torch.bool and torch.equal(a, b), f"{name}: {a.int().tolist()} != {b.int().tolist()}"
            continue
        assert torch.isfinite(a).all(), f"{name}: non-finite values (unwritten output?)"
        atol = atol_scale * float(b.abs().max()) + 1e-30
        torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")
