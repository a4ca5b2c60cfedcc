"""`python -m search.decode`: decode prompts with a policy, guided by its implicit reward against a reference.

    python -m search.decode --policy outputs/default/dpo --ref outputs/default/sft --task sentiment --beam 4
    python -m search.decode --policy DIR --ref DIR --prompts prompts.jsonl --mcts --simulations 32 --output out.jsonl

One JSONL object per prompt, in input order: prompt, completion, token_ids (EOS included when generated),
token_rewards (β·log π/π_ref per generated token), reward (their sum), forward_tokens (positions run through
policy + reference; see search.scorer) and gold_reward with --task.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys

import torch
from tqdm import tqdm

from search.beam import beam_search, chunk_beam_search
from search.config import SearchConfig
from search.mcts import mcts
from search.sampling import best_of_n, greedy, sample
from search.scorer import Decoded, PairScorer
from tokendpo.device import pick_device

METHOD_FLAGS = {  # flag → (method, config field it sets)
    "--sample": ("sample", None), "--greedy": ("greedy", None), "--bon": ("bon", "bon"),
    "--beam": ("beam", "beam"), "--cbs": ("cbs", "cbs"), "--mcts": ("mcts", None),
}


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _triple(text: str) -> tuple[int, int, int]:
    try:
        w, k, l_ = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected W,K,L (three integers), got {text!r}") from None
    return (w, k, l_)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m search.decode", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--sample", action="store_true", help="ancestral sampling at --temperature")
    group.add_argument("--greedy", action="store_true", help="argmax decoding (the default)")
    group.add_argument("--bon", type=int, metavar="N", help="best of N samples by summed --score")
    group.add_argument("--beam", type=int, metavar="K", help="beam search with K beams over summed --score")
    group.add_argument("--cbs", type=_triple, metavar="W,K,L", help="chunk-level beam search")
    group.add_argument("--mcts", action="store_true", help="MCTS, --simulations per committed token")
    skip = {"method", "bon", "beam", "cbs"}
    for f in dataclasses.fields(SearchConfig):
        if f.name in skip:
            continue
        kwargs = {"help": f.metadata["help"], "default": f.default}
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        if f.type in ("bool", bool):
            kwargs.update(type=_bool, nargs="?", const=True, metavar="true|false")
        elif f.type in ("int", int):
            kwargs["type"] = int
        elif f.type in ("float", float):
            kwargs["type"] = float
        ap.add_argument(f"--{f.name}", **kwargs)
    return ap


def parse_args(argv: list[str] | None = None) -> SearchConfig:
    args = vars(build_parser().parse_args(argv))
    method = "greedy"
    for flag, (name, fld) in METHOD_FLAGS.items():
        val = args.pop(flag[2:])
        if val not in (None, False):
            method = name
            if fld is not None:
                args[fld] = val
    cfg = SearchConfig(method=method, **args)
    cfg.validate()
    if not cfg.policy or not cfg.ref:
        raise ValueError("--policy DIR and --ref DIR are both required")
    if (cfg.prompts is None) == (cfg.task is None):
        raise ValueError("give exactly one of --prompts FILE and --task NAME")
    return cfg


def read_prompts(path: str) -> list[str]:
    """A JSONL file with a non-empty-object per line carrying a 'prompt' string (blank lines skipped)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--prompts: no such file: {path}")
    prompts = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise ValueError(f"{path}:{n}: field 'prompt': expected a string")
            prompts.append(row["prompt"])
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def encode_prompt(tokenizer, text: str, chat_template: bool) -> list[int]:
    """Token ids of a prompt; an empty prompt becomes [BOS] (or [EOS] without BOS) so the models have a start."""
    if chat_template:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    else:
        ids = tokenizer(text)["input_ids"]
    if not ids:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = [start]
    return list(ids)


