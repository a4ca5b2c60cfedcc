"""Token-by-token generation over a `PairState`: greedy, sampling, best-of-N — and the `extend` step that
chunk-level beam search reuses.

Every token is drawn from a proposal distribution (the policy, or for best-of-N and CBS optionally the
reference) restricted to the candidate support of `search.scoring` (special tokens other than EOS never;
top-k / top-p of the proposal). The token loop is `tokendpo.generation.token_loop`, the one every generator
of the project runs: rows that emit EOS or reach `max_new_tokens` leave the batch at once (their cache rows are
dropped), so no position is run for a finished row. Greedy and sampling rank nothing, so they
search with the policy alone and the reference rescores each finished response in one pass
(`PairScorer.finish`); best-of-N needs both models' log-probs of every sample and steps them together (one
shared prompt prefill).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from search import scoring
from search.guards import ban_repeats, normalised
from search.scorer import Decoded, ForwardCounter, PairScorer, PairState
from tokendpo.generation import Sampler, token_loop


@dataclass
class Hypothesis:
    """A (partial) response of prompt `prompt`: generated ids and both models' log-probs of them."""

    prompt: int
    tokens: list[int] = field(default_factory=list)
    policy_logps: list[float] = field(default_factory=list)
    reference_logps: list[float] = field(default_factory=list)
    done: bool = False  # ended with EOS or at max_new_tokens

    def branch(self) -> Hypothesis:
        return Hypothesis(self.prompt, list(self.tokens), list(self.policy_logps), list(self.reference_logps))

    def score(self, beta: float, lam: float, length_norm: float = 0.0, length_penalty: float = 0.0) -> float:
        """β·Σ (log π − (1 − λ)·log π_ref) (`scoring.sequence_score`), then the length guard."""
        total = scoring.sequence_score(self.policy_logps, self.reference_logps, lam, beta)
        return normalised(total, len(self.tokens), length_norm, length_penalty)


def proposal_logps(state: PairState, proposal: str) -> torch.Tensor:
    """(R, V) next-token log-probs of the proposal model."""
    if proposal == "policy":
        return state.policy_logps
    if proposal == "reference":
        if not state.has_reference:
            raise ValueError("proposal 'reference' needs a state prefilled with the reference")
        return state.reference_logps
    raise ValueError(f"proposal must be one of {scoring.PROPOSALS}, got {proposal!r}")


def extend(scorer: PairScorer, state: PairState, hyps: list[Hypothesis], counter: ForwardCounter, *, steps: int,
           max_new_tokens: int, eos_token_id: int, greedy: bool, temperature: float = 1.0,
           generator: torch.Generator | None = None, no_repeat_ngram: int = 0, proposal: str = "policy",
           top_k: int = 0, top_p: float = 1.0, banned_tokens: Sequence[int] = (),
           ) -> tuple[PairState | None, list[Hypothesis]]:
    """Add up to `steps` tokens to each hypothesis (row i of `state` continues hyps[i], in place).

    `tokendpo.generation.token_loop` over `PairScorer` steps: each token is the argmax, or a sample at
    `temperature` on `generator`, of the proposal within the support — not in `banned_tokens`, no repeated
    n-gram, inside top-k / top-p (`scoring.candidate_mask`); both models' log-probs of it are recorded.
    Returns the state of the rows still open after `steps` tokens (their next-token distributions are
    computed, ready for the next call) and their hypotheses in row order; None, [] when every row ended.
    """
    sampler = Sampler(greedy=greedy, temperature=1.0 if greedy else temperature, top_k=top_k, top_p=top_p,
                      banned=tuple(banned_tokens))

    def choose(st: PairState, alive: list[int]) -> torch.Tensor:
        prop = proposal_logps(st, proposal)  # (R, V)
        if no_repeat_ngram:
            prop = ban_repeats(prop, [hyps[i].tokens for i in alive], no_repeat_ngram)  # before top-k, as HF
        tok = sampler.pick(prop, generator=generator)  # (R,)
        chosen_lp = st.policy_logps.gather(1, tok[:, None]).squeeze(1).tolist()
        chosen_lr = st.reference_logps.gather(1, tok[:, None]).squeeze(1).tolist() if st.has_reference else None
        for r, i in enumerate(alive):
            hyps[i].policy_logps.append(chosen_lp[r])
            if chosen_lr is not None:
                hyps[i].reference_logps.append(chosen_lr[r])
        return tok

    before = [len(h.tokens) for h in hyps]
    state, alive = token_loop(state, [h.tokens for h in hyps], steps=steps, max_new_tokens=max_new_tokens,
                              eos_token_id=eos_token_id, choose=choose,
                              step=lambda st, tok: scorer.step(st, tok, counter), select=scorer.select)
    for h, n in zip(hyps, before):
        if len(h.tokens) > n:
            h.done = h.tokens[-1] == eos_token_id or len(h.tokens) >= max_new_tokens
    return state, [hyps[i] for i in alive]


