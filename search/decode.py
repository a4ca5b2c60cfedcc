"""`python -m search.decode`: decode prompts with a policy, guided by its implicit reward against a reference.

    python -m search.decode --mcts                   # the default run: outputs/default/dpo vs outputs/default/sft
    python -m search.decode --policy outputs/default/dpo --task sentiment --beam 4 --score mixed --ref_weight 0.5
    python -m search.decode --policy DIR --ref DIR --prompts prompts.jsonl --bon 8 --output out.jsonl

One JSONL object per prompt, in input order: prompt, completion (the text of exactly the generated ids, EOS
excluded), token_ids (EOS included when generated), token_rewards (β·log π/π_ref per generated token), reward
(their sum), forward_tokens (positions run through policy + reference; see search.scorer) and gold_reward with
--task (judged on `completion`). `--output F` streams to F.partial and renames it to F at the end; `--resume`
continues an interrupted F.partial.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from search import scoring
from search.config import DEFAULT_BETA, SearchConfig
from search.decoders import DECODERS, get_decoder
from search.scorer import Decoded, PairScorer
from tokendpo.data import encode_prompts
from tokendpo.device import pick_device
from tokendpo.model_checks import (check_model_fits_tokenizer, check_same_model_vocab, check_same_vocabulary,
                                   max_positions, model_vocab_size)

DEFAULT_RUN = ("outputs/default/dpo", "outputs/default/sft", "sentiment")  # policy, reference, task


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):  # a None default is explained in the help text itself
        return action.help if action.default is None or action.default is False else super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one `error:` line and exit 2, as every other bad input
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m search.decode", description=__doc__.split("\n\n")[0],
                 formatter_class=_Help)
    group = ap.add_mutually_exclusive_group()  # one flag per registered decoder, `--NAME`
    for d in DECODERS.values():
        group.add_argument(f"--{d.name}", help=d.help, **d.flag)
    for d in DECODERS.values():  # a decoder's own knobs; default None = "not given" (the Option holds the default)
        for o in d.options:
            ap.add_argument(f"--{o.name}", type=o.type, choices=o.choices, default=None,
                            help=f"--{d.name}: {o.help} (default: {o.default!r})")
    skip = {"method", "options"} | {d.sets for d in DECODERS.values() if d.sets}  # set through the decoder's flag
    types = {"int": int, "float": float, "str": str, "int | None": int, "float | None": float, "str | None": str}
    for f in dataclasses.fields(SearchConfig):
        if f.name in skip:
            continue
        kwargs = {"help": f.metadata["help"], "default": f.default}
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        if f.type in ("bool", bool):
            kwargs.update(type=_bool, nargs="?", const=True, metavar="true|false")
        elif f.type in types:
            kwargs["type"] = types[f.type]
        names = [f"--{f.name}"] + (["--topk"] if f.name == "top_k" else [])  # MCTS's old flag
        ap.add_argument(*names, **kwargs)
    return ap


def parse_args(argv: list[str] | None = None) -> SearchConfig:
    """The command line as a validated SearchConfig; with no --policy/--ref/--prompts/--task, the default run."""
    args = vars(build_parser().parse_args(argv))
    method = SearchConfig.method  # the default decoder
    for d in DECODERS.values():
        val = args.pop(d.name)
        if val is not None and val is not False:  # `--beam 0` is a value (refused below), not "unset"
            method = d.name
            if d.sets is not None:
                args[d.sets] = val
    names = {o.name for d in DECODERS.values() for o in d.options}
    options = {k: args.pop(k) for k in names}
    cfg = SearchConfig(method=method, options={k: v for k, v in options.items() if v is not None}, **args)
    cfg.validate()
    if not any((cfg.policy, cfg.ref, cfg.prompts, cfg.task)):
        cfg.policy, cfg.ref, cfg.task = default_run()
    if not cfg.policy:
        raise ValueError("--policy DIR is required (or give none of --policy/--ref/--prompts/--task to decode "
                         "the default run)")
    if (cfg.prompts is None) == (cfg.task is None):
        raise ValueError("give exactly one of --prompts FILE and --task NAME")
    return from_policy(cfg)


def default_run() -> tuple[str, str, str]:
    """(policy, reference, task) of `python -m tokendpo.train`'s default run; an error when it is missing."""
    policy, ref, task = DEFAULT_RUN
    for path in (policy, ref):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"no default run at {policy} (against {ref}): run `python -m tokendpo.train` first, "
                             f"or give --policy DIR and --prompts FILE or --task NAME")
    return policy, ref, task


