"""Likelihood dynamics of plain DPO from an SFT reference: do the chosen responses lose likelihood, as the paper's
Eq. 16 predicts?

Rafailov et al. (2024, §5.3, Eq. 16): E_{y∼π_ref}[β·log π(y|x)/π_ref(y|x)] = −β·KL(π_ref ‖ π) ≤ 0. That identity
holds for any π and is no test of DPO. What it predicts for DPO is: when the preference data are (close to)
draws of π_ref — as in an SFT-started run, whose pairs are the SFT model's own samples — the chosen responses'
implicit reward, hence their log-likelihood, falls during training, even while the chosen − rejected margin
grows. Whether it does is an empirical question about DPO: the chosen responses are a selected subset of π_ref's
samples (the preferred ones), which DPO pushes up relative to the rest.

This script runs (or reuses) the built-in pipeline's SFT and pair stages, trains plain DPO (rpo_alpha = 0, the
task's plain recipe) with a checkpoint every `--every` steps, and at each checkpoint measures on FIXED pairs —
256 of the training pairs DPO learns from, and the held-out eval pairs —

    Δ chosen     mean over pairs of log π(y_c|x) − log π_ref(y_c|x)   (nats; β·Δ is the implicit reward)
    Δ rejected   the same for y_r
    margin       mean of β·(Δ chosen − Δ rejected)
    Eq. 16       the prediction for a π_ref draw: mean over 256 fresh π_ref samples of log π/π_ref
                 (= −KL(π_ref‖π) in expectation)

each with its 95 % interval (mean ± 1.96·s/√n over pairs or samples), plus the gold reward of the checkpoint's
temperature-1 samples. The prediction "the chosen likelihood falls" holds at a checkpoint when the interval of
Δ chosen lies below 0.

    python -m benchmarks.likelihood_dynamics --base outputs/tasks/sentiment --num_threads 1
    python -m benchmarks.likelihood_dynamics --quick --output_dir /tmp/ld     # a seconds-long smoke run

Writes OUTPUT_DIR/likelihood_dynamics.json and .png; a full run (not --quick) also writes
benchmarks/results/likelihood_dynamics.json (one row per (checkpoint, pair set)).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from benchmarks.results_file import command_line, write_results
from tokendpo.credit import token_logps_rows
from tokendpo.modeling import load_model, load_tokenizer
from tokendpo.tasks import DEFAULT_TASK, TASKS, get_task
from tokendpo.tasks.evaluate import log_ratios
from tokendpo.tasks.metrics import mean_interval
from tokendpo.tasks.pipeline import PipelineSettings, dpo_config, run_pipeline
from tokendpo.tasks.sampling import sample

QUICK = {"sft_examples": 400, "sft_steps": 10, "sft_batch_size": 16, "pair_prompts": 24, "k": 2,
         "eval_pair_prompts": 8, "dpo_steps": 4, "dpo_max_epochs": 1000.0, "dpo_batch_size": 4, "eval_prompts": 8}
RECIPE = "plain"
N_TRAIN_PAIRS = 256


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def seq_logps(model, tokenizer, prompts: list[str], responses: list[str]) -> list[float]:
    """log π(y|x) summed over the response tokens (EOS appended, as in training)."""
    return [sum(row) for row in token_logps_rows(model, tokenizer, prompts, responses)]


def pair_stats(policy_lp: dict, ref_lp: dict, beta: float) -> dict:
    """Means and 95 % intervals of Δ chosen, Δ rejected and the margin over pairs (lists aligned by pair)."""
    dc = [p - r for p, r in zip(policy_lp["chosen"], ref_lp["chosen"])]
    dr = [p - r for p, r in zip(policy_lp["rejected"], ref_lp["rejected"])]
    out = {"n": len(dc)}
    for name, xs in (("chosen_dlogp", dc), ("rejected_dlogp", dr),
                     ("margin", [beta * (a - b) for a, b in zip(dc, dr)])):
        m, lo, hi = mean_interval(xs)
        out[name], out[name + "_ci"] = m, [lo, hi]
    return out


def run(task_name: str, output_dir: Path, *, every: int, n_samples: int, seed: int, quick: bool,
        base: Path | None = None) -> dict:
    task = get_task(task_name)
    overrides = QUICK if quick else {}
    if base is None:
        base = output_dir / "pipeline"
        run_pipeline(task_name, str(base), seed=seed, recipe=RECIPE, stages=("sft", "pairs"), print_summary=False,
                     progress=False, **overrides)
    elif not ((base / "sft" / ".complete").exists() and (base / "pairs.jsonl").exists()):
        raise ValueError(f"--base {base}: needs a pipeline output dir with a finished sft/ and pairs.jsonl")
    s = PipelineSettings.resolve(task, seed=seed, recipe=RECIPE, **overrides)
    if s.rpo_alpha != 0:
        raise ValueError(f"task {task_name!r}: its {RECIPE!r} recipe has rpo_alpha {s.rpo_alpha}; this needs plain DPO")
    dpo_dir = output_dir / "dpo"
    if dpo_dir.exists():  # checkpoints of an earlier run would mix in: start clean
        shutil.rmtree(dpo_dir)
    cfg = dpo_config(s, base / "sft", base / "pairs.jsonl", base / "pairs_eval.jsonl", dpo_dir, progress=False)
    cfg.train.save_steps = every
    from tokendpo.training import train

    t0 = time.perf_counter()
    train(cfg)
    train_s = time.perf_counter() - t0

    tokenizer = load_tokenizer(str(base / "sft"))
    reference = load_model(str(base / "sft")).eval()
    pair_sets = {"train": read_jsonl(base / "pairs.jsonl")[:N_TRAIN_PAIRS],
                 "heldout": read_jsonl(base / "pairs_eval.jsonl")}
    prompts = task.prompts("heldout", n_samples, seed=seed + 2)
    _, ref_ids = sample(reference, tokenizer, prompts, max_new_tokens=s.max_new_tokens, seed=seed + 3)

    def logps(model, pairs):
        ps = [p["prompt"] for p in pairs]
        return {k: seq_logps(model, tokenizer, ps, [p[k] for p in pairs]) for k in ("chosen", "rejected")}

    ref_lp = {name: logps(reference, pairs) for name, pairs in pair_sets.items()}
    steps = sorted(int(p.name.split("-")[1]) for p in dpo_dir.glob("checkpoint-*"))
    points = []
    for step in [0] + steps:
        policy = reference if step == 0 else load_model(str(dpo_dir / f"checkpoint-{step}")).eval()
        eq16 = mean_interval(log_ratios(policy, reference, tokenizer, prompts, ref_ids))
        texts, _ = sample(policy, tokenizer, prompts, max_new_tokens=s.max_new_tokens, seed=seed + 4)
        gold = mean_interval([task.gold_reward(p, y) for p, y in zip(prompts, texts)])
        point = {"step": step, "eq16_prediction": eq16[0], "eq16_prediction_ci": list(eq16[1:]),
                 "gold_reward": gold[0], "gold_reward_ci": list(gold[1:])}
        for name, pairs in pair_sets.items():
            point[name] = pair_stats(logps(policy, pairs), ref_lp[name], s.beta)
        points.append(point)

    rows = [r for r in read_jsonl(dpo_dir / "metrics.jsonl") if "loss" in r]
    return {"task": task_name, "recipe": RECIPE, "beta": s.beta, "dpo_steps": cfg.train.max_steps,
            "n_ref_samples": n_samples, "n_pairs": {k: len(v) for k, v in pair_sets.items()},
            "train_seconds": round(train_s, 1), "points": points,
            "per_step": [{k: r.get(k) for k in ("step", "logps/chosen", "logps/rejected", "rewards/chosen",
                                                "rewards/rejected", "rewards/margins")} for r in rows]}


def result_rows(result: dict) -> list[dict]:
    """One row per (checkpoint, pair set) for benchmarks/results/likelihood_dynamics.json."""
    out = []
    for p in result["points"]:
        for name in ("train", "heldout"):
            st = p[name]
            out.append({"task": result["task"], "recipe": result["recipe"], "step": p["step"], "pairs": name,
                        "n": st["n"], "chosen_dlogp": st["chosen_dlogp"], "rejected_dlogp": st["rejected_dlogp"],
                        "margin": st["margin"],
                        "eq16_prediction": p["eq16_prediction"], "n_ref_samples": result["n_ref_samples"],
                        "chosen_falls": st["chosen_dlogp_ci"][1] < 0,
                        "ci": {"chosen_dlogp": st["chosen_dlogp_ci"], "rejected_dlogp": st["rejected_dlogp_ci"],
                               "margin": st["margin_ci"], "eq16_prediction": p["eq16_prediction_ci"]}})
    return out


def moving_average(xs: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values (train-batch metrics are noisy: each step sees other pairs)."""
    return [sum(xs[max(0, i - window + 1): i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(xs))]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result["points"]
    xs = [p["step"] for p in pts]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, name in zip(axes, ("train", "heldout")):
        for key, colour, label in (("chosen_dlogp", "C0", "chosen"), ("rejected_dlogp", "C1", "rejected")):
            ys = [p[name][key] for p in pts]
            err = [[y - p[name][key + "_ci"][0] for y, p in zip(ys, pts)],
                   [p[name][key + "_ci"][1] - y for y, p in zip(ys, pts)]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color=colour,
                        label=f"Δ log π({label}) (95 % CI)")
        eq = [p["eq16_prediction"] for p in pts]
        ax.errorbar(xs, eq, yerr=[[e - p["eq16_prediction_ci"][0] for e, p in zip(eq, pts)],
                                  [p["eq16_prediction_ci"][1] - e for e, p in zip(eq, pts)]],
                    marker="s", capsize=3, color="grey", ls="--", label="Eq. 16: E_ref[log π/π_ref]")
        ax.axhline(0.0, color="black", lw=0.6)
        ax.set_xlabel("DPO step")
        ax.set_ylabel("log π − log π_ref (nats)")
        ax.set_title(f"{name} pairs (n = {pts[0][name]['n']})")
        ax.legend(fontsize=8)
    fig.suptitle(f"{result['task']}: plain DPO from SFT, β = {result['beta']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(result: dict) -> str:
    lines = [f"{'step':>5} {'pairs':>8} {'Δ chosen':>24} {'Δ rejected':>24} {'margin':>24} {'Eq.16 E_ref':>24} "
             f"{'gold':>7}"]

    def f(x, ci):
        return f"{x:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"

    for p in result["points"]:
        for name in ("train", "heldout"):
            st = p[name]
            lines.append(f"{p['step']:>5} {name:>8} {f(st['chosen_dlogp'], st['chosen_dlogp_ci']):>24} "
                         f"{f(st['rejected_dlogp'], st['rejected_dlogp_ci']):>24} {f(st['margin'], st['margin_ci']):>24} "
                         f"{f(p['eq16_prediction'], p['eq16_prediction_ci']):>24} {p['gold_reward']:>+7.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.likelihood_dynamics", description=__doc__.split("\n")[0])
    ap.add_argument("--task", default=DEFAULT_TASK, choices=sorted(TASKS))
    ap.add_argument("--output_dir", default="outputs/likelihood_dynamics")
    ap.add_argument("--every", type=int, default=25, help="checkpoint (and measure) every N DPO steps")
    ap.add_argument("--n_samples", type=int, default=256, help="reference samples for the Eq. 16 prediction")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num_threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run; writes no results file")
    ap.add_argument("--base", default=None, help="reuse sft/ and pairs*.jsonl of this pipeline output dir "
                                                 "(e.g. outputs/tasks/sentiment) instead of running those stages")
    ap.add_argument("--results_dir", default=None, help=argparse.SUPPRESS)  # tests: keep benchmarks/results clean
    a = ap.parse_args(argv)
    if a.every < 1 or a.n_samples < 2:
        print("error: --every must be >= 1 and --n_samples >= 2", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.num_threads:
        torch.set_num_threads(a.num_threads)
    every, n = (2, 8) if a.quick else (a.every, a.n_samples)
    out = Path(a.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        result = run(a.task, out, every=every, n_samples=n, seed=a.seed, quick=a.quick,
                     base=Path(a.base) if a.base else None)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result["command"] = command_line("benchmarks.likelihood_dynamics", argv)
    (out / "likelihood_dynamics.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out / "likelihood_dynamics.png")
    print(f"# {result['command']}   (plain DPO {result['train_seconds']} s)")
    print(format_table(result))
    print(f"wrote {out / 'likelihood_dynamics.json'} and {out / 'likelihood_dynamics.png'}")
    if not a.quick:
        path = write_results("likelihood_dynamics", result_rows(result), result["command"],
                             directory=Path(a.results_dir) if a.results_dir else None)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
