"""The score family and the candidate support (search/scoring.py), against transformers' logits processors."""

import math

import pytest
import torch
from transformers.generation.logits_process import (SuppressTokensLogitsProcessor, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)

from search import scoring


def test_ref_weight_of_each_score():
    assert scoring.ref_weight("implicit") == 0.0
    assert scoring.ref_weight("likelihood") == 1.0
    assert scoring.ref_weight("mixed") == scoring.DEFAULT_REF_WEIGHT
    assert scoring.ref_weight("mixed", 0.25) == 0.25
    with pytest.raises(ValueError, match="mixed"):
        scoring.ref_weight("implicit", 0.3)  # λ is fixed by implicit/likelihood
    with pytest.raises(ValueError, match="finite"):
        scoring.ref_weight("mixed", float("nan"))
    with pytest.raises(ValueError, match="score must be one of"):
        scoring.ref_weight("q")


def test_token_scores_interpolate_between_the_ends():
    """s/β = log π − (1 − λ)·log π_ref: λ = 1 is log π itself, λ = 0 is the log-ratio, and λ = 0.3 is
    r/β + 0.3·log π_ref written out by hand."""
    g = torch.Generator().manual_seed(11)
    lp = torch.log_softmax(torch.randn(5, 37, generator=g), -1)
    lr = torch.log_softmax(torch.randn(5, 37, generator=g), -1)
    assert torch.equal(scoring.token_scores(lp, lr, 1.0), lp)
    assert torch.equal(scoring.token_scores(lp, None, 1.0), lp)
    assert torch.equal(scoring.token_scores(lp, lr, 0.0), lp - lr)
    torch.testing.assert_close(scoring.token_scores(lp, lr, 0.3), (lp - lr) + 0.3 * lr, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="reference"):
        scoring.token_scores(lp, None, 0.5)
    beta, lps, lrs = 0.2, [-1.0, -2.5], [-0.5, -3.0]
    assert scoring.sequence_score(lps, lrs, 0.0, beta) == pytest.approx(0.2 * (-3.5 + 3.5))
    assert scoring.sequence_score(lps, lrs, 1.0, beta) == pytest.approx(0.2 * -3.5)
    assert scoring.sequence_score(lps, lrs, 0.5, beta) == pytest.approx(0.2 * (-3.5 + 0.5 * 3.5))


def hf_mask(logits, *, top_k, top_p, banned, temperature):
    """Candidates transformers' sampling keeps: suppress_tokens, then temperature, top-k, top-p warpers."""
    ids = torch.zeros(logits.shape[0], 1, dtype=torch.long)
    x = logits.clone()
    if banned:
        x = SuppressTokensLogitsProcessor(banned, device="cpu")(ids, x)
    x = TemperatureLogitsWarper(temperature)(ids, x)
    if top_k:
        x = TopKLogitsWarper(top_k)(ids, x)
    if top_p < 1:
        x = TopPLogitsWarper(top_p)(ids, x)
    return torch.isfinite(x)


@pytest.mark.parametrize("top_k,top_p,temperature", [(0, 1.0, 1.0), (5, 1.0, 1.0), (0, 0.7, 1.0), (7, 0.9, 1.0),
                                                     (0, 0.5, 2.0), (3, 0.3, 0.5), (1, 1.0, 1.0)])
def test_candidate_mask_equals_transformers_warpers(top_k, top_p, temperature):
    g = torch.Generator().manual_seed(100 + top_k)
    logits = 2 * torch.randn(6, 41, generator=g)
    logps = torch.log_softmax(logits, -1)
    banned = [0, 3, 17]
    ours = scoring.candidate_mask(logps, top_k=top_k, top_p=top_p, banned=banned, temperature=temperature)
    theirs = hf_mask(logps, top_k=top_k, top_p=top_p, banned=banned, temperature=temperature)
    assert torch.equal(ours, theirs)
    assert not ours[:, banned].any() and ours.any(-1).all()
    if top_k:
        assert (ours.sum(-1) <= top_k).all()


def test_candidate_mask_keeps_finite_only_and_never_empty():
    logps = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), -1)
    logps[0, 3] = float("-inf")  # e.g. a banned repeat
    m = scoring.candidate_mask(logps, top_k=2, top_p=1.0)
    assert m.tolist() == [[False, True, True, False]]
    m = scoring.candidate_mask(logps, top_p=1e-6)
    assert m.tolist() == [[False, False, True, False]]  # the most likely allowed token always stays


def test_draw_stays_in_support_and_follows_the_renormalised_distribution():
    """4000 draws from a top-2 support at T = 1: frequencies within 4 standard errors of the renormalised
    probabilities, and never a token outside the support."""
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logps = probs.log().repeat(4000, 1)
    mask = scoring.candidate_mask(logps, top_k=2)
    tok = scoring.draw(logps, mask, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(tok, minlength=4).double() / 4000
    target = torch.tensor([0.0, 0.0, 3 / 7, 4 / 7], dtype=torch.float64)
    se = (target * (1 - target) / 4000).sqrt()
    assert counts[:2].sum() == 0
    assert ((counts - target).abs() <= 4 * se + 1e-12).all(), counts
    assert scoring.draw(logps[:2], mask[:2], greedy=True).tolist() == [3, 3]


def test_banned_token_ids(tokenizer):
    """The tiny tokenizer's specials are <s>, </s> (EOS), <unk>, <pad>: all but EOS are banned, plus the LM
    head's rows past the tokenizer."""
    banned = scoring.banned_token_ids(tokenizer)
    want = sorted({tokenizer.bos_token_id, tokenizer.unk_token_id, tokenizer.pad_token_id} - {tokenizer.eos_token_id})
    assert banned == want and tokenizer.eos_token_id not in banned
    assert scoring.banned_token_ids(tokenizer, len(tokenizer) + 3) == want + [len(tokenizer) + i for i in range(3)]


def test_support_defaults_and_overrides():
    assert scoring.resolve_support("beam", "likelihood", None, None) == (0, 1.0)  # parity with transformers
    assert scoring.resolve_support("beam", "implicit", None, None) == scoring.GUIDED_SUPPORT
    assert scoring.resolve_support("bon", "mixed", None, None) == scoring.GUIDED_SUPPORT
    assert scoring.resolve_support("mcts", "likelihood", None, None) == (8, 1.0)
    assert scoring.resolve_support("sample", "implicit", None, None) == (0, 1.0)
    # one flag given replaces the default restriction; 0 / 1 mean none
    assert scoring.resolve_support("beam", "implicit", None, 0.9) == (0, 0.9)
    assert scoring.resolve_support("beam", "implicit", 0, None) == (0, 1.0)
    assert scoring.resolve_support("mcts", "implicit", 3, None) == (3, 1.0)
    for k, p in [(-1, 1.0), (0, 0.0), (0, 1.5), (0, math.nan)]:
        with pytest.raises(ValueError, match="top_"):
            scoring.resolve_support("beam", "likelihood", k, p)
