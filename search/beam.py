"""Beam search over summed token scores, and chunk-level beam search (CBS) over sampled chunks.

Beam search follows transformers' `generate(num_beams=K, do_sample=False, early_stopping=False)` step for
step, so that with `score="likelihood"` and `length_norm=0` it returns exactly its top sequence (the oracle
test). Per step, with running scores S_k (summed over the beam's tokens, S = 0 for beam 0 and −1e9 for the
others at the start, so the K identical prompt rows yield one beam's candidates):

    cand(k, a) = S_k + s(a | beam k)                                  s = log π            (likelihood)
                                                                      s = log π − log π_ref (implicit)
    take the top 2K candidates over all (k, a);
    a candidate among the first K that ends (EOS, or the last allowed token) joins the finished set with
    score cand / (generated length)**length_norm; the finished set keeps its best K;
    the best K candidates that did not end become the next beams (caches reordered to them);
    a prompt stops once its K finished slots are full and best running S / length**length_norm cannot beat
    the worst finished score (HF's `early_stopping=False` heuristic, exact when length_norm = 0 because
    scores only fall).

Scores are kept in nats (β divides out of every ranking), so the ranking is bit-for-bit HF's; a
`length_penalty` λ in reward units is subtracted as λ/β nats per token. Likelihood search needs no reference:
it runs the policy alone and rescores the winner with π_ref once.
"""

from __future__ import annotations

import torch

from search.guards import ban_repeats
from search.sampling import Hypothesis, extend
from search.scorer import Decoded, ForwardCounter, PairScorer

NEG = -1.0e9  # HF's "impossible" score offset


