"""The paper's search experiment ("From r to Q*", Rafailov et al. 2024, §5.2) on the built-in gold tasks, v2.

    python -m benchmarks.paper_search --out /work/paper_out --threads 1     # full run (both tasks, ~1 h)
    python -m benchmarks.paper_search --quick --out /tmp/ps                 # smoke run (tiny training, 4 prompts)
    python -m benchmarks.paper_search --out /work/paper_out --report_only   # tables, plot, JSON from the rows
    python -m benchmarks.paper_search --out OUT2 --eval_seed 1 --tasks arithmetic --jobs final \
        --results paper_search_confirm     # the same policies (OUT2/TASK/dpo_beta* may link to OUT's) on fresh prompts

Policies: the tasks' plain-DPO recipe (rpo_alpha = 0, so the DPO optimum π_ref·exp(r/β)/Z holds). Per task, one
SFT model and one set of preference pairs — reused from `--reuse ROOT/TASK` (the tasks report's pipeline dir)
when its SFT and pair settings are the recipe's, else trained in OUT/TASK — then one DPO run per β with a
checkpoint at `--early_frac` of its steps ("early") beside the final policy.

What each policy decodes (`benchmarks.paper_search_grid`; every decode goes through `search.decode.run`, the
CLI's own loop, on the same `--prompts` held-out prompts):
- β = 0.1, final and early: every decoder family — sampling, greedy, beam, best-of-N (policy and reference
  proposals), chunk-level beam, MCTS — with each score (λ = 1 likelihood, 0 implicit, 0.5 mixed), budgets on a
  ×1.5 grid up to K, N = 32 and S = 32;
- β = 0.1 final: the over-optimisation frontier, beams K ≤ 32 for λ ∈ {0, 0.5, 1} with and without the top-p
  0.9 support (plotted to benchmarks/figures/paper_search_frontier.png);
- β ∈ {0.05, 0.5}, final: sampling, the best likelihood beam and the best implicit-guided decoder of the same
  task's β = 0.1 final policy (by mean gold), plus the likelihood beam nearest that decoder's forward tokens
  there (so that the matched-compute comparison exists).
Jobs run in that order, the first task's first (`--tasks`), so the most important rows finish first.

Per decode: gold (mean r*(x, y)), log π/π_ref (mean Σ_t log π − log π_ref, nats), length, distinct (distinct
outputs / prompts), repetition (share of repeated token 3-grams), forward tokens per prompt (policy + reference
positions, `search.scorer`). Comparisons (`benchmarks.paired`): each decoder against the policy's own
temperature-1 sample and against the best likelihood decoder within ±25 % forward tokens, per prompt: W/T/L,
win rate (W + T/2)/n with a paired-bootstrap 95 % interval.

Output: OUT/results_TASK.jsonl (one row per (task, β, checkpoint, decoder), appended as it finishes; a rerun
skips the rows there), OUT/RESULTS.md, OUT/paper_search_frontier.png; a full run also writes
benchmarks/results/paper_search.json (rows: `benchmarks.paired.ROW_KEYS`; a decoder with no likelihood match is
a best_likelihood row with null figures) and the frontier figure. --quick writes only under OUT.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks import paper_search_grid as grid
from benchmarks import paper_search_report as report
from benchmarks.results_file import command_line, write_results
from benchmarks.tasks_report import SHARED_FIELDS
from search import scoring
from search.config import SearchConfig
from search.decode import run as decode_run
from tokendpo.modeling import load_model, load_tokenizer
from tokendpo.tasks import get_task
from tokendpo.tasks.metrics import REPETITION_N, distinct_rate, repetition
from tokendpo.tasks.pipeline import COMPLETE, PipelineSettings, dpo_config, run_pipeline

TASKS = ("arithmetic", "sentiment")  # arithmetic first: implicit guidance came closest to the goal there
VARIANT_BETAS = (0.05, 0.5)
FIGURE = Path(__file__).parent / "figures" / "paper_search_frontier.png"
QUICK = dict(sft_examples=1024, sft_steps=120, sft_batch_size=16, pair_prompts=32, k=4, eval_pair_prompts=16,
             dpo_steps=4, dpo_max_epochs=1000.0, dpo_batch_size=4, eval_prompts=4)  # fewer SFT steps: all pairs tie


@dataclass(frozen=True)
class Job:
    """One policy and what it decodes: `decoders` names a grid ("main", "frontier") or "best" (the β variants'
    few, chosen from the task's β = 0.1 final rows when the job starts)."""

    task: str
    beta: float
    checkpoint: str  # "final" | "early"
    decoders: str


JOB_KINDS = ("final", "frontier", "early", "variants")


def plan(tasks: list[str], main_beta: float, variant_betas: tuple[float, ...], kinds=JOB_KINDS) -> list[Job]:
    """The jobs in priority order: per task the main β's final grid, its frontier, its early grid; then the
    β variants of every task. `kinds` keeps a subset."""
    jobs = []
    for t in tasks:
        jobs += [j for k, j in (("final", Job(t, main_beta, "final", "main")),
                                ("frontier", Job(t, main_beta, "final", "frontier")),
                                ("early", Job(t, main_beta, "early", "main"))) if k in kinds]
    return jobs + [Job(t, b, "final", "best") for t in tasks for b in variant_betas if "variants" in kinds]


# ------------------------------------------------------------------------------------------------ training
def settings(task: str, a, overrides: dict, beta: float) -> PipelineSettings:
    return PipelineSettings.resolve(get_task(task), seed=a.seed, quick=False, recipe="plain",
                                    **{**overrides, "beta": beta})


def reusable(task: str, a, overrides: dict) -> Path | None:
    """ROOT/TASK when it holds a finished SFT model and pairs made with this recipe's SFT and pair settings."""
    if not a.reuse:
        return None
    base = Path(a.reuse) / task
    try:
        saved = json.loads((base / "pipeline.json").read_text())["settings"]
    except (OSError, KeyError, ValueError):
        return None
    want = asdict(settings(task, a, overrides, grid.MAIN_BETA))
    same = all(saved.get(f) == want[f] for f in SHARED_FIELDS)
    done = (base / "sft" / COMPLETE).exists() and (base / "pairs.jsonl").exists() and (base / "pairs_eval.jsonl").exists()
    return base if same and done else None


def sft_and_pairs(task: str, a, out: Path, overrides: dict) -> Path:
    """The dir holding sft/, pairs.jsonl and pairs_eval.jsonl: the reused one, or OUT/TASK after training them."""
    base = reusable(task, a, overrides)
    if base is None:
        base = out / task
        run_pipeline(task, str(base), seed=a.seed, stages=("sft", "pairs"), progress=a.progress,
                     print_summary=False, recipe="plain", **overrides)
    return base


def policy(task: str, beta: float, checkpoint: str, a, out: Path, overrides: dict) -> tuple[Path, Path, str]:
    """(policy dir, reference dir, label) of one plain-DPO policy, training its DPO run if it is not done (an
    interrupted run continues from its newest checkpoint)."""
    from tokendpo.training import train

    base = sft_and_pairs(task, a, out, overrides)
    s = settings(task, a, overrides, beta)
    dpo_dir = out / task / f"dpo_beta{beta:g}"
    cfg = dpo_config(s, base / "sft", base / "pairs.jsonl", base / "pairs_eval.jsonl", dpo_dir, progress=a.progress)
    early = max(1, int(round(cfg.train.max_steps * a.early_frac)))
    if not (dpo_dir / COMPLETE).exists():
        cfg.train.save_steps, cfg.train.save_total_limit = early, 0
        t0 = time.perf_counter()
        print(f"[{task} β={beta:g}] DPO: {cfg.train.max_steps} steps, early checkpoint at {early}", flush=True)
        final = train(cfg, on_existing="resume")
        (dpo_dir / COMPLETE).write_text(json.dumps({"stage": "dpo", "beta": beta, "final": final,
                                                    "seconds": round(time.perf_counter() - t0, 1)}) + "\n")
    if checkpoint == "final":
        return dpo_dir, base / "sft", f"beta={beta:g} final (step {cfg.train.max_steps})"
    if not (dpo_dir / f"checkpoint-{early}").is_dir():
        raise FileNotFoundError(f"{dpo_dir}/checkpoint-{early} is missing: the DPO run stopped before it")
    return dpo_dir / f"checkpoint-{early}", base / "sft", f"beta={beta:g} early (step {early})"


# ------------------------------------------------------------------------------------------------ decoding
def decode_row(task, dec: grid.Decoder, policy_model, reference, tokenizer, prompts: list[str], *, beta: float,
               max_new_tokens: int, seed: int, batch_size: int, chat_template: bool = False) -> dict:
    """Decode `prompts` with one configuration through `search.decode.run` and measure it (`task` gives each
    record's gold reward: anything with `gold_reward(prompt, completion)`)."""
    cfg = SearchConfig(policy="<in memory>", ref="<in memory>", beta=beta, max_new_tokens=max_new_tokens, seed=seed,
                       batch_size=batch_size, progress=False, chat_template=chat_template, **dec.fields)
    cfg.validate()
    t0 = time.perf_counter()
    recs = list(decode_run(cfg, policy_model, reference, tokenizer, prompts, task))
    seconds = time.perf_counter() - t0
    eos = tokenizer.eos_token_id
    gold = [r["gold_reward"] for r in recs]
    log_ratio = [r["reward"] / beta for r in recs]
    ranked = cfg.method in ("bon", "beam", "cbs", "mcts")
    return {
        "decoder": dec.name, "family": dec.family, "x": dec.x, "support_tag": dec.support_tag, "fields": dec.fields,
        "score": cfg.score if ranked else "likelihood", "ref_weight": cfg.lam if ranked else 1.0,
        "support": ("argmax" if cfg.method == "greedy" else scoring.describe_support(cfg.support()))
        + (f", proposal {cfg.proposal}" if cfg.proposal else ""),
        "gold": sum(gold) / len(gold), "log_ratio": sum(log_ratio) / len(log_ratio),
        "length": sum(len(r["token_ids"]) for r in recs) / len(recs),
        "distinct": distinct_rate([r["completion"] for r in recs]),
        "repetition": repetition([[t for t in r["token_ids"] if t != eos] for r in recs], REPETITION_N),
        "forward_tokens": sum(r["forward_tokens"] for r in recs) / len(recs), "seconds": seconds,
        "per_prompt_gold": gold, "per_prompt_log_ratio": log_ratio,
        "completions": [r["completion"] for r in recs],
    }


def key(row: dict) -> tuple:
    return (row["task"], row["beta"], row["checkpoint"], row["decoder"])


def job_decoders(job: Job, rows: list[dict], quick: bool, main_beta: float) -> list[grid.Decoder]:
    if job.decoders == "main":
        return grid.main_grid(quick)
    if job.decoders == "frontier":
        return grid.frontier_grid(quick)
    ref_rows = [r for r in rows if (r["task"], r["beta"], r["checkpoint"]) == (job.task, main_beta, "final")]
    picks = [p for p in grid.pick_best(ref_rows) if p is not None]
    if len(picks) == 2:  # + the likelihood beam nearest the guided pick's compute, so the matched comparison exists
        near = grid.nearest_likelihood_beam(ref_rows, picks[1]["forward_tokens"])
        picks += [near] if near is not None and near["decoder"] != picks[0]["decoder"] else []
    return [grid.Decoder("sample", "sample", 1, 1.0, fields={"method": "sample"})] + [
        grid.Decoder(p["decoder"], p["family"], p["x"], p["ref_weight"], p["support_tag"], p["fields"]) for p in picks]


def run_job(job: Job, a, out: Path, overrides: dict, rows: list[dict]) -> None:
    """Decode one policy with its decoders, appending each row to OUT/results_TASK.jsonl as it finishes."""
    done = {key(r) for r in rows}
    decs = [d for d in job_decoders(job, rows, a.quick, a.main_beta)
            if (job.task, job.beta, job.checkpoint, d.name) not in done]
    if not decs:
        return
    task = get_task(job.task)
    pol_dir, ref_dir, label = policy(job.task, job.beta, job.checkpoint, a, out, overrides)
    max_new = a.max_new_tokens or settings(job.task, a, overrides, job.beta).max_new_tokens
    tokenizer = load_tokenizer(str(ref_dir))
    reference, pol = load_model(str(ref_dir)).eval(), load_model(str(pol_dir)).eval()
    prompts = task.prompts("heldout", a.prompts, seed=a.eval_seed)
    for dec in decs:
        row = {"task": job.task, "beta": job.beta, "checkpoint": job.checkpoint, "policy": label, "job": job.decoders,
               **decode_row(task, dec, pol, reference, tokenizer, prompts, beta=job.beta, max_new_tokens=max_new,
                            seed=a.eval_seed, batch_size=a.batch_size),
               "prompts": len(prompts), "eval_seed": a.eval_seed, "max_new_tokens": max_new}
        with open(out / f"results_{job.task}.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        rows.append(row)
        print(f"[{job.task} {label}] {dec.name:<28} gold {row['gold']:+.3f} log-ratio {row['log_ratio']:+.2f} "
              f"len {row['length']:.1f} fwd {row['forward_tokens']:.0f} ({row['seconds']:.1f} s)", flush=True)


def read_rows(out: Path, pattern: str = "results_*.jsonl") -> list[dict]:
    """Every row of the OUT/`pattern` files (a torn last line of a killed run is skipped)."""
    rows = []
    for path in sorted(out.glob(pattern)):
        for line in open(path):
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


# ------------------------------------------------------------------------------------------------ the plan
def print_plan(jobs: list[Job], a, out: Path, overrides: dict, rows: list[dict]) -> float:
    """Print every job with its decoder count and an estimated time (one idle core); returns the total seconds."""
    done = {key(r) for r in rows}
    total, trained = 0.0, set()
    print(f"paper_search plan: {len(jobs)} jobs, {a.prompts} held-out prompts per decode, out {out}")
    for job in jobs:
        s = settings(job.task, a, overrides, job.beta)
        max_new = a.max_new_tokens or s.max_new_tokens
        decs = (grid.main_grid(a.quick) if job.decoders == "main" else grid.frontier_grid(a.quick)
                if job.decoders == "frontier" else None)
        todo = [d for d in decs if (job.task, job.beta, job.checkpoint, d.name) not in done] if decs else None
        est = sum(grid.estimate_seconds(d, a.prompts, max_new) for d in todo) if todo is not None else 30.0
        extra = ""
        if (job.task, job.beta) not in trained and not (out / job.task / f"dpo_beta{job.beta:g}" / COMPLETE).exists():
            per_step = train_seconds_per_step(job.task, a, overrides)
            est += per_step * s.dpo_steps
            extra = f" + DPO training ({s.dpo_steps} steps at most, ~{per_step:.2f} s/step)"
        if job.task not in {t for t, _ in trained} and reusable(job.task, a, overrides) is None \
                and not (out / job.task / "pairs_eval.jsonl").exists():
            est += 2.0 * s.sft_steps
            extra += f" + SFT and pairs ({s.sft_steps} SFT steps)"
        trained.add((job.task, job.beta))
        n = (f"{len(todo)} of {len(decs)} decoders to do" if decs else "3-4 decoders (sample, best likelihood beam, "
             "best implicit-guided of the β = 0.1 final policy, the likelihood beam at its compute)")
        print(f"  {job.task:<10} β={job.beta:<5g} {job.checkpoint:<5} {job.decoders:<8} {n}{extra}: ~{est / 60:.1f} min")
        total += est
    print(f"estimated total: ~{total / 60:.0f} min on one idle core (a shared machine takes longer)", flush=True)
    return total


def train_seconds_per_step(task: str, a, overrides: dict) -> float:
    """DPO seconds per step from the reused pipeline's record, else a conservative default."""
    base = reusable(task, a, overrides)
    try:
        rec = json.loads((base / "pipeline.json").read_text())
        return rec["seconds"]["dpo"] / rec["settings"]["dpo_steps"]
    except (TypeError, OSError, KeyError, ValueError, ZeroDivisionError):
        return 0.05 if a.quick else 1.0


# ------------------------------------------------------------------------------------------------ CLI
def parse(argv: list[str] | None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.paper_search", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="outputs/paper_search", help="models, results_*.jsonl, RESULTS.md, the plot")
    ap.add_argument("--tasks", default=None, help=f"in priority order (default {','.join(TASKS)}; --quick: sentiment)")
    ap.add_argument("--main_beta", type=float, default=grid.MAIN_BETA, help="β of the full grid and the frontier")
    ap.add_argument("--betas", default=",".join(f"{b:g}" for b in VARIANT_BETAS),
                    help="the other β: sampling, best likelihood beam and best implicit-guided decoder only")
    ap.add_argument("--prompts", type=int, default=256, help="held-out prompts decoded per configuration")
    ap.add_argument("--max_new_tokens", type=int, default=0, help="0 = the task recipe's")
    ap.add_argument("--early_frac", type=float, default=0.25, help="early checkpoint at this share of DPO steps")
    ap.add_argument("--reuse", default="outputs/tasks", help="ROOT of a tasks-report run whose ROOT/TASK SFT model "
                    "and pairs are reused when their settings match ('' = always train)")
    ap.add_argument("--batch_size", type=int, default=64, help="prompts decoded together")
    ap.add_argument("--seed", type=int, default=0, help="seed of the task recipe (SFT, pairs, DPO)")
    ap.add_argument("--eval_seed", type=int, default=None,
                    help="seed of the held-out prompt draw and of decoding (default: --seed); another value with "
                    "the same policies is a confirmation on fresh prompts")
    ap.add_argument("--jobs", default=",".join(JOB_KINDS), help="subset of " + ", ".join(JOB_KINDS))
    ap.add_argument("--results", default="paper_search",
                    help="NAME of benchmarks/results/NAME.json for a full run ('' = write none)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a pipeline setting of the task recipe (PipelineSettings field), e.g. dpo_steps=100")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny training, 4 prompts, thin grids, one "
                    "task, one other β; writes only under --out")
    ap.add_argument("--plan_only", action="store_true", help="print the plan and its time estimate, then stop")
    ap.add_argument("--report_only", action="store_true", help="rebuild the report from OUT/results_*.jsonl")
    ap.add_argument("--progress", action="store_true")
    return ap, ap.parse_args(argv)


def overrides_of(ap, a) -> dict:
    overrides: dict = dict(QUICK) if a.quick else {}
    for item in a.set:
        k, sep, value = item.partition("=")
        if not sep or not hasattr(PipelineSettings, k):
            ap.error(f"--set expects KEY=VALUE with KEY a PipelineSettings field, got {item!r}")
        try:
            overrides[k] = type(getattr(PipelineSettings(), k))(value)
        except ValueError:
            ap.error(f"--set {k}: cannot read {value!r}")
    return overrides


def main(argv: list[str] | None = None) -> int:
    ap, a = parse(argv)
    command = command_line("benchmarks.paper_search", argv)
    tasks = [t for t in (a.tasks or ("sentiment" if a.quick else ",".join(TASKS))).split(",") if t]
    try:
        for t in tasks:
            get_task(t)
        variants = tuple(float(b) for b in a.betas.split(",") if b)
    except (KeyError, ValueError) as e:
        ap.error(str(e))
    kinds = tuple(k for k in a.jobs.split(",") if k)
    if set(kinds) - set(JOB_KINDS) or not kinds:
        ap.error(f"--jobs: choose from {', '.join(JOB_KINDS)}, got {a.jobs!r}")
    if a.eval_seed is None:
        a.eval_seed = a.seed
    if a.prompts < 1 or not 0 < a.early_frac < 1 or a.main_beta <= 0 or any(b <= 0 for b in variants):
        ap.error("--prompts must be >= 1, --early_frac in (0, 1) and every β > 0")
    if a.quick:
        tasks, variants, a.prompts = tasks[:1], variants[-1:], min(a.prompts, 4)
        a.max_new_tokens = a.max_new_tokens or 8
    overrides = overrides_of(ap, a)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_rows(out)
    jobs = plan(tasks, a.main_beta, variants, kinds)
    if not a.report_only:
        print_plan(jobs, a, out, overrides, rows)
        if a.plan_only:
            return 0
        t0 = time.perf_counter()
        for job in jobs:
            run_job(job, a, out, overrides, rows)
        print(f"decoding done in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    text, compared, figure = report.write_report(rows, out, command, main_beta=a.main_beta)
    print(text)
    if not a.quick and compared and a.results:
        write_results(a.results, compared, command)
        if figure is not None and a.results == "paper_search":
            FIGURE.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(figure, FIGURE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
