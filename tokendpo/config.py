"""Configuration: one dataclass per component, composed into one tree; every default lives here.

Keys are flat and unique across components, so `--beta 0.2` and a YAML file that nests it (`loss: {beta: 0.2}`)
or not (`beta: 0.2`) mean the same. Precedence: dataclass default < YAML file < CLI flag. Unknown keys are an
error that suggests close matches. The `help` metadata of each field is what `--help` prints.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kernels import IMPLS as KERNELS  # noqa: E402 - kernel names come from kernels' own registry
from tokendpo.losses import F_DIVERGENCES, LOSS_TYPES, check_options  # noqa: E402 - the loss registry


def _f(default: Any, help: str, choices: tuple | None = None):  # noqa: A002 - `help` reads best here
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class ModelConfig:
    model: str = _f("tiny-llama", "HF hub id, local dir, .gguf file, or a built-in preset (tiny-llama, small-llama)")
    ref_model: str | None = _f(None, "reference model; default: a frozen copy of --model")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward to save memory")
    bf16: bool = _f(False, "bf16 autocast (GPU only; CPU bf16 matmul is ~300x slower)")
    lora_r: int = _f(0, "LoRA rank via peft (0 = full fine-tuning); the reference is then the adapter-disabled base")
    lora_alpha: float = _f(16.0, "LoRA alpha")
    lora_targets: list[str] = _f(None, "LoRA target modules, comma-separated (default: all linear projections)")
    save_adapter_only: bool = _f(False, "with LoRA, save the adapter alone instead of merged weights")
    ref_logps: str = _f("online", "reference log-probs: computed each step (online) or once, cached on disk and "
                        "the reference freed (precompute)", ("online", "precompute"))
    ref_cache_dir: str | None = _f(None, "where --ref_logps precompute caches (default: <output_dir>/ref_cache)")


@dataclass
class DataConfig:
    dataset: str | None = _f(None, "preference data: HF hub id, local dir, or .json/.jsonl/.parquet file (.gz ok)")
    dataset_split: str = _f("train", "split of --dataset to train on")
    eval_dataset: str | None = _f(None, "separate eval data (same formats as --dataset)")
    eval_dataset_split: str = _f("test", "split of --eval_dataset to evaluate on (ignored for single files)")
    eval_fraction: float = _f(0.0, "hold out this fraction of --dataset for eval when --eval_dataset is unset")
    prompt_field: str = _f("prompt", "column with the prompt (string or list of {role, content} messages)")
    chosen_field: str = _f("chosen", "column with the chosen response (or full text, HH-RLHF style)")
    rejected_field: str = _f("rejected", "column with the rejected response (or full text)")
    max_length: int = _f(512, "max tokens of prompt + response; responses are right-truncated to fit")
    max_prompt_length: int = _f(256, "prompts longer than this are left-truncated (and counted)")
    skip_bad_rows: bool = _f(False, "skip malformed rows (counted and reported) instead of stopping with an error")
    chat_template: bool = _f(False, "render plain-string prompts with the tokenizer's chat template")
    packing: bool = _f(False, "padding-free: concatenate a micro-batch's sequences into one row with position ids")
    share_prompt: bool = _f(False, "run each prompt once for its chosen and rejected responses (KV cache shared "
                                   "by both; exact up to fp32 rounding)")


@dataclass
class LossConfig:
    beta: float = _f(0.1, "β: strength of the KL penalty; implicit reward r = β·(log π − log π_ref)")
    loss_type: str = _f("sigmoid", "preference loss, or a comma-separated mixture (e.g. sigmoid,sft) of: "
                        + ", ".join(LOSS_TYPES))
    loss_weights: list[float] | None = _f(None, "one weight per --loss_type of a mixture, comma-separated "
                                                "(default: all 1)")
    label_smoothing: float = _f(0.0, "ε: conservative DPO (sigmoid), robust DPO, SimPO, AOT; EXO's label "
                                     "distribution (exo_pair needs ε > 0)")
    alpha: float = _f(0.5, "α of TDPO (weight of the sequential KL term)")
    gamma: float = _f(0.5, "γ of SimPO (target reward margin)")
    rpo_alpha: float = _f(0.0, "weight of an SFT (NLL) term on the chosen response (RPO); 0 = off")
    f_divergence: str = _f("reverse_kl", "f-divergence regulariser of f-DPO (only for losses built on the "
                                         "chosen - rejected difference)", F_DIVERGENCES)
    f_alpha: float = _f(0.5, "α of --f_divergence alpha_divergence")
    discopop_tau: float = _f(0.05, "τ of the discopop loss (> 0)")
    ld_alpha: float | None = _f(None, "LD-DPO: weight in [0, 1] of the tokens past the shorter response of a "
                                      "pair (unset = off)")
    use_weighting: bool = _f(False, "WPO: weight each pair by its responses' length-normalised, "
                                    "sampling-aligned probabilities")
    sync_ref_model: bool = _f(False, "TR-DPO: every --ref_model_sync_steps steps the reference becomes "
                                     "α·policy + (1-α)·reference")
    ref_model_mixup_alpha: float = _f(0.6, "α of --sync_ref_model, in (0, 1]")
    ref_model_sync_steps: int = _f(512, "steps between reference syncs of --sync_ref_model (>= 1)")

    def check(self, model: ModelConfig) -> None:
        """The loss options together (the registry's rules, `tokendpo.losses.check_options`) and TR-DPO's
        requirements, as ConfigErrors naming the flags."""
        try:
            check_options(self.loss_type, beta=self.beta, label_smoothing=self.label_smoothing,
                          loss_weights=self.loss_weights, f_divergence=self.f_divergence, f_alpha=self.f_alpha,
                          discopop_tau=self.discopop_tau, ld_alpha=self.ld_alpha, use_weighting=self.use_weighting)
        except ValueError as e:
            raise ConfigError(f"--loss_type {self.loss_type}: {e}") from None
        if not self.sync_ref_model:
            return
        if model.ref_logps == "precompute":
            raise ConfigError("--sync_ref_model updates the reference during training, so its log-probs cannot be "
                              "precomputed: use --ref_logps online")
        if model.lora_r > 0:
            raise ConfigError("--sync_ref_model needs a separate reference model to update; with --lora_r the "
                              "reference is the adapter-disabled policy. Use full fine-tuning")
        if not 0 < self.ref_model_mixup_alpha <= 1:
            raise ConfigError(f"--ref_model_mixup_alpha {self.ref_model_mixup_alpha}: must be in (0, 1]")
        if self.ref_model_sync_steps < 1:
            raise ConfigError(f"--ref_model_sync_steps {self.ref_model_sync_steps}: must be >= 1")


@dataclass
class OptimConfig:
    learning_rate: float = _f(5e-6, "peak learning rate (AdamW)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    adam_beta1: float = _f(0.9, "AdamW β1")
    adam_beta2: float = _f(0.999, "AdamW β2")
    adam_epsilon: float = _f(1e-8, "AdamW ε")
    warmup_steps: int = _f(0, "linear warmup steps, then cosine decay to 0 at the last step")
    max_grad_norm: float = _f(1.0, "clip the global gradient norm (0 = off)")


@dataclass
class TrainConfig:
    output_dir: str = _f("outputs/run", "where the model, metrics.jsonl, train_config.yaml and checkpoints go")
    max_steps: int = _f(-1, "total optimizer steps (-1: run --num_epochs)")
    num_epochs: float = _f(1.0, "epochs over the training pairs when --max_steps is -1")
    per_device_train_batch_size: int = _f(4, "pairs per micro-batch")
    per_device_eval_batch_size: int = _f(8, "pairs per eval batch")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step")
    logging_steps: int = _f(1, "log train metrics every N steps")
    eval_steps: int = _f(0, "evaluate every N steps (0 = only at the end, when there is eval data)")
    save_steps: int = _f(0, "write checkpoint-{step}/ every N steps (0 = never)")
    save_total_limit: int = _f(0, "keep only the newest N checkpoints (0 = keep all)")
    early_stopping_patience: int = _f(0, "stop after N evals without a better eval_rewards/accuracies (0 = off)")
    resume_from: str | None = _f(None, "checkpoint dir to resume from, or 'latest' (newest in --output_dir); "
                                       "a larger --max_steps follows the new schedule from the first resumed step")
    overwrite_output_dir: bool = _f(False, "when --output_dir already holds a run, delete tokendpo's files there and "
                                           "start afresh (default: refuse)")
    seed: int = _f(42, "seed for init, data order and dropout")
    kernel: str = _f("auto", "token log-prob implementation (auto = triton on CUDA, chunked otherwise)", KERNELS)
    nan_policy: str = _f("stop", "on NaN/inf loss or gradients: stop (keep last good checkpoint) or skip the step",
                         ("stop", "skip"))
    device: str = _f("auto", "cpu, cuda, or auto")
    num_threads: int = _f(0, "torch intra-op CPU threads (0 = torch's default; 1 is fastest on a CPU shared with "
                             "other jobs)")
    parallel: str = _f("ddp", "under torchrun: DDP replicas or FSDP2 (fully_shard) sharding", ("ddp", "fsdp"))
    progress: bool = _f(True, "show a tqdm progress bar")


@dataclass
class TaskConfig:
    task: str | None = _f(None, "run the built-in pipeline (SFT -> pairs -> DPO -> eval) on a task: sentiment, arithmetic")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    task: TaskConfig = field(default_factory=TaskConfig)


# ----------------------------------------------------------------------------------------------- flat keys

def _components(cfg: Config) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def key_index(cfg: Config | None = None) -> dict[str, tuple[str, dataclasses.Field, Any]]:
    """flat key -> (component name, field, resolved type). Flat keys are unique by construction (checked)."""
    cfg = cfg or Config()
    index: dict[str, tuple[str, dataclasses.Field, Any]] = {}
    for comp_name, comp in _components(cfg).items():
        hints = typing.get_type_hints(type(comp))
        for f in dataclasses.fields(comp):
            assert f.name not in index, f"config key {f.name!r} is not unique"
            index[f.name] = (comp_name, f, hints[f.name])
    return index


class ConfigError(ValueError):
    pass


def _unknown(key: str, known: typing.Iterable[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join('--' + c for c in close)}?" if close else "; see --help"
    return ConfigError(f"{where}: unknown config key {key!r}{hint}")


def _convert(key: str, raw: Any, typ: Any, where: str) -> Any:
    """Convert a YAML value or CLI string to the field's type, with an error naming the key."""
    args = typing.get_args(typ)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), typ) if args and typing.get_origin(typ) is not list else typ
    if raw is None or (isinstance(raw, str) and optional and raw.lower() in ("none", "null", "")):
        if optional or typing.get_origin(base) is list:
            return None
        raise ConfigError(f"{where}: key {key!r} may not be empty")
    is_list = typing.get_origin(base) is list
    if isinstance(raw, (dict, list, tuple)) and not (is_list and not isinstance(raw, dict)):
        kind = "a mapping" if isinstance(raw, dict) else "a list"
        raise ConfigError(f"{where}: key {key!r}: expected a single {getattr(base, '__name__', base)}, got {kind}")
    if isinstance(raw, bool) and base in (int, float):  # YAML `true` is not the number 1
        raise ConfigError(f"{where}: key {key!r}: expected {base.__name__}, got boolean {raw}")
    if not isinstance(raw, (str, int, float, bool, list, tuple)):  # YAML dates and the like
        raise ConfigError(f"{where}: key {key!r}: cannot read a {type(raw).__name__} as {getattr(base, '__name__', base)}")
    try:
        if is_list:
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            item = (typing.get_args(base) or (str,))[0]  # list[str], list[float], ...
            return [item(str(x).strip()) for x in items if str(x).strip()]
        if base is bool:
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("true", "1", "yes"):
                return True
            if str(raw).lower() in ("false", "0", "no"):
                return False
            raise ValueError("expected true or false")
        if base is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError("expected an integer")
            return int(raw)
        if base is float:
            return float(raw)
        return str(raw)
    except ValueError as e:
        raise ConfigError(f"{where}: key {key!r}: cannot read {raw!r} as {getattr(base, '__name__', base)} ({e})")


