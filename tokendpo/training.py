"""DPO-family training of a causal LM on preference pairs: the library behind `python -m tokendpo.train`.

One function, `train(cfg)`, read top to bottom: setup (seed, models, data, optimizer) → loop (concatenated
chosen+rejected forward, fused log-probs, preference loss, accumulation, clipping, logging) → eval →
checkpoints → final save. The command line lives in `tokendpo/train.py`.
"""

from __future__ import annotations

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
from tokendpo.checkpoint import TrainState, list_checkpoints, load_training_state, resolve_resume, save_checkpoint
from tokendpo.config import Config
from tokendpo.config_checks import check_config
from tokendpo.data import collate_packed, collate_pairs, load_preference_data
from tokendpo import distributed
from tokendpo.logps import PolicyLogps
from tokendpo.losses import combine, loss_needs, preference_loss_terms, sft_loss
from tokendpo.model_checks import check_max_positions, check_model_fits_tokenizer, check_same_model_vocab
from tokendpo.model_checks import check_same_vocabulary
from tokendpo.reference import Reference, cache_key, response_token_matrix
from tokendpo.rundir import OutputLock, RunExistsError, clear_run, holds_run, save_final_atomic, write_atomic
from tokendpo.modeling import (PRESETS, apply_lora, build_preset, check_lm_head_supported, load_model,
                               load_tokenizer, save_final_model, save_weights)

class NonFiniteError(RuntimeError):
    pass


def say(msg: str) -> None:
    """A log line on stderr that does not break the progress bar."""
    tqdm.write(msg, file=sys.stderr)


def resolve_model_path(cfg: Config, output_dir: Path) -> str:
    """A preset name becomes a saved random-init checkpoint in output_dir/../.presets/{name}-seed{seed}."""
    if cfg.model.model in PRESETS and not Path(cfg.model.model).exists():
        target = output_dir.resolve().parent / ".presets" / f"{cfg.model.model}-seed{cfg.train.seed}"
        if not (target / "config.json").is_file():
            build_preset(cfg.model.model, target, seed=cfg.train.seed)
        return str(target)
    return cfg.model.model


def micro_batches_per_epoch(n_pairs: int, batch_size: int) -> int:
    return math.ceil(n_pairs / batch_size)


def micro_batch(n_pairs: int, step: int, k: int, cfg: Config, d: distributed.Dist = distributed.Dist()) -> list[int]:
    """This rank's pair indices of the k-th micro-batch of optimizer step `step`.

    A pure function of (seed, step, k, rank), so resume is exact. The global micro-batch (per-device batch ×
    world size pairs) m = step·accum + k falls in epoch m // per_epoch, each epoch shuffled with seed + epoch;
    rank r takes the r-th slice of it — so N processes see exactly the pairs one process would at the same
    global batch size."""
    bs, accum = cfg.train.per_device_train_batch_size, cfg.train.gradient_accumulation_steps
    global_bs = bs * d.world_size
    per_epoch = micro_batches_per_epoch(n_pairs, global_bs)
    m = step * accum + k
    epoch, idx = divmod(m, per_epoch)
    g = torch.Generator().manual_seed(cfg.train.seed + epoch)
    batch = torch.randperm(n_pairs, generator=g)[idx * global_bs:(idx + 1) * global_bs]
    mine = batch[d.rank * bs:(d.rank + 1) * bs]
    return (mine if len(mine) else batch[-1:]).tolist()  # a short last batch: no rank may sit out (collectives)


def total_steps(cfg: Config, n_pairs: int, world_size: int = 1) -> int:
    if cfg.train.max_steps > 0:
        return cfg.train.max_steps
    per_epoch = micro_batches_per_epoch(n_pairs, cfg.train.per_device_train_batch_size * world_size)
    return max(1, math.ceil(cfg.train.num_epochs * per_epoch / cfg.train.gradient_accumulation_steps))


