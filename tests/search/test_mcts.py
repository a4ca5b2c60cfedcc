"""MCTS on a hand-built token tree (known rewards, Q-values by hand) and on the tiny Llama pair."""

import math

import pytest
import torch

from search.kvpool import SearchMemoryError
from search.mcts import (MCTSParams, Node, Tree, check_mcts_memory, commit, expected_live_slots, make_params, mcts,
                         select_path, simulate, start)
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
    p = MCTSParams(max_new_tokens=3, eos_token_id=EOS, simulations=40, c_puct=1.0, top_k=4, rollout_len=3,
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
    p = MCTSParams(max_new_tokens=3, eos_token_id=EOS, simulations=60, c_puct=1.0, top_k=4, rollout_len=0)
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
    """Enough simulations overturn the prior: A is tried ~44 times before B's return shows (leaf value 0).
    The tree's rewards are implicit rewards, so the search backs them up (score="implicit")."""
    out = mcts(tree_scorer, [[BOS], [BOS]], max_new_tokens=3, eos_token_id=EOS, simulations=100, topk=4,
               rollout_len=rollout_len, leaf_batch=leaf_batch, score="implicit")
    for d in out:
        assert d.token_ids == [B, B, EOS]
        assert d.reward == pytest.approx(R_B + R_BB, abs=1e-6)
        assert d.token_rewards == pytest.approx([R_B, R_BB, 0.0], abs=1e-6)


def test_never_expands_past_eos_or_max_tokens(tree_scorer):
    p = MCTSParams(max_new_tokens=2, eos_token_id=EOS, simulations=30, top_k=4)
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


def test_forward_tokens_count_evaluations(tree_scorer):
    """Cached, no rollout: the prefill (1 position × 2 models) plus 2 per evaluated leaf."""
    p = MCTSParams(max_new_tokens=3, eos_token_id=EOS, simulations=10, top_k=4)
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
    p = MCTSParams(max_new_tokens=3, eos_token_id=EOS, top_k=4, c_puct=1.0)
    s, trees = start(tree_scorer, [[BOS]], p)
    (tree,) = trees
    simulate(s, trees, n=2)
    assert [c.visits for c in tree.root.children] == [1, 1] and tree.root.visits == 3
    assert all(c.children is not None for c in tree.root.children)
    assert s.counter.per_prompt == [2 + 4]


def _walk(node):
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(n.children or [])


@pytest.mark.parametrize("leaf_batch,rollout_len", [(1, 0), (3, 0), (1, 2), (3, 2)])
def test_node_local_kv_equals_reencoding(eos_policy, reference, tokenizer, make_prompts, leaf_batch, rollout_len):
    """The pooled-KV search and the re-encoding oracle run the same search code, so whatever the search rules,
    they must build the same trees and commit the same tokens: tokens equal, per-token rewards within 1e-5,
    and after a round of simulations every node's token, visits, prior and reward agree."""
    scorer = PairScorer(eos_policy, reference, beta=0.3, pad_token_id=tokenizer.pad_token_id)
    prompts = make_prompts(3, seed=33 + leaf_batch + rollout_len)
    kw = dict(max_new_tokens=6, eos_token_id=tokenizer.eos_token_id, simulations=5, topk=3,
              rollout_len=rollout_len, leaf_batch=leaf_batch)
    cached = mcts(scorer, prompts, reuse_cache=True, **kw)
    fresh = mcts(scorer, prompts, reuse_cache=False, **kw)
    assert [d.token_ids for d in cached] == [d.token_ids for d in fresh]
    for c, f in zip(cached, fresh):
        assert c.token_rewards == pytest.approx(f.token_rewards, abs=1e-5)
        assert c.forward_tokens <= f.forward_tokens  # equal only for a 1-token prompt that ends at once
    assert sum(c.forward_tokens for c in cached) < sum(f.forward_tokens for f in fresh)
    trees = {}
    for reuse in (True, False):
        p = MCTSParams(max_new_tokens=6, eos_token_id=tokenizer.eos_token_id, simulations=5, top_k=3,
                       rollout_len=rollout_len, reuse_cache=reuse)
        s, ts = start(scorer, prompts, p, leaf_batch)
        for _ in range(2):  # two commits: the second round starts from a kept subtree
            while any(not t.done and t.simulations < p.simulations for t in ts):
                simulate(s, ts, n=leaf_batch)
            commit(ts, s.pool)
        trees[reuse] = ts
    for a, b in zip(trees[True], trees[False]):
        na, nb = list(_walk(a.root)), list(_walk(b.root))
        assert [n.token for n in na] == [n.token for n in nb]
        assert [n.visits for n in na] == [n.visits for n in nb]
        assert [n.prior for n in na] == pytest.approx([n.prior for n in nb], abs=1e-5)
        assert [n.reward for n in na] == pytest.approx([n.reward for n in nb], abs=1e-5)


def test_pool_holds_only_live_nodes_and_nodes_hold_no_tensors(scorer, tokenizer, make_prompts):
    """After every commit the pool's live slots are exactly the prompt tokens, the evaluated committed tokens
    and the evaluated nodes under the roots (dropped subtrees and rollouts freed); at the end, none. Nodes keep
    only Python scalars and lists — no V-sized row survives an expansion."""
    prompts = make_prompts(3, seed=35)
    p = MCTSParams(max_new_tokens=6, eos_token_id=tokenizer.eos_token_id, simulations=5, top_k=3, rollout_len=2)
    s, trees = start(scorer, prompts, p, leaf_batch=2)
    while not all(t.done for t in trees):
        while any(not t.done and t.simulations < p.simulations for t in trees):
            simulate(s, trees, n=2)
        commit(trees, s.pool)
        if all(t.done for t in trees):
            break
        expected = 0
        for t in trees:
            if t.done:  # a finished tree has returned every slot
                continue
            below = sum(n.slot >= 0 for n in _walk(t.root) if n is not t.root)
            expected += len(t.prompt) + sum(n.slot >= 0 for n in t.committed) + below
        assert s.pool.live == expected
        for t in trees:
            for n in _walk(t.root):
                assert not any(torch.is_tensor(v) for v in vars(n).values())
    assert s.pool.live == 0
    assert s.pool.peak_live <= expected_live_slots([len(x) for x in prompts], 6, 5, 2, 2)


def test_memory_guard_refuses_with_a_batch_size_hint(policy, reference):
    need = check_mcts_memory(policy, reference, [40] * 8, max_new_tokens=32, simulations=16, available=2**40)
    kv = 2 * policy.config.num_hidden_layers * 2 * policy.config.num_key_value_heads * (
        policy.config.hidden_size // policy.config.num_attention_heads) * 4  # two models, fp32
    assert need >= 8 * (40 + 32) * kv  # at least every prompt and committed token's K/V
    with pytest.raises(SearchMemoryError, match="--batch_size"):
        check_mcts_memory(policy, reference, [40] * 8, max_new_tokens=32, simulations=16, available=need - 1)


# ---- MCTS that searches: normalised Q, virtual loss, leaf bound (likelihood score) -------------------------------
C, D, E, F = 4, 5, 6, 7


def logits8(**probs):
    """Logits over 8 tokens (BOS, EOS, A, B, C, D, E, F) with the given probabilities, −inf elsewhere."""
    out = [NEG] * 8
    for name, p in probs.items():
        out[{"eos": EOS, "a": A, "b": B, "c": C, "d": D, "e": E, "f": F}[name]] = math.log(p)
    return out


SPREAD = logits8(c=0.25, d=0.25, e=0.25, f=0.25)  # a continuation with no likely token
SURE = logits8(c=0.99, d=0.01)  # a near-certain continuation
# Greedy takes A (0.6). Under the likelihood score Σ β·log π, [A, ·, EOS] scores β·ln(0.6·0.25) = −1.90β while
# [B, C, EOS] scores β·ln(0.4·0.99) = −0.93β: search should leave greedy. In the control tree the
# continuations are swapped and greedy's A is also the likelihood optimum.
AFTER = {x: logits8(eos=1.0) for x in (C, D, E, F)}
HELPS = {(BOS,): logits8(a=0.6, b=0.4), (BOS, A): SPREAD, (BOS, B): SURE,
         **{(BOS, A, x): v for x, v in AFTER.items()}, **{(BOS, B, x): v for x, v in AFTER.items()}}
CONTROL = {**HELPS, (BOS, A): SURE, (BOS, B): SPREAD}


def _likelihood_pair(table_lm, table, beta):
    # the reference only enters the reported rewards: the likelihood score reads π alone
    return PairScorer(table_lm(table, 8), table_lm(table, 8), beta=beta, pad_token_id=BOS)


@pytest.mark.parametrize("simulations", [32, 64])
def test_likelihood_mcts_leaves_greedy_where_the_score_says_so(table_lm, simulations):
    """β = 0.02: β-scaled Q differences (~0.02) are swamped by c_puct·P·√N/(1+N) (~0.1–0.6) under the old
    rules (raw Q, leaf value 0), which stay greedy. Normalised Q and the leaf bound find [B, C, EOS]; on the
    control tree the same search keeps greedy's [A, C, EOS]."""
    kw = dict(max_new_tokens=3, eos_token_id=EOS, simulations=simulations, score="likelihood")
    for table, best in ((HELPS, [B, C, EOS]), (CONTROL, [A, C, EOS])):
        scorer = _likelihood_pair(table_lm, table, beta=0.02)
        assert greedy(scorer, [[BOS]], max_new_tokens=3, eos_token_id=EOS)[0].token_ids == [A, C, EOS]
        assert mcts(scorer, [[BOS]], **kw)[0].token_ids == best
    old = mcts(_likelihood_pair(table_lm, HELPS, beta=0.02), [[BOS]], normalize_q=False, leaf_value="zero", **kw)
    assert old[0].token_ids[0] == A


def test_normalised_search_is_independent_of_beta(table_lm):
    """Min–max normalisation makes c_puct unitless: scaling every reward by 100 leaves every visit count."""
    visits = []
    for beta in (0.02, 2.0):
        p = make_params(max_new_tokens=3, eos_token_id=EOS, simulations=24, score="likelihood", top_k=4)
        s, trees = start(_likelihood_pair(table_lm, HELPS, beta), [[BOS]], p)
        while trees[0].simulations < p.simulations:
            simulate(s, trees)
        visits.append([n.visits for n in _walk(trees[0].root)])
    assert visits[0] == visits[1]


def test_leaf_bound_is_the_best_next_token_score(table_lm):
    """Likelihood, no rollout: evaluating A gives it the value β·max_a log π(a | A) = β·ln 0.25, so after its
    first visit Q(root, A) = β·ln 0.6 + β·ln 0.25; an EOS leaf's value is 0."""
    beta = 0.5
    p = make_params(max_new_tokens=3, eos_token_id=EOS, simulations=2, score="likelihood")
    s, trees = start(_likelihood_pair(table_lm, HELPS, beta), [[BOS]], p)
    simulate(s, trees)
    a = next(c for c in trees[0].root.children if c.token == A)
    assert a.visits == 1
    assert a.q == pytest.approx(beta * (math.log(0.6) + math.log(0.25)), abs=1e-6)
    assert a.bound == pytest.approx(beta * math.log(0.25), abs=1e-6)


def test_virtual_loss_steers_a_batch_away_from_pending_paths():
    """Two evaluated children with equal statistics: a pending visit on one values it at the tree's minimum Q,
    so the next descent of the batch takes the other."""
    p = make_params(max_new_tokens=5, eos_token_id=EOS, simulations=8, top_k=2)
    root = Node(token=-1, prior=1.0, policy_logp=0.0, reference_logp=0.0, reward=0.0, depth=0, terminal=False,
                visits=5)
    kids = [Node(token=t, prior=0.5, policy_logp=math.log(0.5), reference_logp=math.log(0.5), reward=-0.1, depth=1,
                 terminal=False, visits=2, value_sum=-0.2, children=[]) for t in (A, B)]
    root.children = kids
    tree = Tree(prompt=[BOS], index=0, root=root)
    for q in (-1.0, 0.0):
        tree.see(q)
    assert select_path(tree, p)[-1] is kids[0]  # a tie: the first
    kids[0].virtual = 1
    assert select_path(tree, p)[-1] is kids[1]


def test_decode_cli_refuses_a_search_that_cannot_fit(tiny_model_dir, ref_model_dir, tmp_path, capsys):
    from search import decode

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hello"}\n')
    out = tmp_path / "out.jsonl"
    rc = decode.main(["--policy", str(tiny_model_dir), "--ref", str(ref_model_dir), "--prompts", str(prompts),
                      "--mcts", "--simulations", str(10**12), "--max_new_tokens", "4", "--beta", "0.1",
                      "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and "--batch_size" in err and "Traceback" not in err
    assert not out.exists()


def test_sequential_round_brings_a_leaf_from_every_tree(scorer, tokenizer, make_prompts):
    """leaf_batch 1: simulations that end at terminal nodes need no forward and are backed up at once, so each
    round evaluates exactly one new leaf per open tree that has simulations left (a full batched forward), and
    the batched search still equals each prompt searched alone."""
    prompts = make_prompts(3, seed=41)
    p = MCTSParams(max_new_tokens=3, eos_token_id=tokenizer.eos_token_id, simulations=12, top_k=2)
    s, trees = start(scorer, prompts, p)
    several = False  # some round ran > 1 simulation in a tree (terminal leaves reached)
    while not all(t.done for t in trees):
        while any(not t.done and t.simulations < p.simulations for t in trees):
            before, sims = list(s.counter.per_prompt), [t.simulations for t in trees]
            simulate(s, trees)
            for t, b, n in zip(trees, before, sims):
                if t.done:
                    continue
                evaluated = (s.counter.per_prompt[t.index] - b) // 2  # 1 position × 2 models per leaf
                assert evaluated == 1 or (evaluated == 0 and t.simulations == p.simulations)
                several |= t.simulations - n > 1
        commit(trees, s.pool)
    assert several
    kw = dict(max_new_tokens=3, eos_token_id=tokenizer.eos_token_id, simulations=12, topk=2)
    together = mcts(scorer, prompts, **kw)
    for prompt, d in zip(prompts, together):
        (alone,) = mcts(scorer, [prompt], **kw)
        assert d.token_ids == alone.token_ids
        assert d.token_rewards == pytest.approx(alone.token_rewards, abs=1e-5)
