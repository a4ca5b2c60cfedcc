"""Monte-Carlo tree search over tokens, backed by the DPO implicit reward, with KV caches shared across branches.

A node is a prefix s (prompt + committed tokens + the path to it). Its children are the policy's top-k next
tokens a, each with

    prior  P(s, a) = π(a | s) / Σ_{b ∈ top-k} π(b | s)
    reward r(s, a) = β·(log π(a|s) − log π_ref(a|s)) − λ       (β·log π(a|s) − λ with score="likelihood")

all read off the node's two next-token distributions, so creating children costs no forward pass. Each node
keeps N (visits) and W (sum of the returns backed up through it, counted from its own state onwards), and

    Q(s, a) = r(s, a) + W(s·a) / N(s·a)                (= r(s, a) while s·a is unvisited)

One simulation: from the root, descend by PUCT (AlphaZero)

    a* = argmax_a  Q(s, a) + c_puct · P(s, a) · √N(s) / (1 + N(s, a))

until a node that was never evaluated or is terminal (EOS, or the last allowed token). Evaluating the leaf
runs one position through both models — the leaf's token on its parent's cache — which yields its children.
The leaf value v is 0, or the summed reward of a greedy policy rollout of `rollout_len` tokens. Back-up:
G ← v at the leaf, then for each node on the path from the leaf up, N += 1, W += G, G ← r(edge into it) + G.
The root's own evaluation counts as its first visit, as a leaf's does.

With `leaf_batch` > 1, several simulations of one tree run together: their paths are chosen one after another
with virtual visits (see `simulate`) and their new leaves evaluated in one batch.

After `simulations` simulations the most-visited root child (ties: higher Q, then higher prior) is
committed; it becomes the root and keeps its subtree, statistics and caches. Simulations are batched across
prompts — one simulation of every prompt's tree per batched forward — which leaves each tree's search exactly
what it would be alone.

`reuse_cache=False` is the baseline of the benchmark: the same search, but every evaluation and rollout step
re-encodes the node's whole prefix through both models with no cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from kernels.rewards import implicit_reward
from search.guards import ban_repeats
from search.scorer import Decoded, ForwardCounter, PairScorer, PairState


@dataclass(eq=False)
class Node:
    token: int  # the action into this node (−1 at the initial root)
    prior: float  # P(parent, token)
    policy_logp: float  # log π(token | parent)
    reference_logp: float  # log π_ref(token | parent)
    reward: float  # r(parent, token): the search's edge reward
    depth: int  # generated tokens up to and including `token`
    terminal: bool  # EOS, or depth == max_new_tokens: never expanded
    visits: int = 0
    value_sum: float = 0.0  # W: Σ returns from this node's state onwards
    children: list[Node] | None = None  # None until evaluated
    state: PairState | None = field(default=None, repr=False)  # one row; no caches when re-encoding

    @property
    def value(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0

    @property
    def q(self) -> float:
        return self.reward + self.value


@dataclass
class Tree:
    prompt: list[int]
    index: int  # prompt index (forward-token accounting)
    root: Node
    committed: list[Node] = field(default_factory=list)
    done: bool = False
    simulations: int = 0  # simulations run since the last commit

    def prefix(self, path: list[Node]) -> list[int]:
        return self.prompt + [n.token for n in self.committed] + [n.token for n in path[1:]]

    def history(self, path: list[Node]) -> list[int]:
        return [n.token for n in self.committed] + [n.token for n in path[1:]]


@dataclass(frozen=True)
class MCTSParams:
    max_new_tokens: int
    eos_token_id: int
    simulations: int = 16
    c_puct: float = 1.0
    topk: int = 8
    rollout_len: int = 0
    reuse_cache: bool = True
    score: str = "implicit"
    length_penalty: float = 0.0
    no_repeat_ngram: int = 0


def _edge_rewards(scorer: PairScorer, state: PairState, p: MCTSParams) -> torch.Tensor:
    """(1, V) search reward of every candidate token at this state."""
    if p.score == "implicit":
        r = implicit_reward(state.policy_logps, state.reference_logps, scorer.beta)
    else:
        r = scorer.beta * state.policy_logps
    return r - p.length_penalty


def expand(scorer: PairScorer, node: Node, state: PairState, history: list[int], p: MCTSParams) -> None:
    """Attach `state` to `node` and create its children: the policy's top-k finite-probability tokens."""
    node.state = state
    lp = ban_repeats(state.policy_logps, [history], p.no_repeat_ngram)[0]  # (V,)
    top_lp, top_tok = lp.topk(min(p.topk, lp.shape[0]))
    finite = torch.isfinite(top_lp)
    top_lp, top_tok = top_lp[finite], top_tok[finite]
    priors = torch.softmax(top_lp, dim=0)  # renormalised over the top-k
    rewards = _edge_rewards(scorer, state, p)[0, top_tok]
    lr = state.reference_logps[0, top_tok]
    depth = node.depth + 1
    node.children = [
        Node(token=t, prior=pr, policy_logp=a, reference_logp=b, reward=rw, depth=depth,
             terminal=t == p.eos_token_id or depth >= p.max_new_tokens)
        for t, pr, a, b, rw in zip(top_tok.tolist(), priors.tolist(), top_lp.tolist(), lr.tolist(),
                                   rewards.tolist())
    ]


