"""The Python API's defaults equal the CLI's: every keyword of a decoder function that is also a SearchConfig
field has SearchConfig's default, so `mcts(scorer, prompts, ...)` searches what `python -m search.decode --mcts`
searches."""

import dataclasses
import importlib
import inspect

import pytest

from search.config import SearchConfig

# modules by name: the `search` package re-exports functions that shadow some of its module names
_beam, _mcts, _sampling = (importlib.import_module(f"search.{m}") for m in ("beam", "mcts", "sampling"))
FUNCTIONS = [_sampling.sample, _sampling.greedy, _sampling.best_of_n, _beam.beam_search, _beam.chunk_beam_search,
             _mcts.mcts, _mcts.make_params]


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.__name__)
def test_keyword_defaults_match_the_cli(fn):
    cli = {f.name: getattr(SearchConfig(), f.name) for f in dataclasses.fields(SearchConfig)}
    shared = [p for p in inspect.signature(fn).parameters.values()
              if p.default is not inspect.Parameter.empty and p.name in cli]
    assert shared, f"{fn.__name__} shares no keyword with SearchConfig: the test would check nothing"
    wrong = {p.name: (p.default, cli[p.name]) for p in shared if p.default != cli[p.name]}
    assert not wrong, f"{fn.__name__}: (python default, CLI default) differ for {wrong}"
