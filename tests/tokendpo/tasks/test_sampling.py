"""Generation is deterministic for a seed and independent of the batch size; greedy ignores the seed; EOS ends a
response and is kept in its ids."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from tokendpo.tasks import get_task
from tokendpo.tasks.sampling import sample


@pytest.fixture(scope="module")
def model_and_tok():
    task = get_task("arithmetic")
    tok = task.tokenizer(task.corpus(200, seed=0))
    torch.manual_seed(0)
    cfg = task.model_config(tok)
    cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers = 16, 32, 1
    return AutoModelForCausalLM.from_config(cfg).eval(), tok, task.prompts("heldout", 37, seed=0)


def test_same_seed_same_samples_other_seed_other_samples(model_and_tok):
    model, tok, prompts = model_and_tok
    a = sample(model, tok, prompts, max_new_tokens=5, seed=1, batch_size=16)
    b = sample(model, tok, prompts, max_new_tokens=5, seed=1, batch_size=16)
    c = sample(model, tok, prompts, max_new_tokens=5, seed=2, batch_size=16)
    assert a == b
    assert a[0] != c[0]
    g1 = sample(model, tok, prompts, max_new_tokens=5, greedy=True, seed=1)
    g2 = sample(model, tok, prompts, max_new_tokens=5, greedy=True, seed=5)
    assert g1 == g2


def test_ids_stop_at_eos_and_texts_decode_them(model_and_tok):
    model, tok, prompts = model_and_tok
    texts, ids = sample(model, tok, prompts, max_new_tokens=5, seed=3)
    eos = tok.eos_token_id
    assert len(texts) == len(ids) == len(prompts)
    for t, y in zip(texts, ids):
        assert 1 <= len(y) <= 5
        assert eos not in y[:-1]  # EOS only ever last
        assert y[-1] == eos or len(y) == 5  # cut after EOS, else the full budget
        assert t == tok.decode(y, skip_special_tokens=True).strip()


def test_zero_temperature_is_rejected(model_and_tok):
    model, tok, prompts = model_and_tok
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sample(model, tok, prompts, max_new_tokens=2, temperature=0.0)


def test_batch_size_does_not_change_the_samples(model_and_tok):
    """Each prompt draws from its own (seed, prompt index) stream: batching only bounds memory (float64 model, so
    batch shapes cannot flip a draw by rounding)."""
    model, tok, prompts = model_and_tok
    m64 = model.to(torch.float64)
    try:
        a = sample(m64, tok, prompts, max_new_tokens=6, seed=4, batch_size=37)
        b = sample(m64, tok, prompts, max_new_tokens=6, seed=4, batch_size=5)
        c = sample(m64, tok, prompts[10:], max_new_tokens=6, seed=4, batch_size=8)
    finally:
        model.to(torch.float32)
    assert a == b
    assert a[0][10:] != c[0]  # a row's stream is keyed by its index in `prompts`, not by its text


def test_n_responses_per_prompt_are_the_prompts_written_out(model_and_tok):
    """n = 3 (one prefill per prompt) gives what sampling each prompt written out 3 times gives, grouped by prompt."""
    model, tok, prompts = model_and_tok
    m64 = model.to(torch.float64)
    try:
        a = sample(m64, tok, prompts[:9], max_new_tokens=5, seed=6, n=3, batch_size=12)
        b = sample(m64, tok, [p for p in prompts[:9] for _ in range(3)], max_new_tokens=5, seed=6, batch_size=7)
    finally:
        model.to(torch.float32)
    assert len(a[0]) == len(a[1]) == 27
    assert a == b
