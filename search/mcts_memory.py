"""How much memory an MCTS decode needs, estimated before it starts, and the refusal when it would not fit.

The search keeps node-local K/V in one slot pool (`search.kvpool`): memory grows with the live nodes, not with
nodes × prefix length. `check_mcts_memory` compares the estimate with the memory available on the device and
raises `SearchMemoryError` (a MemoryError and a ValueError: the CLI prints one `error:` line naming --batch_size).
"""

from __future__ import annotations

import os

import torch

from search.kvpool import SearchMemoryError


def expected_live_slots(prompt_lengths: list[int], max_new_tokens: int, simulations: int, leaf_batch: int = 1,
                        rollout_len: int = 0) -> int:
    """Live KV slots a search typically holds at once: every prompt token and committed token, plus per tree
    two rounds of `simulations` evaluated nodes (the current round and the subtree kept from earlier ones) and
    one batch of rollouts. An upper bound that never frees would be Σ prompt + B·(S·N + 1)."""
    per_tree = max_new_tokens + 2 * simulations + leaf_batch * rollout_len
    return sum(prompt_lengths) + len(prompt_lengths) * per_tree + 1


def _kv_bytes_per_token(model: torch.nn.Module) -> int:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    elem = next(model.parameters()).element_size()
    return cfg.num_hidden_layers * 2 * heads * head_dim * elem


def estimate_mcts_memory(policy: torch.nn.Module, reference: torch.nn.Module, prompt_lengths: list[int], *,
                         max_new_tokens: int, simulations: int, leaf_batch: int = 1, rollout_len: int = 0) -> int:
    """Bytes an MCTS decode of these prompts needs beyond the loaded models (cached search):

        pool      2 · slots · kv(token)           (the pool doubles when it grows: up to 2× the live slots)
        prefill   B · T_p · kv(token)             (the batch's DynamicCache before it moves into the pool)
        step      R · T · kv(token)/L + 8 · R · V · 4 bytes   (one layer's gathered rows; logits, log-softmax)

    with kv(token) = Σ_models L · 2 · H_kv · D · bytes, R = B · leaf_batch rows per forward and
    T = T_p + max_new_tokens + rollout_len their longest path."""
    kv = _kv_bytes_per_token(policy) + _kv_bytes_per_token(reference)
    layers = policy.config.get_text_config().num_hidden_layers if hasattr(policy.config, "get_text_config") \
        else policy.config.num_hidden_layers
    vocab = policy.get_output_embeddings().weight.shape[0]
    b, tp = len(prompt_lengths), max(prompt_lengths)
    rows, longest = b * leaf_batch, tp + max_new_tokens + rollout_len
    slots = expected_live_slots(prompt_lengths, max_new_tokens, simulations, leaf_batch, rollout_len)
    return 2 * slots * kv + b * tp * kv + rows * longest * kv // layers + 8 * rows * vocab * 4


def available_memory_bytes(device: torch.device | str = "cpu") -> int | None:
    """Free memory on `device`: CUDA's free bytes, or MemAvailable of /proc/meminfo on CPU (None if unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def check_mcts_memory(policy: torch.nn.Module, reference: torch.nn.Module, prompt_lengths: list[int], *,
                      max_new_tokens: int, simulations: int, leaf_batch: int = 1, rollout_len: int = 0,
                      available: int | None = None) -> int:
    """Refuse (SearchMemoryError, message naming --batch_size) an MCTS decode whose estimated memory exceeds
    the available memory; returns the estimate in bytes. Call it before the search starts."""
    need = estimate_mcts_memory(policy, reference, prompt_lengths, max_new_tokens=max_new_tokens,
                                simulations=simulations, leaf_batch=leaf_batch, rollout_len=rollout_len)
    if available is None:
        available = available_memory_bytes(next(policy.parameters()).device)
    if available is not None and need > available:
        per_prompt = need / max(len(prompt_lengths), 1)
        fit = max(int(available // per_prompt), 0)
        raise SearchMemoryError(
            f"MCTS over {len(prompt_lengths)} prompts needs about {need / 2**30:.2f} GiB but only "
            f"{available / 2**30:.2f} GiB is available; lower --batch_size (about {fit} prompts fit), "
            f"--simulations or --max_new_tokens")
    return need
