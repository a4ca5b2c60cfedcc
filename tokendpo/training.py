"""DPO-family training of a causal LM on preference pairs: the library behind `python -m tokendpo.train`.

One function, `train(cfg)`, read top to bottom: setup (seed, models, data, optimizer) → loop (concatenated
chosen+rejected forward, fused log-probs, preference loss, accumulation, clipping, logging) → eval →
checkpoints → final save. The command line lives in `tokendpo/train.py`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from tokendpo import config as config_mod
from tokendpo import distributed
from tokendpo.batches import epoch_of, micro_batch, total_steps
from tokendpo.build import build_policy_and_reference, resolve_model_path
from tokendpo.checkpoint import TrainState, list_checkpoints, load_training_state, resolve_resume, save_checkpoint
from tokendpo.config import Config
from tokendpo.config_checks import check_config
from tokendpo.data import load_preference_data
from tokendpo.logps import PolicyLogps
from tokendpo.losses import loss_needs
from tokendpo.modeling import load_tokenizer, save_final_model, save_weights
from tokendpo.pair_step import evaluate, pair_forward, sync_reference
from tokendpo.reference import Reference, cache_key
from tokendpo.rundir import OutputLock, RunExistsError, clear_run, holds_run, save_final_atomic, write_atomic


class NonFiniteError(RuntimeError):
    pass


def say(msg: str) -> None:
    """A log line on stderr that does not break the progress bar."""
    tqdm.write(msg, file=sys.stderr)


class MetricsLog:
    """metrics.jsonl: one object per logged step, appended and flushed one row at a time.

    A fresh run starts it empty (the output dir held no run, or was cleared); a resume cuts it back to the rows
    written up to the checkpoint's step (atomically), then appends."""

    def __init__(self, path: Path, keep_rows: int):
        self.path = path
        rows = path.read_text().splitlines()[:keep_rows] if keep_rows > 0 and path.exists() else []
        write_atomic(path, "".join(r + "\n" for r in rows))
        self.rows = len(rows)

    def write(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        self.rows += 1


def _resume_config(cfg: Config, cli_values: dict | None) -> tuple[Config, Path]:
    """Resume: the config comes from the checkpoint; only max_steps and output_dir (and the runtime-only
    progress / num_threads) may differ."""
    ckpt = resolve_resume(cfg.train.resume_from, cfg.train.output_dir)
    saved = config_mod.from_yaml_file(ckpt / "train_config.yaml")
    allowed = {"max_steps", "output_dir", "resume_from", "progress", "num_threads", "overwrite_output_dir"}
    differing = [k for k, (comp, _f, _t) in config_mod.key_index().items()
                 if k not in allowed and getattr(getattr(saved, comp), k) != getattr(getattr(cfg, comp), k)
                 and (cli_values is None or k in cli_values)]
    if differing:
        raise config_mod.ConfigError(
            f"--resume_from {ckpt}: the config comes from the checkpoint; only max_steps and output_dir may "
            f"differ, but these were given differently: {', '.join(differing)}")
    saved.train.max_steps = cfg.train.max_steps if cfg.train.max_steps > 0 else saved.train.max_steps
    saved.train.output_dir = cfg.train.output_dir
    saved.train.resume_from = cfg.train.resume_from
    saved.train.progress = cfg.train.progress
    saved.train.num_threads = cfg.train.num_threads
    _keep_global_batch(saved, ckpt)
    return saved, ckpt


def _keep_global_batch(cfg: Config, ckpt: Path) -> None:
    """Resuming at another world size keeps the global batch (per-device × world × accumulation) by rescaling
    gradient accumulation; micro_batch then hands out exactly the pairs the original layout would have."""
    old_world = json.loads((ckpt / "trainer_state.json").read_text()).get("world_size", 1)
    new_world = int(os.environ.get("WORLD_SIZE", "1"))
    if old_world == new_world:
        return
    total = old_world * cfg.train.gradient_accumulation_steps
    if total % new_world:
        raise config_mod.ConfigError(
            f"--resume_from {ckpt}: saved with {old_world} processes × {cfg.train.gradient_accumulation_steps} "
            f"accumulation steps; {new_world} processes cannot keep that global batch")
    cfg.train.gradient_accumulation_steps = total // new_world
    say(f"resuming a {old_world}-process checkpoint on {new_world}: gradient_accumulation_steps = "
        f"{cfg.train.gradient_accumulation_steps} keeps the global batch")


ON_EXISTING = ("refuse", "overwrite", "resume")


@dataclass
class Run:
    """Everything setup builds for the loop: config, process layout, data, models, optimizer, output files."""

    cfg: Config
    d: distributed.Dist
    device: torch.device
    out: Path
    tokenizer: Any
    train_pairs: list
    eval_pairs: list | None
    model: torch.nn.Module
    ref: Reference
    policy: torch.nn.Module
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: Any
    state: TrainState
    log: MetricsLog | None
    config_yaml: str
    n_steps: int


def train(cfg: Config, *, cli_values: dict | None = None, on_existing: str | None = None) -> dict[str, float]:
    """Train per `cfg`; returns the last logged train metrics plus the final eval metrics.

    validate → build → loop → save. `on_existing` decides what happens when --output_dir already holds a run
    (`train_config.yaml`, `metrics.jsonl` or `checkpoint-*/`): "refuse" (the default: RunExistsError, naming
    --overwrite_output_dir and --resume_from), "overwrite" (delete tokendpo's files there, then start; the
    default when cfg.train.overwrite_output_dir) or "resume" (continue from the newest checkpoint there, or clear
    the dir when it has none: what the built-in pipeline and the benchmarks that train use). Nothing resumes on
    its own. Every config value, the data, the models and the tokenizers are checked before anything is
    written, and rank 0 holds an exclusive lock on the output dir for the whole run.
    """
    on_existing = on_existing or ("overwrite" if cfg.train.overwrite_output_dir else "refuse")
    cfg, ckpt = _plan(cfg, cli_values, on_existing)
    d, device = distributed.init(cfg.train.device)
    lock = None
    try:
        lock = _on_main(d, lambda: OutputLock(cfg.train.output_dir).acquire())
        run = _setup(cfg, ckpt, on_existing, d, device)
        last_train = _loop(run)
        return {**last_train, **_finish(run)}
    finally:
        if lock is not None:
            lock.release()
        distributed.shutdown(d)  # at the end, and on any error or signal: the process group init() created


def _plan(cfg: Config, cli_values: dict | None, on_existing: str) -> tuple[Config, Path | None]:
    """Check the config and resolve what to resume; reads files, writes none."""
    if on_existing not in ON_EXISTING:
        raise ValueError(f"on_existing={on_existing!r}: expected one of {', '.join(ON_EXISTING)}")
    check_config(cfg)
    if not cfg.train.resume_from and on_existing == "resume" and list_checkpoints(cfg.train.output_dir):
        cfg = copy.deepcopy(cfg)  # the caller's config stays as given
        cfg.train.resume_from = "latest"
    ckpt = None
    if cfg.train.resume_from:
        cfg, ckpt = _resume_config(cfg, cli_values)
        check_config(cfg)
    if not cfg.data.dataset:
        raise config_mod.ConfigError("--dataset is required (or use --task NAME for a built-in task)")
    if cfg.data.share_prompt and (cfg.data.packing or cfg.model.gradient_checkpointing):
        raise config_mod.ConfigError("--share_prompt cannot be combined with --packing or --gradient_checkpointing")
    cfg.loss.check(cfg.model)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and cfg.train.parallel == "fsdp" and cfg.model.lora_r > 0:
        raise config_mod.ConfigError("--parallel fsdp with --lora_r is not supported; use --parallel ddp for LoRA")
    return cfg, ckpt


def _on_main(d: distributed.Dist, fn):
    """fn() on rank 0; an error there is raised on every rank (none is left waiting in a collective)."""
    result, error = None, None
    if d.is_main:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
    if distributed.any_across_ranks(error is not None, d):
        raise error if error is not None else RuntimeError("rank 0 failed; see its log")
    return result


def _claim_output_dir(out: Path, ckpt: Path | None, on_existing: str) -> None:
    """Apply the "holds a run" rule: a fresh run never starts on top of another one."""
    if ckpt is not None:
        if holds_run(out) and ckpt.resolve().parent != out.resolve():
            raise RunExistsError(f"--output_dir {out} holds another run; resuming {ckpt} into it would mix the two "
                                 f"(choose an empty --output_dir)")
        return
    if not holds_run(out):
        return
    if on_existing == "refuse":
        raise RunExistsError(
            f"--output_dir {out} already holds a run (train_config.yaml, metrics.jsonl or checkpoint-*/); pass "
            f"--overwrite_output_dir to delete tokendpo's files there and start afresh, or --resume_from latest to "
            f"continue it")
    removed = clear_run(out)
    say(f"{out}: removed {len(removed)} files of the previous run ({on_existing})")


def _setup(cfg: Config, ckpt: Path | None, on_existing: str, d: distributed.Dist, device) -> Run:
    """Read and check the data and models, then claim the output dir and write the run's first files."""
    out = Path(cfg.train.output_dir)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    torch.manual_seed(cfg.train.seed)
    _on_main(d, lambda: resolve_model_path(cfg, out))  # a preset is built once, by rank 0
    model_path = resolve_model_path(cfg, out)
    tokenizer = load_tokenizer(model_path)
    train_pairs, eval_pairs, stats = load_preference_data(cfg.data, tokenizer, seed=cfg.train.seed)
    model, ref = build_policy_and_reference(cfg, model_path, ckpt, device, tokenizer)
    if cfg.loss.sync_ref_model:  # TR-DPO: a reference it can mix into; a resume restores the synced one
        ref.check_mixable(model)
        if ckpt is not None:
            ref.load_weights(ckpt)
    model.train()
    _on_main(d, lambda: _claim_output_dir(out, ckpt, on_existing))  # first write below this line
    if d.is_main:
        say(stats.summary())
        write_atomic(out / "data_stats.json", json.dumps(stats.to_dict(), indent=1))
    if cfg.model.ref_logps == "precompute":
        _precompute_reference(cfg, ref, train_pairs, eval_pairs, tokenizer, out, d)
    n_steps = total_steps(cfg, len(train_pairs), d.world_size)
    policy = distributed.wrap(PolicyLogps(model, cfg.train.kernel), d, cfg.train.parallel)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer, scheduler = _optimizer(cfg, params, d, n_steps)
    state = TrainState()
    if ckpt:
        state, optim_state = load_training_state(ckpt, scheduler)
        distributed.load_full_optimizer_state(model, optimizer, optim_state)
        _follow_schedule(optimizer, scheduler)
    config_yaml = yaml.safe_dump(config_mod.to_dict(cfg), sort_keys=False)
    log = None
    if d.is_main:
        write_atomic(out / "train_config.yaml", config_yaml)
        log = MetricsLog(out / "metrics.jsonl", keep_rows=state.log_history_len if ckpt else 0)
    return Run(cfg, d, device, out, tokenizer, train_pairs, eval_pairs, model, ref, policy, params, optimizer,
               scheduler, state, log, config_yaml, n_steps)


def _precompute_reference(cfg: Config, ref: Reference, train_pairs, eval_pairs, tokenizer, out: Path,
                          d: distributed.Dist) -> None:
    """--ref_logps precompute: rank 0 computes and writes the cache, then the other ranks load it. Eval pairs
    follow train pairs in the cache's index space."""
    all_pairs = train_pairs + (eval_pairs or [])
    key = cache_key(ref.model, all_pairs, {"loss_type": cfg.loss.loss_type, "kernel": cfg.train.kernel})
    cache_dir = Path(cfg.model.ref_cache_dir or out / "ref_cache")
    path = None
    for turn in ((True, False) if d.enabled else (d.is_main,)):
        if turn == d.is_main:
            path = ref.precompute(all_pairs, tokenizer.pad_token_id, cache_dir, key=key,
                                  progress=cfg.train.progress and d.is_main,
                                  with_hidden=loss_needs(cfg.loss.loss_type).kl)
        distributed.barrier(d)
    if d.is_main:
        say(f"reference log-probs cached at {path}")


def _optimizer(cfg: Config, params: list, d: distributed.Dist, n_steps: int):
    """AdamW and the warmup + cosine schedule. Fused AdamW runs one kernel over all parameters (about 5x faster
    steps on CPU than the per-tensor loop); FSDP2's DTensor shards take the default implementation."""
    fused = not (d.enabled and cfg.train.parallel == "fsdp")
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.learning_rate, betas=(cfg.optim.adam_beta1, cfg.optim.adam_beta2),
                                  eps=cfg.optim.adam_epsilon, weight_decay=cfg.optim.weight_decay, fused=fused)
    return optimizer, get_cosine_schedule_with_warmup(optimizer, cfg.optim.warmup_steps, n_steps)


