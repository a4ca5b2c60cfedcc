"""PairScorer: cached steps and left-padded batches against re-encoding each sequence alone; accounting."""

import copy
import random

import pytest
import torch

from search.scorer import ForwardCounter, PairScorer, fused_head
from tests.search.conftest import full_sequence_logps
from tests.tokendpo.test_lm_head_spec import tiny_model
from tokendpo.modeling import build_preset, byte_level_tokenizer, load_model

TOL = dict(atol=1e-5, rtol=0)


def last_logps(model, ids: list[int]) -> torch.Tensor:
    """Oracle: next-token log-probs after `ids`, one unpadded uncached forward."""
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)


def test_cached_steps_match_reencoding(scorer, policy, reference, make_prompts):
    """Left-padded prefill, then 4 cached steps of random tokens: every row equals its sequence re-encoded."""
    prompts = make_prompts(5, seed=11)
    g = torch.Generator().manual_seed(5)
    counter = ForwardCounter(len(prompts))
    state = scorer.prefill(prompts, counter)
    seqs = [list(p) for p in prompts]
    for step in range(5):
        for i, seq in enumerate(seqs):
            torch.testing.assert_close(state.policy_logps[i], last_logps(policy, seq), **TOL)
            torch.testing.assert_close(state.reference_logps[i], last_logps(reference, seq), **TOL)
        if step < 4:
            tok = torch.randint(4, 260, (len(prompts),), generator=g)
            state = scorer.step(state, tok, counter)
            for seq, t in zip(seqs, tok.tolist()):
                seq.append(t)


def test_parent_state_survives_children(scorer, policy, make_prompts):
    """Stepping forks the caches: two different children of one parent both see the right prefix."""
    prompts = make_prompts(3, seed=12)
    counter = ForwardCounter(3)
    parent = scorer.prefill(prompts, counter)
    a = scorer.step(parent, torch.tensor([7, 8, 9]), counter)
    b = scorer.step(parent, torch.tensor([40, 41, 42]), counter)
    for i, p in enumerate(prompts):
        torch.testing.assert_close(a.policy_logps[i], last_logps(policy, p + [7 + i]), **TOL)
        torch.testing.assert_close(b.policy_logps[i], last_logps(policy, p + [40 + i]), **TOL)


def test_select_split_stack_roundtrip(scorer, policy, reference, make_prompts):
    """Rows split out, restacked in another order (left-padded to a common length), then stepped."""
    prompts = make_prompts(4, seed=13, max_chars=20)
    counter = ForwardCounter(4)
    state = scorer.prefill(prompts, counter)
    rows = scorer.split(state)
    assert [r.attention_mask.shape[1] for r in rows] == [len(p) for p in prompts]  # padding stripped
    order = [2, 0, 3, 1, 2]
    stacked = scorer.stack([rows[i] for i in order])
    stepped = scorer.step(stacked, torch.tensor([10, 11, 12, 13, 14]), counter)
    for r, i in enumerate(order):
        torch.testing.assert_close(stepped.policy_logps[r], last_logps(policy, prompts[i] + [10 + r]), **TOL)
        torch.testing.assert_close(stepped.reference_logps[r], last_logps(reference, prompts[i] + [10 + r]), **TOL)
    sel = scorer.select(stepped, torch.tensor([4, 4, 1]))
    after = scorer.step(sel, torch.tensor([20, 21, 22]), counter)
    torch.testing.assert_close(after.policy_logps[1], last_logps(policy, prompts[2] + [14, 21]), **TOL)
    torch.testing.assert_close(after.policy_logps[2], last_logps(policy, prompts[0] + [11, 22]), **TOL)


def test_candidates_are_implicit_rewards(scorer, make_prompts):
    state = scorer.prefill(make_prompts(2, seed=14), ForwardCounter(2))
    lp, lr, r = scorer.candidates(state)
    assert lp.shape == lr.shape == r.shape == (2, 260) and r.dtype == torch.float32
    torch.testing.assert_close(r, 0.3 * (lp - lr))
    assert r.abs().max() > 1e-3  # different models: nonzero rewards
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(2))


def test_forward_token_accounting(scorer, make_prompts):
    """Prefill counts the padded width once per model; a step counts 1 per row per model."""
    prompts = [[1, 5, 6, 7], [1, 9]]
    counter = ForwardCounter(2)
    state = scorer.prefill(prompts, counter)
    assert counter.per_prompt == [8, 8]  # width 4 (the short row's 2 pads counted), two models
    state = scorer.step(scorer.select(state, torch.tensor([0, 0, 1])), torch.tensor([3, 4, 5]), counter)
    assert counter.per_prompt == [12, 10]
    policy_only = scorer.prefill(prompts, counter, with_reference=False)
    scorer.step(policy_only, torch.tensor([3, 3]), counter)
    assert counter.per_prompt == [12 + 5, 10 + 5]
    logps = scorer.sequence_logps(scorer.reference, prompts, [[3, 4], []], counter, torch.arange(2))
    assert counter.per_prompt == [17 + 6, 15]  # only the non-empty response is rescored, width 6
    assert logps[0].shape == (2,) and logps[1].shape == (0,)


