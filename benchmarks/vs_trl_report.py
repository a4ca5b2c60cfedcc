"""The comparison half of `benchmarks.vs_trl`: throughput figures, the agreement gates and the Markdown report.

Kept apart from the runner so each file stays readable; everything here is pure bookkeeping over the workers'
JSON results (no torch work except `machine()`, which reads torch's version and thread count).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HPARAMS = dict(learning_rate=1e-4, warmup_steps=5, beta=0.1, seed=42, adam_beta1=0.9, adam_beta2=0.999,
               adam_epsilon=1e-8, max_grad_norm=1.0)
# Steps 1..10 are compared: the DPO quantities within TOL absolute; summed log-probs (|x| ~ 100-2000, where one
# fp32 rounding unit is 6e-6-1.2e-4, so 1e-4 absolute is below their resolution) and the gradient norm (which
# drifts most, see `logps_accuracy`) within REL_TOL relative; the LR identically. logits/* are reported, not
# gated: the two define the batch mean differently (see `compare`).
GATED_ABS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
GATED_REL = ("logps/chosen", "logps/rejected", "grad_norm")
REPORTED = GATED_ABS + GATED_REL + ("logits/chosen", "logits/rejected")
TOL = 1e-4
REL_TOL = {"logps/chosen": 1e-5, "logps/rejected": 1e-5, "grad_norm": 1e-4}


def throughput(result: dict, step_tokens: list[int]) -> dict[str, float]:
    """Tokens per second: over all steps and over steps 2..N (wall), the median of each step's rate over steps
    2..N (wall; the figure least moved by a burst of another job), and tokens per CPU-second of the process over
    steps 2..N (the figure least moved by load at all: time spent waiting for a core is not counted)."""
    t, cpu = result["times"], result["cpu"]
    per_step = [n / (b - a) for n, a, b in zip(step_tokens[1:], t, t[1:])]
    rest = sum(step_tokens[1:])
    return {"all": sum(step_tokens) / t[-1], "rest": rest / (t[-1] - t[0]), "median": statistics.median(per_step),
            "cpu": rest / (cpu[-1] - cpu[0])}


def compare(ours: list[dict], theirs: list[dict], n: int = 10) -> dict[str, tuple[float, float]]:
    """(max |tokendpo − TRL|, max |tokendpo − TRL| / |TRL|) over steps 1..n per metric.

    logits/*: tokendpo averages each sequence's mean logit over the batch; TRL pools all completion tokens of the
    batch (Σ logits / Σ tokens), so they agree only for equal lengths. Both log the LR the step used.
    """
    n = min(n, len(ours), len(theirs))
    out = {}
    for k in REPORTED + ("learning_rate",):
        d = [(abs(a[k] - b[k]), abs(a[k] - b[k]) / max(abs(b[k]), 1e-30)) for a, b in zip(ours[:n], theirs[:n])]
        out[k] = (max(x for x, _ in d), max(r for _, r in d))
    return out


def misses(diffs: dict[str, tuple[float, float]]) -> dict[str, str]:
    """Gates missed: GATED_ABS within TOL absolute; GATED_REL (values of magnitude ~10-1000) within REL_TOL
    relative; the learning rate identical."""
    out = {k: f"{diffs[k][0]:.1e} > {TOL}" for k in GATED_ABS if not diffs[k][0] <= TOL}
    out.update({k: f"{diffs[k][1]:.1e} > {REL_TOL[k]} relative" for k in GATED_REL if not diffs[k][1] <= REL_TOL[k]})
    if not diffs["learning_rate"][0] <= 1e-12:
        out["learning_rate"] = f"{diffs['learning_rate'][0]:.1e}"
    return out


def result_rows(runs: dict, preps: dict) -> list[dict]:
    """One row per model × loss for benchmarks/results/vs_trl.json: tokendpo over TRL, medians over runs.

    speed_ratio: tokens per CPU-second over steps 2..N; memory_ratio: peak RSS (VmHWM); max_abs_diff: max |Δ loss|
    over steps 1..10 of run 1. Each run is one pair of fresh processes, so `n_runs` is the n of the ratios (no
    interval is possible from one run; the per-run ratios are listed)."""
    rows = []
    for case, reps in runs.items():
        st = preps[case]["step_tokens"]
        speed = [throughput(r["results"]["tokendpo"], st)["cpu"] / throughput(r["results"]["trl"], st)["cpu"]
                 for r in reps]
        memory = [r["results"]["tokendpo"]["peak_rss"] / r["results"]["trl"]["peak_rss"] for r in reps]
        rows.append({"model": preps[case]["model"], "loss": preps[case]["loss"],
                     "speed_ratio": statistics.median(speed), "memory_ratio": statistics.median(memory),
                     "max_abs_diff": reps[0]["diffs"]["tokendpo"]["loss"][0], "speed_ratios": speed,
                     "memory_ratios": memory, "n_runs": len(reps), "steps": preps[case]["steps"],
                     "tokens_per_run": sum(st)})
    return rows


# ------------------------------------------------------------------------------------------ report

def _mib(x: float) -> str:
    return f"{x / 2**20:.0f}"


def machine() -> str:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor() or platform.machine())
    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True,
                               text=True).stdout.strip()
        return head + (" (+ uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def report(runs: dict, preps: dict, accuracy: dict, setup: dict, argv: list[str], quick: bool) -> str:
    import transformers
    import trl

    first = preps[next(iter(preps))]
    steps = ", ".join(f"{m} {preps[m]['steps']} steps × {len(runs[m])} run(s)" for m in runs)
    lines = [f"# tokendpo.train vs TRL DPOTrainer — {date.today()}", "",
             f"- machine: {machine()}; torch threads {setup['threads']} in every worker. The machine is shared "
             f"with other jobs (1-min load average {setup.get('load_start', float('nan')):.1f} at the start, "
             f"{setup.get('load_end', float('nan')):.1f} at the end, on {os.cpu_count()} cores): every run is a fresh subprocess, "
             "the frameworks alternate order run by run (A B C, C B A, ...), and speed ratios use tokens per "
             "CPU-second (process time, which excludes waiting for a core), with wall-clock figures beside them",
             f"- command: `{' '.join(['python -m benchmarks.vs_trl', *argv])}`",
             f"- commit: {commit()}; trl {trl.__version__}, transformers {transformers.__version__}",
             f"- job: {steps}; {setup['batch_size']} pairs per step from {first['n_pairs']} HH-RLHF harmless-base "
             f"pairs that fit max_prompt_length={setup['max_prompt_length']}, max_length={setup['max_length']} "
             f"untruncated (byte-level tokens); AdamW lr {HPARAMS['learning_rate']}, cosine to 0 at the last step, "
             f"warmup {HPARAMS['warmup_steps']}, β={HPARAMS['beta']}, the case's loss (TRL's loss_type / loss_weights / use_weighting), clip {HPARAMS['max_grad_norm']}, "
             "fp32 CPU, reference online, no gradient checkpointing",
             "- frameworks: `tokendpo` (defaults: padded batches), `trl` (DPOTrainer, configured to match), "
             "`tokendpo+packing` (tokendpo's `--packing`: padding-free rows; TRL 1.16 has disabled its padding_free)",
             ""]
    if quick:
        lines += ["**--quick smoke run: these numbers are not results.**", ""]
    lines += ["| model | framework | run | tok/s all steps | tok/s steps 2–N | median step tok/s | tok per CPU-s "
              "steps 2–N | peak RSS MiB | Δ peak − post-import RSS MiB | wall s incl. setup |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for model, reps in runs.items():
        for i, res in enumerate(reps):
            for fw, r in res["results"].items():
                tp = throughput(r, preps[model]["step_tokens"])
                lines.append(f"| {model} | {fw} | {i + 1} | {tp['all']:.0f} | {tp['rest']:.0f} | {tp['median']:.0f} | "
                             f"{tp['cpu']:.0f} | {_mib(r['peak_rss'])} | {_mib(r['peak_rss'] - r['base_rss'])} | "
                             f"{r['wall']:.1f} |")
    lines += ["", "tokendpo relative to TRL: median over runs (each run in parentheses). Targets: speed ≥ 1.5×, "
              "memory ratio < 1.", "",
              "| model | framework | speed: tok per CPU-s | speed: median step tok/s (wall) | peak RSS ratio | "
              "Δ-memory ratio |", "|---|---|---|---|---|---|"]
    for model, reps in runs.items():
        st = preps[model]["step_tokens"]
        for fw in [f for f in reps[0]["results"] if f != "trl"]:
            cells = []
            for ratio in (lambda o, t: throughput(o, st)["cpu"] / throughput(t, st)["cpu"],
                          lambda o, t: throughput(o, st)["median"] / throughput(t, st)["median"],
                          lambda o, t: o["peak_rss"] / t["peak_rss"],
                          lambda o, t: (o["peak_rss"] - o["base_rss"]) / (t["peak_rss"] - t["base_rss"])):
                xs = [ratio(res["results"][fw], res["results"]["trl"]) for res in reps]
                cells.append(f"{statistics.median(xs):.2f}" + (f" ({', '.join(f'{x:.2f}' for x in xs)})"
                                                               if len(xs) > 1 else ""))
            lines.append(f"| {model} | {fw} | " + " | ".join(cells) + " |")
    lines += ["", "Agreement with TRL over steps 1–10 of run 1: max |Δ| (max relative Δ). Gates: "
              f"{', '.join(GATED_ABS)} "
              f"≤ {TOL} absolute; logps/* ≤ {REL_TOL['logps/chosen']} and grad_norm ≤ {REL_TOL['grad_norm']} relative "
              "(see below); learning_rate identical. logits/* are not gated: tokendpo averages per-sequence mean "
              "logits, TRL pools the tokens of the batch.", "",
              "| model | framework | " + " | ".join(REPORTED + ("learning_rate",)) + " | gates missed |",
              "|---" * (len(REPORTED) + 4) + "|"]
    for model, reps in runs.items():
        for fw, d in reps[0]["diffs"].items():
            missed = misses(d)
            lines.append(f"| {model} | {fw} | " + " | ".join(f"{d[k][0]:.1e} ({d[k][1]:.0e})"
                                                            for k in REPORTED + ("learning_rate",))
                         + f" | {'; '.join(f'{k}: {v}' for k, v in missed.items()) or 'none'} |")
    lines += ["", "Why they are not bit-identical. Step 1's batch through one fp32 body (the same hidden states for "
              "both), then each framework's LM head: per-sequence summed log-probs against float64, and the "
              "gradient of Σ(chosen − rejected) log-probs:", "",
              "| model | max abs logp | fp32 unit there | tokendpo − fp64 | TRL − fp64 | tokendpo − TRL | "
              "‖Δgrad‖/‖grad‖ | Adam first-update sign flips | ‖Δupdate‖/‖update‖ |",
              "|---|---|---|---|---|---|---|---|---|"]
    for model, a in accuracy.items():
        lines.append(f"| {model} | {a['max_abs_logp']:.1f} | {a['ulp']:.1e} | {a['tokendpo_vs_fp64']:.1e} | "
                     f"{a['trl_vs_fp64']:.1e} | {a['tokendpo_vs_trl']:.1e} | {a['grad_rel']:.1e} | "
                     f"{a['sign_flips']} of {a['params']} | {a['update_rel']:.1e} |")
    lines += ["", "The body, loss, optimizer, schedule and data are the same; only the fp32 LM-head arithmetic differs "
              "(tokendpo: online log-sum-exp over 1024-column vocabulary tiles on response positions only; TRL: "
              "one 32768-column tile over every position, so GEMMs of other shapes). Each token's log-prob rounds "
              "differently by about one unit, the summed log-probs by a few units of their own magnitude (both "
              "equally close to float64), and the gradients by ~1e-7 relative. Step 1 is identical (its LR is 0 in "
              "the warmup). From step 2 on the roundings enter the weights, and Adam amplifies them: its first "
              "update is ±lr per component whatever the gradient's size, so a component whose sign the two "
              "roundings disagree on ends 2·lr apart. The trajectories then drift apart slowly: the DPO quantities "
              "(loss, rewards) stay within 1e-4 over the first 10 steps; grad_norm (magnitude 2-50) drifts most.",
              ""]
    for model, reps in runs.items():
        ours, theirs = reps[0]["results"]["tokendpo"]["rows"], reps[0]["results"]["trl"]["rows"]
        n = len(ours)
        show = sorted(set(range(min(10, n))) | set(range(9, n, 5)) | {n - 1})
        lines += [f"Trajectory, {model} (run 1): tokendpo / TRL", "",
                  "| step | loss | rewards/margins | rewards/accuracies | logps/chosen | logps/rejected | grad_norm |",
                  "|---|---|---|---|---|---|---|"]
        for k in show:
            a, b = ours[k], theirs[k]
            lines.append(f"| {k + 1} | " + " | ".join(
                f"{a[m]:.6f} / {b[m]:.6f}" if abs(a[m]) < 100 else f"{a[m]:.4f} / {b[m]:.4f}"
                for m in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected",
                          "grad_norm")) + " |")
        lines.append("")
    return "\n".join(lines)