def _follow_schedule(optimizer: torch.optim.Optimizer, scheduler) -> None:
    """After a resume, set each group's learning rate from the (possibly longer) schedule at the resumed step.

    The optimizer state restores the rate of the checkpoint's step under the schedule the run was saved with; a
    resume with a larger --max_steps must follow the new schedule from its first resumed step. With an unchanged
    --max_steps this is the same number, so a resumed run still equals an uninterrupted one."""
    lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs  # what get_last_lr() reports (and metrics.jsonl logs) for the first resumed step


def _loop(run: Run) -> dict[str, float]:
    """The optimizer steps from run.state.step to run.n_steps; returns the last logged train metrics.

    Longer than our usual function on purpose: one optimizer step (accumulate → clip → NaN policy → step →
    log → eval → checkpoint → signals) reads top to bottom in one place, as the algorithm."""
    cfg, d, device, out, tokenizer = run.cfg, run.d, run.device, run.out, run.tokenizer
    train_pairs, eval_pairs, model, ref, policy = run.train_pairs, run.eval_pairs, run.model, run.ref, run.policy
    params, optimizer, scheduler, state, log = run.params, run.optimizer, run.scheduler, run.state, run.log
    n_steps, main_rank = run.n_steps, d.is_main
    show = cfg.train.progress and main_rank

    def checkpoint(step: int) -> None:
        _save_checkpoint(run, step)

    stop_signal: list[int] = []
    handlers = {s: signal.signal(s, lambda signum, _f: stop_signal.append(signum))
                for s in (signal.SIGTERM, signal.SIGINT)} if _main_thread() else {}

    # ------------------------------------------------------------------ loop
    accum = cfg.train.gradient_accumulation_steps
    window: dict[str, float] = {}
    window_steps = 0
    last_train: dict[str, float] = {}
    bar = tqdm(total=n_steps, initial=state.step, desc="train", disable=not show, dynamic_ncols=True)
    t0 = time.perf_counter()
    tokens = 0
    try:
        while state.step < n_steps and not state.stopped_early:
            step_metrics: dict[str, float] = {}
            for k in range(accum):
                indices = micro_batch(len(train_pairs), state.step, k, cfg, d)
                pairs = [train_pairs[i] for i in indices]
                with distributed.grad_sync(policy, sync=k == accum - 1):  # DDP: one all-reduce per optimizer step
                    out_k = pair_forward(policy, ref, pairs, indices, tokenizer, cfg, device)
                    (out_k["loss"] / accum).backward()
                tokens += sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
                for key, v in out_k.items():
                    step_metrics[key] = step_metrics.get(key, 0.0) + float(v.detach()) / accum
            step_metrics = distributed.mean_across_ranks(step_metrics, d)
            clip = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm > 0 else float("inf")
            grad_norm = distributed.grad_norm_value(torch.nn.utils.clip_grad_norm_(params, clip))
            if not (math.isfinite(step_metrics["loss"]) and math.isfinite(grad_norm)):
                what = f"non-finite {'loss' if not math.isfinite(step_metrics['loss']) else 'gradient norm'}"
                if cfg.train.nan_policy == "stop":
                    raise NonFiniteError(
                        f"step {state.step + 1}: {what} (loss={step_metrics['loss']}, grad_norm={grad_norm}); "
                        f"stopping — the last checkpoint in {out} is intact")
                if main_rank:
                    say(f"step {state.step + 1}: {what}; skipping the update (--nan_policy skip)")
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                scheduler.step()
                bar.update(1)
                continue
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            sync_reference(model, ref, cfg, state.step)
            bar.update(1)
            step_metrics.update(grad_norm=grad_norm, learning_rate=lr)
            for key, v in step_metrics.items():
                window[key] = window.get(key, 0.0) + v
            window_steps += 1
            if state.step % cfg.train.logging_steps == 0 or state.step == n_steps:
                last_train = {key: v / window_steps for key, v in window.items()}
                elapsed = time.perf_counter() - t0
                if main_rank:
                    log.write({"step": state.step, **last_train, "epoch": epoch_of(state.step, cfg, len(train_pairs), d),
                               "tokens_per_second": d.world_size * tokens / elapsed if elapsed > 0 else 0.0})
                bar.set_postfix(loss=f"{last_train['loss']:.4f}", acc=f"{last_train['rewards/accuracies']:.2f}")
                window, window_steps = {}, 0
            if eval_pairs and cfg.train.eval_steps > 0 and state.step % cfg.train.eval_steps == 0:
                _eval_and_track(policy, ref, eval_pairs, tokenizer, cfg, device, state, log, len(train_pairs))
            if cfg.train.save_steps > 0 and state.step % cfg.train.save_steps == 0:
                checkpoint(state.step)
            if distributed.any_across_ranks(bool(stop_signal), d):
                checkpoint(state.step)
                if main_rank:
                    say(f"signal {stop_signal[0] if stop_signal else 'SIGTERM'}: saved checkpoint-{state.step} in "
                        f"{out}; exiting")
                raise SystemExit(128 + (stop_signal[0] if stop_signal else signal.SIGTERM))
    finally:
        bar.close()
        for s, h in handlers.items():
            signal.signal(s, h)
    return last_train