def beam_search(scorer: PairScorer, prompts: list[list[int]], *, num_beams: int, max_new_tokens: int,
                eos_token_id: int, score: str = "implicit", length_norm: float = 0.0, length_penalty: float = 0.0,
                no_repeat_ngram: int = 0) -> list[Decoded]:
    """Beam search with K beams per prompt, batched over prompts; see the module docstring for the steps."""
    B, K = len(prompts), num_beams
    if max_new_tokens == 0:
        return [Decoded([], [], [], [], 0) for _ in range(B)]
    counter = ForwardCounter(B)
    implicit = score == "implicit"
    state = scorer.prefill(prompts, counter, with_reference=implicit)
    state = scorer.select(state, torch.arange(B).repeat_interleave(K))  # K identical rows per prompt
    dev = state.policy_logps.device
    running = torch.zeros(B, K, device=dev)
    running[:, 1:] = NEG
    hist_tok = torch.zeros(B * K, 0, dtype=torch.long, device=dev)  # (R, t) generated ids per row
    hist_lp = torch.zeros(B * K, 0, device=dev)  # (R, t) log π of them
    hist_lr = torch.zeros(B * K, 0, device=dev)  # (R, t) log π_ref (implicit search only)
    finished: list[list[tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]]] = [[] for _ in range(B)]
    alive = list(range(B))  # prompts still searching, in row-block order
    penalty = length_penalty / scorer.beta  # nats per token
    for t in range(max_new_tokens):
        b, V = len(alive), state.policy_logps.shape[-1]
        step = state.policy_logps - state.reference_logps if implicit else state.policy_logps  # (b·K, V)
        if no_repeat_ngram:
            step = ban_repeats(step, hist_tok.tolist(), no_repeat_ngram)
        if penalty:
            step = step - penalty
        cand = (running[:, :, None] + step.view(b, K, V)).view(b, K * V)
        top_s, top_i = cand.topk(2 * K, dim=1)  # (b, 2K), sorted
        src, tok = top_i // V, top_i % V  # beam of origin, token
        last = t + 1 == max_new_tokens
        ends = (tok == eos_token_id) | last  # (b, 2K)
        rows = torch.arange(b, device=dev)[:, None] * K + src  # (b, 2K) flat row of origin

        for j, c in (ends[:, :K]).nonzero().tolist():  # only the top K candidates may finish
            r, a = rows[j, c], tok[j, c]
            lp_c = state.policy_logps[r, a]
            lr_c = state.reference_logps[r, a] if implicit else lp_c
            fin = finished[alive[j]]
            fin.append((float(top_s[j, c]) / (t + 1) ** length_norm, torch.cat([hist_tok[r], a[None]]),
                        torch.cat([hist_lp[r], lp_c[None]]), torch.cat([hist_lr[r], lr_c[None]])))
            fin.sort(key=lambda f: -f[0])  # stable: earlier entries win ties
            del fin[K:]
        if last:
            break
        # next beams: the best K candidates that did not end
        nxt = (top_s + ends.float() * NEG).topk(K, dim=1).indices  # (b, K)
        running = top_s.gather(1, nxt)
        sel_rows, sel_tok = rows.gather(1, nxt).view(-1), tok.gather(1, nxt).view(-1)  # (b·K,)
        lp_new = state.policy_logps[sel_rows, sel_tok]
        lr_new = state.reference_logps[sel_rows, sel_tok] if implicit else lp_new
        hist_tok = torch.cat([hist_tok[sel_rows], sel_tok[:, None]], dim=1)
        hist_lp = torch.cat([hist_lp[sel_rows], lp_new[:, None]], dim=1)
        hist_lr = torch.cat([hist_lr[sel_rows], lr_new[:, None]], dim=1)
        # HF early_stopping=False: stop once no running beam can enter the full finished set
        best_possible = running[:, 0] / (t + 1) ** length_norm
        keep = [j for j in range(b) if len(finished[alive[j]]) < K
                or float(best_possible[j]) > finished[alive[j]][-1][0]]
        if not keep:
            break
        if len(keep) < b:
            keep_rows = (torch.tensor(keep, device=dev)[:, None] * K + torch.arange(K, device=dev)).view(-1)
            running, sel_rows, sel_tok = running[keep], sel_rows[keep_rows], sel_tok[keep_rows]
            hist_tok, hist_lp, hist_lr = hist_tok[keep_rows], hist_lp[keep_rows], hist_lr[keep_rows]
            alive = [alive[j] for j in keep]
        if len(sel_rows) != state.rows or not torch.equal(sel_rows, torch.arange(state.rows, device=dev)):
            state = scorer.select(state, sel_rows)  # reorder the caches to the surviving beams
        state = scorer.step(state, sel_tok, counter)
    best = [fin[0] for fin in finished]
    return scorer.finish(prompts, [f[1].tolist() for f in best], [f[2].tolist() for f in best],
                         [f[3].tolist() for f in best] if implicit else None, counter)


def chunk_beam_search(scorer: PairScorer, prompts: list[list[int]], *, width: int, samples: int, chunk: int,
                      max_new_tokens: int, eos_token_id: int, score: str = "implicit", temperature: float = 1.0,
                      generator: torch.Generator | None = None, length_norm: float = 0.0,
                      length_penalty: float = 0.0, no_repeat_ngram: int = 0) -> list[Decoded]:
    """Chunk-level beam search (weak-to-strong search, Zhou et al. 2024): W beams, K samples, L-token chunks.

    Round 0 samples W·K chunks from the prompt; every later round samples K chunks from each open beam. The
    pool — new chunks plus beams that already ended — is ranked per prompt by the summed implicit reward of
    the whole partial response (a prefix's summed log-ratio is "reward so far + value to go"), optionally
    length-normalised, and the best W survive. A prompt ends when all its W survivors have ended; the best
    survivor is returned.
    """
    B = len(prompts)
    if max_new_tokens == 0:
        return [Decoded([], [], [], [], 0) for _ in range(B)]
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
                                   temperature=temperature, generator=generator, no_repeat_ngram=no_repeat_ngram)
        row_of = {id(h): r for r, h in enumerate(still_open)}
        pools: list[list[Hypothesis]] = [list(kept_done[i]) for i in range(B)]
        for h in children:
            pools[h.prompt].append(h)
        keep_rows, next_open = [], []
        for i, pool in enumerate(pools):
            if not pool:
                continue
            ranked = sorted(pool, key=lambda h: -h.score(scorer.beta, score, length_norm, length_penalty))
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
