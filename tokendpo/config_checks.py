"""Every config value checked at startup, before anything is read from disk or written to it.

`check_config(cfg)` raises a `ConfigError` naming the flag (`--per_device_train_batch_size 0: must be >= 1`);
the CLI prints it as one `error: ...` line and exits 2. The rules are a table (flat key -> check), so a new
config key adds one line here. Cross-field rules (the length flags) follow the table.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from tokendpo.config import Config, ConfigError, key_index


def _finite(v: Any) -> str | None:
    return None if isinstance(v, (int, float)) and math.isfinite(v) else "must be a finite number"


def at_least(lo: float) -> Callable[[Any], str | None]:
    return lambda v: _finite(v) or (None if v >= lo else f"must be >= {lo:g}")


def greater_than(lo: float) -> Callable[[Any], str | None]:
    return lambda v: _finite(v) or (None if v > lo else f"must be > {lo:g}")


def in_range(lo: float, hi: float, *, hi_open: bool = True) -> Callable[[Any], str | None]:
    def check(v):
        ok = lo <= v < hi if hi_open else lo <= v <= hi
        return _finite(v) or (None if ok else f"must be in [{lo:g}, {hi:g}{')' if hi_open else ']'}")
    return check


def steps_or_minus_one(v: Any) -> str | None:
    return None if v == -1 or v >= 1 else "must be >= 1 (or -1: run --num_epochs)"


RULES: dict[str, Callable[[Any], str | None]] = {
    # training loop
    "per_device_train_batch_size": at_least(1),
    "per_device_eval_batch_size": at_least(1),
    "gradient_accumulation_steps": at_least(1),
    "logging_steps": at_least(1),
    "max_steps": steps_or_minus_one,
    "num_epochs": greater_than(0),
    "eval_steps": at_least(0),
    "save_steps": at_least(0),
    "save_total_limit": at_least(0),
    "early_stopping_patience": at_least(0),
    "num_threads": at_least(0),
    # optimizer
    "learning_rate": at_least(0),
    "weight_decay": at_least(0),
    "adam_beta1": in_range(0, 1),
    "adam_beta2": in_range(0, 1),
    "adam_epsilon": greater_than(0),
    "warmup_steps": at_least(0),
    "max_grad_norm": at_least(0),
    # loss
    "beta": greater_than(0),
    "label_smoothing": in_range(0, 0.5),
    "alpha": _finite,
    "gamma": _finite,
    "rpo_alpha": at_least(0),
    # data and model
    "max_length": at_least(2),
    "max_prompt_length": at_least(1),
    "eval_fraction": in_range(0, 1),
    "lora_r": at_least(0),
    "lora_alpha": greater_than(0),
}


def check_config(cfg: Config) -> None:
    """Raise ConfigError for the first value that breaks a rule, or for conflicting flags."""
    index = key_index(cfg)
    for key, rule in RULES.items():
        if key not in index:  # a rule for a key this build does not have
            continue
        comp, _field, _typ = index[key]
        value = getattr(getattr(cfg, comp), key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"--{key} {value!r}: expected a number")
        problem = rule(value)
        if problem:
            raise ConfigError(f"--{key} {value!r}: {problem}")
    if cfg.data.max_prompt_length >= cfg.data.max_length:
        raise ConfigError(
            f"--max_prompt_length {cfg.data.max_prompt_length} must be < --max_length {cfg.data.max_length}: "
            f"a response needs at least one token of room after the prompt")
