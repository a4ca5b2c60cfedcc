"""The built-in experiment: SFT → sample K responses per prompt → label pairs with the gold reward → DPO → eval.

    python -m tokendpo.train                      # = run_pipeline("sentiment", "outputs/default")
    python -m tokendpo.train --task arithmetic
    python -m tokendpo.tasks.pipeline --task sentiment --stage pairs [--output_dir DIR] [--quick]

Every stage is a function with its own CLI step and is resumable: a stage whose output is complete is skipped
(`sft/` and `dpo/` are complete when their `.complete` marker exists, `pairs.jsonl` and `summary.json` are
written atomically). Layout:

    OUTPUT_DIR/sft/            SFT policy = DPO reference (model + tokenizer, metrics.jsonl, train_config.yaml)
    OUTPUT_DIR/pairs.jsonl     prompt, chosen, rejected (+ their gold rewards), from train prompts
    OUTPUT_DIR/pairs_eval.jsonl  the same from held-out prompts: DPO's eval data and `eval_reward_accuracy`
    OUTPUT_DIR/dpo/            DPO policy (a `tokendpo.train` output dir)
    OUTPUT_DIR/summary.json    {"sft": {...}, "dpo": {...}} — see `tokendpo.tasks.evaluate`
    OUTPUT_DIR/pipeline.json   the resolved settings and per-stage wall times

Labels: for two responses a, b of one prompt, a is chosen with probability σ((r*(a) − r*(b)) / T)
(Bradley–Terry with temperature T), or by the higher r* with `argmax`; pairs with equal r* or equal text are
dropped (they carry no preference), as are pairs with an empty response.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from tokendpo.config import Config
from tokendpo.modeling import load_model, load_tokenizer
from tokendpo.rundir import OutputLock, write_atomic
from tokendpo.sft import SFTConfig, sft
from tokendpo.tasks import DEFAULT_TASK, TASKS, get_task
from tokendpo.tasks.base import Task
from tokendpo.tasks.evaluate import evaluate_policies, print_table
from tokendpo.tasks.metrics import bradley_terry_label
from tokendpo.tasks.sampling import sample
from tokendpo.training import train

STAGES = ("sft", "pairs", "dpo", "eval")
COMPLETE = ".complete"
# Values that runs recorded before these settings were in the recipe used (then fixed in the code).
LEGACY_SETTINGS = {"max_length": 64, "max_prompt_length": 32}


@dataclass
class PipelineSettings:
    """Resolved settings of one run: the task's recipe, scaled down by `quick`, with explicit overrides."""

    task: str = DEFAULT_TASK
    recipe: str = ""               # the task recipe's name ("plain" | "rpo"); "" resolves to the task's default
    seed: int = 0
    quick: bool = False
    sft_examples: int = 0
    sft_steps: int = 0
    sft_batch_size: int = 0
    sft_lr: float = 0.0
    pair_prompts: int = 0
    k: int = 0
    eval_pair_prompts: int = 0
    label_temperature: float = 0.0
    argmax: bool = False
    beta: float = 0.0
    rpo_alpha: float = 0.0
    dpo_steps: int = 0
    dpo_max_epochs: float = 0.0
    dpo_batch_size: int = 0
    dpo_lr: float = 0.0
    max_new_tokens: int = 0
    eval_prompts: int = 0
    max_length: int = 0
    max_prompt_length: int = 0

    @classmethod
    def resolve(cls, task: Task, *, seed: int = 0, quick: bool = False, recipe: str | None = None,
                **overrides) -> PipelineSettings:
        recipe = recipe or task.default_recipe
        r = asdict(task.get_recipe(recipe))
        if quick:  # a few-minute run for tests: smaller everything, same recipe
            r.update(sft_examples=r["sft_examples"] // 2, sft_steps=r["sft_steps"] // 2,
                     pair_prompts=r["pair_prompts"] // 2, eval_pair_prompts=64, dpo_steps=r["dpo_steps"] // 2,
                     eval_prompts=128)
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown pipeline settings: {', '.join(sorted(unknown))}")
        r.update({k: v for k, v in overrides.items() if v is not None})
        if not 1 <= r["max_prompt_length"] < r["max_length"] <= task.shape.max_position_embeddings:
            raise ValueError(f"task {task.name}: need 1 <= max_prompt_length < max_length <= the model's "
                             f"{task.shape.max_position_embeddings} positions, got max_prompt_length="
                             f"{r['max_prompt_length']}, max_length={r['max_length']}")
        return cls(task=task.name, recipe=recipe, seed=seed, quick=quick, **r)


