"""Evaluation of the SFT and DPO policies of a built-in task against its gold reward → summary.json.

For each policy π ∈ {sft, dpo}, on `n_prompts` (256 in the default run) held-out prompts, one temperature-1
sample per prompt:

    gold_reward           mean r*(x, y)
    win_rate_vs_sft       mean over prompts of 1[r*(y_π) > r*(y_b)] + ½·1[=], y_b an independent SFT sample
                          (so the SFT row is an honest ≈ 0.5, not a definition)
    kl_to_ref             KL(π ‖ π_ref) ≈ mean over y ~ π of Σ_t log π(y_t|·) − log π_ref(y_t|·), in nats per
                          response, π_ref = the SFT model (0 for SFT itself)
    eval_reward_accuracy  share of held-out preference pairs (pairs_eval.jsonl) with implicit reward
                          β·log π/π_ref of chosen > rejected, ties ½ (SFT: all rewards 0 → 0.5)
    distinct_rate         distinct responses / prompts
    repetition            share of repeated token 3-grams within responses (`repetition_n` = 3)
    valid_rate            share of responses the task's grammar can produce
    mean_length           response tokens (EOS included when generated)
    greedy_gold_reward, greedy_distinct_rate   the same prompts decoded greedily (collapse shows up here first)

beside them: `win_tie_loss_vs_sft` [W, T, L] counts, `n_eval_pairs`, and `ci`, the 95 % intervals of gold_reward
(mean ± 1.96·s/√n), win_rate_vs_sft, eval_reward_accuracy and valid_rate (Wilson, ties as ½).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tokendpo.data import collate_rows, encode_prompts
from tokendpo.eval import batch_token_rewards, token_rewards
from tokendpo.modeling import load_model, load_tokenizer
from tokendpo.tasks.base import Task
from tokendpo.tasks.metrics import (REPETITION_N, distinct_rate, mean_interval, repetition, wilson_interval, win_rate,
                                    win_tie_loss)
from tokendpo.tasks.sampling import sample

METRICS = ("gold_reward", "win_rate_vs_sft", "kl_to_ref", "eval_reward_accuracy", "distinct_rate", "repetition",
           "valid_rate", "mean_length", "greedy_gold_reward", "greedy_distinct_rate")


@torch.no_grad()
def log_ratios(policy, reference, tokenizer, prompts: list[str], response_ids: list[list[int]], *,
               batch_size: int = 64) -> list[float]:
    """Σ_t log π(y_t|x, y_<t) − log π_ref(y_t|x, y_<t) for given response token ids (as generated: EOS only
    where it was sampled), through the training code's log-prob path."""
    out: list[float] = []
    for i in range(0, len(prompts), batch_size):
        rows = list(zip(encode_prompts(tokenizer, prompts[i:i + batch_size]), response_ids[i:i + batch_size]))
        batch = collate_rows(rows, tokenizer.pad_token_id)  # (B, T) each
        rewards, _ = batch_token_rewards(policy, reference, batch, beta=1.0)  # (B, T-1), β = 1: plain log-ratios
        out.extend(rewards.sum(-1).tolist())
    return out


def reward_accuracy(policy, reference, tokenizer, pairs: list[dict], *, beta: float) -> float:
    """Share of pairs whose implicit reward ranks chosen above rejected (ties ½)."""
    if not pairs:
        raise ValueError("reward_accuracy: no pairs")
    prompts = [p["prompt"] for p in pairs]
    chosen = token_rewards(policy, reference, tokenizer, prompts, [p["chosen"] for p in pairs], beta=beta,
                           batch_size=64)
    rejected = token_rewards(policy, reference, tokenizer, prompts, [p["rejected"] for p in pairs], beta=beta,
                             batch_size=64)
    return win_rate([c["reward"] for c in chosen], [r["reward"] for r in rejected])


