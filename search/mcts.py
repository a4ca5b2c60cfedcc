"""Monte-Carlo tree search over tokens, backed by the DPO implicit reward, with node-local KV caches.

A node is a prefix s (prompt + committed tokens + the path to it). Its children are the candidate tokens a —
the support of `search.scoring` over the policy: no special token but EOS, inside π's top-k / top-p (default
top-8) — each with

    prior  P(s, a) = π(a | s) / Σ_{b ∈ candidates} π(b | s)
    reward r(s, a) = β·(log π(a|s) − (1 − λ)·log π_ref(a|s)) − length_penalty
                   = r_t + λ·β·log π_ref(a|s) − length_penalty        (λ: 0 implicit, 1 likelihood, mixed)

all read off the node's two next-token distributions, so creating children costs no forward pass. Each node
keeps N (visits) and W (sum of the returns backed up through it, counted from its own state onwards), and

    Q(s, a) = r(s, a) + W(s·a) / N(s·a)                (= r(s, a) while s·a is unvisited)

One simulation: from the root, descend by PUCT (AlphaZero), with Q min–max normalised inside each tree
(MuZero: Q̂ = (Q − Q_min) / (Q_max − Q_min) over every Q the tree has seen), so c_puct is unitless whatever
the score and β:

    a* = argmax_a  Q̂(s, a) + c_puct · P(s, a) · √N(s) / (1 + N(s, a))

until a node that was never evaluated or is terminal (EOS, or the last allowed token). Evaluating the leaf
runs one position through both models — the leaf's token attending over its path's cached K/V — which yields
its children. The leaf value v: the summed reward of a greedy rollout of `rollout_len` tokens (within the
support), or without rollout the bound v = λ·β·max_a log π(a | leaf): the implicit part of the score has value
0 up to a constant at the DPO optimum, and the likelihood part of every continuation is at most its best next
token's (later terms are ≤ 0) — tight for one step, where v = 0 would be optimistic for λ > 0. A terminal
leaf's value is 0. Back-up: G ← v at the leaf, then for each node on the path from the leaf up, N += 1,
W += G, G ← r(edge into it) + G. The root's own evaluation counts as its first visit, as a leaf's does.

With `leaf_batch` > 1, several simulations of one tree run together: their paths are chosen one after another
with virtual losses (a pending visit counts as the tree's minimum Q, see `select_path`) and their new leaves
evaluated in one batch.

After `simulations` simulations the most-visited root child (ties: higher Q, then higher prior) is
committed; it becomes the root and keeps its subtree and statistics; its siblings' subtrees are dropped.
Simulations are batched across prompts (every tree's new leaves in one policy and one reference forward; a tree
commits as soon as its own simulations are done), which leaves each tree's search exactly what it would be alone.

Memory (node-local KV, `search.kvpool`): the prompt's K/V is written once per tree into a shared slot pool; an
evaluated node owns one slot, its own token's K/V in every layer of both models; a committed token's slot is
shared by everything below it. A leaf's evaluation gathers its path's slots (prompt, committed, path) inside
the forward. After expansion a node keeps only scalars (its children's priors, rewards and log-probs), never a
V-sized row; dropping a subtree at a commit frees its slots; a rollout's slots are freed when it ends. So memory
grows with the live nodes, not with nodes × prefix length.

`reuse_cache=False` is the baseline of the benchmark and the oracle of the tests: the same search, but every
evaluation and rollout step re-encodes the node's whole prefix through both models with no cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from search import scoring
from search.guards import ban_repeats
from search.kvpool import KVPool, SearchMemoryError, path_index  # noqa: F401 - SearchMemoryError re-exported
from search.mcts_memory import (available_memory_bytes, check_mcts_memory,  # noqa: F401 - re-exported
                                 estimate_mcts_memory, expected_live_slots)
from search.scorer import Decoded, ForwardCounter, PairScorer


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
    slot: int = -1  # KV-pool slot of this token's K/V once evaluated (cached search); −1 otherwise
    virtual: int = 0  # pending visits of the current leaf batch (virtual loss)
    bound: float = 0.0  # leaf value once evaluated, when no rollout is run (see `MCTSParams.leaf_value`)

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
    base_slots: list[int] = field(default_factory=list)  # KV slots of the prompt + committed tokens
    q_min: float = math.inf  # min / max of every Q seen in this tree (MuZero's normalisation)
    q_max: float = -math.inf

    def see(self, q: float) -> None:
        self.q_min, self.q_max = min(self.q_min, q), max(self.q_max, q)

    def normalise(self, q: float) -> float:
        """(Q − min) / (max − min) over this tree's Q values: in [0, 1] whatever the score's units."""
        return (q - self.q_min) / (self.q_max - self.q_min) if self.q_max > self.q_min else q

    def prefix(self, path: list[Node]) -> list[int]:
        return self.prompt + [n.token for n in self.committed] + [n.token for n in path[1:]]

    def history(self, path: list[Node]) -> list[int]:
        return [n.token for n in self.committed] + [n.token for n in path[1:]]

    def slots(self, path: list[Node]) -> list[int]:
        """KV slots of the prefix `path` ends at (path[0] is the root)."""
        return self.base_slots + [n.slot for n in path[1:]]


@dataclass(frozen=True)
class MCTSParams:
    max_new_tokens: int
    eos_token_id: int
    simulations: int = 16
    c_puct: float = 1.0
    top_k: int = scoring.MCTS_SUPPORT[0]
    rollout_len: int = 0
    reuse_cache: bool = True
    ref_weight: float = 0.0  # λ: each token scores r_t + λ·β·log π_ref (0 implicit, 1 likelihood)
    length_penalty: float = 0.0
    no_repeat_ngram: int = 0
    top_p: float = scoring.MCTS_SUPPORT[1]
    banned: tuple[int, ...] = ()  # never candidates (`scoring.banned_token_ids`)
    normalize_q: bool = True  # MuZero's min–max Q normalisation inside each tree
    leaf_value: str = "auto"  # auto | zero | bound | rollout

    @property
    def value_source(self) -> str:
        """How an evaluated leaf is valued: `rollout` (greedy, rollout_len tokens), `bound` or `zero`."""
        if self.leaf_value == "auto":
            return "rollout" if self.rollout_len > 0 else "bound"
        return self.leaf_value


@dataclass
class Search:
    """What one decode carries besides the trees: the models, the KV pool, the forward counter."""

    scorer: PairScorer
    p: MCTSParams
    counter: ForwardCounter
    pool: KVPool | None  # None when re-encoding


def _edge_rewards(beta: float, lp: torch.Tensor, lr: torch.Tensor, p: MCTSParams) -> torch.Tensor:
    """(R, V) search reward of every token at R states: β·(log π − (1 − λ)·log π_ref) − length penalty
    (`search.scoring`: r_t + λ·β·log π_ref)."""
    return beta * scoring.token_scores(lp, lr, p.ref_weight) - p.length_penalty


def _candidates(lp: torch.Tensor, histories: list[list[int]], p: MCTSParams) -> torch.Tensor:
    """(R, V) policy log-probs with −inf outside each row's support: no specials but EOS, no repeated n-gram,
    inside the policy's top-k / top-p (`search.scoring.candidate_mask`, the proposal being π)."""
    banned = ban_repeats(lp, histories, p.no_repeat_ngram)
    mask = scoring.candidate_mask(banned, top_k=p.top_k, top_p=p.top_p, banned=p.banned)
    return scoring.restrict(banned, mask)


