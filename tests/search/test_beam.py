"""Beam search against transformers' generate (external oracle) and against exhaustive enumeration; CBS."""

import itertools
import math

import pytest
import torch

from search.beam import beam_search, chunk_beam_search
from search.sampling import best_of_n
from search.scorer import PairScorer
from search.scoring import banned_token_ids


def hf_beam(model, prompt, k, max_new, eos, pad, length_penalty, suppress=None):
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         num_beams=k, do_sample=False, length_penalty=length_penalty, max_new_tokens=max_new,
                         eos_token_id=eos, pad_token_id=pad, suppress_tokens=suppress)
    ids = out[0, len(prompt):].tolist()
    return ids[: ids.index(eos) + 1] if eos in ids else ids


@pytest.mark.parametrize("k,alpha", [(1, 0.0), (3, 0.0), (4, 0.0), (3, 1.0)])
def test_likelihood_beam_equals_transformers(eos_policy, reference, tokenizer, make_prompts, k, alpha):
    """--beam K --score likelihood == top sequence of generate(num_beams=K, do_sample=False,
    length_penalty=α) (early_stopping=False, HF's default), on an EOS-prone policy so hypotheses finish at
    many different steps; our prompts are decoded as one left-padded batch, HF's one by one."""
    scorer = PairScorer(eos_policy, reference, beta=0.1, pad_token_id=tokenizer.pad_token_id)
    prompts = make_prompts(10, seed=100 + k)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ours = beam_search(scorer, prompts, num_beams=k, max_new_tokens=14, eos_token_id=eos, score="likelihood",
                       length_norm=alpha)
    theirs = [hf_beam(eos_policy, p, k, 14, eos, pad, alpha) for p in prompts]
    assert [d.token_ids for d in ours] == theirs
    lengths = {len(t) for t in theirs}
    assert len(lengths) >= 2  # the oracle exercised EOS handling, not only max length


def test_likelihood_beam_long_equals_transformers(policy, reference, tokenizer, make_prompts):
    scorer = PairScorer(policy, reference, beta=0.1, pad_token_id=tokenizer.pad_token_id)
    prompts = make_prompts(3, seed=7)
    ours = beam_search(scorer, prompts, num_beams=4, max_new_tokens=24, eos_token_id=tokenizer.eos_token_id,
                       score="likelihood")
    theirs = [hf_beam(policy, p, 4, 24, tokenizer.eos_token_id, tokenizer.pad_token_id, 0.0) for p in prompts]
    assert [d.token_ids for d in ours] == theirs


EOS, V, MAX_NEW = 1, 4, 3


def random_table(seed):
    """Random logits for every prefix (BOS=0 first) a 3-token response can reach."""
    g = torch.Generator().manual_seed(seed)
    table = {}
    for n in range(MAX_NEW):
        for body in itertools.product([0, 2, 3], repeat=n):
            table[(0,) + body] = (2 * torch.randn(V, generator=g)).tolist()
    return table


def brute_force(pol, ref, score, beta, length_penalty, alpha):
    """Best complete response by enumeration: ends with EOS, or has MAX_NEW tokens."""
    def logp(table, prefix, tok):
        return float(torch.log_softmax(torch.tensor(table[prefix]), 0)[tok])

    best, best_s = None, -math.inf
    for n in range(1, MAX_NEW + 1):
        for seq in itertools.product(range(V), repeat=n):
            if EOS in seq[:-1] or (n < MAX_NEW and seq[-1] != EOS):
                continue
            prefixes = [(0,) + seq[:i] for i in range(n)]
            lp = sum(logp(pol, pre, t) for pre, t in zip(prefixes, seq))
            lr = sum(logp(ref, pre, t) for pre, t in zip(prefixes, seq))
            s = (lp - lr if score == "implicit" else lp) - length_penalty / beta * n
            s = s / n ** alpha
            if s > best_s:
                best, best_s = list(seq), s
    return best


