"""One command that measures the GPU path: compiled kernel tests, fused log-prob throughput, a training run's
loss curve through every kernel, and decode throughput.

    python -m benchmarks.gpu_check              # one CUDA GPU (budget ≤ 8 min on an H100/H200); writes
                                                # benchmarks/RESULTS_gpu.md and benchmarks/results/gpu_check.json
    python -m benchmarks.gpu_check --dry_run    # the same script end to end on CPU: tiny shapes, Triton in its
                                                # interpreter (≤ 3 min); writes only under --out_dir (a temp dir)

Checks, each a list of rows {"check", "impl", "dtype", "shape", "ms", "tflops", "pct_of_matmul", "max_abs_err"}
(+ "n" timed repeats and "ms_ci95", the 95 % t-interval of the mean time):

  kernel_tests   pytest tests/kernels with Triton compiled (the conftest leaves TRITON_INTERPRET unset on CUDA);
                 the row's shape says "P passed, F failed".
  matmul         the bare bf16 product hidden·Wᵀ [N, H]×[H, V] (torch.mm / cuBLAS): the roofline the fused
                 rows are a percentage of, measured in the same run.
  logprobs_fb    forward + backward of the selected-token log-probs, N=16384, V ∈ {32000, 128256},
                 H ∈ {576, 2048}, bf16 and fp32, impl triton vs naive (and Liger's fused linear DPO loss when
                 `liger_kernel` is installed). tflops counts the 3 useful products (z = h·Wᵀ, dh = dz·W,
                 dW = dzᵀ·h: 6·N·V·H flops) over the measured time, so recomputation shows as a lower rate;
                 max_abs_err is the largest |log-prob − fp32 naive log-prob on the same rounded inputs|.
  logprobs_fb_softcap   the Triton row again through a Gemma-2 soft-capped head (c = 30).
  train          `python -m tokendpo.train` for 50 steps on a SmolLM2-135M-shaped Llama (random init, byte-level
                 tokenizer, synthetic pairs) with `--kernel triton --bf16` and `--kernel naive --bf16`;
                 max_abs_err is the largest |loss_triton − loss_naive| over the steps (verdict: ≤ LOSS_TOL_BF16);
                 the rows also carry the run's tokens_per_second and the loss curve.
  decode         `search.decode`'s greedy and 4-beam decoding of the trained policy against its reference:
                 ms per generated token (policy + reference, KV-cached), 8 prompts × 64 new tokens.

A check that fails records its error in the verdicts and the run goes on; the exit status is 1 if any did. The
kernel tests run last with the rest of BUDGET_S as their limit (compiling every variant dominates them on a
fresh machine); the tables list them first.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.gpu_check_report import markdown
from benchmarks.results_file import git_commit

ROOT = Path(__file__).resolve().parents[1]
RESULTS_JSON = ROOT / "benchmarks" / "results" / "gpu_check.json"
RESULTS_MD = ROOT / "benchmarks" / "RESULTS_gpu.md"
LOSS_TOL_BF16 = 2e-2  # |Δloss| per step between kernels under bf16 autocast (bf16's unit roundoff is 2^-8 ≈ 4e-3)
LOSS_TOL_FP32 = 1e-4  # the same on CPU in fp32 (the dry run)
ROW_KEYS = ("check", "impl", "dtype", "shape", "ms", "tflops", "pct_of_matmul", "max_abs_err")
ORDER = ("kernel_tests", "logprobs", "train", "decode")
BUDGET_S = 450  # the whole GPU run, inside the 8 minutes (startup and writing the files take the rest)


@dataclass(frozen=True)
class Plan:
    """What one run measures: the full GPU plan, or the dry run's tiny CPU plan (same code path)."""

    device: str
    bench_shapes: tuple  # (N, V, H)
    bench_dtypes: tuple
    repeats: int
    kernel_tests: tuple  # pytest arguments
    model: dict  # LlamaConfig fields of the training model
    train_steps: int
    batch_size: int
    max_length: int
    decode_prompts: int
    decode_tokens: int
    bf16: bool


def full_plan() -> Plan:
    return Plan(device="cuda", repeats=5,
                bench_shapes=tuple((16384, v, h) for v in (32000, 128256) for h in (576, 2048)),
                bench_dtypes=("bfloat16", "float32"),
                # the AOT compile is the CPU machine's check; the transformers import check needs no GPU
                kernel_tests=("tests/kernels", "-k", "not compiles_for_hopper and not transformers_loads"),
                model=dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                           num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048,
                           tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0),  # SmolLM2-135M
                train_steps=50, batch_size=8, max_length=256, decode_prompts=8, decode_tokens=64, bf16=True)