def trained_against(policy: str) -> tuple[str | None, float | None]:
    """(reference, β) recorded in the policy dir's train_config.yaml, (None, None) without one.

    The reference is `ref_model` when set, else `model` (training's default reference: a frozen copy of the
    start model, or with LoRA the adapter-disabled base). Relative paths are taken as training wrote them.
    """
    path = Path(policy) / "train_config.yaml"
    if not path.is_file():
        return None, None
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys")
    flat: dict = {}
    for k, v in data.items():  # components may nest keys (model: {ref_model: ...}) or not
        flat.update(v if isinstance(v, dict) else {k: v})
    ref = flat.get("ref_model") or flat.get("model")
    beta = flat.get("beta")
    if beta is not None and not isinstance(beta, (int, float)):
        raise ValueError(f"{path}: beta must be a number, got {beta!r}")
    return (str(ref) if ref else None), (float(beta) if beta is not None else None)


def from_policy(cfg: SearchConfig) -> SearchConfig:
    """Fill --ref and --beta from the policy's train_config.yaml when not given (β else DEFAULT_BETA)."""
    ref, beta = trained_against(cfg.policy)
    if cfg.ref is None:
        if ref is None:
            raise ValueError(f"--ref is required: {cfg.policy} records no reference model (no train_config.yaml "
                             f"with model/ref_model)")
        cfg.ref = ref
    if cfg.beta is None:
        cfg.beta = beta if beta is not None else DEFAULT_BETA
        cfg.validate()
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
    """Token ids of one prompt as decoding encodes it: `tokendpo.data.encode_prompts` with nonempty=True (an
    empty prompt becomes [BOS], or [EOS] without BOS, so the models have a start)."""
    return encode_prompts(tokenizer, [text], chat_template=chat_template, nonempty=True)[0]


def decode_batch(scorer: PairScorer, prompts: list[list[int]], cfg: SearchConfig, eos_token_id: int,
                 generator: torch.Generator, banned_tokens: list[int] | None = None) -> list[Decoded]:
    """Dispatch to the decoder `cfg.method` through the registry (`search.decoders.DECODERS`)."""
    return get_decoder(cfg.method).run(scorer, prompts, cfg, eos_token_id=eos_token_id, generator=generator,
                                       banned=list(banned_tokens or []))


def check_pair(policy, reference, tokenizer, ref_tokenizer, names: tuple[str, str]) -> None:
    """Policy and reference must share one vocabulary token for token (not only its size), and the tokenizer's
    ids must index the model (`tokendpo.model_checks`, shared with training and eval)."""
    a, b = names
    if ref_tokenizer is not None:
        check_same_vocabulary(tokenizer, ref_tokenizer, f"--policy {a}", f"--ref {b}")
    check_same_model_vocab(policy, reference, "--policy", "--ref")
    check_model_fits_tokenizer(policy, tokenizer, f"--policy {a}")


def load_pair(cfg: SearchConfig, device: torch.device):
    """(policy, reference, tokenizer); the tokenizer comes from the policy and must fit the reference."""
    from tokendpo.modeling import load_model, load_tokenizer

    tokenizer = load_tokenizer(cfg.policy)
    try:
        ref_tokenizer = load_tokenizer(cfg.ref)
    except (OSError, ValueError):
        ref_tokenizer = None  # a reference saved without a tokenizer: the vocabulary sizes are compared
    policy = load_model(cfg.policy).to(device)
    reference = load_model(cfg.ref).to(device)
    check_pair(policy, reference, tokenizer, ref_tokenizer, (cfg.policy, cfg.ref))
    return policy, reference, tokenizer


def check_lengths(encoded: list[list[int]], models, max_new_tokens: int, texts: list[str]) -> None:
    """A prompt that leaves no position to generate in is an error; prompt + max_new_tokens past the models'
    maximum positions is a warning (rotary models run, but out of their trained range)."""
    limits = [m for m in (max_positions(x) for x in models) if m is not None]
    if not limits or not encoded:
        return
    limit = min(limits)
    longest = max(range(len(encoded)), key=lambda i: len(encoded[i]))
    n = len(encoded[longest])
    if n >= limit:
        raise ValueError(f"prompt {longest + 1} ({texts[longest][:40]!r}...) has {n} tokens; the model has "
                         f"{limit} positions, so nothing can be generated. Shorten the prompts")
    if n + max_new_tokens > limit:
        print(f"search.decode: warning: prompt {longest + 1} has {n} tokens + --max_new_tokens {max_new_tokens} "
              f"> the model's {limit} positions; lower --max_new_tokens", file=sys.stderr)


def record(tokenizer, text: str, d: Decoded, task=None) -> dict:
    """The output object of one prompt; the completion is the text of exactly the generated ids (EOS excluded,
    special tokens kept — the support never chooses one but EOS), and the gold reward judges that text."""
    eos = tokenizer.eos_token_id
    body = d.token_ids[:-1] if d.token_ids and d.token_ids[-1] == eos else d.token_ids
    completion = tokenizer.decode(body, skip_special_tokens=False)
    rec = {"prompt": text, "completion": completion, "token_ids": d.token_ids, "token_rewards": d.token_rewards,
           "reward": d.reward, "forward_tokens": d.forward_tokens}
    if task is not None:
        rec["gold_reward"] = float(task.gold_reward(text, completion))
    return rec