def expand(beta: float, nodes: list[Node], lp: torch.Tensor, lr: torch.Tensor, histories: list[list[int]],
           p: MCTSParams, trees: list[Tree] | None = None) -> None:
    """Create the children of `nodes` (row i of lp/lr (R, V) is node i's state): the candidates, most likely
    first, with priors renormalised over them. Batched: one mask, top-k, softmax and gather for all rows, one
    transfer to Python. Each node also gets its leaf bound (see `MCTSParams.leaf_value`), and each child's
    Q = r joins its tree's min–max range."""
    cand = _candidates(lp, histories, p)  # (R, V)
    k = max(1, min(int(torch.isfinite(cand).sum(-1).max()), cand.shape[1]))
    top_lp, top_tok = cand.topk(k, dim=-1)  # (R, k), descending
    priors = torch.softmax(top_lp, dim=-1)  # renormalised over the candidates (−inf entries get 0)
    rewards = _edge_rewards(beta, lp, lr, p).gather(1, top_tok)
    ref = lr.gather(1, top_tok)
    for i, (node, toks, pr, a, b, rw) in enumerate(zip(nodes, top_tok.tolist(), priors.tolist(), top_lp.tolist(),
                                                      ref.tolist(), rewards.tolist())):
        depth = node.depth + 1
        node.children = [
            Node(token=t, prior=x, policy_logp=la, reference_logp=lb, reward=w, depth=depth,
                 terminal=t == p.eos_token_id or depth >= p.max_new_tokens)
            for t, x, la, lb, w in zip(toks, pr, a, b, rw) if la != -math.inf
        ]
        # The likelihood part λ·β·Σ log π of any continuation is ≤ λ·β·max_a log π(a|s) (every later term
        # is ≤ 0), and the implicit part's value is 0 up to a constant (DPO optimum): an upper bound that
        # is tight for one step, instead of 0, which is optimistic for λ > 0.
        node.bound = p.ref_weight * beta * a[0] if node.children else 0.0
        if trees is not None:
            for c in node.children:
                trees[i].see(c.reward)


