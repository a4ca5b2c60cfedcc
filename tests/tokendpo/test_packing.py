"""Padding-free packing: the same log-probs and losses as the padded layout, with no pad token computed."""

import random

import pytest
import torch

from tests.tokendpo.test_train import make_cfg, read_metrics, write_pairs
from tokendpo.data import TokenizedPair, collate_packed, collate_pairs
from tokendpo.logps import sequence_logps
from tokendpo.modeling import load_model
from tokendpo.train import train


def random_pairs(n, seed):
    rng = random.Random(seed)
    toks = lambda k: [rng.randrange(4, 260) for _ in range(k)]  # noqa: E731 - byte ids, no specials
    return [TokenizedPair([1] + toks(rng.randint(0, 9)), toks(rng.randint(1, 12)) + [2], toks(rng.randint(1, 12)) + [2],
                          f"x:{i}") for i in range(n)]


@pytest.mark.parametrize("seed", [0, 1])
def test_packed_logps_equal_padded(tiny_model_dir, seed):
    model = load_model(str(tiny_model_dir))
    pairs = random_pairs(5, seed)
    padded, packed = collate_pairs(pairs, pad_token_id=0), collate_packed(pairs)
    assert packed["input_ids"].shape[1] == int(padded["attention_mask"].sum())  # no pad position in the row
    a = sequence_logps(model, padded, kernel="chunked")
    b = sequence_logps(model, packed, kernel="chunked")
    torch.testing.assert_close(b.logps, a.logps, rtol=1e-5, atol=1e-5)
    assert torch.equal(b.lengths, a.lengths)
    torch.testing.assert_close(b.mean_logit, a.mean_logit, rtol=1e-5, atol=1e-5)
    # the gradient reaches the same parameters with the same values
    ga = torch.autograd.grad(a.logps.sum(), model.lm_head.weight)[0]
    gb = torch.autograd.grad(b.logps.sum(), model.lm_head.weight)[0]
    torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-6)


def test_packed_training_equals_padded(tiny_model_dir, tmp_path):
    data = write_pairs(tmp_path / "p.jsonl", n=12, seed=3)
    for name, packing in (("padded", False), ("packed", True)):
        train(make_cfg(tiny_model_dir, data, tmp_path / name, max_steps=3, packing=packing))
    a, b = read_metrics(tmp_path / "padded"), read_metrics(tmp_path / "packed")
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], abs=1e-5)
    assert [r["logps/chosen"] for r in b] == pytest.approx([r["logps/chosen"] for r in a], abs=1e-3, rel=1e-5)
