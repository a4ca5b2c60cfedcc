"""Likelihood dynamics of DPO from an SFT reference: do chosen log-probs fall, as the theory predicts?

Rafailov et al. (2024, §5.3): for any policy π, E_{y∼π_ref}[β·log π(y|x)/π_ref(y|x)] = −β·KL(π_ref ‖ π) ≤ 0,
so the implicit reward of responses drawn from the reference — and the preference data of an SFT-started DPO
run is (close to) such draws — must on average go down as π moves away from π_ref; chosen log-probs then fall
too, even while the chosen − rejected margin grows.

This script runs the built-in pipeline's SFT and pair stages (or reuses them), trains DPO with a checkpoint
every `--every` steps, and for each checkpoint measures on a fixed set of y ∼ π_ref (held-out prompts)

    E_ref[β·log π/π_ref]   the sampled estimate of −β·KL(π_ref‖π), with its standard error
    gold reward            of temperature-1 samples from the checkpoint

beside the training log's per-step `logps/chosen`, `logps/rejected` and `rewards/chosen`. It prints a table and
writes likelihood_dynamics.json and likelihood_dynamics.png to --output_dir.

    python -m benchmarks.likelihood_dynamics [--task sentiment] [--output_dir outputs/likelihood_dynamics]
                                             [--base outputs/default] [--every 25] [--n_samples 256] [--seed 42]
    python -m benchmarks.likelihood_dynamics --quick          # a seconds-long smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from tokendpo.modeling import load_model, load_tokenizer
from tokendpo.tasks import DEFAULT_TASK, TASKS, get_task
from tokendpo.tasks.evaluate import log_ratios
from tokendpo.tasks.pipeline import PipelineSettings, dpo_config, run_pipeline
from tokendpo.tasks.sampling import sample

QUICK = {"sft_examples": 400, "sft_steps": 10, "sft_batch_size": 16, "pair_prompts": 24, "k": 2,
         "eval_pair_prompts": 8, "dpo_steps": 4, "dpo_max_epochs": 1000.0, "dpo_batch_size": 4, "eval_prompts": 8}


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ref_expectation(policy, reference, tokenizer, prompts, ref_ids, beta: float) -> tuple[float, float]:
    """(mean, standard error) over the reference samples of β·Σ_t log π/π_ref."""
    vals = [beta * v for v in log_ratios(policy, reference, tokenizer, prompts, ref_ids)]
    mean = sum(vals) / len(vals)
    var = sum((v - mean) ** 2 for v in vals) / max(1, len(vals) - 1)
    return mean, math.sqrt(var / len(vals))


def run(task_name: str, output_dir: Path, *, every: int, n_samples: int, seed: int, quick: bool,
        base: Path | None = None) -> dict:
    task = get_task(task_name)
    # plain DPO (no NLL term on the chosen responses, whatever the task recipe says): the theory is about DPO
    overrides = {**(QUICK if quick else {}), "rpo_alpha": 0.0}
    if base is None:
        base = output_dir / "pipeline"
        run_pipeline(task_name, str(base), seed=seed, stages=("sft", "pairs"), print_summary=False, **overrides)
    elif not ((base / "sft" / ".complete").exists() and (base / "pairs.jsonl").exists()):
        raise ValueError(f"--base {base}: needs a pipeline output dir with a finished sft/ and pairs.jsonl")
    s = PipelineSettings.resolve(task, seed=seed, **overrides)
    dpo_dir = output_dir / "dpo"
    if dpo_dir.exists():  # checkpoints of an earlier run would mix in: start clean
        shutil.rmtree(dpo_dir)
    cfg = dpo_config(s, base / "sft", base / "pairs.jsonl", base / "pairs_eval.jsonl", dpo_dir)
    cfg.train.save_steps = every
    from tokendpo.training import train

    t0 = time.perf_counter()
    train(cfg)
    train_s = time.perf_counter() - t0

    tokenizer = load_tokenizer(str(base / "sft"))
    reference = load_model(str(base / "sft")).eval()
    prompts = task.prompts("heldout", n_samples, seed=seed + 2)
    _, ref_ids = sample(reference, tokenizer, prompts, max_new_tokens=s.max_new_tokens, seed=seed + 3)
    steps = sorted(int(p.name.split("-")[1]) for p in dpo_dir.glob("checkpoint-*"))
    points = []
    for step in [0] + steps:
        policy = reference if step == 0 else load_model(str(dpo_dir / f"checkpoint-{step}")).eval()
        mean, se = ref_expectation(policy, reference, tokenizer, prompts, ref_ids, s.beta)
        texts, _ = sample(policy, tokenizer, prompts, max_new_tokens=s.max_new_tokens, seed=seed + 4)
        gold = sum(task.gold_reward(p, y) for p, y in zip(prompts, texts)) / len(prompts)
        points.append({"step": step, "ref_expectation": mean, "ref_expectation_se": se, "gold_reward": gold})

    rows = [r for r in read_metrics(dpo_dir / "metrics.jsonl") if "loss" in r]
    by_step = {r["step"]: r for r in rows}
    first = rows[0] if rows else {}
    for p in points:  # the training log's value at the checkpoint's step (step 0: the first logged step)
        r = by_step.get(p["step"], first)
        for k in ("logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected", "rewards/margins"):
            p[k] = r.get(k, float("nan"))
    result = {"task": task_name, "beta": s.beta, "n_ref_samples": n_samples, "dpo_steps": s.dpo_steps,
              "train_seconds": round(train_s, 1), "points": points,
              "per_step": [{k: r.get(k) for k in ("step", "logps/chosen", "logps/rejected", "rewards/chosen",
                                                  "rewards/rejected")} for r in rows]}
    return result


def moving_average(xs: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values (train-batch metrics are noisy: each step sees other pairs)."""
    return [sum(xs[max(0, i - window + 1): i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(xs))]


def plot(result: dict, path: Path, window: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per, pts = result["per_step"], result["points"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [r["step"] for r in per]
    for key, colour in (("logps/chosen", "C0"), ("logps/rejected", "C1")):
        ys = [r[key] for r in per]
        a1.plot(xs, ys, color=colour, alpha=0.25)
        a1.plot(xs, moving_average(ys, window), color=colour, label=f"{key} (train batch, mean of {window})")
    a1.set_xlabel("DPO step")
    a1.set_ylabel("sequence log-prob")
    a1.legend()
    px = [p["step"] for p in pts]
    a2.errorbar(px, [p["ref_expectation"] for p in pts], yerr=[2 * p["ref_expectation_se"] for p in pts],
                marker="o", capsize=3, label=r"$E_{y\sim\pi_{ref}}[\beta \log \pi/\pi_{ref}]$ (±2 se)")
    a2.plot(xs, moving_average([r["rewards/chosen"] for r in per], window), alpha=0.7,
            label=f"rewards/chosen (train batch, mean of {window})")
    a2.axhline(0.0, color="grey", lw=0.8)
    a2.set_xlabel("DPO step")
    a2.set_ylabel("implicit reward")
    a2.legend()
    fig.suptitle(f"{result['task']}: β = {result['beta']}, {result['n_ref_samples']} reference samples")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.likelihood_dynamics", description=__doc__.split("\n")[0])
    ap.add_argument("--task", default=DEFAULT_TASK, choices=sorted(TASKS))
    ap.add_argument("--output_dir", default="outputs/likelihood_dynamics")
    ap.add_argument("--every", type=int, default=25, help="checkpoint (and measure) every N DPO steps")
    ap.add_argument("--n_samples", type=int, default=256, help="reference samples for the E_ref estimate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of the whole script")
    ap.add_argument("--base", default=None, help="reuse sft/ and pairs*.jsonl of this pipeline output dir "
                                                 "(e.g. outputs/default) instead of running those stages")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    every, n = (2, 8) if a.quick else (a.every, a.n_samples)
    out = Path(a.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = run(a.task, out, every=every, n_samples=n, seed=a.seed, quick=a.quick,
                 base=Path(a.base) if a.base else None)
    result["command"] = "python -m benchmarks.likelihood_dynamics " + " ".join(argv if argv is not None else sys.argv[1:])
    result["machine"] = f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_implementation()}"
    (out / "likelihood_dynamics.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out / "likelihood_dynamics.png")

    print(f"# {result['command']}   ({result['machine']}; DPO {result['train_seconds']} s)")
    print(f"{'step':>5} {'logps/chosen':>13} {'logps/rejected':>15} {'rewards/chosen':>15} "
          f"{'E_ref[b log pi/ref]':>20} {'gold':>7}")
    for p in result["points"]:
        print(f"{p['step']:>5} {p['logps/chosen']:>13.3f} {p['logps/rejected']:>15.3f} {p['rewards/chosen']:>15.4f} "
              f"{p['ref_expectation']:>+12.4f} ± {p['ref_expectation_se']:.4f} {p['gold_reward']:>7.3f}")
    print("(step 0 row: log-probs of the first logged step; E_ref is exactly 0 there since π = π_ref)")
    print(f"wrote {out / 'likelihood_dynamics.json'} and {out / 'likelihood_dynamics.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