def _set(cfg: Config, key: str, raw: Any, where: str, index) -> None:
    if key not in index:
        raise _unknown(key, index, where)
    comp_name, f, typ = index[key]
    value = _convert(key, raw, typ, where)
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{where}: key {key!r}: {value!r} is not one of {', '.join(choices)}")
    setattr(getattr(cfg, comp_name), key, value)


def _flatten_yaml(data: Any, path: str, index) -> dict[str, Any]:
    """YAML may nest keys by component (`loss: {beta: 0.1}`) or not; both flatten to {key: value}."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    flat: dict[str, Any] = {}
    components = {f.name for f in dataclasses.fields(Config)}
    for k, v in data.items():
        if k in components and isinstance(v, dict):
            flat.update(_flatten_yaml(v, path, index))
        elif k in components and k not in index:  # `task:` is both a component and a key
            raise ConfigError(f"{path}: component {k!r} must map keys to values")
        else:
            flat[k] = v
    return flat


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    return _flatten_yaml(data, str(path), key_index())


def apply(cfg: Config, values: dict[str, Any], where: str) -> Config:
    index = key_index(cfg)
    for k, v in values.items():
        _set(cfg, k, v, where, index)
    return cfg


def parse_cli(argv: list[str]) -> tuple[dict[str, Any], str | None]:
    """`--key value`, `--key=value`, bare `--flag` (true for booleans) -> ({key: raw string}, --config path)."""
    index = key_index()
    values: dict[str, Any] = {}
    config_path = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"command line: unexpected argument {arg!r} (keys are given as --key value)")
        key, eq, val = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key == "config":
            if not eq:
                i += 1
                if i >= len(argv):
                    raise ConfigError("command line: --config needs a file")
                val = argv[i]
            config_path = val
            i += 1
            continue
        if key not in index:
            raise _unknown(key, index, "command line")
        is_bool = index[key][2] is bool
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if is_bool and (nxt is None or nxt.startswith("--") or nxt.lower() not in ("true", "false", "1", "0", "yes", "no")):
                val = "true"
            elif nxt is None:
                raise ConfigError(f"command line: --{key} needs a value")
            else:
                val = nxt
                i += 1
        values[key] = val
        i += 1
    return values, config_path


def resolve(argv: list[str]) -> Config:
    """default < YAML (--config) < CLI flags."""
    cli, config_path = parse_cli(argv)
    cfg = Config()
    if config_path:
        apply(cfg, load_yaml(config_path), config_path)
    return apply(cfg, cli, "command line")


def help_text(prog: str = "python -m tokendpo.train") -> str:
    lines = [f"usage: {prog} [--config FILE.yaml] [--key value ...]", "",
             "Keys (flat; YAML may nest them by component). Precedence: default < YAML < CLI.",
             "Booleans take --flag or --flag true|false; lists are comma-separated.", ""]
    for comp_name, comp in _components(Config()).items():
        lines.append(f"{comp_name}:")
        for f in dataclasses.fields(comp):
            choices = f.metadata.get("choices")
            extra = f" {{{','.join(choices)}}}" if choices else ""
            lines.append(f"  --{f.name}{extra}  (default: {getattr(comp, f.name)!r})")
            lines.append(f"      {f.metadata['help']}")
    return "\n".join(lines)


def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(cfg)


def save_yaml(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def from_yaml_file(path: str | Path) -> Config:
    """Read a saved train_config.yaml back into a Config (used by resume)."""
    return apply(Config(), load_yaml(path), str(path))


def main_help_requested(argv: list[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


if __name__ == "__main__":  # pragma: no cover
    print(help_text())
    sys.exit(0)
