"""Headroom of the built-in tasks: does search have room on each task's DPO policies?

Per task, one SFT model and one set of preference pairs (`tokendpo.tasks.pipeline`), then one DPO policy per
recipe ("plain": rpo_alpha = 0, the theory-facing one; "rpo": + an NLL term). On `--n_prompts` held-out prompts
(256 by default), per policy (and for the SFT reference):

    sample_gold               mean over prompts of the mean gold r*(x, y) of 16 temperature-1 samples
    greedy_gold               mean r*(x, y_greedy)
    oracle_bon16_gold         mean over prompts of max_j r*(x, y_j) over the 16 samples: the upper bound of any
                              reranker of 16 samples (best-of-16 with the gold itself as the judge)
    greedy_at_ceiling_share   share of prompts where r*(x, y_greedy) equals the task's TRUE per-prompt maximum
                              (`task.ceiling(prompt)`), not the best that some decoder found
    ceiling                   mean over prompts of that maximum

Intervals (95 %): means ± 1.96·s/√n over prompts; the share by Wilson; the headroom oracle − greedy by the same
normal interval over per-prompt differences (paired). Targets (issue 14): oracle − greedy ≥ 0.25 gold and greedy at
the ceiling on ≤ 50 % of prompts, for the plain-DPO policy.

    python -m benchmarks.tasks_report --num_threads 1              # full: trains what is missing, then measures
    python -m benchmarks.tasks_report --stage train --tasks arithmetic
    python -m benchmarks.tasks_report --quick --root /tmp/tr        # a smoke run; never writes benchmarks/results

Training output: ROOT/TASK/ (the plain recipe's pipeline dir: sft/, pairs*.jsonl, dpo/, summary.json) and
ROOT/TASK/rpo/ (dpo/, summary.json: the RPO policy on the same SFT model and pairs). Full runs write
benchmarks/results/tasks.json (rows `{"task", "recipe", "n_prompts", "sample_gold", "greedy_gold",
"oracle_bon16_gold", "greedy_at_ceiling_share", "ceiling", "ci": {...}}`) and ROOT/tasks_report.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks.results_file import command_line, write_results
from tokendpo.modeling import load_model, load_tokenizer
from tokendpo.tasks import TASKS, get_task
from tokendpo.tasks.metrics import mean_interval, wilson_interval
from tokendpo.tasks.pipeline import PipelineSettings, run_pipeline, stage_dpo, stage_eval
from tokendpo.tasks.sampling import sample

RECIPES = ("plain", "rpo")
N_SAMPLES = 16
# tiny sizes for the smoke run (the pipeline's own `quick` is minutes; this is seconds)
QUICK = {"sft_examples": 400, "sft_steps": 10, "sft_batch_size": 16, "pair_prompts": 24, "k": 2,
         "eval_pair_prompts": 8, "dpo_steps": 4, "dpo_max_epochs": 1000.0, "dpo_batch_size": 4, "eval_prompts": 8}
# the fields the SFT and pair stages read: two recipes may share those stages only if these agree
SHARED_FIELDS = ("sft_examples", "sft_steps", "sft_batch_size", "sft_lr", "pair_prompts", "k", "eval_pair_prompts",
                 "label_temperature", "argmax", "max_new_tokens", "seed")


def policy_dir(root: Path, task: str, recipe: str) -> Path:
    """Where a recipe's DPO policy lives (the plain recipe is the pipeline dir's own dpo/)."""
    return root / task / "dpo" if recipe == "plain" else root / task / recipe / "dpo"


def train_task(task_name: str, root: Path, *, seed: int, quick: bool, recipes=RECIPES, progress=False) -> None:
    """Pipeline (plain recipe) in ROOT/TASK, then every other recipe's DPO + eval on the same SFT model and pairs."""
    task = get_task(task_name)
    over = QUICK if quick else {}
    base = root / task_name
    run_pipeline(task_name, str(base), seed=seed, recipe="plain", progress=progress, print_summary=True, **over)
    plain = asdict(PipelineSettings.resolve(task, seed=seed, recipe="plain", **over))
    for recipe in recipes:
        if recipe == "plain":
            continue
        s = PipelineSettings.resolve(task, seed=seed, recipe=recipe, **over)
        differ = [f for f in SHARED_FIELDS if asdict(s)[f] != plain[f]]
        if differ:
            raise ValueError(f"{task_name}: recipe {recipe!r} differs from 'plain' in SFT/pair settings {differ}")
        out = base / recipe
        out.mkdir(parents=True, exist_ok=True)
        stage_dpo(s, base / "sft", base / "pairs.jsonl", base / "pairs_eval.jsonl", out / "dpo", progress=progress)
        stage_eval(task, s, base / "sft", out / "dpo", base / "pairs_eval.jsonl", out / "summary.json",
                   progress=progress)


