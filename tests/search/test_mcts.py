"""MCTS on a hand-built token tree (known rewards, Q-values by hand) and on the tiny Llama pair."""

import math

import pytest
import torch

from search.mcts import MCTSParams, commit, mcts, simulate, start
from search.sampling import greedy
from search.scorer import ForwardCounter, PairScorer

NEG = -math.inf
BOS, EOS, A, B = 0, 1, 2, 3


def logits(**probs):
    """Logits over (BOS, EOS, A, B) with the given probabilities, −inf elsewhere."""
    out = [NEG] * 4
    for name, p in probs.items():
        out[{"eos": EOS, "a": A, "b": B}[name]] = math.log(p)
    return out


# Policy prefers A (0.6) but A's branch ends at once; B's branch continues with a token the reference dislikes.
POLICY = {(BOS,): logits(a=0.6, b=0.4), (BOS, A): logits(eos=1.0), (BOS, B): logits(b=1.0),
          (BOS, B, B): logits(eos=1.0)}
REFERENCE = {(BOS,): logits(a=0.3, b=0.7), (BOS, A): logits(eos=1.0), (BOS, B): logits(a=0.9, b=0.1),
             (BOS, B, B): logits(eos=1.0)}
# Hand-computed implicit rewards (β = 1): r = log π − log π_ref
R_A = math.log(0.6 / 0.3)  # +0.693
R_B = math.log(0.4 / 0.7)  # −0.560
R_BB = math.log(1.0 / 0.1)  # +2.303
# Path sums: [A, EOS] = 0.693 (greedy's choice) < [B, B, EOS] = 1.743.


@pytest.fixture
def tree_scorer(table_lm):
    return PairScorer(table_lm(POLICY, 4), table_lm(REFERENCE, 4), beta=1.0, pad_token_id=BOS)


def test_greedy_is_suboptimal_on_the_tree(tree_scorer):
    assert greedy(tree_scorer, [[BOS]], max_new_tokens=3, eos_token_id=EOS)[0].token_ids == [A, EOS]


@pytest.mark.parametrize("reuse_cache,leaf_batch", [(True, 1), (False, 1), (True, 4)])
def test_rollout_q_values_are_path_sums(tree_scorer, reuse_cache, leaf_batch):
    """A greedy rollout reaches the end of each deterministic branch, so every backed-up return is exact:
    Q(root, A) = r(A) + r(EOS|A) = log 2, Q(root, B) = r(B) + r(B|B) + r(EOS|BB) = log(4/7) + log 10."""
    p = MCTSParams(max_new_tokens=3, eos_token_id=EOS, simulations=40, c_puct=1.0, topk=4, rollout_len=3,
                   reuse_cache=reuse_cache)
    s, trees = start(tree_scorer, [[BOS]], p)
    (tree,) = trees
    while tree.simulations < p.simulations:  # a round may stop early at pending leaves
        simulate(s, trees, n=leaf_batch)
    q = {c.token: c.q for c in tree.root.children}
    assert set(q) == {A, B}  # zero-probability tokens are never children
    assert q[A] == pytest.approx(R_A, abs=1e-6)
    assert q[B] == pytest.approx(R_B + R_BB, abs=1e-6)
    assert tree.root.visits == 1 + p.simulations
    commit(trees, s.pool)
    assert tree.committed[0].token == B


def test_zero_leaf_value_q_values_by_hand(tree_scorer):
    """Leaf value 0: B's first visit backs up 0 and each later one r(B|B) (+ r(EOS|BB) = 0), so
    Q(root, B) = r(B) + r(B|B)·(N_B − 1)/N_B; every return below A is 0, so Q(root, A) = r(A)."""
    p = MCTSParams(max_new_tokens=3, eos_token_id=EOS, simulations=60, c_puct=1.0, topk=4, rollout_len=0)
    s, trees = start(tree_scorer, [[BOS]], p)
    (tree,) = trees
    for _ in range(p.simulations):
        simulate(s, trees)
    a, b = sorted(tree.root.children, key=lambda c: c.token)
    assert a.visits + b.visits == p.simulations and b.visits >= 3
    assert a.q == pytest.approx(R_A, abs=1e-6)
    assert b.q == pytest.approx(R_B + R_BB * (b.visits - 1) / b.visits, abs=1e-6)