@pytest.mark.parametrize("score,length_penalty,alpha", [("implicit", 0.0, 0.0), ("likelihood", 0.0, 0.0),
                                                        ("implicit", 0.2, 0.0), ("implicit", 0.0, 1.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_beam_is_exhaustive(table_lm, score, length_penalty, alpha, seed):
    """With K beams ≥ every partial response and an unrestricted support, beam search returns the enumerated
    optimum of its score."""
    pol, ref = random_table(seed), random_table(seed + 50)
    scorer = PairScorer(table_lm(pol, V), table_lm(ref, V), beta=0.5, pad_token_id=0)
    out = beam_search(scorer, [[0]], num_beams=16, max_new_tokens=MAX_NEW, eos_token_id=EOS, score=score,
                      length_penalty=length_penalty, length_norm=alpha, top_k=0)
    assert out[0].token_ids == brute_force(pol, ref, score, 0.5, length_penalty, alpha)


def test_cbs_one_full_chunk_is_best_of_n(scorer, tokenizer, make_prompts):
    """CBS whose first chunk already reaches max_new_tokens ranks W·K samples once: best-of-(W·K), same draws."""
    prompts = make_prompts(3, seed=21)
    eos = tokenizer.eos_token_id
    cbs = chunk_beam_search(scorer, prompts, width=2, samples=3, chunk=10, max_new_tokens=10, eos_token_id=eos,
                            generator=torch.Generator().manual_seed(4))
    bon = best_of_n(scorer, prompts, n=6, max_new_tokens=10, eos_token_id=eos,
                    generator=torch.Generator().manual_seed(4))
    assert [d.token_ids for d in cbs] == [d.token_ids for d in bon]
    assert [d.forward_tokens for d in cbs] == [d.forward_tokens for d in bon]


def test_cbs_chunks(scorer, tokenizer, make_prompts):
    """Several rounds of 3-token chunks: responses end at EOS or exactly max_new_tokens."""
    prompts = make_prompts(2, seed=22)
    out = chunk_beam_search(scorer, prompts, width=2, samples=2, chunk=3, max_new_tokens=10,
                            eos_token_id=tokenizer.eos_token_id, generator=torch.Generator().manual_seed(0))
    for d in out:
        assert len(d.token_ids) == 10 or d.token_ids[-1] == tokenizer.eos_token_id
        assert len(d.token_rewards) == len(d.token_ids)


def boost_specials(model, tokenizer, factor=6.0):
    """A copy-free edit: scale the LM-head rows of the special tokens other than EOS so they dominate."""
    with torch.no_grad():
        for t in banned_token_ids(tokenizer):
            model.lm_head.weight[t] *= factor


@pytest.fixture
def special_policy(tiny_model_dir, tokenizer):
    from tokendpo.modeling import load_model

    model = load_model(str(tiny_model_dir)).eval()
    boost_specials(model, tokenizer)
    return model


@pytest.mark.parametrize("score", ["likelihood", "implicit", "mixed"])
def test_special_tokens_never_chosen(special_policy, reference, tokenizer, make_prompts, score):
    """A policy whose BOS/UNK/PAD logits are scaled ×6: unbanned, beam search picks them; banned, no decoder
    ever emits one, for any score."""
    scorer = PairScorer(special_policy, reference, beta=0.2, pad_token_id=tokenizer.pad_token_id)
    prompts, eos = make_prompts(4, seed=31), tokenizer.eos_token_id
    banned = set(banned_token_ids(tokenizer))
    free = beam_search(scorer, prompts, num_beams=2, max_new_tokens=8, eos_token_id=eos, score=score, top_k=0)
    assert any(t in banned for d in free for t in d.token_ids)  # the test has teeth
    outs = [
        beam_search(scorer, prompts, num_beams=2, max_new_tokens=8, eos_token_id=eos, score=score, top_k=0,
                    banned_tokens=sorted(banned)),
        best_of_n(scorer, prompts, n=3, max_new_tokens=8, eos_token_id=eos, score=score, top_k=0,
                  banned_tokens=sorted(banned), generator=torch.Generator().manual_seed(1)),
        chunk_beam_search(scorer, prompts, width=2, samples=2, chunk=3, max_new_tokens=8, eos_token_id=eos,
                          score=score, proposal="policy", banned_tokens=sorted(banned),
                          generator=torch.Generator().manual_seed(2)),
    ]
    for out in outs:
        assert not any(t in banned for d in out for t in d.token_ids)


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (6, 0.9)])
def test_mixed_ends_equal_likelihood_and_implicit(eos_policy, reference, tokenizer, make_prompts, top_k, top_p):
    """Under the same support, mixed at λ = 1 returns likelihood's token ids and at λ = 0 implicit's — for
    beam search, best-of-N and CBS (same generator seeds) — and λ = 0.5 differs from both somewhere."""
    scorer = PairScorer(eos_policy, reference, beta=0.3, pad_token_id=tokenizer.pad_token_id)
    prompts, eos = make_prompts(4, seed=200 + top_k), tokenizer.eos_token_id
    banned = banned_token_ids(tokenizer)
    support = dict(top_k=top_k, top_p=top_p, banned_tokens=banned, max_new_tokens=8, eos_token_id=eos)

    def ids(out):
        return [d.token_ids for d in out]

    def beam(score, lam=None):
        return ids(beam_search(scorer, prompts, num_beams=3, score=score, ref_weight=lam, **support))

    def bon(score, lam=None):
        return ids(best_of_n(scorer, prompts, n=4, score=score, ref_weight=lam, proposal="reference",
                             generator=torch.Generator().manual_seed(5), **support))

    def cbs(score, lam=None):
        return ids(chunk_beam_search(scorer, prompts, width=2, samples=2, chunk=3, score=score, ref_weight=lam,
                                     proposal="policy", generator=torch.Generator().manual_seed(6), **support))

    for run in (beam, bon, cbs):
        assert run("mixed", 1.0) == run("likelihood")
        assert run("mixed", 0.0) == run("implicit")
    assert beam("likelihood") != beam("implicit")  # the two ends differ here, so the equalities say something


def test_beam_early_stop_waits_for_rising_scores(table_lm):
    """K = 1, implicit score, uniform reference. Step 1: EOS scores log 1.2 and ends; token 2 scores log 1.04
    and runs on. Step 2 from [2]: token 3 has π = 0.97, scoring log 3.88, so [2, 3] totals 1.40 > 0.18. The
    old rule (stop once the running score cannot beat the finished one) returned [EOS]; the log-ratio can rise,
    so the search must continue."""
    pol = table_lm({(0,): torch.tensor([0.2, 0.3, 0.26, 0.24]).log().tolist(),
                    (0, 2): torch.tensor([0.01, 0.01, 0.01, 0.97]).log().tolist()}, 4)
    ref = table_lm({}, 4)
    scorer = PairScorer(pol, ref, beta=0.5, pad_token_id=0)
    out = beam_search(scorer, [[0]], num_beams=1, max_new_tokens=2, eos_token_id=1, score="implicit")
    assert out[0].token_ids == [2, 3]
    assert out[0].reward == pytest.approx(0.5 * (math.log(1.04) + math.log(3.88)), abs=1e-5)
    # likelihood scores only fall: there the early stop is exact and keeps [EOS] (log 0.3 > log 0.26 + log 0.97)
    out = beam_search(scorer, [[0]], num_beams=1, max_new_tokens=2, eos_token_id=1, score="likelihood")
    assert out[0].token_ids == [1]


@pytest.mark.parametrize("score", ["likelihood", "implicit"])
@pytest.mark.parametrize("top_k", [1, 2])
def test_small_support_never_continues_past_eos(eos_policy, reference, tokenizer, make_prompts, score, top_k):
    """With fewer real candidates than beams, an EOS candidate must not become a running beam (transformers never
    meets this case: it always has 2K finite candidates). Every response ends at its first EOS, and its reported
    rewards are its own."""
    scorer = PairScorer(eos_policy, reference, beta=0.2, pad_token_id=tokenizer.pad_token_id)
    eos = tokenizer.eos_token_id
    out = beam_search(scorer, make_prompts(8, seed=60 + top_k), num_beams=3, max_new_tokens=10, eos_token_id=eos,
                      score=score, top_k=top_k, banned_tokens=banned_token_ids(tokenizer))
    for d in out:
        assert 1 <= len(d.token_ids) <= 10 and eos not in d.token_ids[:-1], d.token_ids
