"""`--mcts`: Monte-Carlo tree search, --simulations per committed token (`search.mcts`)."""

from __future__ import annotations

from search.decoders.base import Decoder, common
from search.mcts import check_mcts_memory, make_params, mcts


def mcts_kwargs(cfg, banned: list[int]) -> dict:
    """MCTS's arguments: the shared score and support (top_k/top_p None = MCTS's default) and its own knobs."""
    return dict(simulations=cfg.simulations, c_puct=cfg.c_puct, top_k=cfg.top_k, top_p=cfg.top_p,
                rollout_len=cfg.rollout_len, reuse_cache=cfg.reuse_cache, score=cfg.score, ref_weight=cfg.ref_weight,
                banned_tokens=banned, normalize_q=cfg.normalize_q, leaf_value=cfg.leaf_value,
                leaf_batch=cfg.leaf_batch, length_penalty=cfg.length_penalty)


def run_mcts(scorer, prompts, cfg, *, eos_token_id, generator, banned):
    return mcts(scorer, prompts, **mcts_kwargs(cfg, banned), **common(cfg, eos_token_id))


def check(cfg, policy, reference, encoded, banned, eos_token_id) -> None:
    """Refuse what MCTS cannot do (e.g. an unbounded support, a tree past memory) before any output."""
    kw = {k: v for k, v in mcts_kwargs(cfg, banned).items() if k != "leaf_batch"}
    make_params(max_new_tokens=cfg.max_new_tokens, eos_token_id=eos_token_id, **kw)
    check_mcts_memory(policy, reference, sorted(map(len, encoded))[-cfg.batch_size:], simulations=cfg.simulations,
                      max_new_tokens=cfg.max_new_tokens, leaf_batch=cfg.leaf_batch, rollout_len=cfg.rollout_len)


MCTS = Decoder("mcts", run_mcts, "MCTS, --simulations per committed token", check=check,
               fields=("simulations", "c_puct", "rollout_len", "leaf_value", "normalize_q", "leaf_batch",
                       "reuse_cache"))