def select_path(root: Node, c_puct: float, pending: set[int] | frozenset = frozenset()) -> list[Node] | None:
    """Descend by PUCT from `root` to a node that is unevaluated or terminal (or has no children).

    Children in `pending` (ids of leaves already chosen for evaluation this round) are skipped; None when
    every child at some node is pending.
    """
    path, node = [root], root
    while node.children and not node.terminal:
        options = [c for c in node.children if id(c) not in pending] if pending else node.children
        if not options:
            return None
        sqrt_n = math.sqrt(node.visits)
        # PUCT: exploit Q(s,a), explore in proportion to the prior and to how rarely a was tried
        node = max(options, key=lambda c: c.q + c_puct * c.prior * sqrt_n / (1 + c.visits))
        path.append(node)
    return path


def backup(path: list[Node], leaf_value: float) -> None:
    """N += 1 and W += G along the path, G accumulating the edge rewards from the leaf upwards."""
    g = leaf_value
    for node in reversed(path[1:]):
        node.visits += 1
        node.value_sum += g
        g = node.reward + g
    path[0].visits += 1


def _advance(scorer: PairScorer, states: list[PairState], prefixes: list[list[int]], tokens: list[int],
             owner: torch.Tensor, counter: ForwardCounter, reuse_cache: bool) -> list[PairState]:
    """Append tokens[i] to row i: one cached step of the stacked parents, or a re-encoding of each prefix."""
    if reuse_cache:
        stacked = scorer.stack(states)
        return scorer.split(scorer.step(stacked, torch.tensor(tokens), counter))
    seqs = [pre + [t] for pre, t in zip(prefixes, tokens)]
    return scorer.split(scorer.prefill(seqs, counter, owner=owner, keep_cache=False))


def _rollout_values(scorer: PairScorer, trees: list[Tree], paths: list[list[Node]], p: MCTSParams,
                    counter: ForwardCounter) -> list[float]:
    """Summed search reward of a greedy policy rollout of up to `rollout_len` tokens from each leaf (batched)."""
    values = [0.0] * len(paths)
    rows = list(range(len(paths)))  # leaf index of each row of `state`
    state = scorer.stack([path[-1].state for path in paths])  # (R, ·) one row per leaf
    prefixes = [tree.prefix(path) for tree, path in zip(trees, paths)]
    hists = [tree.history(path) for tree, path in zip(trees, paths)]
    depth = [path[-1].depth for path in paths]
    for step in range(p.rollout_len):
        lp = state.policy_logps
        if p.no_repeat_ngram:
            lp = ban_repeats(lp, [hists[r] for r in rows], p.no_repeat_ngram)
        toks = lp.argmax(-1)  # (R,) greedy rollout policy
        rewards = _edge_rewards(scorer, state, p).gather(1, toks[:, None])[:, 0].tolist()
        keep = []
        for j, (r, t) in enumerate(zip(rows, toks.tolist())):
            values[r] += rewards[j]
            hists[r].append(t)
            prefixes[r] = prefixes[r] + [t]
            depth[r] += 1
            if t != p.eos_token_id and depth[r] < p.max_new_tokens and step + 1 < p.rollout_len:
                keep.append(j)
        if not keep:
            break
        rows = [rows[j] for j in keep]
        if p.reuse_cache:
            if len(keep) < state.rows:
                state = scorer.select(state, torch.tensor(keep))
            state = scorer.step(state, toks[torch.tensor(keep, device=toks.device)], counter)
        else:
            owner = torch.tensor([trees[r].index for r in rows])
            state = scorer.prefill([prefixes[r] for r in rows], counter, owner=owner, keep_cache=False)
    return values


