"""What a decoder registers: `Decoder`, one entry of `search.decoders.DECODERS`, and the keyword groups the
decoders share (the length limits, the ranked score and its support, the proposal).

A decoder's `run(scorer, prompts, cfg, *, eos_token_id, generator, banned)` adapts a plain search function
(`search.sampling`, `search.beam`, `search.mcts`) to a `SearchConfig`; the entry also says which flag selects it
(`--NAME`, argparse keywords in `flag`), which config field the flag's value sets, and what it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

# `cfg` below is a search.config.SearchConfig; it is not imported, since search.config reads this registry.


@dataclass(frozen=True)
class Option:
    """A knob of one decoder that is not a SearchConfig field: the flag `--name`, kept in `cfg.options[name]`
    when given (read it with `Decoder.option`). The built-in decoders' knobs are SearchConfig fields (a public
    contract); a new decoder declares its own here, so adding it edits no other file."""

    name: str
    default: Any
    help: str
    type: Callable[[str], Any] = str
    choices: tuple | None = None


@dataclass(frozen=True)
class Decoder:
    """One decoder: `--NAME` on the command line, `method=NAME` in a SearchConfig.

    name:    the method name and the flag (`--name`); flags are a public contract, never renamed.
    run:     (scorer, prompts, cfg, *, eos_token_id, generator, banned) -> list[Decoded], one per prompt.
    help:    the flag's help line (in `--help` and docs/FLAGS.md).
    flag:    argparse keywords of the flag: {"action": "store_true"} or {"type": int, "metavar": "N"}, ...
    sets:    the SearchConfig field the flag's value goes to (None for a bare switch).
    fields:  the SearchConfig fields this decoder reads beyond the shared ones (score, support, guards).
    proposal: whether --proposal applies (the decoder samples candidates from a proposal model).
    support: the decoder name whose default candidate support `search.scoring.SUPPORT_DEFAULTS` holds
             (None: its own name).
    check:   optional (cfg, policy, reference, encoded_prompts, banned, eos_token_id) -> None, run before any
             output; raises ValueError for what the decoder cannot do (cfg.max_new_tokens is resolved).
    options: its own knobs beyond SearchConfig's fields (`Option`), each a flag `--NAME`.
    """

    name: str
    run: Callable[..., list]
    help: str
    flag: dict[str, Any] = field(default_factory=lambda: {"action": "store_true"})
    sets: str | None = None
    fields: tuple[str, ...] = ()
    proposal: bool = False
    support: str | None = None
    check: Callable[..., None] | None = None
    options: tuple[Option, ...] = ()

    @property
    def support_name(self) -> str:
        return self.support or self.name

    def option(self, cfg, name: str) -> Any:
        """The value of this decoder's option `name` in cfg: as given, else its default."""
        for opt in self.options:
            if opt.name == name:
                return cfg.options.get(name, opt.default)
        raise KeyError(f"decoder {self.name!r} has no option {name!r}")


def common(cfg, eos_token_id: int) -> dict:
    """Keywords every decoder takes: the length limit, EOS and the n-gram guard."""
    return dict(max_new_tokens=cfg.new_tokens(), eos_token_id=eos_token_id, no_repeat_ngram=cfg.no_repeat_ngram)


def ranked(cfg, banned: list[int]) -> dict:
    """Keywords of the decoders that rank hypotheses by a score (best-of-N, beam, CBS): the score, its support and
    the length guards."""
    return dict(score=cfg.score, ref_weight=cfg.ref_weight, top_k=cfg.top_k, top_p=cfg.top_p, banned_tokens=banned,
                length_norm=cfg.length_norm, length_penalty=cfg.length_penalty)


def proposals(cfg, generator) -> dict:
    """Keywords of the decoders that sample candidates from a proposal model (best-of-N, CBS)."""
    return dict(proposal=cfg.proposal, temperature=cfg.temperature, generator=generator)
