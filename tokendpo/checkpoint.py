"""Checkpoints: written atomically (temp dir, then rename), newest N kept, resumable state as a dataclass.

checkpoint-{step}/ holds the model + tokenizer (save_pretrained, safetensors), optimizer.pt, scheduler.pt,
rng.pt (torch/numpy/python RNG), trainer_state.json (TrainState) and train_config.yaml. Every torch.load here
uses weights_only=True.
"""

from __future__ import annotations

import errno
import json
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tokendpo.rundir import describe_os_error

CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainState:
    """Everything beyond weights and optimizer needed to continue a run exactly."""

    step: int = 0  # optimizer steps done; the data position is derived from it (see train.micro_batches)
    best_eval_accuracy: float | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    log_history_len: int = 0  # rows of metrics.jsonl written up to this step
    world_size: int = 1  # processes that wrote the checkpoint (resume at another size keeps the global batch)

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, d: dict) -> "TrainState":
        d = dict(d)
        d.pop("extra", None)  # written by earlier versions, never used
        return cls(**d)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """checkpoint-{step} dirs in `output_dir`, oldest first (temp dirs of interrupted writes are ignored)."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if p.is_dir() and (m := CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: Path, step: int, *, save_model_fn, tokenizer, optimizer_state: dict, scheduler,
                    state: TrainState, config_yaml: str, save_total_limit: int = 0) -> Path:
    """Write checkpoint-{step}/ atomically, then prune to the newest `save_total_limit` (0 = keep all).

    save_model_fn(dir) writes the weights (save_pretrained); optimizer_state is the full, parameter-name-keyed
    optimizer state (tokendpo.distributed.full_optimizer_state), loadable at any world size."""
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".tmp-checkpoint-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_model_fn(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        # numpy/python RNG states are plain tuples/arrays; pickled through torch.save but loaded weights_only below
        torch.save(_rng_to_tensors(rng_state()), tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(state.state_dict(), indent=1))
        (tmp / "train_config.yaml").write_text(config_yaml)
    except (OSError, RuntimeError) as e:  # a full disk surfaces as OSError, or as RuntimeError from torch.save
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, RuntimeError) and "write" not in str(e).lower():
            raise
        errno_ = getattr(e, "errno", None) or errno.EIO
        kept = list_checkpoints(output_dir)
        raise OSError(errno_, describe_os_error(e if isinstance(e, OSError) else OSError(errno_, str(e)),
                                                f"saving checkpoint-{step}")
                      + (f"; {kept[-1].name} is intact" if kept else "")) from e
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)  # atomic on one filesystem: a checkpoint dir is either complete or absent
    if save_total_limit > 0:
        for old in list_checkpoints(output_dir)[:-save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _rng_to_tensors(state: dict) -> dict:
    """RNG states as tensors and plain lists, so torch.load(weights_only=True) can read them."""
    np_state = state["numpy"]
    py_state = state["python"]
    return {
        "torch": state["torch"],
        "cuda": state["cuda"],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def _rng_from_tensors(d: dict) -> dict:
    n = d["numpy"]
    p = d["python"]
    return {"torch": d["torch"], "cuda": d["cuda"],
            "numpy": (n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]),
            "python": (p[0], tuple(p[1]), p[2])}


def load_training_state(ckpt: Path, scheduler) -> tuple[TrainState, dict]:
    """Restore scheduler and RNG; return the TrainState and the full optimizer state (to load after wrapping)."""
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    set_rng_state(_rng_from_tensors(torch.load(ckpt / "rng.pt", weights_only=True)))
    state = TrainState.from_state_dict(json.loads((ckpt / "trainer_state.json").read_text()))
    return state, torch.load(ckpt / "optimizer.pt", weights_only=True)


def resolve_resume(resume_from: str, output_dir: str | Path) -> Path:
    """`latest` -> newest checkpoint in output_dir; else the given dir, which must be a complete checkpoint."""
    if resume_from == "latest":
        ckpts = list_checkpoints(output_dir)
        if not ckpts:
            raise FileNotFoundError(f"--resume_from latest: no checkpoint-*/ in {output_dir}")
        return ckpts[-1]
    path = Path(resume_from)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"--resume_from {resume_from}: not a checkpoint dir (no trainer_state.json)")
    return path