def dry_plan() -> Plan:
    import torch

    return Plan(device="cuda" if torch.cuda.is_available() else "cpu", repeats=1,
                bench_shapes=((64, 517, 24),), bench_dtypes=("bfloat16", "float32"),
                kernel_tests=("tests/kernels/test_logprobs_triton.py::test_triton_head_float64_equals_naive[softcap]",),
                model=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=300, max_position_embeddings=256,
                           tie_word_embeddings=True),
                train_steps=3, batch_size=2, max_length=96, decode_prompts=2, decode_tokens=4, bf16=False)


# ------------------------------------------------------------------------------------------------ helpers

T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_ci95(xs: list[float]) -> tuple[float, list[float] | None]:
    """Mean and its 95 % t-interval (None for a single sample)."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, None
    half = T95.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs))
    return m, [m - half, m + half]


def row(check, impl, dtype, shape, ms=None, tflops=None, pct=None, err=None, n=None, ci=None) -> dict:
    return {"check": check, "impl": impl, "dtype": dtype, "shape": shape, "ms": ms, "tflops": tflops,
            "pct_of_matmul": pct, "max_abs_err": err, "n": n, "ms_ci95": ci}


def timed(fn, device: str, repeats: int) -> list[float]:
    """Milliseconds of `fn()` per repeat after one warm-up call (which compiles the Triton kernels)."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()
    sync()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(1e3 * (time.perf_counter() - t0))
    return out


def _env(device: str) -> dict:
    """Child processes: Triton compiled on CUDA, interpreted on CPU; offline hub."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if device != "cuda":
        env["TRITON_INTERPRET"] = "1"
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ------------------------------------------------------------------------------------------------ checks

def check_kernel_tests(plan: Plan, timeout: float) -> tuple[list[dict], str | None]:
    """pytest on the kernel tests; past `timeout` the tests finished so far are counted from pytest's progress
    characters (compiling every kernel variant is most of the time on a fresh machine)."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plan.kernel_tests]
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=_env(plan.device), capture_output=True, text=True, timeout=timeout)
        stdout, code, note = out.stdout, out.returncode, out.stderr[-500:]
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        code, note = None, f"stopped after {timeout:.0f} s"
    ms = 1e3 * (time.perf_counter() - t0)
    tail = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    if code is not None:
        passed = int(m[1]) if (m := re.search(r"(\d+) passed", tail)) else 0
        failed = sum(int(m[1]) for m in re.finditer(r"(\d+) (?:failed|error)", tail))
    else:  # progress lines: one character per test
        progress = "".join(line.split(" ")[0] for line in stdout.splitlines() if re.fullmatch(r"[.FEsx]+( +\[.*\])?", line))
        passed, failed = progress.count("."), progress.count("F") + progress.count("E")
    impl = "triton (compiled)" if plan.device == "cuda" else "triton (interpreter)"
    shape = f"{passed} passed, {failed} failed" + ("" if code is not None else f" ({note})")
    rows = [row("kernel_tests", impl, "fp64,fp32,bf16,fp16", shape, ms=round(ms, 1), n=1)]
    error = None if code == 0 and passed > 0 else f"pytest exit {code}: {tail or note}"
    return rows, error


