"""The worker half of `benchmarks.vs_trl`: what runs inside each fresh subprocess
(`python -m benchmarks.vs_trl --worker FRAMEWORK --spec FILE --result FILE`) — one training run of tokendpo or of
TRL's DPOTrainer on the prepared job, with its per-step clocks (wall, process CPU time), RSS and logged metrics.

Kept apart from the runner so each file stays readable; the parent side (model, data, order, agreement checks)
is in benchmarks/vs_trl.py, the figures and the report in benchmarks/vs_trl_report.py.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from benchmarks.vs_trl_report import REPORTED


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _peak_bytes() -> int:
    """Peak RSS of this process's own address space (VmHWM). Not `ru_maxrss`: Linux carries the parent's RSS at
    fork into a child's ru_maxrss across exec, so a worker spawned by a 1 GiB parent would read >= 1 GiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


class LogWatcher(threading.Thread):
    """tokendpo's per-step clock, read from outside: polls metrics.jsonl every millisecond and, when it gains a
    line (one per optimizer step), stamps the process CPU time and the RSS. A stamp is late by at most a poll
    interval plus a GIL switch (~5 ms); the errors do not add up over steps."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.stamps, self.done = path, [], threading.Event()

    def run(self):
        lines = 0
        while not self.done.is_set():
            try:
                n = self.path.read_bytes().count(b"\n") if self.path.stat().st_size else 0
            except FileNotFoundError:
                n = 0
            if n > lines:
                self.stamps += [(time.process_time(), _rss_bytes())] * (n - lines)
                lines = n
            time.sleep(0.001)


def worker_tokendpo(spec: dict) -> dict:
    """tokendpo.train.train(cfg) on the saved config; trajectories from its metrics.jsonl."""
    import torch

    from tokendpo import config as config_mod
    from tokendpo.training import train

    torch.set_num_threads(spec["threads"])
    cfg = config_mod.from_yaml_file(spec["config"])
    cfg.train.output_dir = spec["output_dir"]
    cfg.data.packing = spec["framework"] == "tokendpo+packing"
    metrics = Path(spec["output_dir"]) / "metrics.jsonl"
    watcher = LogWatcher(metrics)
    base = _rss_bytes()
    watcher.start()
    t0 = time.perf_counter()
    train(cfg, on_existing="overwrite")  # each repetition measures a fresh run
    wall = time.perf_counter() - t0
    watcher.done.set()
    watcher.join()
    peak = _peak_bytes()
    rows = [r for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r]
    # tokens_per_second is cumulative tokens / seconds since the loop started: invert it for each step's clock
    cum, times = 0, []
    for n, r in zip(spec["step_tokens"], rows):
        cum += n
        times.append(cum / r["tokens_per_second"])
    return {"rows": [{k: r[k] for k in REPORTED + ("learning_rate",)} for r in rows], "times": times,
            "cpu": [c for c, _ in watcher.stamps], "rss": [m for _, m in watcher.stamps], "base_rss": base,
            "peak_rss": peak, "wall": wall, "cum_tokens": cum}


def worker_trl(spec: dict) -> dict:
    """TRL's DPOTrainer on the same texts in the same order; ids, per-step clock and log history."""
    import datasets
    import torch
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class Clock(TrainerCallback):
        """Wall time since the start of training, process CPU time and RSS at each train log (one per step)."""

        def __init__(self):
            self.t0, self.times, self.cpu, self.rss = None, [], [], []

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.times.append(time.perf_counter() - self.t0)
                self.cpu.append(time.process_time())
                self.rss.append(_rss_bytes())

    torch.set_num_threads(spec["threads"])
    texts = [json.loads(line) for line in Path(spec["trl_rows"]).read_text().splitlines()]
    dataset = datasets.Dataset.from_list(texts)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    base = _rss_bytes()
    h = spec["hparams"]
    args = DPOConfig(
        output_dir=spec["output_dir"], max_steps=spec["steps"], per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1, learning_rate=h["learning_rate"], lr_scheduler_type="cosine",
        warmup_steps=h["warmup_steps"], optim="adamw_torch_fused", adam_beta1=h["adam_beta1"], adam_beta2=h["adam_beta2"],
        adam_epsilon=h["adam_epsilon"], weight_decay=0.0, max_grad_norm=h["max_grad_norm"], beta=h["beta"],
        loss_type=spec["loss"]["loss_type"], loss_weights=spec["loss"]["loss_weights"],
        use_weighting=spec["loss"]["use_weighting"], max_length=spec["max_length"], precompute_ref_log_probs=False,
        gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True, disable_dropout=True,
        train_sampling_strategy="sequential", seed=h["seed"], logging_steps=1, save_strategy="no",
        eval_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )
    clock = Clock()
    t0 = time.perf_counter()
    trainer = DPOTrainer(model=spec["model_dir"], args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[clock])
    assert trainer.model.dtype == torch.float32, trainer.model.dtype
    ids = [[r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]] for r in trainer.train_dataset]
    trainer.train()
    wall = time.perf_counter() - t0
    peak = _peak_bytes()
    rows = [r for r in trainer.state.log_history if "loss" in r]
    return {"rows": [{k: r[k] for k in REPORTED + ("learning_rate", "num_tokens")} for r in rows],
            "times": clock.times, "cpu": clock.cpu, "rss": clock.rss, "base_rss": base, "peak_rss": peak,
            "wall": wall, "cum_tokens": int(rows[-1]["num_tokens"]), "ids": ids,
            "optimizer": type(trainer.optimizer).__name__}
