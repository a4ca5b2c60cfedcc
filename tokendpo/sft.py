"""A small supervised fine-tuning loop: next-token cross-entropy on the response (prompt tokens masked out).

Used by the built-in pipeline to turn a random-init task model into the SFT policy that DPO starts from and
that serves as its reference. Sequences are `BOS prompt response EOS`, tokenised exactly as the DPO data path
does (prompt with the tokenizer's special tokens, response without, EOS appended), so the SFT model has seen
the same boundary that DPO trains on. AdamW, linear warmup then cosine decay to 0, gradient-norm clipping.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from tokendpo.data import collate_rows, encode_rows


@dataclass
class SFTConfig:
    output_dir: str = "outputs/sft"
    max_steps: int = 600
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    seed: int = 0
    progress: bool = True


def encode_examples(tokenizer, examples: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids with BOS, response ids + EOS) per example (`tokendpo.data.encode_rows`)."""
    if not examples:
        raise ValueError("SFT needs at least one (prompt, response) example")
    return encode_rows(tokenizer, [p for p, _ in examples], [r for _, r in examples], add_eos=True)


def lr_at(step: int, cfg: SFTConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * frac))


def sft(model, tokenizer, examples: list[tuple[str, str]], cfg: SFTConfig) -> dict:
    """Train `model` on `examples` for cfg.max_steps; save model + tokenizer, metrics.jsonl, train_config.yaml
    to cfg.output_dir (train_config.yaml last, so its presence marks a finished run). Returns final metrics."""
    if cfg.max_steps <= 0 or cfg.batch_size <= 0:
        raise ValueError(f"SFT needs max_steps > 0 and batch_size > 0, got {cfg.max_steps}, {cfg.batch_size}")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = encode_examples(tokenizer, examples)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    model.train()
    last: dict = {}
    t0 = time.time()
    with open(out / "metrics.jsonl", "w") as log:
        bar = tqdm(range(cfg.max_steps), desc="sft", disable=not cfg.progress, dynamic_ncols=True)
        for step in bar:
            batch = collate_rows([data[rng.randrange(len(data))] for _ in range(cfg.batch_size)],
                                 tokenizer.pad_token_id)  # (B, T), labels -100 on prompt and padding
            lr = lr_at(step, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or float("inf"))
            opt.step()
            if (step + 1) % cfg.logging_steps == 0 or step + 1 == cfg.max_steps:
                last = {"step": step + 1, "loss": loss.item(), "grad_norm": grad_norm.item(), "learning_rate": lr,
                        "elapsed_s": round(time.time() - t0, 2)}
                log.write(json.dumps(last) + "\n")
                bar.set_postfix(loss=f"{last['loss']:.3f}")
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "train_config.yaml").write_text(yaml.safe_dump({"sft": asdict(cfg), "examples": len(examples)}))
    return last