def policy_metrics(task: Task, policy, reference, tokenizer, prompts: list[str], baseline_gold: list[float],
                   eval_pairs: list[dict], *, max_new_tokens: int, beta: float, seed: int,
                   name: str, progress: bool) -> dict:
    texts, ids = sample(policy, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed,
                        desc=f"eval {name}: sample", progress=progress)
    greedy, _ = sample(policy, tokenizer, prompts, max_new_tokens=max_new_tokens, greedy=True, seed=seed)
    gold = [task.gold_reward(p, y) for p, y in zip(prompts, texts)]
    greedy_gold = [task.gold_reward(p, y) for p, y in zip(prompts, greedy)]
    kl = log_ratios(policy, reference, tokenizer, prompts, ids)
    body = [[t for t in y if t != tokenizer.eos_token_id] for y in ids]
    n = len(prompts)
    wins, ties, losses = win_tie_loss(gold, baseline_gold)
    accuracy = reward_accuracy(policy, reference, tokenizer, eval_pairs, beta=beta)
    valid = sum(task.is_valid(p, y) for p, y in zip(prompts, texts))
    return {
        "gold_reward": sum(gold) / len(gold),
        "win_rate_vs_sft": win_rate(gold, baseline_gold),
        "win_tie_loss_vs_sft": [wins, ties, losses],
        "kl_to_ref": sum(kl) / len(kl),
        "eval_reward_accuracy": accuracy,
        "n_eval_pairs": len(eval_pairs),
        # 95 % intervals: normal approximation for the mean gold, Wilson (ties as ½) for the rates
        "ci": {"gold_reward": list(mean_interval(gold)[1:]),
               "win_rate_vs_sft": list(wilson_interval(wins + ties / 2, n)),
               "eval_reward_accuracy": list(wilson_interval(accuracy * len(eval_pairs), len(eval_pairs))),
               "valid_rate": list(wilson_interval(valid, n))},
        "distinct_rate": distinct_rate(texts),
        "repetition": repetition(body, REPETITION_N),
        "repetition_n": REPETITION_N,
        "valid_rate": valid / n,
        "mean_length": sum(map(len, ids)) / len(ids),
        "greedy_gold_reward": sum(greedy_gold) / len(greedy_gold),
        "greedy_distinct_rate": distinct_rate(greedy),
        "n_prompts": len(prompts),
        "examples": [{"prompt": p, "response": y, "gold_reward": g}
                     for p, y, g in list(zip(prompts, texts, gold))[:5]],
    }


def evaluate_policies(task: Task, sft_dir: Path, dpo_dir: Path, eval_pairs_path: Path, *, n_prompts: int = 256,
                      max_new_tokens: int = 24, beta: float = 0.1, seed: int = 0, progress: bool = True) -> dict:
    """{"sft": metrics, "dpo": metrics} on `n_prompts` held-out prompts (see the module docstring)."""
    tokenizer = load_tokenizer(str(sft_dir))
    sft_model, dpo_model = load_model(str(sft_dir)), load_model(str(dpo_dir))
    sft_model.eval()
    dpo_model.eval()
    prompts = task.prompts("heldout", n_prompts, seed=seed)
    eval_pairs = [json.loads(line) for line in Path(eval_pairs_path).read_text().splitlines() if line.strip()]
    # An independent SFT sample per prompt is the baseline both policies are compared with.
    base_texts, _ = sample(sft_model, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed + 7_919)
    baseline_gold = [task.gold_reward(p, y) for p, y in zip(prompts, base_texts)]
    kw = {"max_new_tokens": max_new_tokens, "beta": beta, "seed": seed + 104_729, "progress": progress}
    return {
        "sft": policy_metrics(task, sft_model, sft_model, tokenizer, prompts, baseline_gold, eval_pairs,
                              name="sft", **kw),
        "dpo": policy_metrics(task, dpo_model, sft_model, tokenizer, prompts, baseline_gold, eval_pairs,
                              name="dpo", **kw),
    }


def print_table(summary: dict, title: str = "") -> None:
    cols = [c for c in ("sft", "dpo") if c in summary]
    if title:
        print(title)
    print(f"{'metric':<24}" + "".join(f"{c:>8}{c + ' 95 % CI':>20}" for c in cols))
    for m in METRICS:
        if all(m in summary[c] for c in cols):
            name = f"repetition ({summary[cols[0]].get('repetition_n', REPETITION_N)}-gram)" \
                if m == "repetition" else m
            print(f"{name:<24}" + "".join(f"{summary[c][m]:>8.3f}{_interval(summary[c], m):>20}" for c in cols))


def _interval(metrics: dict, name: str) -> str:
    """'[lo, hi]' of a metric's 95 % interval when the summary has one, else ''."""
    ci = metrics.get("ci", {}).get(name)
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