@torch.no_grad()
def headroom(task, model_dir: Path, tokenizer, prompts: list[str], *, n_samples: int, max_new_tokens: int,
             seed: int) -> dict:
    """The row's figures for one policy (see the module docstring)."""
    model = load_model(str(model_dir)).eval()
    golds = [[] for _ in prompts]  # (n_prompts, n_samples)
    for j in range(n_samples):
        texts, _ = sample(model, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed + 1000 * j)
        for g, p, y in zip(golds, prompts, texts):
            g.append(task.gold_reward(p, y))
    greedy, _ = sample(model, tokenizer, prompts, max_new_tokens=max_new_tokens, greedy=True, seed=seed)
    greedy_gold = [task.gold_reward(p, y) for p, y in zip(prompts, greedy)]
    ceilings = [task.ceiling(p) for p in prompts]
    at_ceiling = sum(g >= c - 1e-9 for g, c in zip(greedy_gold, ceilings))
    sample_mean = [sum(g) / len(g) for g in golds]
    oracle = [max(g) for g in golds]
    n = len(prompts)
    m_s, m_g, m_o = mean_interval(sample_mean), mean_interval(greedy_gold), mean_interval(oracle)
    gap = mean_interval([o - g for o, g in zip(oracle, greedy_gold)])
    share = at_ceiling / n
    return {
        "n_prompts": n, "n_samples": n_samples,
        "sample_gold": m_s[0], "greedy_gold": m_g[0], "oracle_bon16_gold": m_o[0],
        "greedy_at_ceiling_share": share, "greedy_at_ceiling": at_ceiling,
        "ceiling": sum(ceilings) / n,
        "oracle_minus_greedy": gap[0],
        "ci": {"sample_gold": list(m_s[1:]), "greedy_gold": list(m_g[1:]), "oracle_bon16_gold": list(m_o[1:]),
               "greedy_at_ceiling_share": list(wilson_interval(at_ceiling, n)),
               "oracle_minus_greedy": list(gap[1:])},
        "greedy_distinct": len(set(greedy)) / n,
        "examples": [{"prompt": p, "greedy": y, "gold": g} for p, y, g in list(zip(prompts, greedy, greedy_gold))[:3]],
    }


def report(tasks, root: Path, *, seed: int, n_prompts: int, n_samples: int, quick: bool,
           recipes=RECIPES) -> list[dict]:
    rows = []
    for task_name in tasks:
        task = get_task(task_name)
        s = PipelineSettings.resolve(task, seed=seed, recipe="plain", **(QUICK if quick else {}))
        sft = root / task_name / "sft"
        tokenizer = load_tokenizer(str(sft))
        prompts = task.prompts("heldout", n_prompts, seed=seed + 5)
        for recipe, d in [("sft", sft)] + [(r, policy_dir(root, task_name, r)) for r in recipes]:
            # measured rows are kept beside the policy and reused while the policy and the settings are the same
            cache = root / task_name / f"headroom_{recipe}.json"
            key = {"n_prompts": n_prompts, "n_samples": n_samples, "seed": seed,
                   "model_mtime_ns": (d / "model.safetensors").stat().st_mtime_ns}
            cached = json.loads(cache.read_text()) if cache.exists() else {}
            if cached.get("key") == key:
                row = cached["row"]
            else:
                row = {"task": task_name, "recipe": recipe,
                       **headroom(task, d, tokenizer, prompts, n_samples=n_samples,
                                  max_new_tokens=s.max_new_tokens, seed=seed + 77)}
                cache.write_text(json.dumps({"key": key, "row": row}, indent=1) + "\n")
            row["targets_met"] = {"oracle_minus_greedy>=0.25": row["oracle_minus_greedy"] >= 0.25,
                                  "greedy_at_ceiling<=0.5": row["greedy_at_ceiling_share"] <= 0.5}
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def format_row(r: dict) -> str:
    ci = r["ci"]

    def f(k):
        return f"{r[k]:+.3f} [{ci[k][0]:+.3f}, {ci[k][1]:+.3f}]"

    return (f"{r['task']:<11}{r['recipe']:<7} n={r['n_prompts']:<4} sample {f('sample_gold')}  greedy {f('greedy_gold')}"
            f"  oracle-bo{r['n_samples']} {f('oracle_bon16_gold')}  gap {f('oracle_minus_greedy')}  greedy@ceiling "
            f"{r['greedy_at_ceiling']}/{r['n_prompts']} = {r['greedy_at_ceiling_share']:.3f} "
            f"[{ci['greedy_at_ceiling_share'][0]:.3f}, {ci['greedy_at_ceiling_share'][1]:.3f}]  "
            f"ceiling {r['ceiling']:.4f}")