def _empty(n: int) -> list[Decoded]:
    return [Decoded([], [], [], [], 0) for _ in range(n)]


def sample(scorer: PairScorer, prompts: list[list[int]], *, max_new_tokens: int, eos_token_id: int,
           greedy: bool = False, temperature: float = 1.0, generator: torch.Generator | None = None,
           no_repeat_ngram: int = 0, top_k: int | None = None, top_p: float | None = None,
           banned_tokens: Sequence[int] = ()) -> list[Decoded]:
    """Ancestral sampling from the policy at `temperature` (or greedy) within the support (default:
    unrestricted, `scoring.SUPPORT_DEFAULTS`); the reference rescores the results (no pass when the reference
    is the policy object itself: its log-probs are the policy's, every token reward 0)."""
    if max_new_tokens == 0:
        return _empty(len(prompts))
    top_k, top_p = scoring.resolve_support("greedy" if greedy else "sample", "likelihood", top_k, top_p)
    counter = ForwardCounter(len(prompts))
    state = scorer.prefill(prompts, counter, with_reference=False)
    hyps = [Hypothesis(i) for i in range(len(prompts))]
    extend(scorer, state, hyps, counter, steps=max_new_tokens, max_new_tokens=max_new_tokens,
           eos_token_id=eos_token_id, greedy=greedy, temperature=temperature, generator=generator,
           no_repeat_ngram=no_repeat_ngram, top_k=top_k, top_p=top_p, banned_tokens=banned_tokens)
    # π_ref is π itself (e.g. sampling pairs from a base model): its log-probs are known, skip the rescoring pass
    same = scorer.reference is scorer.policy
    return scorer.finish(prompts, [h.tokens for h in hyps], [h.policy_logps for h in hyps],
                         [list(h.policy_logps) for h in hyps] if same else None, counter)


def greedy(scorer: PairScorer, prompts: list[list[int]], *, max_new_tokens: int, eos_token_id: int,
           no_repeat_ngram: int = 0, banned_tokens: Sequence[int] = ()) -> list[Decoded]:
    """Argmax decoding with the policy over the allowed tokens (the search score is irrelevant: one candidate)."""
    return sample(scorer, prompts, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, greedy=True,
                  no_repeat_ngram=no_repeat_ngram, banned_tokens=banned_tokens)


def default_proposal(score: str) -> str:
    """Best-of-N / CBS proposal when none is given: the reference for implicit and mixed scores
    (weak-to-strong search: sample the untuned model, let the ratio rank), the policy for likelihood."""
    return "policy" if score == "likelihood" else "reference"


def best_of_n(scorer: PairScorer, prompts: list[list[int]], *, n: int, max_new_tokens: int, eos_token_id: int,
              score: str = "likelihood", ref_weight: float | None = None, proposal: str | None = None,
              temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
              banned_tokens: Sequence[int] = (), generator: torch.Generator | None = None,
              length_norm: float = 0.0, length_penalty: float = 0.0, no_repeat_ngram: int = 0) -> list[Decoded]:
    """N samples per prompt from the proposal; return the one with the best summed (or length-normalised)
    score β·Σ (log π − (1 − λ)·log π_ref) (`search.scoring`). Ties go to the earliest sample.

    The prompt is prefilled once per model and its cache fanned out N ways.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if max_new_tokens == 0:
        return _empty(len(prompts))
    lam = scoring.ref_weight(score, ref_weight)
    proposal = default_proposal(score) if proposal is None else proposal
    top_k, top_p = scoring.resolve_support("bon", score, top_k, top_p)
    counter = ForwardCounter(len(prompts))
    state = scorer.prefill(prompts, counter)
    fan = torch.arange(len(prompts)).repeat_interleave(n)  # (B·N,) row → prompt
    state = scorer.select(state, fan)
    hyps = [Hypothesis(int(p)) for p in fan]
    extend(scorer, state, hyps, counter, steps=max_new_tokens, max_new_tokens=max_new_tokens,
           eos_token_id=eos_token_id, greedy=False, temperature=temperature, generator=generator,
           no_repeat_ngram=no_repeat_ngram, proposal=proposal, top_k=top_k, top_p=top_p,
           banned_tokens=banned_tokens)
    best = []
    for i in range(len(prompts)):
        group = hyps[i * n:(i + 1) * n]
        scores = [h.score(scorer.beta, lam, length_norm, length_penalty) for h in group]
        best.append(group[max(range(n), key=lambda j: (scores[j], -j))])
    return scorer.finish(prompts, [h.tokens for h in best], [h.policy_logps for h in best],
                         [h.reference_logps for h in best], counter)
