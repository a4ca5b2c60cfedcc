"""The trainable policy and its reference, loaded and checked against the tokenizer and each other."""

from __future__ import annotations

from pathlib import Path

from tokendpo.config import Config
from tokendpo.model_checks import (check_max_positions, check_model_fits_tokenizer, check_same_model_vocab,
                                   check_same_vocabulary)
from tokendpo.modeling import PRESETS, apply_lora, build_preset, check_lm_head_supported, load_model, load_tokenizer
from tokendpo.reference import Reference


def resolve_model_path(cfg: Config, output_dir: Path) -> str:
    """A preset name becomes a saved random-init checkpoint in output_dir/../.presets/{name}-seed{seed}."""
    if cfg.model.model in PRESETS and not Path(cfg.model.model).exists():
        target = output_dir.resolve().parent / ".presets" / f"{cfg.model.model}-seed{cfg.train.seed}"
        if not (target / "config.json").is_file():
            build_preset(cfg.model.model, target, seed=cfg.train.seed)
        return str(target)
    return cfg.model.model


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
        ref_model = freeze(load_model(cfg.model.ref_model).to(device))
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
        ref = Reference(ref_model if ref_model is not None else freeze(load_model(model_path).to(device)),
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


def freeze(model):
    model.eval()
    model.requires_grad_(False)
    return model
