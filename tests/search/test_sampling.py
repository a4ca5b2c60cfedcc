"""Greedy against transformers' generate; sampling frequencies against the table distribution; best-of-N."""

import math

import pytest
import torch

from search.sampling import best_of_n, greedy, sample
from search.scorer import PairScorer
from search.scoring import banned_token_ids


def hf_greedy(model, prompt, max_new, eos, pad, suppress=None):
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         do_sample=False, max_new_tokens=max_new, eos_token_id=eos, pad_token_id=pad,
                         suppress_tokens=suppress)
    ids = out[0, len(prompt):].tolist()
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def test_greedy_equals_transformers(eos_policy, reference, tokenizer, make_prompts):
    scorer = PairScorer(eos_policy, reference, beta=0.1, pad_token_id=tokenizer.pad_token_id)
    prompts = make_prompts(8, seed=41)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ours = greedy(scorer, prompts, max_new_tokens=12, eos_token_id=eos)
    assert [d.token_ids for d in ours] == [hf_greedy(eos_policy, p, 12, eos, pad) for p in prompts]
    banned = banned_token_ids(tokenizer)
    ours = greedy(scorer, prompts, max_new_tokens=12, eos_token_id=eos, banned_tokens=banned)
    assert [d.token_ids for d in ours] == [hf_greedy(eos_policy, p, 12, eos, pad, banned) for p in prompts]


def test_sampling_is_seeded(scorer, tokenizer, make_prompts):
    prompts = make_prompts(3, seed=42)
    def run(seed):
        return [d.token_ids for d in sample(scorer, prompts, max_new_tokens=8, eos_token_id=tokenizer.eos_token_id,
                                            generator=torch.Generator().manual_seed(seed))]

    assert run(1) == run(1)
    assert run(1) != run(2)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sample_frequencies(table_lm, temperature):
    """First-token frequencies over 3000 draws match softmax(log p / T) within 4 standard errors."""
    probs = torch.tensor([0.05, 0.15, 0.5, 0.3])
    lm = table_lm({(0,): probs.log().tolist()}, 4)
    scorer = PairScorer(lm, lm, beta=1.0, pad_token_id=0)
    n = 3000
    out = sample(scorer, [[0]] * n, max_new_tokens=1, eos_token_id=1, temperature=temperature,
                 generator=torch.Generator().manual_seed(3))
    counts = torch.bincount(torch.tensor([d.token_ids[0] for d in out]), minlength=4).double()
    target = torch.softmax(probs.double().log() / temperature, 0)
    se = (target * (1 - target) / n).sqrt()
    assert ((counts / n - target).abs() < 4 * se).all(), (counts / n, target)


@pytest.mark.parametrize("score,lam,length_norm", [("implicit", 0.0, 0.0), ("implicit", 0.0, 1.0),
                                                  ("likelihood", 1.0, 0.0), ("mixed", 0.4, 0.0)])
def test_best_of_n_picks_the_best_sample(scorer, policy, reference, tokenizer, make_prompts, rescore, score, lam,
                                         length_norm):
    """The same N draws made by plain sampling from the policy (same generator, same row order), rescored
    independently: best-of-N returns the one with the highest summed (or per-token) score
    β·Σ (log π − (1 − λ)·log π_ref) — the ratio counted once."""
    prompts, n, beta = make_prompts(3, seed=43), 5, scorer.beta
    eos = tokenizer.eos_token_id
    bon = best_of_n(scorer, prompts, n=n, max_new_tokens=8, eos_token_id=eos, length_norm=length_norm,
                    score=score, ref_weight=lam if score == "mixed" else None, proposal="policy", top_k=0,
                    generator=torch.Generator().manual_seed(9))
    draws = sample(scorer, [p for p in prompts for _ in range(n)], max_new_tokens=8, eos_token_id=eos,
                   generator=torch.Generator().manual_seed(9))
    for i, p in enumerate(prompts):
        group = [d.token_ids for d in draws[i * n:(i + 1) * n]]
        scores = [float(beta * (rescore(policy, p, g) - (1 - lam) * rescore(reference, p, g)).sum())
                  / len(g) ** length_norm for g in group]
        assert len(set(map(tuple, group))) > 1  # the choice was not trivial
        assert bon[i].token_ids == group[max(range(n), key=lambda j: (scores[j], -j))]