def _complete(d: Path) -> bool:
    return (d / COMPLETE).exists()


def _mark_complete(d: Path, info: dict) -> None:
    write_atomic(d / COMPLETE, json.dumps(info, indent=1) + "\n")


def _write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------- stages
def stage_sft(task: Task, s: PipelineSettings, out_dir: Path, *, progress: bool = True) -> Path:
    """Tokenizer trained on the task corpus + a random-init Llama of the task's shape, SFT on the corpus."""
    out_dir = Path(out_dir)
    if _complete(out_dir):
        return out_dir
    corpus = task.corpus(s.sft_examples, seed=s.seed)
    tokenizer = task.tokenizer(corpus)
    torch.manual_seed(s.seed)
    model = AutoModelForCausalLM.from_config(task.model_config(tokenizer))
    cfg = SFTConfig(output_dir=str(out_dir), max_steps=s.sft_steps, batch_size=s.sft_batch_size,
                    learning_rate=s.sft_lr, warmup_steps=max(1, s.sft_steps // 20), seed=s.seed, progress=progress)
    last = sft(model, tokenizer, corpus, cfg)
    _mark_complete(out_dir, {"stage": "sft", "final": last})
    return out_dir


def label_pairs(task: Task, prompts: list[str], responses: list[list[str]], *, temperature: float, argmax: bool,
                seed: int) -> tuple[list[dict], dict]:
    """Pair the K responses of each prompt at random (K//2 disjoint pairs) and label each by Bradley–Terry on
    the gold reward. Returns (rows, counts of kept/dropped pairs)."""
    rng = random.Random(f"pairs/{seed}")
    rows, counts = [], {"kept": 0, "tie": 0, "empty": 0}
    for prompt, ys in zip(prompts, responses):
        ys = list(ys)
        rng.shuffle(ys)
        for a, b in zip(ys[0::2], ys[1::2]):
            if not a.strip() or not b.strip():
                counts["empty"] += 1
                continue
            ra, rb = task.gold_reward(prompt, a), task.gold_reward(prompt, b)
            if ra == rb or a == b:
                counts["tie"] += 1
                continue
            a_wins = bradley_terry_label(ra, rb, temperature, rng, argmax=argmax)
            (c, rc), (r, rr) = ((a, ra), (b, rb)) if a_wins else ((b, rb), (a, ra))
            rows.append({"prompt": prompt, "chosen": c, "rejected": r, "chosen_reward": rc, "rejected_reward": rr})
            counts["kept"] += 1
    return rows, counts


def _sample_k(model, tokenizer, prompts: list[str], s: PipelineSettings, seed: int, desc: str,
              progress: bool) -> list[list[str]]:
    """K temperature-1 responses per prompt from one prefill of each prompt (`sample(n=K)`; each response draws
    from its own stream, keyed by the seed, the prompt and its index among the K)."""
    texts, _ = sample(model, tokenizer, prompts, max_new_tokens=s.max_new_tokens, seed=seed, n=s.k, desc=desc,
                      progress=progress)
    return [texts[i * s.k:(i + 1) * s.k] for i in range(len(prompts))]


def stage_pairs(task: Task, s: PipelineSettings, sft_dir: Path, pairs_path: Path, eval_pairs_path: Path, *,
                progress: bool = True) -> dict:
    """Sample K responses per train prompt (and per held-out eval prompt) from the SFT model and label pairs."""
    if pairs_path.exists() and eval_pairs_path.exists():
        return {"skipped": True}
    model, tokenizer = load_model(str(sft_dir)), load_tokenizer(str(sft_dir))
    info = {}
    for path, split, n, seed in ((pairs_path, "train", s.pair_prompts, s.seed),
                                 (eval_pairs_path, "heldout", s.eval_pair_prompts, s.seed + 1)):
        prompts = task.prompts(split, n, seed=seed)
        responses = _sample_k(model, tokenizer, prompts, s, seed=1000 * (seed + 1), desc=f"sample {split} x{s.k}",
                              progress=progress)
        rows, counts = label_pairs(task, prompts, responses, temperature=s.label_temperature, argmax=s.argmax,
                                   seed=seed)
        if not rows:
            raise RuntimeError(f"no preference pairs from {n} {split} prompts ({counts}): every sampled pair tied")
        _write_jsonl_atomic(path, rows)
        info[split] = counts
    return info


def dpo_config(s: PipelineSettings, sft_dir: Path, pairs_path: Path, eval_pairs_path: Path, out_dir: Path, *,
               progress: bool = True):
    """The core loop's Config for the pipeline's DPO stage: the SFT model is the start and the frozen reference."""

    cfg = Config()
    cfg.model.model = str(sft_dir)
    cfg.data.dataset = str(pairs_path)
    cfg.data.eval_dataset = str(eval_pairs_path)
    cfg.data.max_length = s.max_length
    cfg.data.max_prompt_length = s.max_prompt_length
    cfg.loss.beta = s.beta
    cfg.loss.rpo_alpha = s.rpo_alpha
    cfg.optim.learning_rate = s.dpo_lr
    cfg.train.output_dir = str(out_dir)
    # At most dpo_max_epochs passes over the pairs: 200 steps on the 19 pairs a near-perfect arithmetic SFT model
    # left (all others tied) took DPO 170 epochs deep and wrecked it (gold 0.996 -> 0.325, KL 7 nats).
    n_pairs = sum(1 for line in Path(pairs_path).read_text().splitlines() if line.strip())
    cfg.train.max_steps = max(1, min(s.dpo_steps, math.ceil(s.dpo_max_epochs * n_pairs / s.dpo_batch_size)))
    cfg.train.per_device_train_batch_size = s.dpo_batch_size
    cfg.train.per_device_eval_batch_size = 64
    cfg.train.eval_steps = max(1, cfg.train.max_steps // 4)
    cfg.optim.warmup_steps = max(1, cfg.train.max_steps // 10)
    cfg.train.logging_steps = 1
    cfg.train.seed = s.seed
    cfg.train.progress = progress
    return cfg


def stage_dpo(s: PipelineSettings, sft_dir: Path, pairs_path: Path, eval_pairs_path: Path, out_dir: Path, *,
              progress: bool = True) -> dict:
    """DPO with the core training loop (`tokendpo.train.train`)."""

    if _complete(out_dir):
        return {"skipped": True}
    # an interrupted stage resumes from its newest checkpoint (or is cleared when it has none); never mixed
    final = train(dpo_config(s, sft_dir, pairs_path, eval_pairs_path, out_dir, progress=progress), on_existing="resume")
    _mark_complete(out_dir, {"stage": "dpo", "final": final})
    return final


def stage_eval(task: Task, s: PipelineSettings, sft_dir: Path, dpo_dir: Path, eval_pairs_path: Path,
               summary_path: Path, *, progress: bool = True) -> dict:
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    summary = evaluate_policies(task, sft_dir, dpo_dir, eval_pairs_path, n_prompts=s.eval_prompts,
                                max_new_tokens=s.max_new_tokens, beta=s.beta, seed=s.seed, progress=progress)
    tmp = summary_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    os.replace(tmp, summary_path)
    return summary


# ---------------------------------------------------------------------------------------------------- driver
def run_pipeline(task: str = DEFAULT_TASK, output_dir: str = "outputs/default", *, seed: int = 0,
                 quick: bool = False, stages: tuple[str, ...] = STAGES, progress: bool = True,
                 print_summary: bool = True, **overrides) -> dict:
    """Run (or resume) the whole experiment on a built-in task; returns summary.json's content (or {} when the
    eval stage was not among `stages`). `overrides` set any PipelineSettings field (k, beta, argmax, ...)."""
    t = get_task(task)
    bad = set(stages) - set(STAGES)
    if bad:
        raise ValueError(f"unknown stage(s) {sorted(bad)}; stages: {', '.join(STAGES)}")
    s = PipelineSettings.resolve(t, seed=seed, quick=quick, **overrides)
    out = Path(output_dir)
    with OutputLock(out, what="tokendpo pipeline"):  # one pipeline per top dir; a second fails at once
        return _run_locked(t, s, out, stages, progress, print_summary)


def _run_locked(t: Task, s: "PipelineSettings", out: Path, stages: tuple[str, ...], progress: bool,
                print_summary: bool) -> dict:
    """The stages in order, each skipped when done; an unfinished DPO stage resumes from its newest checkpoint."""
    record_path = out / "pipeline.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    if record:  # settings added since a run was recorded take the value that run used
        record["settings"] = {**LEGACY_SETTINGS, **record.get("settings", {})}
    if record and record.get("settings") != asdict(s):
        raise ValueError(f"{out} holds a run with other settings ({record_path}); use another --output_dir or "
                         f"delete it. Saved: {record.get('settings')}; now: {asdict(s)}")
    record["settings"] = asdict(s)
    record.setdefault("seconds", {})

    sft_dir, dpo_dir = out / "sft", out / "dpo"
    pairs, eval_pairs = out / "pairs.jsonl", out / "pairs_eval.jsonl"
    # (already done?, run) per stage; a done stage is skipped and keeps its recorded time
    steps = {
        "sft": (lambda: _complete(sft_dir), lambda: stage_sft(t, s, sft_dir, progress=progress)),
        "pairs": (lambda: pairs.exists() and eval_pairs.exists(),
                  lambda: stage_pairs(t, s, sft_dir, pairs, eval_pairs, progress=progress)),
        "dpo": (lambda: _complete(dpo_dir),
                lambda: stage_dpo(s, sft_dir, pairs, eval_pairs, dpo_dir, progress=progress)),
        "eval": (lambda: (out / "summary.json").exists(),
                 lambda: stage_eval(t, s, sft_dir, dpo_dir, eval_pairs, out / "summary.json", progress=progress)),
    }
    summary: dict = {}
    for name in STAGES:
        if name not in stages:
            continue
        done, run = steps[name]
        was_done = done()
        needed = STAGES[STAGES.index(name) - 1] if name != "sft" else None
        if not was_done and needed and not steps[needed][0]():
            raise ValueError(f"stage {name!r} needs the output of stage {needed!r} in {out}; run it first "
                             f"(--stage {needed}, or --stage all)")
        t0 = time.perf_counter()
        result = run()
        if not was_done:
            record["seconds"][name] = round(time.perf_counter() - t0, 1)
            if name == "pairs":
                record["pairs"] = result
        if name == "eval":
            summary = result
        write_atomic(record_path, json.dumps(record, indent=1) + "\n")
    if summary and print_summary:
        print_table(summary, title=f"task {t.name}: {out}  (stage seconds: {record['seconds']})")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tokendpo.tasks.pipeline", description=__doc__.split("\n")[0])
    ap.add_argument("--task", default=DEFAULT_TASK, choices=sorted(TASKS))
    ap.add_argument("--output_dir", default="outputs/default")
    ap.add_argument("--seed", type=int, default=42, help="default 42, as `python -m tokendpo.train`")
    ap.add_argument("--quick", action="store_true", help="a few-minute run with smaller sizes")
    ap.add_argument("--stage", default="all", choices=("all",) + STAGES,
                    help="run one stage (its inputs must exist) or all (default)")
    ap.add_argument("--argmax", action="store_true", help="label pairs by the higher gold reward (no BT sampling)")
    ap.add_argument("--recipe", default=None, choices=("plain", "rpo"),
                    help="plain DPO or DPO + NLL (RPO); default: the task's default recipe")
    for name, typ in (("k", int), ("label_temperature", float), ("beta", float), ("sft_steps", int),
                      ("dpo_steps", int), ("dpo_lr", float), ("eval_prompts", int)):
        ap.add_argument(f"--{name}", type=typ, default=None, help="override the task recipe")
    a = ap.parse_args(argv)
    overrides = {k: getattr(a, k) for k in ("k", "label_temperature", "beta", "sft_steps", "dpo_steps", "dpo_lr",
                                            "eval_prompts")}
    try:
        run_pipeline(a.task, a.output_dir, seed=a.seed, quick=a.quick,
                     stages=STAGES if a.stage == "all" else (a.stage,), argmax=a.argmax or None, recipe=a.recipe,
                     **overrides)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