def _save_checkpoint(run: Run, step: int) -> None:
    weights = distributed.full_model_state(run.model)  # collective under FSDP: every rank takes part
    optim_state = distributed.full_optimizer_state(run.model, run.optimizer)
    if run.d.is_main:
        run.state.log_history_len = run.log.rows
        run.state.world_size = run.d.world_size
        save_checkpoint(run.out, step, save_model_fn=lambda dst: _save_weights_and_reference(run, dst, weights),
                        tokenizer=run.tokenizer, optimizer_state=optim_state, scheduler=run.scheduler, state=run.state,
                        config_yaml=run.config_yaml, save_total_limit=run.cfg.train.save_total_limit)
    distributed.barrier(run.d)


def _save_weights_and_reference(run: Run, dst: Path, weights: dict) -> None:
    save_weights(run.model, dst, weights)
    if run.cfg.loss.sync_ref_model:  # TR-DPO: the moving reference is training state, resumed from here
        run.ref.save_weights(dst)


def _finish(run: Run) -> dict[str, float]:
    """Final eval (unless the last step just evaluated) and the final model, moved into place file by file."""
    cfg, state = run.cfg, run.state
    final_eval: dict[str, float] = {}
    if run.eval_pairs and not (cfg.train.eval_steps > 0 and state.step % cfg.train.eval_steps == 0 and state.step > 0):
        final_eval = _eval_and_track(run.policy, run.ref, run.eval_pairs, run.tokenizer, cfg, run.device, state,
                                     run.log, len(run.train_pairs))
    weights = distributed.full_model_state(run.model)
    if run.d.is_main:
        save_final_atomic(run.out, lambda dst: (save_final_model(run.model, dst, weights,
                                                                 adapter_only=cfg.model.save_adapter_only),
                                                run.tokenizer.save_pretrained(dst)))
    distributed.barrier(run.d)
    return final_eval


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _eval_and_track(policy, ref, eval_pairs, tokenizer, cfg, device, state: TrainState, log, offset) -> dict:
    metrics = evaluate(policy, ref, eval_pairs, tokenizer, cfg, device, offset=offset)
    if log is not None:
        log.write({"step": state.step, **metrics})
    acc = metrics["eval_rewards/accuracies"]
    if state.best_eval_accuracy is None or acc > state.best_eval_accuracy:
        state.best_eval_accuracy, state.evals_without_improvement = acc, 0
    else:
        state.evals_without_improvement += 1
        if 0 < cfg.train.early_stopping_patience <= state.evals_without_improvement:
            state.stopped_early = True
            say(f"early stopping at step {state.step}: eval_rewards/accuracies has not improved on "
                f"{state.best_eval_accuracy:.4f} for {state.evals_without_improvement} evals")
    if log is not None:
        say(f"step {state.step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return metrics
