"""Per-token implicit rewards as an artefact: a Python API and `python -m tokendpo.eval`.

For a response y to prompt x under policy π and reference π_ref, token t gets
    r_t = β · (log π(y_t | x, y_<t) − log π_ref(y_t | x, y_<t))        (kernels.rewards.implicit_reward)
and the sequence reward is Σ_t r_t — the DPO implicit reward up to the prompt-only term β·log Z(x), which cancels
between the chosen and rejected responses of a pair.

    python -m tokendpo.eval --policy DIR --ref DIR --dataset FILE.jsonl [--beta 0.1] [--output_dir DIR]

reports reward accuracy and margins and writes `token_rewards.jsonl` (one object per evaluated pair: source,
prompt tokens, chosen/rejected tokens with per-token rewards and sums) and `eval_summary.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from kernels import IMPLS
from kernels.rewards import implicit_reward
from tokendpo.config import DataConfig
from tokendpo.data import TokenizedPair, collate_pairs, collate_rows, encode_rows, load_preference_data
from tokendpo.logps import sequence_logps
from tokendpo.model_checks import (check_max_positions, check_model_fits_tokenizer, check_same_model_vocab,
                                   check_same_vocabulary)
from tokendpo.modeling import load_model, load_tokenizer
from tokendpo.rundir import write_atomic


@torch.no_grad()
def batch_token_rewards(policy, reference, batch: dict[str, torch.Tensor], *, beta: float,
                        kernel: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(R, T-1) per-token rewards (0 off the response) and the (R, T-1) response mask of a collated batch."""
    pol = sequence_logps(policy, batch, kernel=kernel)
    ref = sequence_logps(reference, batch, kernel=kernel)
    return implicit_reward(pol.token_logps, ref.token_logps, beta) * pol.mask, pol.mask


def _response_rows(rewards: torch.Tensor, mask: torch.Tensor, input_ids: torch.Tensor, tokenizer) -> list[dict]:
    rows = []
    for r in range(rewards.shape[0]):
        m = mask[r]
        ids = input_ids[r, 1:][m].tolist()  # targets: the response tokens
        vals = rewards[r][m].tolist()
        rows.append({"token_ids": ids, "tokens": tokenizer.convert_ids_to_tokens(ids),
                     "text_pieces": [tokenizer.decode([i]) for i in ids], "rewards": vals, "reward": sum(vals)})
    return rows


def token_rewards(policy, reference, tokenizer, prompts: list[str], responses: list[str], *, beta: float,
                  add_eos: bool = True, batch_size: int = 16, kernel: str = "auto") -> list[dict]:
    """Per-token implicit rewards of each (prompt, response).

    Returns one dict per response: token_ids, tokens (tokenizer pieces), text_pieces (each token decoded),
    rewards (β·log π/π_ref per response token, EOS included when `add_eos`) and reward (their sum).
    The prompt is tokenised with the tokenizer's special tokens (BOS), the response without, so the boundary is
    exact — the same convention as training.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"token_rewards: {len(prompts)} prompts but {len(responses)} responses")
    device = next(policy.parameters()).device
    out: list[dict] = []
    for i in range(0, len(prompts), batch_size):
        rows = encode_rows(tokenizer, prompts[i:i + batch_size], responses[i:i + batch_size], add_eos=add_eos)
        batch = {k: v.to(device) for k, v in collate_rows(rows, tokenizer.pad_token_id).items()}  # (B, T) each
        rewards, mask = batch_token_rewards(policy, reference, batch, beta=beta, kernel=kernel)
        out.extend(_response_rows(rewards.cpu(), mask.cpu(), batch["input_ids"].cpu(), tokenizer))
    return out


@dataclass
class EvalSummary:
    pairs: int = 0
    reward_accuracy: float = 0.0  # share of pairs with r(chosen) > r(rejected); ties count 0.5
    reward_margin: float = 0.0  # mean r(chosen) − r(rejected)
    chosen_reward: float = 0.0
    rejected_reward: float = 0.0
    extra: dict = field(default_factory=dict)


def evaluate_pairs(policy, reference, tokenizer, pairs: list[TokenizedPair], *, beta: float, batch_size: int = 8,
                   kernel: str = "auto", writer=None, progress: bool = True) -> EvalSummary:
    """Reward accuracy / margins over tokenised pairs; each pair's per-token rewards go to `writer` (a file)."""
    device = next(policy.parameters()).device
    s = EvalSummary()
    for i in tqdm(range(0, len(pairs), batch_size), desc="eval", disable=not progress):
        chunk = pairs[i:i + batch_size]
        b = len(chunk)
        batch = {k: v.to(device) for k, v in collate_pairs(chunk, tokenizer.pad_token_id).items()}
        rewards, mask = batch_token_rewards(policy, reference, batch, beta=beta, kernel=kernel)
        rows = _response_rows(rewards.cpu(), mask.cpu(), batch["input_ids"].cpu(), tokenizer)
        for j, pair in enumerate(chunk):
            c, r = rows[j], rows[b + j]
            s.pairs += 1
            s.reward_accuracy += 1.0 if c["reward"] > r["reward"] else 0.5 if c["reward"] == r["reward"] else 0.0
            s.reward_margin += c["reward"] - r["reward"]
            s.chosen_reward += c["reward"]
            s.rejected_reward += r["reward"]
            if writer is not None:
                writer.write(json.dumps({"source": pair.source, "prompt": tokenizer.decode(pair.prompt_ids),
                                         "chosen": c, "rejected": r}) + "\n")
    n = max(s.pairs, 1)
    s.reward_accuracy, s.reward_margin = s.reward_accuracy / n, s.reward_margin / n
    s.chosen_reward, s.rejected_reward = s.chosen_reward / n, s.rejected_reward / n
    return s


