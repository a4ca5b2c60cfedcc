"""Beam search over summed token scores, and chunk-level beam search (CBS) over sampled chunks.

Both rank by the score family of `search.scoring` (s_t/β = log π − (1 − λ)·log π_ref; implicit λ = 0,
likelihood λ = 1) over its candidate support (no special tokens but EOS; top-k / top-p of the policy).

Beam search follows transformers' `generate(num_beams=K, do_sample=False, early_stopping=False)` step for
step, so that with `score="likelihood"`, the same banned ids as `suppress_tokens=` and `length_norm=0` it
returns exactly its top sequence (the oracle test). Per step, with running scores S_k (summed over the beam's
tokens, S = 0 for beam 0 and −1e9 for the others at the start, so the K identical prompt rows yield one beam's
candidates):

    cand(k, a) = S_k + s(a | beam k)/β          for a in the support of beam k, −inf elsewhere
    take the top 2K candidates over all (k, a);
    a (real, > −1e9/2) candidate among the first K that ends (EOS, or the last allowed token) joins the
    finished set with score cand / (generated length)**length_norm; the finished set keeps its best K;
    the best K candidates that did not end become the next beams (caches reordered to them; when the support
    leaves fewer than K real ones, the rest are dead beams at −2e9 that can never finish);
    early stop of a prompt:
      - scores that only fall (λ = 1: every s_t = β·log π ≤ 0, and length_penalty ≥ 0): once its K finished
        slots are full and the best running S / length**length_norm cannot beat the worst finished score
        (HF's `early_stopping=False` heuristic; exact when length_norm = 0);
      - scores that can rise (λ < 1: log π − (1 − λ)·log π_ref can be > 0): never on a bound — a running beam
        may still overtake every finished one — so beams run to EOS or max_new_tokens;
      - either way, once no running beam is real (all ≤ −1e9/2): nothing can join the finished set.

Scores are kept in nats (β divides out of every ranking), so the ranking is bit-for-bit HF's; a
`length_penalty` in reward units is subtracted as length_penalty/β nats per token. At λ = 1 the search runs
the policy alone and rescores the winner with π_ref once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from search import scoring
from search.guards import ban_repeats
from search.sampling import Hypothesis, default_proposal, extend
from search.scorer import Decoded, ForwardCounter, PairScorer

NEG = -1.0e9  # HF's "impossible" score offset


@dataclass(frozen=True)
class _Beams:
    """The running beams of the prompts still searching: K rows per prompt, prompts in row-block order."""

    scores: torch.Tensor  # (b, K) running S_k in nats, best first
    tokens: torch.Tensor  # (b·K, t) generated ids per beam
    policy_logps: torch.Tensor  # (b·K, t) log π of them
    reference_logps: torch.Tensor  # (b·K, t) log π_ref of them (= policy_logps when the score does not read it)
    origin: torch.Tensor  # (b·K,) the row of the scorer state each beam extends
    alive: list[int]  # (b,) the prompt of each block of K rows


class _Ranked(NamedTuple):
    """Each prompt's top 2K candidates (k, a), best first; every field (b, 2K)."""

    scores: torch.Tensor  # cand(k, a) = S_k + s(a | beam k)/β, nats
    tokens: torch.Tensor  # a
    rows: torch.Tensor  # the flat row of beam k
    ends: torch.Tensor  # a is EOS, or the last allowed token
    real: torch.Tensor  # > −1e9/2: not from a −1e9 start beam, a dead beam, nor outside the support


