"""Low-level ops for token-level DPO: selected-token log-probs (+ entropy, forward KL, log Σp², mean logit,
is-top-1) from hidden states and the LM-head weight, through any scale / soft-cap / temperature on the logits,
without N×V logits; and the implicit reward. Imports neither tokendpo nor search."""

from kernels.head import LogitHead
from kernels.logprobs import IMPLS, TokenStats, resolve_impl, token_logprobs, token_stats
from kernels.logprobs_naive import naive_token_logprobs, naive_token_stats
from kernels.rewards import implicit_reward

__all__ = [
    "IMPLS",
    "LogitHead",
    "TokenStats",
    "implicit_reward",
    "naive_token_logprobs",
    "naive_token_stats",
    "resolve_impl",
    "token_logprobs",
    "token_stats",
]
