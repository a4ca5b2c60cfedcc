"""Token-by-token generation over a `PairState`: greedy, sampling, best-of-N — and the `extend` step that
chunk-level beam search reuses.

Rows that emit EOS or reach `max_new_tokens` leave the batch at once (their cache rows are dropped), so no
position is run for a finished row. Greedy and sampling rank nothing, so they search with the policy alone
and the reference rescores each finished response in one pass (`PairScorer.finish`); best-of-N needs the
implicit reward of every sample and steps both models together (one shared prompt prefill).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from search.guards import ban_repeats, normalised
from search.scorer import Decoded, ForwardCounter, PairScorer, PairState


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

    def score(self, beta: float, score: str, length_norm: float = 0.0, length_penalty: float = 0.0) -> float:
        """Σ β·(log π − log π_ref) (implicit) or Σ β·log π (likelihood), then the length guard."""
        lp = sum(self.policy_logps)
        total = beta * (lp - sum(self.reference_logps)) if score == "implicit" else beta * lp
        return normalised(total, len(self.tokens), length_norm, length_penalty)


def pick_tokens(logps: torch.Tensor, *, greedy: bool, temperature: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """(R, V) log-probs → (R,) ids: argmax, or a sample from softmax(logp / T) on the CPU generator."""
    if greedy:
        return logps.argmax(-1)
    probs = torch.softmax(logps.float().cpu() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logps.device)


def extend(scorer: PairScorer, state: PairState, hyps: list[Hypothesis], counter: ForwardCounter, *, steps: int,
           max_new_tokens: int, eos_token_id: int, greedy: bool, temperature: float = 1.0,
           generator: torch.Generator | None = None, no_repeat_ngram: int = 0,
           ) -> tuple[PairState | None, list[Hypothesis]]:
    """Add up to `steps` tokens to each hypothesis (row i of `state` continues hyps[i], in place).

    Returns the state of the rows still open after `steps` tokens (their next-token distributions are
    computed, ready for the next call) and their hypotheses in row order; None, [] when every row ended.
    """
    rows = list(hyps)
    for _ in range(steps):
        lp = state.policy_logps  # (R, V)
        search_lp = ban_repeats(lp, [h.tokens for h in rows], no_repeat_ngram) if no_repeat_ngram else lp
        tok = pick_tokens(search_lp, greedy=greedy, temperature=temperature, generator=generator)  # (R,)
        chosen_lp = lp.gather(1, tok[:, None]).squeeze(1).tolist()
        chosen_lr = (state.reference_logps.gather(1, tok[:, None]).squeeze(1).tolist()
                     if state.has_reference else None)
        keep = []
        for r, (h, t) in enumerate(zip(rows, tok.tolist())):
            h.tokens.append(t)
            h.policy_logps.append(chosen_lp[r])
            if chosen_lr is not None:
                h.reference_logps.append(chosen_lr[r])
            h.done = t == eos_token_id or len(h.tokens) >= max_new_tokens
            if not h.done:
                keep.append(r)
        if not keep:
            return None, []
        if len(keep) < len(rows):  # drop finished rows before running the next position
            idx = torch.tensor(keep)
            state, tok, rows = scorer.select(state, idx), tok[idx.to(tok.device)], [rows[r] for r in keep]
        state = scorer.step(state, tok, counter)
    return state, rows


def _empty(n: int) -> list[Decoded]:
    return [Decoded([], [], [], [], 0) for _ in range(n)]


def sample(scorer: PairScorer, prompts: list[list[int]], *, max_new_tokens: int, eos_token_id: int,
           greedy: bool = False, temperature: float = 1.0, generator: torch.Generator | None = None,
           no_repeat_ngram: int = 0) -> list[Decoded]:
    """Ancestral sampling at `temperature` (or greedy), policy only; the reference rescores the results."""
    if max_new_tokens == 0:
        return _empty(len(prompts))
    counter = ForwardCounter(len(prompts))
    state = scorer.prefill(prompts, counter, with_reference=False)
    hyps = [Hypothesis(i) for i in range(len(prompts))]
    extend(scorer, state, hyps, counter, steps=max_new_tokens, max_new_tokens=max_new_tokens,
           eos_token_id=eos_token_id, greedy=greedy, temperature=temperature, generator=generator,
           no_repeat_ngram=no_repeat_ngram)
    return scorer.finish(prompts, [h.tokens for h in hyps], [h.policy_logps for h in hyps], None, counter)


def greedy(scorer: PairScorer, prompts: list[list[int]], *, max_new_tokens: int, eos_token_id: int,
           no_repeat_ngram: int = 0) -> list[Decoded]:
    """Argmax decoding with the policy (the search score is irrelevant: there is one candidate)."""
    return sample(scorer, prompts, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, greedy=True,
                  no_repeat_ngram=no_repeat_ngram)


def best_of_n(scorer: PairScorer, prompts: list[list[int]], *, n: int, max_new_tokens: int, eos_token_id: int,
              score: str = "implicit", temperature: float = 1.0, generator: torch.Generator | None = None,
              length_norm: float = 0.0, length_penalty: float = 0.0, no_repeat_ngram: int = 0) -> list[Decoded]:
    """N samples per prompt; return the one with the best summed (or length-normalised) score.

    Ties go to the earliest sample. The prompt is prefilled once per model and its cache fanned out N ways.
    """
    if max_new_tokens == 0:
        return _empty(len(prompts))
    counter = ForwardCounter(len(prompts))
    state = scorer.prefill(prompts, counter)
    fan = torch.arange(len(prompts)).repeat_interleave(n)  # (B·N,) row → prompt
    state = scorer.select(state, fan)
    hyps = [Hypothesis(int(p)) for p in fan]
    extend(scorer, state, hyps, counter, steps=max_new_tokens, max_new_tokens=max_new_tokens,
           eos_token_id=eos_token_id, greedy=False, temperature=temperature, generator=generator,
           no_repeat_ngram=no_repeat_ngram)
    best = []
    for i in range(len(prompts)):
        group = hyps[i * n:(i + 1) * n]
        scores = [h.score(scorer.beta, score, length_norm, length_penalty) for h in group]
        best.append(group[max(range(n), key=lambda j: (scores[j], -j))])
    return scorer.finish(prompts, [h.tokens for h in best], [h.policy_logps for h in best],
                         [h.reference_logps for h in best], counter)