def markdown(rows: list[dict], command: str) -> str:
    lines = [f"    {command}", "",
             "| task | policy | n | sample gold | greedy gold | oracle best-of-16 | oracle − greedy | greedy at ceiling | "
             "ceiling |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = r["ci"]

        def f(k):
            return f"{r[k]:.3f} [{ci[k][0]:.3f}, {ci[k][1]:.3f}]"

        lines.append(f"| {r['task']} | {r['recipe']} | {r['n_prompts']} | {f('sample_gold')} | {f('greedy_gold')} | "
                     f"{f('oracle_bon16_gold')} | {f('oracle_minus_greedy')} | {r['greedy_at_ceiling']}/"
                     f"{r['n_prompts']} = {f('greedy_at_ceiling_share')} | {r['ceiling']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tasks_report", description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="sentiment,arithmetic", help="comma-separated built-in tasks")
    ap.add_argument("--recipes", default="plain,rpo")
    ap.add_argument("--root", default="outputs/tasks", help="training outputs (reused when complete)")
    ap.add_argument("--stage", choices=("all", "train", "report"), default="all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n_prompts", type=int, default=256)
    ap.add_argument("--n_samples", type=int, default=N_SAMPLES)
    ap.add_argument("--num_threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--quick", action="store_true", help="tiny training and 8 prompts; writes no results file")
    ap.add_argument("--results_dir", default=None, help=argparse.SUPPRESS)  # tests: keep benchmarks/results clean
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tasks = [t for t in a.tasks.split(",") if t]
    recipes = [r for r in a.recipes.split(",") if r]
    bad = [t for t in tasks if t not in TASKS] + [r for r in recipes if r not in RECIPES]
    if bad or not tasks or "plain" not in recipes:
        print(f"error: unknown task/recipe {bad}; tasks: {', '.join(TASKS)}; recipes: {', '.join(RECIPES)} "
              f"(plain is required)" if bad else "error: need at least one task and the plain recipe",
              file=sys.stderr)
        return 2
    if a.n_prompts < 1 or a.n_samples < 1:
        print("error: --n_prompts and --n_samples must be >= 1", file=sys.stderr)
        return 2
    if a.num_threads:
        torch.set_num_threads(a.num_threads)
    root = Path(a.root)
    n_prompts = 8 if a.quick else a.n_prompts
    try:
        if a.stage in ("all", "train"):
            for t in tasks:
                train_task(t, root, seed=a.seed, quick=a.quick, recipes=recipes)
        if a.stage in ("all", "report"):
            rows = report(tasks, root, seed=a.seed, n_prompts=n_prompts, n_samples=a.n_samples, quick=a.quick,
                          recipes=recipes)
            command = command_line("benchmarks.tasks_report", argv)
            (root / "tasks_report.md").write_text(markdown(rows, command))
            if not a.quick:
                path = write_results("tasks", rows, command,
                                     directory=Path(a.results_dir) if a.results_dir else None)
                print(f"wrote {path}")
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
