"""Decoding guided by per-token implicit rewards: greedy, sampling, best-of-N, beam, chunk-level beam, MCTS.

Every decoder is a plain function `decoder(scorer, prompts, ...) -> list[Decoded]` over token-id prompts; the
`PairScorer` steps policy and reference together over KV caches. `python -m search.decode` is the CLI.
"""

from search.beam import beam_search, chunk_beam_search
from search.config import SearchConfig
from search.mcts import mcts
from search.sampling import best_of_n, greedy, sample
from search.scorer import Decoded, ForwardCounter, PairScorer, PairState

__all__ = ["Decoded", "ForwardCounter", "PairScorer", "PairState", "SearchConfig", "beam_search", "best_of_n",
           "chunk_beam_search", "greedy", "mcts", "sample"]