def test_no_repeat_ngram_breaks_loops(scorer, tokenizer, make_prompts):
    """Greedy on a random tiny Llama loops; with no_repeat_ngram=2 no bigram occurs twice in a response."""
    prompts = make_prompts(4, seed=44)

    def repeats(ids):
        grams = list(zip(ids, ids[1:]))
        return len(grams) - len(set(grams))

    eos = tokenizer.eos_token_id
    plain = greedy(scorer, prompts, max_new_tokens=40, eos_token_id=eos)
    guarded = greedy(scorer, prompts, max_new_tokens=40, eos_token_id=eos, no_repeat_ngram=2)
    assert sum(repeats(d.token_ids) for d in plain) > 0
    assert all(repeats(d.token_ids) == 0 for d in guarded)
    assert all(math.isfinite(r) for d in guarded for r in d.token_rewards)


@pytest.mark.parametrize("proposal", ["policy", "reference"])
def test_best_of_n_proposal_frequencies(table_lm, proposal):
    """best-of-1 is one draw from the proposal: first-token frequencies over 3000 prompts match the chosen
    model's distribution within 4 standard errors; with top_k=2 the two least likely tokens never appear."""
    pol_p, ref_p = torch.tensor([0.05, 0.15, 0.5, 0.3]), torch.tensor([0.4, 0.1, 0.2, 0.3])
    scorer = PairScorer(table_lm({(0,): pol_p.log().tolist()}, 4), table_lm({(0,): ref_p.log().tolist()}, 4),
                        beta=1.0, pad_token_id=0)
    n = 3000
    out = best_of_n(scorer, [[0]] * n, n=1, max_new_tokens=1, eos_token_id=1, score="implicit", proposal=proposal,
                    top_k=0, generator=torch.Generator().manual_seed(8))
    counts = torch.bincount(torch.tensor([d.token_ids[0] for d in out]), minlength=4).double()
    target = (pol_p if proposal == "policy" else ref_p).double()
    se = (target * (1 - target) / n).sqrt()
    assert ((counts / n - target).abs() < 4 * se).all(), (counts / n, target)
    out = best_of_n(scorer, [[0]] * 300, n=1, max_new_tokens=1, eos_token_id=1, score="implicit", proposal=proposal,
                    top_k=2, generator=torch.Generator().manual_seed(8))
    allowed = set(target.topk(2).indices.tolist())
    assert {d.token_ids[0] for d in out} == allowed


def test_sample_top_p_and_banned(table_lm):
    """Sampling within top-p 0.75 of [0.05, 0.15, 0.5, 0.3] keeps {2, 3}; banning 2 leaves the nucleus of the
    renormalised rest, [0.1, 0.3, –, 0.6] → {1, 3}."""
    probs = torch.tensor([0.05, 0.15, 0.5, 0.3])
    lm = table_lm({(0,): probs.log().tolist()}, 4)
    scorer = PairScorer(lm, lm, beta=1.0, pad_token_id=0)
    seen = {d.token_ids[0] for d in sample(scorer, [[0]] * 400, max_new_tokens=1, eos_token_id=1, top_p=0.75,
                                           generator=torch.Generator().manual_seed(1))}
    assert seen == {2, 3}
    seen = {d.token_ids[0] for d in sample(scorer, [[0]] * 400, max_new_tokens=1, eos_token_id=1, top_p=0.75,
                                           banned_tokens=[2], generator=torch.Generator().manual_seed(1))}
    assert seen == {1, 3}