def pair_forward(policy: torch.nn.Module, ref: Reference, pairs, indices, tokenizer, cfg: Config,
                 device) -> dict[str, torch.Tensor]:
    """Loss and metrics of one micro-batch: chosen and rejected in one concatenated forward per model.

    policy: a PolicyLogps module (possibly DDP/FSDP-wrapped) returning SequenceLogps for a batch. What the loss
    needs besides the summed log-probs — the reference, TDPO's sequential KLs, LD-DPO's per-token log-probs,
    WPO's log Σ_v π² (from the fused kernel) — comes from the loss registry (`loss_needs`), never from loss
    names. A mixture (`--loss_type a,b`) also returns each component's mean as `loss/<name>`."""
    collated = collate_packed(pairs) if cfg.data.packing else \
        collate_pairs(pairs, tokenizer.pad_token_id, share_prompt=cfg.data.share_prompt)
    batch = {k: v.to(device) if v is not None else None for k, v in collated.items()}
    b = len(pairs)
    lc = cfg.loss
    needs = loss_needs(lc.loss_type, ld_alpha=lc.ld_alpha, use_weighting=lc.use_weighting)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.model.bf16 and device.type == "cuda")
    with autocast:
        # TDPO: the reference's hidden states and LM head enter the same fused pass for the sequential KL
        ref_side = (lambda _mask: (ref.response_hidden(batch, indices), *ref.lm_head())) if needs.kl else None
        pol = policy(batch, reference=ref_side, log_sum_sq=needs.log_sum_sq)  # log Σ_v π²: WPO, from the kernel
        # LD-DPO weighs tokens by position: per-token reference log-probs (their row sums are the usual sums)
        ref_tokens = ref.token_logps(batch, indices) if needs.reference and needs.token_logps else None  # (2B, L)
        ref_logps = (ref_tokens.sum(1) if ref_tokens is not None
                     else ref.sequence_logps(batch, indices) if needs.reference else None)  # (2B,)
    lengths = pol.lengths.to(pol.logps.dtype)
    halves = lambda t: (None, None) if t is None else (t[:b], t[b:])  # noqa: E731 - rows: B chosen, B rejected
    extra = {}
    if needs.token_logps:
        pol_tokens = response_token_matrix(pol.token_logps, pol.mask, batch.get("seq_ids"))  # (2B, L)
        extra.update(zip(("policy_chosen_token_logps", "policy_rejected_token_logps"), halves(pol_tokens)))
        extra.update(zip(("reference_chosen_token_logps", "reference_rejected_token_logps"), halves(ref_tokens)))
    if needs.log_sum_sq:
        extra.update(zip(("chosen_log_sum_sq", "rejected_log_sum_sq"), halves(pol.log_sum_sq)))
    terms, chosen_r, rejected_r, weights = preference_loss_terms(
        pol.logps[:b], pol.logps[b:], *halves(ref_logps),
        beta=lc.beta, loss_type=lc.loss_type, label_smoothing=lc.label_smoothing,
        chosen_lengths=lengths[:b], rejected_lengths=lengths[b:], chosen_kl=halves(pol.kl)[0],
        rejected_kl=halves(pol.kl)[1], alpha=lc.alpha, gamma=lc.gamma, loss_weights=lc.loss_weights,
        f_divergence=lc.f_divergence, f_alpha=lc.f_alpha, discopop_tau=lc.discopop_tau, ld_alpha=lc.ld_alpha,
        use_weighting=lc.use_weighting, **extra,
    )
    loss = combine(terms, weights).mean()
    if lc.rpo_alpha > 0:  # RPO: + α · token-mean NLL of the chosen responses
        loss = loss + lc.rpo_alpha * sft_loss(pol.logps[:b], lengths[:b])
    chosen_r, rejected_r = chosen_r.detach(), rejected_r.detach()
    components = {f"loss/{name}": t.detach().mean() for name, t in terms.items()} if len(terms) > 1 else {}
    return {
        "loss": loss, **components,
        "rewards/chosen": chosen_r.mean(), "rewards/rejected": rejected_r.mean(),
        "rewards/accuracies": (chosen_r > rejected_r).float().mean(),
        "rewards/margins": (chosen_r - rejected_r).mean(),
        "logps/chosen": pol.logps[:b].detach().mean(), "logps/rejected": pol.logps[b:].detach().mean(),
        "logits/chosen": pol.mean_logit[:b].mean(), "logits/rejected": pol.mean_logit[b:].mean(),
    }