def test_sequence_logps_match_oracle(scorer, reference, make_prompts, rescore):
    prompts = make_prompts(3, seed=15)
    responses = [[50, 60, 2], [70], [80, 90, 100, 110]]
    got = scorer.sequence_logps(reference, prompts, responses, ForwardCounter(3), torch.arange(3))
    for p, r, g in zip(prompts, responses, got):
        torch.testing.assert_close(g.double(), rescore(reference, p, r), atol=1e-5, rtol=0)


def _no_logits(module, args, output):
    raise AssertionError("the LM head ran: rescoring built the (R, T, V) logits")


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_rescoring_goes_through_the_kernel_and_equals_full_log_softmax(family, tmp_path):
    """Fresh random weights (a tiny Llama; a Gemma-2 with soft-capped logits, c = 3): the reference log-probs of
    finished responses equal log_softmax of the model's own full logits within 1e-5, and the LM head module
    never runs (its product is fused into `kernels.token_logprobs`)."""
    tok = byte_level_tokenizer()
    seed = random.randrange(10**6)
    if family == "llama":
        model = load_model(str(build_preset("tiny-llama", tmp_path / "m", seed=seed))).eval()
    else:
        model = tiny_model("gemma2", seed, tok, layer_types=["full_attention"] * 2)
        assert model.config.final_logit_softcapping == 3.0
    assert fused_head(model) is not None
    rng = random.Random(seed)
    prompts = [[tok.bos_token_id] + [rng.randrange(4, 260) for _ in range(rng.randint(0, 7))] for _ in range(4)]
    responses = [[rng.randrange(4, 260) for _ in range(rng.randint(1, 6))] for _ in range(3)] + [[]]
    scorer = PairScorer(model, model, beta=0.5, pad_token_id=tok.pad_token_id)
    handle = model.get_output_embeddings().register_forward_hook(_no_logits)
    try:
        got = scorer.sequence_logps(model, prompts, responses, ForwardCounter(4), torch.arange(4))
    finally:
        handle.remove()
    for p, r, g in zip(prompts, responses, got):
        assert g.dtype == torch.float32 and g.shape == (len(r),)
        if r:
            torch.testing.assert_close(g.double(), full_sequence_logps(model, p, r), atol=1e-5, rtol=0)


def test_rescoring_falls_back_to_the_model_logits_for_a_head_the_kernels_cannot_express(reference, make_prompts):
    """A head that is not a Linear (here: the Linear wrapped with a bias shift, as a custom head would be) has no
    fused form: the scorer uses the model's own logits, and still equals the full log-softmax."""

    class ShiftedHead(torch.nn.Module):
        def __init__(self, linear):
            super().__init__()
            self.linear = linear
            self.shift = torch.randn(linear.out_features)

        def forward(self, h):
            return self.linear(h) + self.shift

    model = copy.deepcopy(reference)
    model.set_output_embeddings(ShiftedHead(model.get_output_embeddings()))
    assert fused_head(model) is None
    prompts = make_prompts(3, seed=random.randrange(10**6))
    responses = [[50, 60, 2], [70], [80, 90, 100, 110]]
    scorer = PairScorer(model, model, beta=0.5, pad_token_id=0)
    got = scorer.sequence_logps(model, prompts, responses, ForwardCounter(3), torch.arange(3))
    for p, r, g in zip(prompts, responses, got):
        torch.testing.assert_close(g.double(), full_sequence_logps(model, p, r), atol=1e-5, rtol=0)


def test_bad_inputs(policy, reference, scorer):
    with pytest.raises(ValueError, match="beta"):
        PairScorer(policy, reference, beta=0.0, pad_token_id=0)
    with pytest.raises(ValueError, match="no tokens"):
        scorer.prefill([[1, 2], []], ForwardCounter(2))
    state = scorer.prefill([[1, 2]], ForwardCounter(1), with_reference=False)
    with pytest.raises(ValueError, match="without the reference"):
        scorer.candidates(state)
    bare = scorer.prefill([[1, 2]], ForwardCounter(1), keep_cache=False)
    with pytest.raises(ValueError, match="cached state"):
        scorer.step(bare, torch.tensor([3]), ForwardCounter(1))
