"""Credit assignment on the `arithmetic` task, measured against baselines on the reference's own mistakes.

Data: the SFT model's (= the DPO reference's) own temperature-1 answers to held-out prompts, kept when wrong and
stratified by the position of the first wrong token: `--per_position` answers for each of the L + 1 = 5 answer
positions (four digits, then the EOS), n = 5·per_position (≥ 300). The same answers are scored for every policy.
A secondary set ("natural") is the first n wrong answers in the order they were drawn, unstratified.

Methods (each blames one token per answer; a hit is blaming the first wrong token):

    implicit            argmin_t r_t, r_t = β·log π(y_t|·)/π_ref(y_t|·)   (the DPO token reward)
    random              a uniformly random token (its expected hit rate)
    positional          always the most frequent first-error position of the natural pool
    argmin_logp_policy  argmin_t log π(y_t|·)
    argmin_logp_ref     argmin_t log π_ref(y_t|·)

Scopes: "all" (argmin over every response token, EOS included) and "up_to_first_error" (over t ≤ first error).
Every rate carries its Wilson 95 % interval. Policies: the plain-DPO policy (rpo_alpha = 0) and the RPO variant,
both trained by `benchmarks.tasks_report` on the same SFT model and pairs.

Goal (issue 14, plain DPO, stratified, all positions): implicit ≥ 80 %, ≥ 15 points above the best baseline,
with its interval clear of every baseline's interval.

    python -m benchmarks.credit_report --root outputs/tasks --num_threads 1

Writes ROOT/arithmetic/credit_RECIPE.{html,png} (heatmaps of stratified samples, spread over the positions),
ROOT/credit_report.md and, unless --quick, benchmarks/results/credit.json (rows `{"task", "recipe", "scope",
"method", "n", "rate", "ci": [lo, hi], "samples"}`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from benchmarks.results_file import command_line, write_results
from benchmarks.tasks_report import policy_dir
from tokendpo.credit import (METHODS, collect_wrong_samples, credit_on_task, format_rows, pick_views,
                             training_beta, write_views)
from tokendpo.modeling import load_model, load_tokenizer
from tokendpo.tasks import get_task

TASK = "arithmetic"
BASELINES = tuple(m for m in METHODS if m != "implicit")


def verdict(rows: list[dict], recipe: str = "plain") -> dict:
    """The issue's goal on the stratified set, all positions: implicit rate, best baseline, and whether the
    implicit interval is clear of every baseline interval."""
    sel = {r["method"]: r for r in rows if r["recipe"] == recipe and r["scope"] == "all"
           and r.get("samples", "stratified") == "stratified"}
    imp = sel["implicit"]
    best = max(BASELINES, key=lambda m: sel[m]["rate"])
    clear = all(imp["ci"][0] > sel[m]["ci"][1] for m in BASELINES)
    return {"recipe": recipe, "implicit": imp["rate"], "best_baseline": best, "best_baseline_rate": sel[best]["rate"],
            "margin_points": 100 * (imp["rate"] - sel[best]["rate"]), "interval_clear": clear,
            "goal_met": imp["rate"] >= 0.8 and imp["rate"] - sel[best]["rate"] >= 0.15 and clear}


def run(root: Path, *, per_position: int, seed: int, recipes=("plain", "rpo"), max_rounds: int = 40,
        examples: int = 10) -> tuple[list[dict], dict]:
    task = get_task(TASK)
    sft = root / TASK / "sft"
    tokenizer = load_tokenizer(str(sft))
    reference = load_model(str(sft)).eval()
    samples = collect_wrong_samples(task, reference, tokenizer, per_position=per_position, seed=seed,
                                    max_new_tokens=task.recipe.max_new_tokens, max_rounds=max_rounds)
    rows, info = [], {}
    for recipe in recipes:
        d = policy_dir(root, TASK, recipe)
        policy = load_model(str(d)).eval()
        beta = training_beta(str(d))
        r, shown, info = credit_on_task(policy, reference, tokenizer, task, per_position=per_position, seed=seed,
                                        beta=beta, max_new_tokens=task.recipe.max_new_tokens, samples=samples)
        rows += [{"task": TASK, "recipe": recipe, **row} for row in r]
        picked = pick_views(shown, examples)
        write_views([v for _, v in picked], [f"{w.prompt} {w.response} (first wrong: {w.first_wrong})"
                                             for w, _ in picked], root / TASK / f"credit_{recipe}",
                    prompt=f"{TASK}, {recipe} DPO: the reference's own wrong answers")
    return rows, info


def markdown(rows: list[dict], info: dict, verdicts: list[dict], command: str) -> str:
    lines = [f"    {command}", "",
             f"Reference samples drawn: {info['samples_drawn']}; wrong: {info['natural_wrong']} (first-error "
             f"positions {info['natural_first_wrong_counts']}); positional prior = position {info['positional_prior']}.",
             "", "| samples | recipe | scope | method | n | hit rate | 95 % Wilson |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['samples']} | {r['recipe']} | {r['scope']} | {r['method']} | {r['n']} | "
                     f"{r['rate']:.1%} | [{r['ci'][0]:.1%}, {r['ci'][1]:.1%}] |")
    lines.append("")
    for v in verdicts:
        lines.append(f"- {v['recipe']}: implicit {v['implicit']:.1%}, best baseline {v['best_baseline']} "
                     f"{v['best_baseline_rate']:.1%} ({v['margin_points']:+.1f} points), intervals clear: "
                     f"{v['interval_clear']}, goal met: {v['goal_met']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.credit_report", description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="outputs/tasks", help="benchmarks.tasks_report's training outputs")
    ap.add_argument("--recipes", default="plain,rpo")
    ap.add_argument("--per_position", type=int, default=80, help="wrong answers per first-error position")
    ap.add_argument("--max_rounds", type=int, default=40, help="rounds of 1024 reference samples at most")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num_threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="a check run: writes no results file")
    ap.add_argument("--results_dir", default=None, help=argparse.SUPPRESS)  # tests: keep benchmarks/results clean
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    recipes = [r for r in a.recipes.split(",") if r]
    if a.per_position < 1 or not recipes or any(r not in ("plain", "rpo") for r in recipes):
        print("error: --per_position must be >= 1 and --recipes a list of plain, rpo", file=sys.stderr)
        return 2
    if a.num_threads:
        torch.set_num_threads(a.num_threads)
    root = Path(a.root)
    try:
        rows, info = run(root, per_position=a.per_position, seed=a.seed, recipes=recipes, max_rounds=a.max_rounds)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    command = command_line("benchmarks.credit_report", argv)
    verdicts = [verdict(rows, r) for r in recipes]
    print(format_rows([{**r, "samples": f"{r['recipe']}/{r['samples'][:5]}"} for r in rows]))
    for v in verdicts:
        print(json.dumps(v))
    (root / "credit_report.md").write_text(markdown(rows, info, verdicts, command))
    (root / "credit_report.json").write_text(json.dumps({"info": info, "verdicts": verdicts, "rows": rows},
                                                        indent=1) + "\n")
    if not a.quick:
        path = write_results("credit", rows, command, directory=Path(a.results_dir) if a.results_dir else None)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