def sync_reference(model: torch.nn.Module, ref: Reference, cfg: Config, step: int) -> None:
    """TR-DPO (`--sync_ref_model`): after optimizer step `step` (1-based), every `--ref_model_sync_steps` steps,
    π_ref ← α·π + (1 − α)·π_ref (`Reference.mix_in`; a collective under FSDP, so every rank calls this)."""
    if cfg.loss.sync_ref_model and step % cfg.loss.ref_model_sync_steps == 0:
        ref.mix_in(distributed.unwrap(model), cfg.loss.ref_model_mixup_alpha)


@torch.no_grad()
def evaluate(policy, ref: Reference, pairs, tokenizer, cfg: Config, device, offset: int = 0) -> dict[str, float]:
    """Eval metrics (TRL's `eval_` prefix) over all eval pairs, weighted by batch size. Under torchrun every
    rank evaluates every pair (identical results; FSDP needs all ranks in each forward)."""
    was_training = policy.training
    policy.eval()
    totals: dict[str, float] = {}
    bs = cfg.train.per_device_eval_batch_size
    for i in range(0, len(pairs), bs):
        chunk = pairs[i:i + bs]
        out = pair_forward(policy, ref, chunk, list(range(offset + i, offset + i + len(chunk))), tokenizer, cfg,
                           device)
        for k, v in out.items():
            totals[k] = totals.get(k, 0.0) + float(v) * len(chunk)
    policy.train(was_training)
    return {f"eval_{k}": v / len(pairs) for k, v in totals.items()}


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
    """The optimizer steps from run.state.step to run.n_steps; returns the last logged train metrics."""
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
                    log.write({"step": state.step, **last_train, "epoch": _epoch(state.step, cfg, len(train_pairs), d),
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


def build_policy_and_reference(cfg: Config, model_path: str, ckpt: Path | None, device, tokenizer) -> tuple:
    """The trainable policy and its Reference, checked against the tokenizer and each other.

    Full fine-tuning: policy from --model (or the checkpoint's weights on resume), reference = --ref_model or a
    second, frozen load of --model. LoRA (--lora_r > 0): the policy is a peft model over --model, and the
    reference is the same model with the adapter disabled — one copy of the base weights in memory.
    """
    base = load_model(str(ckpt) if ckpt and cfg.model.lora_r == 0 else model_path).to(device)
    check_lm_head_supported(base)
    check_model_fits_tokenizer(base, tokenizer, f"--model {cfg.model.model}")
    check_max_positions(base, cfg.data.max_length, f"--model {cfg.model.model}", "--max_length")
    ref_model = None
    if cfg.model.ref_model:
        ref_model = _freeze(load_model(cfg.model.ref_model).to(device))
        check_same_model_vocab(base, ref_model, f"--model {cfg.model.model}", f"--ref_model {cfg.model.ref_model}")
        ref_tok = _tokenizer_if_any(cfg.model.ref_model)
        if ref_tok is not None:
            check_same_vocabulary(tokenizer, ref_tok, f"--model {cfg.model.model}", f"--ref_model {cfg.model.ref_model}")
    if cfg.model.lora_r > 0:
        model = apply_lora(base, cfg.model, checkpoint=ckpt)
        if cfg.model.gradient_checkpointing:
            model.enable_input_require_grads()
        ref = (Reference(ref_model, kernel=cfg.train.kernel) if ref_model is not None
               else Reference(model, adapter_host=model, kernel=cfg.train.kernel))
    else:
        model = base
        ref = Reference(ref_model if ref_model is not None else _freeze(load_model(model_path).to(device)),
                        kernel=cfg.train.kernel)
    if cfg.model.gradient_checkpointing:
        model.config.use_cache = False
        model.gradient_checkpointing_enable()
    return model, ref


def _tokenizer_if_any(path: str):
    """The tokenizer saved with a reference model, or None when it has none (then the vocab sizes are compared)."""
    try:
        return load_tokenizer(path)
    except (ValueError, OSError):
        return None


def _freeze(model):
    model.eval()
    model.requires_grad_(False)
    return model


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _epoch(step: int, cfg: Config, n_pairs: int, d: distributed.Dist) -> float:
    per_epoch = micro_batches_per_epoch(n_pairs, cfg.train.per_device_train_batch_size * d.world_size)
    return step * cfg.train.gradient_accumulation_steps / per_epoch


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