def decode_batch(scorer: PairScorer, prompts: list[list[int]], cfg: SearchConfig, eos_token_id: int,
                 generator: torch.Generator) -> list[Decoded]:
    """Dispatch to the decoder `cfg.method` — the one place a method name becomes a function."""
    common = dict(max_new_tokens=cfg.max_new_tokens, eos_token_id=eos_token_id, no_repeat_ngram=cfg.no_repeat_ngram)
    guards = dict(length_norm=cfg.length_norm, length_penalty=cfg.length_penalty)
    if cfg.method == "greedy":
        return greedy(scorer, prompts, **common)
    if cfg.method == "sample":
        return sample(scorer, prompts, temperature=cfg.temperature, generator=generator, **common)
    if cfg.method == "bon":
        return best_of_n(scorer, prompts, n=cfg.bon, score=cfg.score, temperature=cfg.temperature,
                         generator=generator, **guards, **common)
    if cfg.method == "beam":
        return beam_search(scorer, prompts, num_beams=cfg.beam, score=cfg.score, **guards, **common)
    if cfg.method == "cbs":
        w, k, l_ = cfg.cbs
        return chunk_beam_search(scorer, prompts, width=w, samples=k, chunk=l_, score=cfg.score,
                                 temperature=cfg.temperature, generator=generator, **guards, **common)
    if cfg.method == "mcts":
        return mcts(scorer, prompts, simulations=cfg.simulations, c_puct=cfg.c_puct, topk=cfg.topk,
                    rollout_len=cfg.rollout_len, reuse_cache=cfg.reuse_cache, score=cfg.score,
                    leaf_batch=cfg.leaf_batch, length_penalty=cfg.length_penalty, **common)
    raise ValueError(f"unknown method {cfg.method!r}")


def load_pair(cfg: SearchConfig, device: torch.device):
    """(policy, reference, tokenizer); the tokenizer comes from the policy and must fit the reference."""
    from tokendpo.modeling import load_model, load_tokenizer

    tokenizer = load_tokenizer(cfg.policy)
    policy = load_model(cfg.policy).to(device)
    reference = load_model(cfg.ref).to(device)
    vp, vr = policy.get_output_embeddings().weight.shape[0], reference.get_output_embeddings().weight.shape[0]
    if vp != vr:
        raise ValueError(f"--policy and --ref have different vocabularies ({vp} vs {vr} tokens); they must share "
                         f"a tokenizer")
    return policy, reference, tokenizer


def run(cfg: SearchConfig, policy, reference, tokenizer, texts: list[str], task=None):
    """Decode `texts` in batches of cfg.batch_size; yields one output record per prompt, in input order."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    scorer = PairScorer(policy, reference, beta=cfg.beta, pad_token_id=tokenizer.pad_token_id)
    eos = tokenizer.eos_token_id
    bar = tqdm(total=len(texts), desc=f"decode ({cfg.method})", disable=not cfg.progress, file=sys.stderr)
    for start in range(0, len(texts), cfg.batch_size):
        chunk = texts[start:start + cfg.batch_size]
        ids = [encode_prompt(tokenizer, t, cfg.chat_template) for t in chunk]
        for text, d in zip(chunk, decode_batch(scorer, ids, cfg, eos, generator)):
            body = [t for t in d.token_ids if t != eos]
            completion = tokenizer.decode(body, skip_special_tokens=True)
            rec = {"prompt": text, "completion": completion, "token_ids": d.token_ids,
                   "token_rewards": d.token_rewards, "reward": d.reward, "forward_tokens": d.forward_tokens}
            if task is not None:
                rec["gold_reward"] = float(task.gold_reward(text, completion))
            yield rec
        bar.update(len(chunk))
    bar.close()


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
        task = None
        if cfg.task is not None:
            from tokendpo.tasks import get_task  # lazy: only --task needs the tasks package

            task = get_task(cfg.task)
            texts = task.prompts("heldout", cfg.num_prompts, cfg.seed)
        else:
            texts = read_prompts(cfg.prompts)
        policy, reference, tokenizer = load_pair(cfg, pick_device(cfg.device))
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"search.decode: error: {e}", file=sys.stderr)
        return 2
    with open(cfg.output, "w", encoding="utf-8") if cfg.output else contextlib.nullcontext(sys.stdout) as out:
        for rec in run(cfg, policy, reference, tokenizer, texts, task):
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
