"""Models, tokenizers and references: loading from the hub, a local dir, a .gguf file or a built-in preset.

Presets are tiny transformers models built from a config (random init) with a byte-level tokenizer, saved to
disk like any checkpoint — the tests and the built-in tasks use them because this machine has no model hub.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

import kernels

# A minimal chat template (role headers, then content) so conversational data works with preset tokenizers.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def byte_level_tokenizer(add_bos: bool = True) -> PreTrainedTokenizerFast:
    """A real `tokenizers` byte-level tokenizer: 256 byte tokens + 4 specials, BOS added by the post-processor.

    Every string round-trips exactly, so tests need no trained vocabulary and no download.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins for bytes
    specials = list(SPECIAL_TOKENS.values())
    vocab = {tok: i for i, tok in enumerate(specials + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


@dataclass(frozen=True)
class Preset:
    """Shape of a built-in Llama model (random init)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512


PRESETS = {
    "tiny-llama": Preset(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    "small-llama": Preset(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=384),
}


def preset_config(name: str, vocab_size: int, tokenizer: PreTrainedTokenizerFast | None = None) -> LlamaConfig:
    p = PRESETS[name]
    tok_ids = {}
    if tokenizer is not None:
        tok_ids = dict(
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=p.hidden_size, num_hidden_layers=p.num_hidden_layers,
        num_attention_heads=p.num_attention_heads, num_key_value_heads=p.num_attention_heads,
        intermediate_size=p.intermediate_size, max_position_embeddings=p.max_position_embeddings,
        tie_word_embeddings=False, **tok_ids,
    )


def build_preset(name: str, out_dir: str | os.PathLike, *, seed: int = 0,
                 tokenizer: PreTrainedTokenizerFast | None = None) -> Path:
    """Build preset `name` with random weights (seeded), save model + tokenizer to `out_dir`, return it."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    tokenizer = tokenizer or byte_level_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(preset_config(name, len(tokenizer), tokenizer))
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def _gguf_split(path: str) -> tuple[str, str | None]:
    """(`pretrained_model_name_or_path`, `gguf_file`) for transformers: a .gguf file loads from its directory."""
    if path.endswith(".gguf"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--model: GGUF file not found: {path}")
        return os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    return path, None


def load_tokenizer(path: str) -> PreTrainedTokenizerFast:
    """Tokenizer of a hub id, local dir or .gguf file; pad falls back to EOS (never silently to id 0)."""
    src, gguf = _gguf_split(path)
    try:
        tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf) if gguf else AutoTokenizer.from_pretrained(src)
    except Exception as e:  # noqa: BLE001 - missing or corrupt tokenizer files: one clear line naming the path
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ValueError(f"{path}: cannot load a tokenizer from it ({e.__class__.__name__}: {first})") from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token_id is None:
        raise ValueError(f"{path}: tokenizer has no EOS token; responses need one appended")
    return tok


def load_model(path: str, *, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """AutoModelForCausalLM from a hub id, a local dir or a .gguf file (dequantised to `dtype`)."""
    src, gguf = _gguf_split(path)
    kwargs = {"dtype": dtype}
    if gguf:
        kwargs["gguf_file"] = gguf
    try:
        model = AutoModelForCausalLM.from_pretrained(src, **kwargs)
    except Exception as e:  # noqa: BLE001 - corrupt/truncated safetensors, refused pickles, bad configs: one clear line
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ValueError(f"{path}: cannot load a causal LM from it ({e.__class__.__name__}: {first})") from e
    if gguf and getattr(model, "hf_quantizer", None) is not None:
        # transformers dequantises GGUF tensors while loading but keeps a GGUF "quantizer" marker, and
        # save_pretrained refuses to save such a model ("quantized with gguf and is not serializable"). The
        # weights are plain `dtype` tensors by now, so dropping the marker is exact and makes the model (and a
        # LoRA merge over it) save as ordinary safetensors.
        model.hf_quantizer.remove_quantization_config(model)
    return model


# How transformers' modeling code transforms the logits after the LM head, per config field: (field, model
# families (model_type prefixes; None = every model that has the field), rule). Read from transformers 5.x's
# *ForCausalLM.forward. A field that is set on a model of a family not listed is refused by name: we do not
# know what that model does with it. `kernels.LogitHead` applies y = softcap·tanh(scale·z/softcap) / T.
_HEAD_FIELDS = (
    ("final_logit_softcapping", None, "softcap"),  # Gemma-2/3/3n/4, VaultGemma, nanochat, Mistral-Large-4, Muse
    ("logits_soft_cap", ("recurrent_gemma",), "softcap"),
    ("logit_scale", ("cohere",), "multiply"),  # Cohere, Cohere2, Cohere2-MoE: logits · logit_scale
    ("output_multiplier", ("muse_",), "multiply"),  # MuseSpark/Glimmer: before the soft-cap
    ("lm_head_multiplier", ("falcon_h1",), "multiply"),
    ("logits_scaling", ("granite", "minicpm3"), "divide"),  # Granite divides the logits; MiniCPM3 the hidden
    ("logits_scaling", ("hyperclovax",), "multiply"),  # states before a bias-free head: the same. HyperCLOVA X
)
_IGNORED_FIELDS = {("mpt", "logit_scale")}  # MPT's config has it; its modeling code never applies it


def lm_head_spec(model: torch.nn.Module) -> kernels.LogitHead:
    """The final-logit transform of `model`'s LM head as a `kernels.LogitHead` (scale, soft-cap), read from its
    config; raises ValueError naming the config field for a head the kernels cannot express.

    Fields, as transformers names and applies them: `final_logit_softcapping` / `logits_soft_cap` (z → c·tanh(z/c)),
    `logit_scale`, `output_multiplier`, `lm_head_multiplier` (z → s·z), `logits_scaling` (Granite, MiniCPM3:
    z → z/s; HyperCLOVA X: z → s·z). A multiplier applies inside the soft-cap, as in the models' code.
    """
    cfg = model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    model_type = str(getattr(cfg, "model_type", "") or getattr(model.config, "model_type", ""))
    softcap, scale = None, 1.0
    for field, families, rule in _HEAD_FIELDS:
        value = getattr(cfg, field, None)
        if value is None or (model_type, field) in _IGNORED_FIELDS:
            continue
        if families is not None and not model_type.startswith(families):
            if any(f == field and (fam is None or model_type.startswith(fam)) for f, fam, _ in _HEAD_FIELDS):
                continue  # another row of the table covers this family
            raise ValueError(f"model config has {field}={value!r} (model_type {model_type!r}): tokendpo does not know "
                             f"how this model applies {field} to its logits, so its log-probs cannot be computed "
                             f"exactly; this LM head is not supported")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"model config has {field}={value!r}: tokendpo's log-prob kernels need a finite number "
                             f"> 0 there (the model's own logits would not be finite either)")
        if rule == "softcap":
            softcap = float(value)
        else:
            scale *= float(value) if rule == "multiply" else 1.0 / float(value)
    if model_type.startswith("minicpm3") and scale != 1.0:
        weight_bias = getattr(model.get_output_embeddings(), "bias", None)
        if weight_bias is not None:  # it scales the hidden states, which equals scaling z only without a bias
            raise ValueError("model config has logits_scaling with a biased LM head (minicpm3 scales the hidden "
                             "states, not the logits): this LM head is not supported")
    return kernels.LogitHead(softcap=softcap, logit_scale=scale)


def check_lm_head_supported(model: torch.nn.Module) -> kernels.LogitHead:
    """Refuse, by config field, an LM head the fused kernels cannot express; return the head they compute.

    The kernels compute log softmax of y = c·tanh(s·z/c) (z = h·Wᵀ + b) for the soft-cap c and scale s that
    `lm_head_spec` reads from the config; any other transform would silently change the loss, so it is an error.
    """
    return lm_head_spec(model)


def apply_lora(model: torch.nn.Module, model_cfg, checkpoint: str | os.PathLike | None = None) -> torch.nn.Module:
    """Wrap `model` with a peft LoRA adapter (rank model_cfg.lora_r), or load the adapter of a checkpoint."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if checkpoint is not None:
        return PeftModel.from_pretrained(model, str(checkpoint), is_trainable=True)
    targets = model_cfg.lora_targets or "all-linear"
    lora = LoraConfig(r=model_cfg.lora_r, lora_alpha=model_cfg.lora_alpha, target_modules=targets,
                      lora_dropout=0.0, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def save_weights(model: torch.nn.Module, out_dir: str | os.PathLike, state_dict: dict | None = None) -> None:
    """save_pretrained in safetensors (a peft model saves its adapter), from a given full state dict if any."""
    model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)


def save_final_model(model: torch.nn.Module, out_dir: str | os.PathLike, state_dict: dict | None = None, *,
                     adapter_only: bool = False) -> None:
    """Save transformers-loadable safetensors weights; a LoRA model is merged into its base unless adapter_only."""
    if hasattr(model, "merge_and_unload") and not adapter_only:
        model.merge_and_unload().save_pretrained(out_dir, safe_serialization=True)
        return
    save_weights(model, out_dir, state_dict)