def select_path(tree: Tree, p: MCTSParams, pending: set[int] | frozenset = frozenset()) -> list[Node] | None:
    """Descend by PUCT from the root to a node that is unevaluated or terminal (or has no children).

    Children in `pending` (ids of leaves already chosen for evaluation this round) are skipped; None when
    every child at some node is pending. Pending visits count as virtual losses: a child with v of them
    is scored with Q_v = (N·Q + v·Q_min) / (N + v) and N + v visits.
    """
    path, node = [tree.root], tree.root
    norm = tree.normalise if p.normalize_q else (lambda q: q)
    lo = tree.q_min if math.isfinite(tree.q_min) else 0.0
    while node.children and not node.terminal:
        options = [c for c in node.children if id(c) not in pending] if pending else node.children
        if not options:
            return None
        sqrt_n = math.sqrt(node.visits + node.virtual)

        def puct(c: Node) -> float:
            n = c.visits + c.virtual
            q = c.q if not c.virtual else (c.visits * c.q + c.virtual * lo) / n
            # PUCT: exploit the (normalised) Q(s,a), explore in proportion to the prior and to how rarely
            # a was tried
            return norm(q) + p.c_puct * c.prior * sqrt_n / (1 + n)

        node = max(options, key=puct)
        path.append(node)
    return path


def backup(path: list[Node], leaf_value: float, tree: Tree | None = None) -> None:
    """N += 1 and W += G along the path, G accumulating the edge rewards from the leaf upwards; each new
    Q joins the tree's min–max range."""
    g = leaf_value
    for node in reversed(path[1:]):
        node.visits += 1
        node.value_sum += g
        if tree is not None:
            tree.see(node.q)
        g = node.reward + g
    path[0].visits += 1