def batch_generator(seed: int, start: int) -> torch.Generator:
    """The sampling generator of the batch starting at prompt `start`: a resumed run draws what the
    uninterrupted run drew."""
    return torch.Generator().manual_seed(seed * 1_000_003 + start)


def run(cfg: SearchConfig, policy, reference, tokenizer, texts: list[str], task=None, *, skip: int = 0):
    """Decode `texts[skip:]` in batches of cfg.batch_size: an iterator of one output record per prompt, in input
    order. Every check runs before this returns (nothing is decoded until the iterator is read).

    `skip` must be a multiple of cfg.batch_size or all of `texts` (a resumed run re-decodes a partial batch)."""
    if skip % cfg.batch_size and skip != len(texts):
        raise ValueError(f"skip ({skip}) must be a multiple of batch_size ({cfg.batch_size})")
    beta = cfg.beta if cfg.beta is not None else DEFAULT_BETA
    scorer = PairScorer(policy, reference, beta=beta, pad_token_id=tokenizer.pad_token_id)
    banned = scoring.banned_token_ids(tokenizer, model_vocab_size(policy))
    encoded = encode_prompts(tokenizer, texts, chat_template=cfg.chat_template, nonempty=True)
    cfg = dataclasses.replace(cfg, max_new_tokens=cfg.new_tokens(task))
    check_lengths(encoded, (policy, reference), cfg.max_new_tokens, texts)
    decoder = get_decoder(cfg.method)
    if decoder.check is not None:  # refuse what the decoder cannot do (e.g. MCTS's unbounded support) before output
        decoder.check(cfg, policy, reference, encoded, banned, tokenizer.eos_token_id)
    return _decode(cfg, scorer, tokenizer, texts, encoded, banned, task, skip)


def _decode(cfg, scorer, tokenizer, texts, encoded, banned, task, skip):
    torch.manual_seed(cfg.seed)
    eos = tokenizer.eos_token_id
    bar = tqdm(total=len(texts), initial=skip, desc=f"decode ({cfg.method})", disable=not cfg.progress,
               file=sys.stderr)
    for start in range(skip, len(texts), cfg.batch_size):
        chunk = slice(start, start + cfg.batch_size)
        out = decode_batch(scorer, encoded[chunk], cfg, eos, batch_generator(cfg.seed, start), banned)
        for text, d in zip(texts[chunk], out):
            yield record(tokenizer, text, d, task)
        bar.update(len(out))
    bar.close()


def partial_path(output: str) -> str:
    return output + ".partial"


def resume_point(output: str, texts: list[str], batch_size: int) -> int:
    """Prompts already finished in OUTPUT.partial, rounded down to whole batches; the file is cut back to them.

    Lines must be complete JSON records of `texts` in order (a torn last line is dropped)."""
    path = partial_path(output)
    if not os.path.isfile(path):
        return 0
    keep_bytes, done, whole_bytes, whole = 0, 0, 0, 0
    with open(path, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break  # torn write of a killed run
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break
            if done >= len(texts) or not isinstance(rec, dict) or rec.get("prompt") != texts[done]:
                raise ValueError(f"{path}: line {done + 1} is not the record of prompt {done + 1} of this run; "
                                 f"it belongs to another run (delete it or drop --resume)")
            done += 1
            keep_bytes += len(line)
            if done % batch_size == 0 or done == len(texts):
                whole_bytes, whole = keep_bytes, done
    with open(path, "r+b") as fh:
        fh.truncate(whole_bytes)
    return whole


def prepare_output(cfg: SearchConfig) -> None:
    """Refuse an output path we could not write, before any model is loaded; create its directory."""
    if not cfg.output:
        return
    if os.path.isdir(cfg.output):
        raise ValueError(f"--output {cfg.output} is a directory; give a file path")
    if os.path.exists(partial_path(cfg.output)) and not cfg.resume:
        raise ValueError(f"{partial_path(cfg.output)} holds an unfinished decode: pass --resume to continue it, "
                         f"or delete it to start over")
    parent = os.path.dirname(os.path.abspath(cfg.output))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--output {cfg.output}: cannot create its directory ({e.strerror})") from None


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
        prepare_output(cfg)
        device = pick_device(cfg.device)
        policy, reference, tokenizer = load_pair(cfg, device)
        skip = resume_point(cfg.output, texts, cfg.batch_size) if cfg.resume else 0
        records = run(cfg, policy, reference, tokenizer, texts, task, skip=skip)
        if cfg.output:
            with open(partial_path(cfg.output), "a" if skip else "w", encoding="utf-8") as out:
                for rec in records:
                    out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    out.flush()
                os.fsync(out.fileno())
            os.replace(partial_path(cfg.output), cfg.output)
        else:
            with contextlib.nullcontext(sys.stdout) as out:
                for rec in records:
                    out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    out.flush()
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"search.decode: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
