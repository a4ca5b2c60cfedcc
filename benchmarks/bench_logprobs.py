"""Selected-token log-probs: peak extra memory and time of naive vs chunked (vs triton on a GPU).

For each configuration (N tokens, V vocab, H hidden) and mode (fwd = forward with grad enabled, fb =
forward + backward of a random weighting of the outputs):

  * peak extra memory, each impl × mode in a FRESH subprocess: peak RSS (ru_maxrss's VmHWM, reset through
    /proc/self/clear_refs once the inputs exist) minus the RSS then (on CUDA: max_memory_allocated minus
    allocated after the inputs). One cold run, no warm-up. A killed or OOM run is "OOM";
  * median time, all impls and the floor interleaved round by round in one subprocess (so a load change on
    a shared machine hits them alike), next to the bare matrix products as the floor: hidden·Wᵀ (fwd) and
    hidden·Wᵀ, dZ·W, dZᵀ·hidden (fb). A recomputing design runs four products where fb's floor runs three,
    so ×bound4 = time / (4/3 · floor) is 1.0 for a design that costs nothing beyond its products;
  * (full run) the Hopper resource report of every compiled Triton kernel: registers, shared, spills.

    python -m benchmarks.bench_logprobs            # CPU: N∈{1k,4k}×V=32k×H∈{256,1024} + N=1k,V=128k
    python -m benchmarks.bench_logprobs --quick    # ≤ 60 s, small shapes, asserts chunked == naive
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from kernels import token_logprobs

CPU_CONFIGS = [(1024, 32000, 256), (1024, 32000, 1024), (4096, 32000, 256), (4096, 32000, 1024),
               (1024, 128000, 256)]
GPU_CONFIGS = CPU_CONFIGS + [(16384, 32000, 4096), (16384, 128000, 4096)]
QUICK_CONFIGS = [(512, 8000, 64)]


# ------------------------------------------------------------------------------------------ in the worker

def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM, what ru_maxrss reports) to the current RSS,
    so the import of torch and the creation of the inputs do not count as the step's peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _inputs(N, V, H, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g).to(device, dtype)
    weight = (torch.randn(V, H, generator=g) / H**0.5).to(device, dtype)
    targets = torch.randint(0, V, (N,), generator=g).to(device)
    targets[::17] = -100  # some padding, as in real batches
    grad = torch.randn(N, generator=g).to(device)
    return hidden, weight, targets, grad


# An impl name may carry a head: "chunked+softcap" is impl chunked through a Gemma-2 soft-cap (c = SOFTCAP).
SOFTCAP = 30.0


def _step(impl, mode, hidden, weight, targets, grad):
    impl, _, head = impl.partition("+")
    head = {"softcap": SOFTCAP} if head == "softcap" else {}
    if impl == "floor":  # the bare products: hidden·Wᵀ, and for fb dZ·W and dZᵀ·hidden
        z = hidden @ weight.T
        if mode == "fb":
            z @ weight, z.T @ hidden
        return
    h = hidden.detach().requires_grad_()
    w = weight.detach().requires_grad_()
    out = token_logprobs(h, w, targets, impl=impl, **head)
    if mode == "fb":
        out.backward(grad)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def worker_memory(args):
    """One impl × mode, run once in this fresh process: the peak extra memory."""
    hidden, weight, targets, grad = _inputs(args.N, args.V, args.H, args.device, getattr(torch, args.dtype))
    if args.device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        _step(args.impl, args.mode, hidden, weight, targets, grad)
        _sync(args.device)
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = _status_bytes("VmRSS")  # the inputs exist
        if _reset_peak_rss():
            _step(args.impl, args.mode, hidden, weight, targets, grad)
            peak = _status_bytes("VmHWM") - base
        else:  # no clear_refs: ru_maxrss, which may include an earlier (import-time) peak
            _step(args.impl, args.mode, hidden, weight, targets, grad)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    print(json.dumps({"peak_bytes": max(peak, 0)}))


def worker_timing(args):
    """All impls and the floor, interleaved round by round; median seconds of each."""
    hidden, weight, targets, grad = _inputs(args.N, args.V, args.H, args.device, getattr(torch, args.dtype))
    names = args.impls.split(",")
    times = {name: [] for name in names}
    for r in range(args.repeats + 1):  # round 0 is the warm-up
        for name in names:
            impl, mode = name.split(":")
            _sync(args.device)
            t0 = time.perf_counter()
            try:
                _step(impl, mode, hidden, weight, targets, grad)
                _sync(args.device)
            except torch.OutOfMemoryError:
                times[name] = None
                continue
            if r and times[name] is not None:
                times[name].append(time.perf_counter() - t0)
    print(json.dumps({k: (statistics.median(v) if v else None) for k, v in times.items()}))


# ------------------------------------------------------------------------------------------ the driver

def _spawn(extra, timeout):
    cmd = [sys.executable, "-m", "benchmarks.bench_logprobs", "--worker", *map(str, extra)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "TIMEOUT"
    if out.returncode != 0:
        oom = out.returncode in (-9, 137) or "OutOfMemory" in out.stderr or "out of memory" in out.stderr
        return "OOM" if oom else f"FAILED: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def _mib(x):
    return f"{x / 2**20:9.1f}" if isinstance(x, (int, float)) else f"{str(x):>9}"


def _ratio(a, b):
    return f"{a / b:7.2f}" if isinstance(a, float) and isinstance(b, float) and b > 0 else f"{'-':>7}"


def run_config(N, V, H, impls, device, dtype, repeats, timeout):
    cfg = ["--N", N, "--V", V, "--H", H, "--device", device, "--dtype", dtype]
    mem = {(i, m): _spawn(cfg + ["--impl", i, "--mode", m, "--measure", "memory"], timeout)
           for i in impls for m in ("fwd", "fb")}
    names = [f"{i}:{m}" for m in ("fwd", "fb") for i in ("floor", *impls)]
    t = _spawn(cfg + ["--impls", ",".join(names), "--repeats", repeats, "--measure", "time"], timeout)
    times = t if isinstance(t, dict) else {n: t for n in names}
    rows = []
    for m in ("fwd", "fb"):
        floor = times[f"floor:{m}"]
        for i in impls:
            peak = mem[(i, m)]
            peak = peak["peak_bytes"] if isinstance(peak, dict) else peak
            sec = times[f"{i}:{m}"]
            naive_sec = times.get(f"naive:{m}")
            naive_peak = mem.get(("naive", m))
            naive_peak = naive_peak["peak_bytes"] if isinstance(naive_peak, dict) else None
            rows.append(dict(N=N, V=V, H=H, mode=m, impl=i, peak=peak, sec=sec, floor=floor,
                             x_floor=_ratio(sec, floor), x_bound4=_ratio(sec, 4 / 3 * floor) if m == "fb" else "-",
                             x_naive=_ratio(sec, naive_sec),
                             mem_vs_naive=_ratio(float(peak), float(naive_peak)) if isinstance(peak, int)
                             and naive_peak else f"{'-':>7}"))
    return rows


def format_rows(rows):
    head = (f"{'N':>6} {'V':>7} {'H':>5} {'mode':4} {'impl':15} {'peak MiB':>9} {'mem/naive':>9} {'time s':>8} "
            f"{'floor s':>8} {'×floor':>7} {'×bound4':>7} {'×naive':>7}")
    out = [head]
    for r in rows:
        sec = f"{r['sec']:8.3f}" if isinstance(r["sec"], float) else f"{str(r['sec']):>8}"
        floor = f"{r['floor']:8.3f}" if isinstance(r["floor"], float) else f"{str(r['floor']):>8}"
        bound = r["x_bound4"] if r["x_bound4"] != "-" else f"{'-':>7}"
        out.append(f"{r['N']:6d} {r['V']:7d} {r['H']:5d} {r['mode']:4} {r['impl']:15} {_mib(r['peak'])} "
                   f"{r['mem_vs_naive']:>9} {sec} {floor} {r['x_floor']} {bound} {r['x_naive']}")
    return "\n".join(out)


def analytic(N, V, H, bytes_per=2):
    """GPU case, bf16: flops of the 4 products of a recomputing design, those of our Triton path (the fused
    backward recomputes the logits once per output h-block; the dz-chunk backward runs 4 products and moves
    dz: written once, read by two GEMMs), and the minimum HBM bytes (read h, W; write dh, dW)."""
    from kernels.logprobs_triton import backward_strategy, block_ho

    product = 2 * N * V * H
    if backward_strategy(H) == "fused":
        ours, extra_bytes = (3 + 2 * -(-H // block_ho(H))) * product, 0
    else:
        ours, extra_bytes = 4 * product, 3 * N * V * bytes_per
    return dict(product_flops=product, bound4_flops=4 * product, ours_flops=ours, strategy=backward_strategy(H),
                min_bytes=2 * (N * H + V * H) * bytes_per, dz_bytes=extra_bytes)


def main(argv=None):
    """The CLI; returns the driver's rows (the worker modes print one JSON line and return None)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes, ≤ 60 s, asserts chunked == naive")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=900, help="seconds per worker before it counts as TIMEOUT")
    p.add_argument("--no-resources", action="store_true", help="skip the Hopper resource report")
    p.add_argument("--softcap", action="store_true",
                   help=f"also time the fused impls through a Gemma-2 soft-capped head (c = {SOFTCAP:g})")
    p.add_argument("--configs", default=None, help="N,V,H[;N,V,H...]: these shapes instead of the default set")
    # worker-only arguments
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--measure", choices=["memory", "time"], help=argparse.SUPPRESS)
    for name in ("N", "V", "H"):
        p.add_argument(f"--{name}", type=int, help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--impls", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker_memory(args) if args.measure == "memory" else worker_timing(args)

    gpu = args.device == "cuda"
    dtype = args.dtype or ("bfloat16" if gpu else "float32")
    impls = ["naive", "chunked"] + (["triton"] if gpu else [])
    if args.softcap:
        impls += [i + "+softcap" for i in impls if i != "naive"]
    configs = QUICK_CONFIGS if args.quick else (GPU_CONFIGS if gpu else CPU_CONFIGS)
    if args.configs:
        configs = [tuple(int(x) for x in c.split(",")) for c in args.configs.split(";")]
    machine = (torch.cuda.get_device_name() if gpu else
               f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
               f"{torch.get_num_threads()}")
    cmd = "python -m benchmarks.bench_logprobs " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  {machine}  torch {torch.__version__}  {dtype}")
    print(f"# command: {cmd.strip()}")
    if args.quick:
        check_chunked_equals_naive(gpu)
    rows = []
    for N, V, H in configs:
        rows += run_config(N, V, H, impls, args.device, dtype, 1 if args.quick else args.repeats, args.timeout)
        print(format_rows([r for r in rows if (r["N"], r["V"], r["H"]) == (N, V, H)]).split("\n", 1)[-1]
              if len(rows) > 4 else format_rows(rows), flush=True)
    print("\n" + format_rows(rows))
    if not gpu:
        print("\n# GPU speed is unmeasured here. Analytic bf16 cost of one fb pass on a GPU (per config):")
        for N, V, H in configs:
            a = analytic(N, V, H)
            print(f"#   N={N} V={V} H={H}: one product {a['product_flops'] / 1e9:.1f} GFLOP; 4-product bound "
                  f"{a['bound4_flops'] / 1e9:.1f} GFLOP; Triton ({a['strategy']} backward) "
                  f"{a['ours_flops'] / 1e9:.1f} GFLOP; min HBM traffic {a['min_bytes'] / 2**20:.1f} MiB "
                  f"+ dz traffic {a['dz_bytes'] / 2**20:.1f} MiB (no N×V tensor held)")
    if not (args.quick or args.no_resources):
        from kernels.logprobs_triton_aot import format_table, report_in_subprocess

        print("\n# Triton kernels compiled for Hopper (sm_90, no GPU needed): resources per kernel variant")
        print(format_table(report_in_subprocess()))
    return rows


def check_chunked_equals_naive(gpu):
    """--quick's correctness check: outputs and gradients of chunked (and triton) against naive."""
    device = "cuda" if gpu else "cpu"
    hidden, weight, targets, grad = _inputs(300, 3001, 48, device, torch.float32, seed=1)
    results = {}
    for impl in ["naive", "chunked"] + (["triton"] if gpu else []):
        h = hidden.clone().requires_grad_()
        w = weight.clone().requires_grad_()
        out = token_logprobs(h, w, targets, impl=impl)
        out.backward(grad)
        results[impl] = (out, h.grad, w.grad)
    for impl, got in results.items():
        for name, a, b in zip(("logps", "d_hidden", "d_weight"), got, results["naive"]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{impl} {name}: {m}")
    print(f"# check: {', '.join(results)} agree on logps, d_hidden, d_weight (rtol 1e-4, atol 1e-5): OK")


if __name__ == "__main__":
    main()
