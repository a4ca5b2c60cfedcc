"""Decoding configuration: every default of `python -m search.decode` lives in this one dataclass.

The decoders themselves are plain functions with keyword arguments; `search.decode` builds a `SearchConfig`
from the command line and passes its fields on. Units: `beta` scales the reported rewards; search scores are
β-scaled implicit rewards (or β·log π for `--score likelihood`), so `length_penalty` is in reward units too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

METHODS = ("sample", "greedy", "bon", "beam", "cbs", "mcts")
SCORES = ("implicit", "likelihood")


def _f(default: Any, help: str, choices: tuple | None = None):  # `help`: the argparse word
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class SearchConfig:
    # models and inputs
    policy: str | None = _f(None, "policy checkpoint: a tokendpo.train output dir, HF dir/hub id or .gguf file")
    ref: str | None = _f(None, "reference checkpoint (must share the policy's tokenizer)")
    prompts: str | None = _f(None, "JSONL file with a 'prompt' string per line")
    task: str | None = _f(None, "built-in task (held-out prompts, gold_reward in the output): sentiment, arithmetic")
    num_prompts: int = _f(64, "number of held-out prompts to decode with --task")
    chat_template: bool = _f(False, "render prompts with the tokenizer's chat template (user turn + generation prompt)")
    output: str | None = _f(None, "JSONL output file (default: stdout)")
    # decoder
    method: str = _f("greedy", "decoder (set by --sample/--greedy/--bon/--beam/--cbs/--mcts)", METHODS)
    bon: int = _f(4, "N of best-of-N")
    beam: int = _f(4, "K of beam search")
    cbs: tuple[int, int, int] = _f((2, 2, 8), "W,K,L of chunk-level beam search")
    score: str = _f("likelihood", "search score: likelihood = Σ β·log π (the paper's Eq. 13; default), implicit "
                    "= Σ β·log π/π_ref (over-optimises on small models: see benchmarks/RESULTS.md)", SCORES)
    beta: float = _f(0.1, "β of the implicit reward r = β·(log π − log π_ref)")
    max_new_tokens: int = _f(64, "generated tokens per prompt at most (EOS included)")
    temperature: float = _f(1.0, "sampling temperature (--sample, --bon, --cbs)")
    seed: int = _f(0, "seed of the sampling generator")
    # guards (off by default)
    length_norm: float = _f(0.0, "rank finished hypotheses by score / length**α (beam, bon, cbs); 0 = summed")
    length_penalty: float = _f(0.0, "subtract this per generated token from every search score (length guard)")
    no_repeat_ngram: int = _f(0, "ban tokens that would repeat an n-gram of the generated text (0 = off)")
    # MCTS
    simulations: int = _f(16, "MCTS simulations per committed token")
    c_puct: float = _f(1.0, "PUCT exploration constant")
    topk: int = _f(8, "MCTS children per node: the policy's top-k tokens (priors renormalised over them)")
    rollout_len: int = _f(0, "MCTS leaf value: 0 = zero, n > 0 = summed reward of an n-token greedy policy rollout")
    leaf_batch: int = _f(1, "MCTS leaves chosen per tree and evaluated in one batch (virtual visits; 1 = sequential)")
    reuse_cache: bool = _f(True, "MCTS: extend parent KV caches (true) or re-encode every node's prefix (baseline)")
    # execution
    batch_size: int = _f(8, "prompts decoded together (rows = prompts × beams/samples)")
    device: str = _f("auto", "cpu, cuda, or auto")
    progress: bool = _f(True, "show a tqdm progress bar on stderr")

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.score not in SCORES:
            raise ValueError(f"--score must be one of {SCORES}, got {self.score!r}")
        for name in ("bon", "beam", "simulations", "topk", "leaf_batch", "batch_size", "num_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if len(self.cbs) != 3 or min(self.cbs) < 1:
            raise ValueError(f"--cbs needs three positive integers W,K,L, got {self.cbs}")
        for name in ("max_new_tokens", "rollout_len", "no_repeat_ngram"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.beta <= 0:
            raise ValueError(f"--beta must be > 0 (rankings divide by it), got {self.beta}")
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be > 0 (use --greedy for argmax decoding), got {self.temperature}")
        if self.c_puct < 0 or self.length_norm < 0 or self.length_penalty < 0:
            raise ValueError("--c_puct, --length_norm and --length_penalty must be >= 0")