def beam_search(scorer: PairScorer, prompts: list[list[int]], *, num_beams: int, max_new_tokens: int,
                eos_token_id: int, score: str = "likelihood", ref_weight: float | None = None,
                top_k: int | None = None, top_p: float | None = None, banned_tokens: Sequence[int] = (),
                length_norm: float = 0.0, length_penalty: float = 0.0, no_repeat_ngram: int = 0) -> list[Decoded]:
    """Beam search with K beams per prompt, batched over prompts; see the module docstring for the steps:
    expand every beam by its support → rank the top 2K → the ending ones join the finished set → the best K
    that did not end run on → drop the prompts that can gain nothing more.

    top_k / top_p None: the default support of `score` (`scoring.SUPPORT_DEFAULTS`: likelihood unrestricted,
    implicit and mixed `scoring.GUIDED_SUPPORT`). `banned_tokens`: `scoring.banned_token_ids(tokenizer)`.
    """
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    B, K = len(prompts), num_beams
    if max_new_tokens == 0:
        return [Decoded([], [], [], [], 0) for _ in range(B)]
    lam = scoring.ref_weight(score, ref_weight)
    top_k, top_p = scoring.resolve_support("beam", score, top_k, top_p)
    support = dict(top_k=top_k, top_p=top_p, banned=banned_tokens)
    use_ref = scoring.needs_reference(lam)
    can_rise = use_ref or length_penalty < 0
    counter = ForwardCounter(B)
    state = scorer.prefill(prompts, counter, with_reference=use_ref)
    state = scorer.select(state, torch.arange(B).repeat_interleave(K))  # K identical rows per prompt
    dev = state.policy_logps.device
    running = torch.zeros(B, K, device=dev)
    running[:, 1:] = NEG  # the K rows are identical: only beam 0's candidates may compete at t = 0
    empty = torch.zeros(B * K, 0, device=dev)
    beams = _Beams(running, empty.long(), empty, empty, torch.arange(B * K, device=dev), list(range(B)))
    finished: list[list[tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]]] = [[] for _ in range(B)]
    penalty = length_penalty / scorer.beta  # nats per token
    for t in range(max_new_tokens):
        cand = _expand(beams, state, lam, support, no_repeat_ngram, penalty)  # (b, K·V)
        last = t + 1 == max_new_tokens
        ranked = _rank(cand, K, state.policy_logps.shape[-1], eos_token_id, last)
        _collect_finished(finished, beams, state, ranked, t, length_norm, use_ref)
        if last:
            break
        beams = _advance(beams, state, ranked, use_ref)
        keep = _still_searching(beams, finished, t, length_norm, can_rise)
        if not keep:
            break
        beams = _keep(beams, keep)
        if len(beams.origin) != state.rows or not torch.equal(beams.origin, torch.arange(state.rows, device=dev)):
            state = scorer.select(state, beams.origin)  # reorder the caches to the surviving beams
        state = scorer.step(state, beams.tokens[:, -1].contiguous(), counter)  # the appended tokens (b·K,)
    best = [fin[0] for fin in finished]
    return scorer.finish(prompts, [f[1].tolist() for f in best], [f[2].tolist() for f in best],
                         [f[3].tolist() for f in best] if use_ref else None, counter)


def _expand(beams: _Beams, state, lam: float, support: dict, no_repeat_ngram: int, penalty: float) -> torch.Tensor:
    """cand(k, a) = S_k + s(a | beam k)/β − penalty for a in the support of beam k, −inf elsewhere: (b, K·V)."""
    b, K = beams.scores.shape
    V = state.policy_logps.shape[-1]
    step = scoring.token_scores(state.policy_logps, state.reference_logps, lam)  # (b·K, V) nats
    if no_repeat_ngram:
        step = ban_repeats(step, beams.tokens.tolist(), no_repeat_ngram)
    step = scoring.restrict(step, scoring.candidate_mask(state.policy_logps, **support))
    if penalty:
        step = step - penalty
    return (beams.scores[:, :, None] + step.view(b, K, V)).view(b, K * V)