def plant(scorer: PairScorer, prompts: list[list[int]], p: MCTSParams, counter: ForwardCounter) -> list[Tree]:
    """One tree per prompt; the prompts are prefilled together and each root evaluated (its first visit)."""
    state = scorer.prefill(prompts, counter, keep_cache=p.reuse_cache)
    trees = []
    for i, row in enumerate(scorer.split(state)):
        root = Node(token=-1, prior=1.0, policy_logp=0.0, reference_logp=0.0, reward=0.0, depth=0,
                    terminal=False, visits=1)
        expand(scorer, root, row, [], p)
        trees.append(Tree(prompts[i], i, root))
    return trees


def simulate(scorer: PairScorer, trees: list[Tree], p: MCTSParams, counter: ForwardCounter, n: int = 1) -> None:
    """Up to n simulations in every open tree (never past `p.simulations` since its last commit); all new
    leaves are evaluated (and rolled out) in one batch.

    With n > 1 a tree's paths are chosen one after another: each adds a virtual visit (N += 1, no value)
    along its path, removed before the real back-up, and a leaf chosen for evaluation is not chosen again
    this round — so the round's leaves are distinct. A descent blocked by such pending leaves ends the
    tree's round early (`Tree.simulations` counts what ran). n = 1 is plain sequential MCTS.
    """
    paths, owners = [], []
    for t in trees:
        if t.done:
            continue
        pending: set[int] = set()
        for _ in range(min(n, p.simulations - t.simulations)):
            path = select_path(t.root, p.c_puct, pending)
            if path is None:
                break
            leaf = path[-1]
            if leaf.children is None and not leaf.terminal:
                pending.add(id(leaf))
            for node in path:
                node.visits += 1  # virtual visit
            paths.append(path)
            owners.append(t)
            t.simulations += 1
    for path in paths:
        for node in path:
            node.visits -= 1
    new = [j for j, path in enumerate(paths) if path[-1].children is None and not path[-1].terminal]
    if new:
        parents = [paths[j][-2].state for j in new]
        owner = torch.tensor([owners[j].index for j in new])
        states = _advance(scorer, parents, [owners[j].prefix(paths[j][:-1]) for j in new],
                          [paths[j][-1].token for j in new], owner, counter, p.reuse_cache)
        for j, st in zip(new, states):
            expand(scorer, paths[j][-1], st, owners[j].history(paths[j]), p)
    values = [0.0] * len(paths)  # leaf value: 0, or the rollout's summed reward
    if p.rollout_len > 0 and new:
        for j, v in zip(new, _rollout_values(scorer, [owners[j] for j in new], [paths[j] for j in new], p, counter)):
            values[j] = v
    for path, v in zip(paths, values):
        backup(path, v)


def commit(trees: list[Tree]) -> None:
    """Commit each open tree's most-visited root child; it becomes the root, keeping its subtree."""
    for t in trees:
        if t.done:
            continue
        if not t.root.children:  # every token banned or zero-probability: stop here
            t.done = True
            continue
        best = max(t.root.children, key=lambda c: (c.visits, c.q, c.prior))
        t.committed.append(best)
        t.simulations = 0
        t.root = best  # siblings and their subtrees are dropped, with their caches
        t.done = best.terminal


def mcts(scorer: PairScorer, prompts: list[list[int]], *, max_new_tokens: int, eos_token_id: int,
         simulations: int = 16, c_puct: float = 1.0, topk: int = 8, rollout_len: int = 0, reuse_cache: bool = True,
         score: str = "implicit", length_penalty: float = 0.0, no_repeat_ngram: int = 0,
         leaf_batch: int = 1) -> list[Decoded]:
    """MCTS decoding: `simulations` simulations per committed token, batched over prompts and, with
    leaf_batch > 1, over up to `leaf_batch` leaves per tree at a time (virtual visits, see `simulate`)."""
    if leaf_batch < 1:
        raise ValueError(f"leaf_batch must be >= 1, got {leaf_batch}")
    if max_new_tokens == 0:
        return [Decoded([], [], [], [], 0) for _ in prompts]
    p = MCTSParams(max_new_tokens, eos_token_id, simulations, c_puct, topk, rollout_len, reuse_cache, score,
                   length_penalty, no_repeat_ngram)
    counter = ForwardCounter(len(prompts))
    trees = plant(scorer, prompts, p, counter)
    while not all(t.done for t in trees):
        while any(not t.done and t.simulations < simulations for t in trees):
            simulate(scorer, trees, p, counter, n=leaf_batch)  # each open tree: up to its remaining simulations
        commit(trees)
    return scorer.finish(prompts, [[n.token for n in t.committed] for t in trees],
                         [[n.policy_logp for n in t.committed] for t in trees],
                         [[n.reference_logp for n in t.committed] for t in trees], counter)
