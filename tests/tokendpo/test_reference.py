"""The reference in its three forms: separate model, LoRA adapter disabled, precomputed disk cache."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.tokendpo.test_train import make_cfg, read_metrics, write_pairs
from tokendpo.train import train


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("data") / "pairs.jsonl", n=12)


@pytest.mark.parametrize("loss_type", ["sigmoid", "tdpo2"])
def test_precomputed_reference_equals_online(tiny_model_dir, pairs_file, tmp_path, loss_type):
    common = dict(max_steps=3, loss_type=loss_type, eval_fraction=0.25, per_device_train_batch_size=3)
    train(make_cfg(tiny_model_dir, pairs_file, tmp_path / "online", **common))
    cfg = make_cfg(tiny_model_dir, pairs_file, tmp_path / "pre", **common)
    cfg.model.ref_logps = "precompute"
    train(cfg)
    online, pre = read_metrics(tmp_path / "online"), read_metrics(tmp_path / "pre")
    assert [r["step"] for r in pre] == [r["step"] for r in online]
    for a, b in zip(online, pre):
        for k in a:
            if k == "tokens_per_second" or (k.endswith("accuracies") and abs(a[k.replace("accuracies", "margins")]) < 1e-5):
                continue  # at step 1 every reward is 0 ± 1e-8 (batch padding differs): accuracy is a coin flip
            assert b[k] == pytest.approx(a[k], abs=1e-5, rel=1e-5), k
    caches = list((tmp_path / "pre" / "ref_cache").glob("ref-*.safetensors"))
    assert len(caches) == 1
    # a second run with the same reference, data and config reuses the cache (same key, file untouched)
    mtime = caches[0].stat().st_mtime_ns
    cfg.train.output_dir = str(tmp_path / "pre2")
    cfg.model.ref_cache_dir = str(tmp_path / "pre" / "ref_cache")
    train(cfg)
    assert caches[0].stat().st_mtime_ns == mtime
    assert len(list((tmp_path / "pre" / "ref_cache").glob("ref-*.safetensors"))) == 1


def test_lora_reference_is_the_disabled_adapter(tiny_model_dir, pairs_file, tmp_path):
    """LoRA's B starts at zero, so at step 0 policy == adapter-disabled base: loss ln 2, rewards 0."""
    out = tmp_path / "lora"
    cfg = make_cfg(tiny_model_dir, pairs_file, out, max_steps=4, lora_r=4, learning_rate=1e-2)
    train(cfg)
    rows = read_metrics(out)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert rows[-1]["loss"] < rows[0]["loss"]
    merged = AutoModelForCausalLM.from_pretrained(out)  # merged weights load in plain transformers
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    names = [n for n, _ in base.named_parameters() if "q_proj" in n]
    assert names and any(not torch.equal(merged.state_dict()[n], base.state_dict()[n]) for n in names)
    assert not any("lora" in k for k in merged.state_dict())


def test_lora_adapter_only_and_precompute(tiny_model_dir, pairs_file, tmp_path):
    common = dict(max_steps=2, lora_r=4, learning_rate=1e-2)
    train(make_cfg(tiny_model_dir, pairs_file, tmp_path / "online", **common))
    cfg = make_cfg(tiny_model_dir, pairs_file, tmp_path / "adapter", **common)
    cfg.model.ref_logps = "precompute"
    cfg.model.save_adapter_only = True
    train(cfg)
    a, b = read_metrics(tmp_path / "online"), read_metrics(tmp_path / "adapter")
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], abs=1e-6)
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 4