def _rank(cand: torch.Tensor, K: int, V: int, eos_token_id: int, last: bool) -> _Ranked:
    """The top 2K of each prompt's (b, K·V) candidates: enough for K that do not end even if K of them end."""
    top_s, top_i = cand.topk(2 * K, dim=1)  # (b, 2K), sorted
    src, tok = top_i // V, top_i % V  # beam of origin, token
    rows = torch.arange(cand.shape[0], device=cand.device)[:, None] * K + src  # (b, 2K) flat row of origin
    return _Ranked(top_s, tok, rows, (tok == eos_token_id) | last, top_s > NEG / 2)


def _collect_finished(finished: list[list[tuple]], beams: _Beams, state, ranked: _Ranked, t: int,
                      length_norm: float, use_ref: bool) -> None:
    """Each real candidate among a prompt's top K that ends joins its finished set, scored
    cand / (t + 1)**length_norm; the set keeps its best K (ties: the earlier entry). Updates `finished`."""
    K = beams.scores.shape[1]
    for j, c in (ranked.ends[:, :K] & ranked.real[:, :K]).nonzero().tolist():  # only the top K may finish
        r, a = ranked.rows[j, c], ranked.tokens[j, c]
        lp_c = state.policy_logps[r, a]
        lr_c = state.reference_logps[r, a] if use_ref else lp_c
        fin = finished[beams.alive[j]]
        fin.append((float(ranked.scores[j, c]) / (t + 1) ** length_norm, torch.cat([beams.tokens[r], a[None]]),
                    torch.cat([beams.policy_logps[r], lp_c[None]]), torch.cat([beams.reference_logps[r], lr_c[None]])))
        fin.sort(key=lambda f: -f[0])  # stable: earlier entries win ties
        del fin[K:]


def _advance(beams: _Beams, state, ranked: _Ranked, use_ref: bool) -> _Beams:
    """The next beams: each prompt's best K candidates that did not end, their token appended."""
    K = beams.scores.shape[1]
    nxt = (ranked.scores + ranked.ends.float() * NEG).topk(K, dim=1).indices  # (b, K)
    # with fewer than K real non-ending candidates (a small support) an ending or −inf one fills a slot:
    # it runs on as a dead beam (score ≤ −1e9, never finishes) instead of continuing past its EOS
    running = torch.where(ranked.ends.gather(1, nxt), torch.full_like(ranked.scores[:, :K], 2 * NEG),
                          ranked.scores.gather(1, nxt))
    rows, tok = ranked.rows.gather(1, nxt).view(-1), ranked.tokens.gather(1, nxt).view(-1)  # (b·K,)
    lp_new = state.policy_logps[rows, tok]
    lr_new = state.reference_logps[rows, tok] if use_ref else lp_new
    return _Beams(running, torch.cat([beams.tokens[rows], tok[:, None]], dim=1),
                  torch.cat([beams.policy_logps[rows], lp_new[:, None]], dim=1),
                  torch.cat([beams.reference_logps[rows], lr_new[:, None]], dim=1), rows, beams.alive)


def _still_searching(beams: _Beams, finished: list[list[tuple]], t: int, length_norm: float,
                     can_rise: bool) -> list[int]:
    """The blocks (prompts) whose search goes on; the early-stop rules are in the module docstring."""
    K = beams.scores.shape[1]
    best_running = beams.scores[:, 0]  # (b,) sorted: beam 0 is the best
    best_possible = best_running / (t + 1) ** length_norm
    keep = []
    for j, prompt in enumerate(beams.alive):
        fin = finished[prompt]
        if float(best_running[j]) <= NEG / 2 and fin:
            continue  # no real beam left: nothing can join the finished set
        if not can_rise and len(fin) == K and float(best_possible[j]) <= fin[-1][0]:
            continue  # HF early_stopping=False: scores only fall, no running beam can enter the set
        keep.append(j)
    return keep