def _liger_step():
    """Liger's fused linear DPO loss (policy side only, no NLL), or None when liger_kernel is missing."""
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss
    except ImportError:
        return None
    try:
        loss_fn = LigerFusedLinearDPOLoss(beta=0.1, compute_nll_loss=False, use_ref_model=False)
    except TypeError:  # releases before use_ref_model
        loss_fn = LigerFusedLinearDPOLoss(beta=0.1, compute_nll_loss=False)

    def step(h, w, targets):
        n = h.shape[0] // 2 * 2  # chosen rows, then rejected rows: (2, N/2, H)
        out = loss_fn(w, h[:n].view(2, n // 2, -1), targets[:n].view(2, n // 2))
        (out[0] if isinstance(out, tuple) else out).backward()

    return step


def check_logprobs(plan: Plan) -> tuple[list[dict], str | None]:
    import torch

    from kernels import token_logprobs

    dev = plan.device
    liger = _liger_step() if dev == "cuda" else None
    rows, errors = [], []
    for N, V, H in plan.bench_shapes:
        shape = f"N={N} V={V} H={H}"
        g = torch.Generator().manual_seed(0)
        h32 = torch.randn(N, H, generator=g).to(dev)
        w32 = (torch.randn(V, H, generator=g) / H**0.5).to(dev)
        targets = torch.randint(0, V, (N,), generator=g).to(dev)
        targets[::17] = -100
        grad = torch.randn(N, generator=g).to(dev)
        useful = 6 * N * V * H  # three products of 2·N·V·H flops
        hb, wb = h32.to(torch.bfloat16), w32.to(torch.bfloat16)
        mm = timed(lambda: torch.mm(hb, wb.T), dev, plan.repeats) if dev == "cuda" else None
        mm_tflops = None
        if mm is not None:
            ms, ci = mean_ci95(mm)
            mm_tflops = 2 * N * V * H / (ms * 1e-3) / 1e12
            rows.append(row("matmul", "torch.mm", "bfloat16", shape, round(ms, 3), round(mm_tflops, 1), 100.0,
                            n=len(mm), ci=ci))
        for dname in plan.bench_dtypes:
            dtype = getattr(torch, dname)
            h, w = h32.to(dtype), w32.to(dtype)
            with torch.no_grad():  # the reference: fp32 naive on the same rounded inputs
                ref = token_logprobs(h.float(), w.float(), targets, impl="naive")
            impls = [("triton", {}), ("naive", {})]
            if dname == "bfloat16":
                impls.insert(1, ("triton", {"softcap": 30.0}))
            for impl, head in impls:
                check = "logprobs_fb_softcap" if head else "logprobs_fb"
                out_box = {}

                def step(impl=impl, head=head, out_box=out_box):
                    hh = h.detach().requires_grad_()
                    ww = w.detach().requires_grad_()
                    out = token_logprobs(hh, ww, targets, impl=impl, **head)
                    out.backward(grad)
                    out_box["logps"] = out.detach()

                try:
                    ts = timed(step, dev, plan.repeats)
                except Exception as e:  # noqa: BLE001 - an OOM or a compile error is a result, not a crash
                    errors.append(f"{check} {impl} {dname} {shape}: {type(e).__name__}: {str(e)[:200]}")
                    rows.append(row(check, impl, dname, shape))
                    continue
                ms, ci = mean_ci95(ts)
                tflops = useful / (ms * 1e-3) / 1e12
                if head:
                    with torch.no_grad():
                        want = token_logprobs(h.float(), w.float(), targets, impl="naive", **head)
                else:
                    want = ref
                err = float((out_box["logps"] - want).abs().max())
                rows.append(row(check, impl, dname, shape, round(ms, 3), round(tflops, 2),
                                round(100 * tflops / mm_tflops, 1) if mm_tflops else None, err, len(ts), ci))
                torch.cuda.empty_cache() if dev == "cuda" else None
            if liger is not None:
                try:
                    ts = timed(lambda: liger(h.detach().requires_grad_(), w.detach().requires_grad_(), targets),
                               dev, plan.repeats)
                    ms, ci = mean_ci95(ts)
                    tflops = useful / (ms * 1e-3) / 1e12
                    rows.append(row("logprobs_fb", "liger_dpo", dname, shape, round(ms, 3), round(tflops, 2),
                                    round(100 * tflops / mm_tflops, 1) if mm_tflops else None, None, len(ts), ci))
                except Exception as e:  # noqa: BLE001
                    errors.append(f"liger {dname} {shape}: {type(e).__name__}: {str(e)[:200]}")
        del h32, w32, hb, wb
    return rows, "; ".join(errors) or None


SYNTH_WORDS = ("good bad fine great poor nice awful kind rude calm loud soft warm cold bright dark quick slow "
               "happy sad").split()


def write_pairs(path: Path, n: int = 256) -> None:
    """Synthetic preference pairs (deterministic): the chosen reply repeats the prompt's first word."""
    import random

    rng = random.Random(0)
    with open(path, "w") as f:
        for _ in range(n):
            words = rng.sample(SYNTH_WORDS, 6)
            prompt = "Say a word like " + " ".join(words[:3]) + ":"
            f.write(json.dumps({"prompt": prompt, "chosen": " " + " ".join([words[0]] * 4) + ".",
                                "rejected": " " + " ".join(words[3:6]) + " no."}) + "\n")


def build_model(plan: Plan, out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tokendpo.modeling import byte_level_tokenizer

    tok = byte_level_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      **plan.model)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def _train(plan: Plan, model: Path, data: Path, out: Path, kernel: str, timeout: float) -> list[dict]:
    cmd = [sys.executable, "-m", "tokendpo.train", "--model", str(model), "--dataset", str(data),
           "--output_dir", str(out), "--max_steps", str(plan.train_steps), "--kernel", kernel,
           "--per_device_train_batch_size", str(plan.batch_size), "--max_length", str(plan.max_length),
           "--max_prompt_length", str(plan.max_length // 2),
           "--learning_rate", "1e-4", "--warmup_steps", "0", "--logging_steps", "1", "--seed", "0",
           "--save_steps", "0", "--device", plan.device, *(["--bf16"] if plan.bf16 else [])]
    res = subprocess.run(cmd, cwd=ROOT, env=_env(plan.device), capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"tokendpo.train --kernel {kernel} exit {res.returncode}: {res.stderr.strip()[-800:]}")
    metrics = [json.loads(line) for line in open(out / "metrics.jsonl")]
    return [m for m in metrics if "loss" in m]


def check_train(plan: Plan, work: Path, timeout: float) -> tuple[list[dict], str | None, Path | None]:
    model = build_model(plan, work / "base")
    data = work / "pairs.jsonl"
    write_pairs(data)
    curves = {}
    for kernel in ("triton", "naive"):
        curves[kernel] = _train(plan, model, data, work / f"dpo-{kernel}", kernel, timeout)
    a, b = curves["triton"], curves["naive"]
    if [r["step"] for r in a] != [r["step"] for r in b] or len(a) != plan.train_steps:
        return [], f"train: logged steps differ ({len(a)} vs {len(b)}, want {plan.train_steps})", None
    diff = max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b))
    tol = LOSS_TOL_BF16 if plan.bf16 else LOSS_TOL_FP32
    dtype = "bf16 autocast" if plan.bf16 else "float32"
    shape = (f"Llama H={plan.model['hidden_size']} L={plan.model['num_hidden_layers']} "
             f"V={plan.model['vocab_size']}, {plan.train_steps} steps × {plan.batch_size} pairs")
    rows = []
    for kernel, curve in curves.items():
        rows.append(row("train", kernel, dtype, shape, None, None, None,
                        round(diff, 6) if kernel == "triton" else 0.0, n=len(curve)))
        rows[-1]["tokens_per_second"] = round(curve[-1]["tokens_per_second"], 1)  # the run's mean rate
        rows[-1]["loss_first_last"] = [round(curve[0]["loss"], 5), round(curve[-1]["loss"], 5)]
        rows[-1]["losses"] = [round(r["loss"], 6) for r in curve]
    error = None if diff <= tol else f"train: loss curves differ by {diff:.3g} > {tol:g}"
    return rows, error, work / "dpo-triton"


def check_decode(plan: Plan, policy: Path, ref: Path) -> tuple[list[dict], str | None]:
    import torch

    from search.decode import load_pair, parse_args, run

    prompts = work_prompts(plan.decode_prompts)
    pfile = policy.parent / "prompts.jsonl"
    pfile.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    rows = []
    for method in (["--greedy"], ["--beam", "4"]):
        cfg = parse_args(["--policy", str(policy), "--ref", str(ref), "--prompts", str(pfile), *method,
                          "--max_new_tokens", str(plan.decode_tokens), "--batch_size", str(len(prompts)),
                          "--device", plan.device, "--beta", "0.1"])
        policy_m, ref_m, tok = load_pair(cfg, torch.device(plan.device))
        sync = torch.cuda.synchronize if plan.device == "cuda" else (lambda: None)
        times, tokens = [], 0
        for _ in range(1 + min(plan.repeats, 3)):  # the first pass warms up
            sync()
            t0 = time.perf_counter()
            recs = list(run(cfg, policy_m, ref_m, tok, prompts))
            sync()
            times.append(time.perf_counter() - t0)
            tokens = sum(len(r["token_ids"]) for r in recs)
        per_token = [1e3 * t / max(tokens, 1) for t in times[1:]]
        ms, ci = mean_ci95(per_token)
        name = "greedy" if method == ["--greedy"] else "beam4"
        rows.append(row("decode", name, "float32", f"{len(prompts)} prompts × ≤{plan.decode_tokens} tokens "
                        f"({tokens} generated)", round(ms, 3), n=len(per_token), ci=ci))
        del policy_m, ref_m
    return rows, None


def work_prompts(n: int) -> list[str]:
    return [f"Say a word like {' '.join(SYNTH_WORDS[i:i + 3])}:" for i in range(n)]


# ------------------------------------------------------------------------------------------------ driver

def run_checks(plan: Plan, work: Path, *, timeout: float = 480, budget: float = BUDGET_S) -> dict:
    """Every check in order; returns {"rows", "verdicts": {check: "ok" | error}}. The kernel tests run last, with
    what is left of `budget` seconds (at least 60) as their limit, so the measurements come in whatever happens."""
    rows, verdicts = [], {}
    start = time.perf_counter()

    def attempt(name, fn):
        t0 = time.perf_counter()
        try:
            got = fn()
        except Exception as e:  # noqa: BLE001 - one broken check must not hide the others
            verdicts[name] = f"{type(e).__name__}: {str(e)[:600]}"
            got = None
        print(f"# {name}: {verdicts.get(name, 'ok')} ({time.perf_counter() - t0:.0f} s)", flush=True)
        return got

    got = attempt("logprobs", lambda: check_logprobs(plan))
    if got:
        rows += got[0]
        verdicts["logprobs"] = got[1] or "ok"
    got = attempt("train", lambda: check_train(plan, work, timeout))
    policy = None
    if got:
        rows += got[0]
        verdicts["train"] = got[1] or "ok"
        policy = got[2]
    if policy is not None:
        got = attempt("decode", lambda: check_decode(plan, policy, work / "base"))
        if got:
            rows += got[0]
            verdicts["decode"] = got[1] or "ok"
    else:
        verdicts["decode"] = "skipped: no trained policy"
    left = max(60.0, budget - (time.perf_counter() - start))
    got = attempt("kernel_tests", lambda: check_kernel_tests(plan, min(timeout, left) if plan.device == "cuda"
                                                             else timeout))
    if got:
        rows = got[0] + rows
        verdicts["kernel_tests"] = got[1] or "ok"
    return {"rows": rows, "verdicts": dict(sorted(verdicts.items(), key=lambda kv: ORDER.index(kv[0])))}


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry_run", action="store_true",
                   help="CPU, tiny shapes, Triton in its interpreter; writes only under --out_dir")
    p.add_argument("--out_dir", default=None,
                   help="where the dry run writes its RESULTS_gpu.md and gpu_check.json (default: a temp dir)")
    p.add_argument("--timeout", type=float, default=480, help="seconds per child process")
    args = p.parse_args(argv)
    if args.dry_run and not os.environ.get("TRITON_INTERPRET"):
        import torch

        if not torch.cuda.is_available():  # before any @triton.jit is decorated
            os.environ["TRITON_INTERPRET"] = "1"
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device here; run with --dry_run to exercise the script on CPU",
              file=sys.stderr)
        return 2
    if not args.dry_run and args.out_dir:
        print("gpu_check: error: --out_dir is for --dry_run (the full run writes benchmarks/RESULTS_gpu.md and "
              "benchmarks/results/gpu_check.json)", file=sys.stderr)
        return 2
    if args.dry_run:
        out = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="gpu_check-dry-"))
        results = RESULTS_JSON.parent.resolve()
        if out.resolve() == results or results in out.resolve().parents:
            print("gpu_check: error: --dry_run never writes under benchmarks/results/", file=sys.stderr)
            return 2
        json_path, md_path = out / "gpu_check.json", out / "RESULTS_gpu.md"
    else:
        json_path, md_path = RESULTS_JSON, RESULTS_MD
    plan = dry_plan() if args.dry_run else full_plan()
    machine = (torch.cuda.get_device_name() if plan.device == "cuda" else
               f"{platform.machine()} CPU, {os.cpu_count()} cores") + f", torch {torch.__version__}"
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        result = run_checks(plan, Path(tmp), timeout=args.timeout)
    result.update(command="python -m benchmarks.gpu_check" + (" --dry_run" if args.dry_run else ""),
                  commit=git_commit(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), machine=machine)
    _atomic_write(json_path, json.dumps(result, indent=1) + "\n")
    _atomic_write(md_path, markdown(result, machine, args.dry_run))
    print(markdown(result, machine, args.dry_run))
    print(f"# wrote {md_path} and {json_path}")
    return 0 if all(v == "ok" for v in result["verdicts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
