"""--share_prompt: each prompt runs once, its KV cache serves both responses. Checked against the plain padded
forward (the definition) on fresh random pairs: hidden states, log-probs, gradients, and whole training runs."""

import random

import pytest
import torch

from tokendpo.data import collate_pairs
from tokendpo.data.pairs import TokenizedPair
from tokendpo.logps import batch_hidden, sequence_logps
from tokendpo.modeling import load_model
from tokendpo.train import train

from .test_train import make_cfg, read_metrics, write_pairs


def random_pairs(n: int, vocab: int, seed: int) -> list[TokenizedPair]:
    """Prompts of 1..12 tokens and responses of 1..9 tokens, all lengths independent (odd shapes, ragged)."""
    rng = random.Random(seed)
    tok = lambda k: [rng.randrange(3, vocab) for _ in range(k)]  # noqa: E731
    return [TokenizedPair(tok(rng.randint(1, 12)), tok(rng.randint(1, 9)), tok(rng.randint(1, 9)), f"x:{i}")
            for i in range(n)]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    torch.manual_seed(0)
    m = load_model(str(tiny_model_dir))
    with torch.no_grad():  # random init is near-uniform; spread the weights so differences would show
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


@pytest.mark.parametrize("seed", [1, 2])
def test_shared_forward_equals_padded(model, seed):
    pairs = random_pairs(5, model.config.vocab_size, seed)
    plain = collate_pairs(pairs, pad_token_id=0)
    shared = collate_pairs(pairs, pad_token_id=0, share_prompt=True)
    assert "prompt_lengths" not in plain and shared["prompt_lengths"].tolist() == [len(p.prompt_ids) for p in pairs]
    h_plain, h_shared = batch_hidden(model, plain), batch_hidden(model, shared)
    real = plain["attention_mask"].bool()
    torch.testing.assert_close(h_shared[real], h_plain[real], atol=2e-5, rtol=1e-4)

    model.zero_grad()
    a = sequence_logps(model, plain)
    (a.logps * torch.randn_like(a.logps, generator=torch.Generator().manual_seed(seed))).sum().backward()
    g_plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    b = sequence_logps(model, shared)
    (b.logps * torch.randn_like(b.logps, generator=torch.Generator().manual_seed(seed))).sum().backward()
    g_shared = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.testing.assert_close(b.logps, a.logps, atol=1e-4, rtol=1e-5)
    assert torch.equal(b.lengths, a.lengths)
    for gs, gp in zip(g_shared, g_plain):  # the prompt pass gets its gradient through the cache
        torch.testing.assert_close(gs, gp, atol=1e-5, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in g_shared)


def test_empty_prompt_falls_back_to_the_padded_pass(model):
    pairs = random_pairs(3, model.config.vocab_size, 3)
    pairs[1] = TokenizedPair([], pairs[1].chosen_ids, pairs[1].rejected_ids, "x:1")
    assert "prompt_lengths" not in collate_pairs(pairs, pad_token_id=0, share_prompt=True)


@pytest.mark.parametrize("lora_r", [0, 4])
def test_training_with_share_prompt_matches(tiny_model_dir, tmp_path, lora_r):
    """Whole runs (train + eval steps), full fine-tuning and LoRA (reference = adapter disabled)."""
    data = write_pairs(tmp_path / "pairs.jsonl", n=24, seed=5)
    runs = {}
    for share in (False, True):
        out = tmp_path / f"share{share}"
        train(make_cfg(tiny_model_dir, data, out, max_steps=4, share_prompt=share, eval_steps=2,
                       eval_dataset=str(data), lora_r=lora_r))
        runs[share] = read_metrics(out)
    for a, b in zip(runs[False], runs[True]):
        assert a.keys() == b.keys()
        for k in a.keys() - {"tokens_per_second", "elapsed_s"}:  # clocks differ; everything else must not
            assert abs(a[k] - b[k]) <= 1e-4 + 1e-5 * abs(a[k]), (k, a[k], b[k])
    assert "share_prompt: true" in (tmp_path / "shareTrue" / "train_config.yaml").read_text()


def test_share_prompt_rejects_packing(tiny_model_dir, tmp_path):
    from tokendpo.config import ConfigError

    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    with pytest.raises(ConfigError, match="share_prompt"):
        train(make_cfg(tiny_model_dir, data, tmp_path / "o", share_prompt=True, packing=True))
