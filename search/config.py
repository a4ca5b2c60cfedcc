"""Decoding configuration: every default of `python -m search.decode` lives in this one dataclass.

The decoders themselves are plain functions with keyword arguments whose defaults are these (score
likelihood; support and proposal None = the decoder's documented default from `search.scoring`);
`search.decode` builds a `SearchConfig` from the command line and passes its fields on. Units: `beta` scales the
reported rewards; search scores are β-scaled (`search.scoring`), so `length_penalty` is in reward units too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from search import scoring
from search.decoders import DECODERS, get_decoder
from search.mcts import LEAF_VALUES

METHODS = tuple(DECODERS)  # the registered decoders at import; validation reads DECODERS itself
SCORES = scoring.SCORES
DEFAULT_BETA = 0.1  # β when neither --beta nor the policy's train_config.yaml gives one
DEFAULT_MAX_NEW_TOKENS = 64  # without --task (a task has its own response length)


def _f(default: Any, help: str, choices: tuple | None = None):  # `help`: the argparse word
    return field(default=default, metadata={"help": help, "choices": choices})


SUPPORT_HELP = ("when neither --top_k nor --top_p is given: greedy, sampling and likelihood beam/best-of-N/CBS "
                "unrestricted (beam: parity with transformers); implicit and mixed "
                + scoring.describe_support(scoring.GUIDED_SUPPORT) + " (beam, best-of-N, CBS); MCTS "
                + scoring.describe_support(scoring.MCTS_SUPPORT))


@dataclass
class SearchConfig:
    # models and inputs
    policy: str | None = _f(None, "policy checkpoint: a tokendpo.train output dir, HF dir/hub id or .gguf file "
                            "(with no --policy/--ref/--prompts/--task: the default run, outputs/default/dpo)")
    ref: str | None = _f(None, "reference checkpoint, sharing the policy's tokenizer (default: the model the "
                         "policy was trained against, from its train_config.yaml)")
    prompts: str | None = _f(None, "JSONL file with a 'prompt' string per line")
    task: str | None = _f(None, "built-in task (held-out prompts, gold_reward in the output): sentiment, arithmetic")
    num_prompts: int = _f(64, "number of held-out prompts to decode with --task")
    chat_template: bool = _f(False, "render prompts with the tokenizer's chat template (user turn + generation prompt)")
    output: str | None = _f(None, "JSONL output file (default: stdout); written to FILE.partial, renamed at the end")
    resume: bool = _f(False, "with --output: keep the prompts already finished in FILE.partial, decode the rest")
    # decoder
    method: str = _f("greedy", "decoder (set by " + "/".join(f"--{m}" for m in METHODS) + ")", METHODS)
    bon: int = _f(4, "N of best-of-N")
    beam: int = _f(4, "K of beam search")
    cbs: tuple[int, int, int] = _f((2, 2, 8), "W,K,L of chunk-level beam search")
    score: str = _f("likelihood", "search score, per token r_t + λ·β·log π_ref: likelihood (λ = 1, Σ β·log π, the "
                    "paper's Eq. 13; default), implicit (λ = 0, Σ r_t: over-optimises without a support), mixed "
                    "(λ = --ref_weight)", SCORES)
    ref_weight: float | None = _f(None, f"λ of --score mixed (default {scoring.DEFAULT_REF_WEIGHT}); implicit is "
                                  "0 and likelihood 1")
    top_k: int | None = _f(None, "candidates: the proposal's k most likely tokens (0 = no restriction); "
                           "--topk is an alias. Default: " + SUPPORT_HELP)
    top_p: float | None = _f(None, "candidates: the proposal's nucleus of mass p (1 = no restriction). "
                             "Default: see --top_k")
    proposal: str | None = _f(None, "model best-of-N and CBS sample from (default: reference for implicit and "
                              "mixed — weak-to-strong search —, policy for likelihood)", scoring.PROPOSALS)
    beta: float | None = _f(None, "β of the implicit reward r = β·(log π − log π_ref) (default: the policy's "
                            f"train_config.yaml, else {DEFAULT_BETA})")
    max_new_tokens: int | None = _f(None, "generated tokens per prompt at most, EOS included (default: the "
                                    f"task's response length with --task, else {DEFAULT_MAX_NEW_TOKENS})")
    temperature: float = _f(1.0, "sampling temperature (--sample, --bon, --cbs)")
    seed: int = _f(0, "seed of the sampling generator")
    # guards (off by default)
    length_norm: float = _f(0.0, "rank finished hypotheses by score / length**α (beam, bon, cbs); 0 = summed")
    length_penalty: float = _f(0.0, "subtract this per generated token from every search score (length guard)")
    no_repeat_ngram: int = _f(0, "ban tokens that would repeat an n-gram of the generated text (0 = off)")
    # MCTS
    simulations: int = _f(16, "MCTS simulations per committed token")
    c_puct: float = _f(1.0, "PUCT exploration constant")
    rollout_len: int = _f(0, "MCTS leaf value: 0 = zero, n > 0 = summed reward of an n-token greedy policy rollout")
    leaf_value: str = _f("auto", "MCTS leaf value: rollout (greedy, --rollout_len tokens), bound (λ·β·max log π at "
                         "the leaf), zero, or auto (rollout when --rollout_len > 0, else bound)", LEAF_VALUES)
    normalize_q: bool = _f(True, "MCTS: min–max normalise Q inside each tree (MuZero), so --c_puct is unitless")
    leaf_batch: int = _f(1, "MCTS leaves chosen per tree and evaluated in one batch (virtual visits; 1 = sequential)")
    reuse_cache: bool = _f(True, "MCTS: extend parent KV caches (true) or re-encode every node's prefix (baseline)")
    options: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "the chosen decoder's own options (`search.decoders.Option`) that were given, by name"})
    # execution
    batch_size: int = _f(8, "prompts decoded together (rows = prompts × beams/samples)")
    device: str = _f("auto", "cpu, cuda, or auto")
    progress: bool = _f(True, "show a tqdm progress bar on stderr")

    def new_tokens(self, task=None) -> int:
        """--max_new_tokens, or its default: the task recipe's response length, else DEFAULT_MAX_NEW_TOKENS."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        if task is not None and hasattr(task, "recipes"):
            return task.recipes[task.default_recipe].max_new_tokens
        return DEFAULT_MAX_NEW_TOKENS

    @property
    def lam(self) -> float:
        """λ of the score (implicit 0, likelihood 1, mixed --ref_weight)."""
        return scoring.ref_weight(self.score, self.ref_weight)

    def support(self) -> tuple[int, float]:
        """(top_k, top_p) of this decoder and score: the flags, or the documented default."""
        return scoring.resolve_support(get_decoder(self.method).support_name, self.score, self.top_k, self.top_p)

    def validate(self) -> None:
        """Every value checked before anything runs; a bad one is a ValueError the CLI prints as `error: ...`."""
        decoder = get_decoder(self.method)
        for name in self.options:
            if name not in {o.name for o in decoder.options}:
                takers = [f"--{d.name}" for d in DECODERS.values() if name in {o.name for o in d.options}]
                raise ValueError(f"--{name} applies to {' and '.join(takers) or 'no decoder'} only, not "
                                 f"--{self.method}")
        if self.score not in SCORES:
            raise ValueError(f"--score must be one of {SCORES}, got {self.score!r}")
        for name in ("bon", "beam", "simulations", "leaf_batch", "batch_size", "num_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if len(self.cbs) != 3 or min(self.cbs) < 1:
            raise ValueError(f"--cbs needs three positive integers W,K,L, got {','.join(map(str, self.cbs))}")
        for name in ("max_new_tokens", "rollout_len", "no_repeat_ngram"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        for name in ("beta", "ref_weight", "top_p", "temperature", "c_puct", "length_norm", "length_penalty"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"--{name} must be a finite number, got {value}")
        if self.beta is not None and self.beta <= 0:
            raise ValueError(f"--beta must be > 0 (rankings divide by it), got {self.beta}")
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be > 0 (use --greedy for argmax decoding), got {self.temperature}")
        if self.c_puct < 0 or self.length_norm < 0 or self.length_penalty < 0:
            raise ValueError("--c_puct, --length_norm and --length_penalty must be >= 0")
        if self.ref_weight is not None and self.score != "mixed":
            raise ValueError(f"--ref_weight applies to --score mixed only (--score {self.score} fixes λ = "
                             f"{scoring.ref_weight(self.score):g})")
        if self.proposal is not None and not decoder.proposal:
            takers = " and ".join(f"--{d.name}" for d in DECODERS.values() if d.proposal)
            raise ValueError(f"--proposal applies to {takers} only, not --{self.method}")
        if self.resume and not self.output:
            raise ValueError("--resume needs --output FILE (it continues FILE.partial)")
        try:
            self.support()
        except ValueError as e:
            raise ValueError(f"--{e}") from None