def _check_args(args) -> Path:
    """Every argument checked before a model is loaded or a file written; returns the output dir."""
    if args.batch_size < 1:
        raise ValueError(f"--batch_size {args.batch_size}: must be >= 1")
    if not (math.isfinite(args.beta) and args.beta > 0):
        raise ValueError(f"--beta {args.beta}: must be a finite number > 0")
    if args.max_pairs < 0:
        raise ValueError(f"--max_pairs {args.max_pairs}: must be >= 0 (0 = all)")
    if args.max_prompt_length < 1 or args.max_prompt_length >= args.max_length:
        raise ValueError(f"--max_prompt_length {args.max_prompt_length} must be >= 1 and < --max_length "
                         f"{args.max_length}")
    out_dir = Path(args.output_dir or args.policy)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--output_dir {out_dir}: exists and is not a directory")
    return out_dir


def _check_pair(policy, reference, tokenizer, args) -> None:
    """Policy and reference must share one vocabulary; sequences must fit the policy's positions."""
    check_model_fits_tokenizer(policy, tokenizer, f"--policy {args.policy}")
    check_same_model_vocab(policy, reference, f"--policy {args.policy}", f"--ref {args.ref}")
    try:
        ref_tok = load_tokenizer(args.ref)
    except (ValueError, OSError):
        ref_tok = None  # a reference saved without a tokenizer: the vocabulary sizes were compared above
    if ref_tok is not None:
        check_same_vocabulary(tokenizer, ref_tok, f"--policy {args.policy}", f"--ref {args.ref}")
    check_max_positions(policy, args.max_length, f"--policy {args.policy}", "--max_length")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tokendpo.eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", required=True, help="trained policy: output dir of tokendpo.train or any HF checkpoint")
    ap.add_argument("--ref", required=True, help="reference model (e.g. the SFT model)")
    ap.add_argument("--dataset", required=True, help="preference data (same formats as tokendpo.train)")
    ap.add_argument("--dataset_split", default="train")
    ap.add_argument("--prompt_field", default="prompt")
    ap.add_argument("--chosen_field", default="chosen")
    ap.add_argument("--rejected_field", default="rejected")
    ap.add_argument("--max_length", type=int, default=DataConfig.max_length)
    ap.add_argument("--max_prompt_length", type=int, default=DataConfig.max_prompt_length)
    ap.add_argument("--skip_bad_rows", action="store_true")
    ap.add_argument("--max_pairs", type=int, default=0, help="evaluate only the first N pairs (0 = all)")
    ap.add_argument("--beta", type=float, default=0.1, help="β of r = β·log π/π_ref (use the training β)")
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--kernel", default="auto", choices=IMPLS)
    ap.add_argument("--output_dir", default=None, help="where token_rewards.jsonl goes (default: --policy)")
    args = ap.parse_args(argv)
    try:
        out_dir = _check_args(args)
        tokenizer = load_tokenizer(args.policy)
        policy, reference = load_model(args.policy).eval(), load_model(args.ref).eval()
        _check_pair(policy, reference, tokenizer, args)
        data_cfg = DataConfig(dataset=args.dataset, dataset_split=args.dataset_split, prompt_field=args.prompt_field,
                              chosen_field=args.chosen_field, rejected_field=args.rejected_field,
                              max_length=args.max_length, max_prompt_length=args.max_prompt_length,
                              skip_bad_rows=args.skip_bad_rows)
        pairs, _, stats = load_preference_data(data_cfg, tokenizer)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.max_pairs > 0:
        pairs = pairs[:args.max_pairs]
    out_dir.mkdir(parents=True, exist_ok=True)
    # whole-file outputs: written beside, then moved into place, so a failure never truncates an earlier result
    final = out_dir / "token_rewards.jsonl"
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w") as f:
            summary = evaluate_pairs(policy, reference, tokenizer, pairs, beta=args.beta,
                                     batch_size=args.batch_size, kernel=args.kernel, writer=f)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    summary.extra = {"skipped_rows": stats.skipped}
    write_atomic(out_dir / "eval_summary.json", json.dumps(summary.__dict__, indent=1))
    print(json.dumps(summary.__dict__, indent=1))
    print(f"wrote {out_dir / 'token_rewards.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