def _evaluate(s: Search, trees: list[Tree], paths: list[list[Node]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Run each path's last token through both models (one batched forward each): (log π, log π_ref) (R, V)
    at the leaves. Cached: the leaf attends over its path's pool slots and gets a slot of its own."""
    owner = torch.tensor([t.index for t in trees])
    leaves = [path[-1] for path in paths]
    tokens = torch.tensor([n.token for n in leaves])
    if s.pool is None:
        state = s.scorer.prefill([t.prefix(path) for t, path in zip(trees, paths)], s.counter, owner=owner,
                                 keep_cache=False)
        return state.policy_logps, state.reference_logps
    new = s.pool.alloc(len(leaves))
    for n, slot in zip(leaves, new):
        n.slot = slot
    index, mask = path_index([t.slots(path[:-1]) for t, path in zip(trees, paths)], [[x] for x in new],
                             s.scorer.device)
    return s.scorer.pool_step(s.pool, index, mask, tokens, s.counter, owner)


def _rollout_values(s: Search, trees: list[Tree], paths: list[list[Node]], lp: torch.Tensor,
                    lr: torch.Tensor) -> list[float]:
    """Summed search reward of a greedy policy rollout of up to `rollout_len` tokens from each leaf (batched);
    lp/lr (R, V) are the leaves' next-token log-probs. The rollout's KV slots are freed when it ends."""
    p = s.p
    values = [0.0] * len(paths)
    rows = list(range(len(paths)))  # leaf index of each live row
    prefixes = [tree.prefix(path) for tree, path in zip(trees, paths)]
    slots = [tree.slots(path) for tree, path in zip(trees, paths)] if s.pool is not None else None
    hists = [tree.history(path) for tree, path in zip(trees, paths)]
    depth = [path[-1].depth for path in paths]
    temp: list[int] = []
    try:
        for step in range(p.rollout_len):
            toks = _candidates(lp, [hists[r] for r in rows], p).argmax(-1)  # (R,) greedy within the support
            rewards = _edge_rewards(s.scorer.beta, lp, lr, p).gather(1, toks[:, None])[:, 0].tolist()
            keep = []
            for j, (r, t) in enumerate(zip(rows, toks.tolist())):
                values[r] += rewards[j]
                hists[r].append(t)
                prefixes[r].append(t)
                depth[r] += 1
                if t != p.eos_token_id and depth[r] < p.max_new_tokens and step + 1 < p.rollout_len:
                    keep.append(j)
            if not keep:
                break
            rows = [rows[j] for j in keep]
            toks = toks[torch.tensor(keep, device=toks.device)]
            owner = torch.tensor([trees[r].index for r in rows])
            if s.pool is None:
                state = s.scorer.prefill([prefixes[r] for r in rows], s.counter, owner=owner, keep_cache=False)
                lp, lr = state.policy_logps, state.reference_logps
            else:
                new = s.pool.alloc(len(rows))
                temp += new
                index, mask = path_index([slots[r] for r in rows], [[x] for x in new], s.scorer.device)
                for r, x in zip(rows, new):
                    slots[r] = slots[r] + [x]
                lp, lr = s.scorer.pool_step(s.pool, index, mask, toks, s.counter, owner)
    finally:
        if s.pool is not None:
            s.pool.free(temp)
    return values


def plant(scorer: PairScorer, prompts: list[list[int]], p: MCTSParams, counter: ForwardCounter,
          pool: KVPool | None = None) -> list[Tree]:
    """One tree per prompt; the prompts are prefilled together and each root evaluated (its first visit).
    With a pool, each prompt's K/V is written into it once: the tree's base slots."""
    state = scorer.prefill(prompts, counter, keep_cache=pool is not None)
    trees = []
    for i, prompt in enumerate(prompts):
        root = Node(token=-1, prior=1.0, policy_logp=0.0, reference_logp=0.0, reward=0.0, depth=0,
                    terminal=False, visits=1)
        trees.append(Tree(prompt, i, root))
    if pool is not None:
        for t in trees:
            t.base_slots = pool.alloc(len(t.prompt))
        for m, cache in enumerate((state.policy_cache, state.reference_cache)):
            pool.write_prefill(m, cache, state.attention_mask, [t.base_slots for t in trees])
    expand(scorer.beta, [t.root for t in trees], state.policy_logps, state.reference_logps, [[]] * len(trees), p,
           trees)
    return trees


def start(scorer: PairScorer, prompts: list[list[int]], p: MCTSParams, leaf_batch: int = 1,
          pool: KVPool | None = None) -> tuple[Search, list[Tree]]:
    """A search's state and its planted trees (a fresh pool, sized by `expected_live_slots`, when caching)."""
    if p.reuse_cache and pool is None:
        pool = KVPool(capacity=expected_live_slots([len(x) for x in prompts], p.max_new_tokens, p.simulations,
                                                   leaf_batch, p.rollout_len))
    s = Search(scorer, p, ForwardCounter(len(prompts)), pool if p.reuse_cache else None)
    return s, plant(scorer, prompts, p, s.counter, s.pool)


def _leaf_value(leaf: Node, p: MCTSParams) -> float:
    """0 at a terminal leaf (nothing follows) or with leaf_value="zero"; else its rollout return or bound."""
    return 0.0 if leaf.terminal or p.value_source == "zero" else leaf.bound


def _needs_forward(leaf: Node) -> bool:
    return leaf.children is None and not leaf.terminal  # never evaluated, and not terminal


def simulate(s: Search, trees: list[Tree], n: int = 1) -> None:
    """One round: every open tree brings up to n new leaves (never past `p.simulations` since its last
    commit); all of them are evaluated (and rolled out) in one batch.

    n = 1 is plain sequential MCTS. A simulation that needs no forward (a terminal leaf, or an evaluated one
    without candidates) is backed up at once and the tree runs its next, until one needs a forward: each
    tree's simulations are unchanged, but the batched forward gets a row from every tree that has one left.

    With n > 1 a tree's paths are chosen one after another: each adds a virtual loss along its path (a
    pending visit valued at the tree's minimum Q, see `select_path`), removed before the real back-up, and a
    leaf chosen for evaluation is not chosen again this round — so the round's leaves are distinct and
    spread away from each other. A descent blocked by such pending leaves ends the tree's round early
    (`Tree.simulations` counts what ran).
    """
    p = s.p
    paths, owners = [], []
    for t in trees:
        if t.done:
            continue
        if n == 1:
            while t.simulations < p.simulations:
                path = select_path(t, p)
                t.simulations += 1
                if _needs_forward(path[-1]):
                    paths.append(path)
                    owners.append(t)
                    break
                backup(path, _leaf_value(path[-1], p), t)
            continue
        pending: set[int] = set()
        for _ in range(min(n, p.simulations - t.simulations)):
            path = select_path(t, p, pending)
            if path is None:
                break
            if _needs_forward(path[-1]):
                pending.add(id(path[-1]))
            for node in path:
                node.virtual += 1  # virtual loss until the back-up
            paths.append(path)
            owners.append(t)
            t.simulations += 1
    for path in paths:
        for node in path:
            node.virtual = 0
    new = [j for j, path in enumerate(paths) if _needs_forward(path[-1])]
    if new:
        new_trees, new_paths = [owners[j] for j in new], [paths[j] for j in new]
        lp, lr = _evaluate(s, new_trees, new_paths)
        expand(s.scorer.beta, [path[-1] for path in new_paths], lp, lr,
               [t.history(path) for t, path in zip(new_trees, new_paths)], p, new_trees)
        if p.value_source == "rollout" and p.rollout_len > 0:
            for path, v in zip(new_paths, _rollout_values(s, new_trees, new_paths, lp, lr)):
                path[-1].bound = v  # the leaf's value estimate is its rollout's return
    for path, t in zip(paths, owners):
        backup(path, _leaf_value(path[-1], p), t)


def _subtree_slots(node: Node) -> list[int]:
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        if n.slot >= 0:
            out.append(n.slot)
        stack.extend(n.children or [])
    return out


def commit(trees: list[Tree], pool: KVPool | None = None) -> None:
    """Commit each open tree's most-visited root child; it becomes the root, keeping its subtree. Its
    siblings' subtrees are dropped and their KV slots freed; a finished tree frees all of its slots."""
    for t in trees:
        if t.done:
            continue
        if not t.root.children:  # every token banned or zero-probability: stop here
            t.done = True
            _release(t, pool)
            continue
        best = max(t.root.children, key=lambda c: (c.visits, c.q, c.prior))
        if pool is not None:
            for c in t.root.children:
                if c is not best:
                    pool.free(_subtree_slots(c))
            if best.slot >= 0:
                t.base_slots.append(best.slot)
        t.committed.append(best)
        t.simulations = 0
        t.root = best
        t.done = best.terminal
        if t.done:
            _release(t, pool)


def _release(t: Tree, pool: KVPool | None) -> None:
    """A finished tree's decode is over: its prompt, committed and subtree slots go back to the pool."""
    if pool is not None:
        pool.free(t.base_slots + [x for x in _subtree_slots(t.root) if x != t.root.slot])  # root's is in base
        t.base_slots = []


LEAF_VALUES = ("auto", "zero", "bound", "rollout")


def make_params(*, max_new_tokens: int, eos_token_id: int, simulations: int = 16, c_puct: float = 1.0,
                topk: int | None = None, top_k: int | None = None, top_p: float | None = None, rollout_len: int = 0,
                reuse_cache: bool = True, score: str = "likelihood", ref_weight: float | None = None,
                length_penalty: float = 0.0, no_repeat_ngram: int = 0, banned_tokens=(), normalize_q: bool = True,
                leaf_value: str = "auto") -> MCTSParams:
    """Validated `MCTSParams`; `topk` is an alias of `top_k`; support defaults from `scoring.MCTS_SUPPORT`."""
    if topk is not None:
        if top_k is not None and top_k != topk:
            raise ValueError(f"topk is an alias of top_k; got both ({topk} and {top_k})")
        top_k = topk
    k, tp = scoring.resolve_support("mcts", score, top_k, top_p)
    if k == 0 and tp >= 1.0:
        raise ValueError("MCTS needs a bounded support: top_k > 0 or top_p < 1 (every token would be a child)")
    if leaf_value not in LEAF_VALUES:
        raise ValueError(f"leaf_value must be one of {LEAF_VALUES}, got {leaf_value!r}")
    if leaf_value == "rollout" and rollout_len < 1:
        raise ValueError("leaf_value='rollout' needs rollout_len >= 1")
    if simulations < 1:
        raise ValueError(f"simulations must be >= 1, got {simulations}")
    return MCTSParams(max_new_tokens, eos_token_id, simulations, c_puct, k, rollout_len, reuse_cache,
                      scoring.ref_weight(score, ref_weight), length_penalty, no_repeat_ngram, tp,
                      tuple(int(t) for t in banned_tokens), normalize_q, leaf_value)


def mcts(scorer: PairScorer, prompts: list[list[int]], *, max_new_tokens: int, eos_token_id: int,
         simulations: int = 16, c_puct: float = 1.0, topk: int | None = None, top_k: int | None = None,
         top_p: float | None = None, rollout_len: int = 0, reuse_cache: bool = True, score: str = "likelihood",
         ref_weight: float | None = None, length_penalty: float = 0.0, no_repeat_ngram: int = 0,
         banned_tokens=(), normalize_q: bool = True, leaf_value: str = "auto", leaf_batch: int = 1,
         pool: KVPool | None = None) -> list[Decoded]:
    """MCTS decoding: `simulations` simulations per committed token, batched over prompts and, with
    leaf_batch > 1, over up to `leaf_batch` leaves per tree at a time (virtual losses, see `simulate`).

    score / ref_weight: the edge reward r_t + λ·β·log π_ref (`search.scoring`). top_k / top_p (topk: alias):
    the children's support over π, default top-8; banned_tokens: never children (`scoring.banned_token_ids`).
    normalize_q: MuZero's min–max Q inside each tree, so c_puct is unitless. leaf_value: "rollout" (greedy,
    `rollout_len` tokens), "bound" (λ·β·max log π at the leaf, see `expand`), "zero", or "auto" (rollout
    when rollout_len > 0, else bound). `pool`: the KV pool when reuse_cache (default: a fresh one sized by
    `expected_live_slots`); pass one to read its `peak_live` afterwards or to cap it with `limit_bytes`."""
    if leaf_batch < 1:
        raise ValueError(f"leaf_batch must be >= 1, got {leaf_batch}")
    p = make_params(max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, simulations=simulations,
                    c_puct=c_puct, topk=topk, top_k=top_k, top_p=top_p, rollout_len=rollout_len,
                    reuse_cache=reuse_cache, score=score, ref_weight=ref_weight, length_penalty=length_penalty,
                    no_repeat_ngram=no_repeat_ngram, banned_tokens=banned_tokens, normalize_q=normalize_q,
                    leaf_value=leaf_value)
    if max_new_tokens == 0:
        return [Decoded([], [], [], [], 0) for _ in prompts]
    s, trees = start(scorer, prompts, p, leaf_batch, pool)
    while not all(t.done for t in trees):
        simulate(s, trees, n=leaf_batch)
        # a tree commits as soon as its own simulations are done, without waiting for the other trees: each
        # tree's search is what it would be alone, and every round's forward gets a row from every open tree
        commit([t for t in trees if not t.done and t.simulations >= simulations], s.pool)
    return scorer.finish(prompts, [[n.token for n in t.committed] for t in trees],
                         [[n.policy_logp for n in t.committed] for t in trees],
                         [[n.reference_logp for n in t.committed] for t in trees], s.counter)