@pytest.mark.parametrize("rollout_len,leaf_batch", [(0, 1), (2, 1), (2, 5)])
def test_mcts_commits_best_path_and_stops_at_eos(tree_scorer, rollout_len, leaf_batch):
    """Enough simulations overturn the prior: A is tried ~44 times before B's return shows (leaf value 0)."""
    out = mcts(tree_scorer, [[BOS], [BOS]], max_new_tokens=3, eos_token_id=EOS, simulations=100, topk=4,
               rollout_len=rollout_len, leaf_batch=leaf_batch)
    for d in out:
        assert d.token_ids == [B, B, EOS]
        assert d.reward == pytest.approx(R_B + R_BB, abs=1e-6)
        assert d.token_rewards == pytest.approx([R_B, R_BB, 0.0], abs=1e-6)


def test_never_expands_past_eos_or_max_tokens(tree_scorer):
    p = MCTSParams(max_new_tokens=2, eos_token_id=EOS, simulations=30, topk=4)
    s, trees = start(tree_scorer, [[BOS]], p)
    (tree,) = trees
    for _ in range(p.simulations):
        simulate(s, trees)
    stack = [tree.root]
    while stack:
        node = stack.pop()
        if node.token == EOS or node.depth == 2:
            assert node.terminal and node.children is None and node.slot == -1
        stack.extend(node.children or [])
    out = mcts(tree_scorer, [[BOS]], max_new_tokens=2, eos_token_id=EOS, simulations=30, topk=4)
    assert len(out[0].token_ids) <= 2


def test_one_simulation_top1_is_greedy(scorer, tokenizer, make_prompts):
    prompts = make_prompts(4, seed=31)
    eos = tokenizer.eos_token_id
    ours = mcts(scorer, prompts, max_new_tokens=12, eos_token_id=eos, simulations=1, topk=1)
    ref = greedy(scorer, prompts, max_new_tokens=12, eos_token_id=eos)
    assert [d.token_ids for d in ours] == [d.token_ids for d in ref]


def test_cache_reuse_equals_reencoding(scorer, tokenizer, make_prompts):
    """The cached search and the re-encoding baseline make the same decisions; the cache runs fewer positions."""
    prompts = make_prompts(3, seed=32)
    kw = dict(max_new_tokens=8, eos_token_id=tokenizer.eos_token_id, simulations=4, topk=3, rollout_len=2)
    cached = mcts(scorer, prompts, reuse_cache=True, **kw)
    fresh = mcts(scorer, prompts, reuse_cache=False, **kw)
    assert [d.token_ids for d in cached] == [d.token_ids for d in fresh]
    for c, f in zip(cached, fresh):
        assert c.token_rewards == pytest.approx(f.token_rewards, abs=1e-5)
        assert c.forward_tokens < f.forward_tokens


def test_forward_tokens_count_evaluations(tree_scorer):
    """Cached, no rollout: the prefill (1 position × 2 models) plus 2 per evaluated leaf."""
    p = MCTSParams(max_new_tokens=3, eos_token_id=EOS, simulations=10, topk=4)
    s, trees = start(tree_scorer, [[BOS]], p)
    (tree,) = trees
    for _ in range(p.simulations):
        simulate(s, trees)
    evaluated, stack = 0, list(tree.root.children)
    while stack:
        node = stack.pop()
        evaluated += node.children is not None
        stack.extend(node.children or [])
    assert s.counter.per_prompt == [2 + 2 * evaluated]


def test_leaf_batch_spreads_one_round_over_distinct_leaves(tree_scorer):
    """One round of 2 simulations from a fresh root: the virtual visit sends the second descent to the other
    child, so both children are evaluated in one batched forward (2 rows × 2 models)."""
    p = MCTSParams(max_new_tokens=3, eos_token_id=EOS, topk=4, c_puct=1.0)
    s, trees = start(tree_scorer, [[BOS]], p)
    (tree,) = trees
    simulate(s, trees, n=2)
    assert [c.visits for c in tree.root.children] == [1, 1] and tree.root.visits == 3
    assert all(c.children is not None for c in tree.root.children)
    assert s.counter.per_prompt == [2 + 4]