def _keep(beams: _Beams, keep: list[int]) -> _Beams:
    """Only the blocks `keep` of the beams (all of them: unchanged)."""
    if len(keep) == len(beams.alive):
        return beams
    K, dev = beams.scores.shape[1], beams.scores.device
    rows = (torch.tensor(keep, device=dev)[:, None] * K + torch.arange(K, device=dev)).view(-1)
    return _Beams(beams.scores[keep], beams.tokens[rows], beams.policy_logps[rows], beams.reference_logps[rows],
                  beams.origin[rows], [beams.alive[j] for j in keep])


def chunk_beam_search(scorer: PairScorer, prompts: list[list[int]], *, width: int, samples: int, chunk: int,
                      max_new_tokens: int, eos_token_id: int, score: str = "likelihood",
                      ref_weight: float | None = None, proposal: str | None = None, temperature: float = 1.0,
                      top_k: int | None = None, top_p: float | None = None, banned_tokens: Sequence[int] = (),
                      generator: torch.Generator | None = None, length_norm: float = 0.0,
                      length_penalty: float = 0.0, no_repeat_ngram: int = 0) -> list[Decoded]:
    """Chunk-level beam search (weak-to-strong search, Zhou et al. 2024): W beams, K samples, L-token chunks.

    Round 0 samples W·K chunks from the prompt; every later round samples K chunks from each open beam, from
    the proposal (default: `sampling.default_proposal(score)`) within the support. The pool — new chunks plus
    beams that already ended — is ranked per prompt by the summed score of the whole partial response
    (`scoring.sequence_score`; a prefix's summed log-ratio is "reward so far + value to go"), optionally
    length-normalised, and the best W survive. A prompt ends when all its W survivors have ended; the best
    survivor is returned.
    """
    if min(width, samples, chunk) < 1:
        raise ValueError(f"width, samples and chunk must be >= 1, got {width}, {samples}, {chunk}")
    B = len(prompts)
    if max_new_tokens == 0:
        return [Decoded([], [], [], [], 0) for _ in range(B)]
    lam = scoring.ref_weight(score, ref_weight)
    proposal = default_proposal(score) if proposal is None else proposal
    top_k, top_p = scoring.resolve_support("cbs", score, top_k, top_p)
    counter = ForwardCounter(B)
    state = scorer.prefill(prompts, counter)
    open_hyps = [Hypothesis(i) for i in range(B)]  # rows of `state`
    fan = [width * samples] * B
    kept_done: list[list[Hypothesis]] = [[] for _ in range(B)]
    beams: list[list[Hypothesis]] = [[] for _ in range(B)]
    while open_hyps:
        idx = torch.tensor([r for r, h in enumerate(open_hyps) for _ in range(fan[h.prompt])])
        children = [open_hyps[r].branch() for r in idx.tolist()]
        state, still_open = extend(scorer, scorer.select(state, idx), children, counter, steps=chunk,
                                   max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, greedy=False,
                                   temperature=temperature, generator=generator, no_repeat_ngram=no_repeat_ngram,
                                   proposal=proposal, top_k=top_k, top_p=top_p, banned_tokens=banned_tokens)
        row_of = {id(h): r for r, h in enumerate(still_open)}
        pools: list[list[Hypothesis]] = [list(kept_done[i]) for i in range(B)]
        for h in children:
            pools[h.prompt].append(h)
        keep_rows, next_open = [], []
        for i, pool in enumerate(pools):
            if not pool:
                continue
            ranked = sorted(pool, key=lambda h: -h.score(scorer.beta, lam, length_norm, length_penalty))
            beams[i] = ranked[:width]
            kept_done[i] = [h for h in beams[i] if h.done]
            for h in beams[i]:
                if not h.done:
                    keep_rows.append(row_of[id(h)])
                    next_open.append(h)
        fan = [samples] * B
        open_hyps = next_open
        if open_hyps:
            state = scorer.select(state, torch.tensor(keep_rows))
    best = [beams[i][0] for i in range(B)]
    return scorer.finish(prompts, [h.tokens for h in best], [h.policy_logps for h in best],
                         [h.reference_logps for h in best], counter)
