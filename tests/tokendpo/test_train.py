"""The training loop on a tiny real Llama: contract outputs, the step-0 identity, learning, resume, kernels."""

import json
import math
import random
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from tokendpo.config import Config, ConfigError
from tokendpo.data import collate_pairs, load_preference_data
from tokendpo.logps import sequence_logps
from tokendpo.modeling import load_model, load_tokenizer
from tokendpo.train import main, train

TRAIN_KEYS = ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
              "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected", "grad_norm", "learning_rate"]

WORDS = ["apple", "river", "stone", "cloud", "green", "lamp", "tiger", "music", "paper", "sun"]


def write_pairs(path, n=32, seed=0):
    """Learnable pairs: chosen replies are upbeat, rejected ones grim; prompts vary."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            w = rng.sample(WORDS, 2)
            f.write(json.dumps({"prompt": f"Tell me about {w[0]} and {w[1]}.",
                                "chosen": f"yes, {w[0]} is great!",
                                "rejected": f"no. {w[1]} is awful."}) + "\n")
    return path


def make_cfg(model_dir, data, out, **overrides) -> Config:
    cfg = Config()
    cfg.model.model = str(model_dir)
    cfg.data.dataset = str(data)
    cfg.data.max_length, cfg.data.max_prompt_length = 64, 32
    cfg.train.output_dir = str(out)
    cfg.train.max_steps = 3
    cfg.train.per_device_train_batch_size = 4
    cfg.train.progress = False
    cfg.train.seed = 1
    cfg.optim.learning_rate = 1e-3
    for k, v in overrides.items():
        for comp in (cfg.model, cfg.data, cfg.loss, cfg.optim, cfg.train):
            if hasattr(comp, k):
                setattr(comp, k, v)
                break
        else:
            raise KeyError(k)
    return cfg


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("data") / "pairs.jsonl")


def test_outputs_contract_and_step0_identity(tiny_model_dir, pairs_file, tmp_path):
    """At step 0 policy == reference, so h = 0: loss = −log σ(0) = ln 2 and every reward is 0."""
    out = tmp_path / "out"
    cfg = make_cfg(tiny_model_dir, pairs_file, out, eval_fraction=0.25, save_steps=2, max_steps=4, eval_steps=2)
    train(cfg)
    rows = read_metrics(out)
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]  # logging_steps defaults to 1
    for key in TRAIN_KEYS:
        assert all(math.isfinite(r[key]) for r in train_rows), key
    first = train_rows[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-7)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-7)
    assert [r["step"] for r in eval_rows] == [2, 4]
    for key in TRAIN_KEYS[:9]:
        assert f"eval_{key}" in eval_rows[0]
    assert (out / "train_config.yaml").is_file()
    assert (out / "checkpoint-2").is_dir() and (out / "checkpoint-4").is_dir()
    assert (out / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(out)  # plain transformers loads the result
    assert model.config.vocab_size == load_tokenizer(str(out)).__len__()


def test_sequence_logps_match_full_logits(tiny_model_dir, pairs_file):
    """Independent oracle: log_softmax of the model's own full logits, shifted and gathered by hand."""
    tok = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir))
    cfg = make_cfg(tiny_model_dir, pairs_file, "unused")
    pairs, _, _ = load_preference_data(cfg.data, tok)
    batch = collate_pairs(pairs[:5], tok.pad_token_id)
    got = sequence_logps(model, batch, kernel="chunked")
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    logp = logits.log_softmax(-1)
    expected = torch.zeros(batch["input_ids"].shape[0], dtype=torch.float64)
    for r in range(batch["input_ids"].shape[0]):
        for t in range(1, batch["input_ids"].shape[1]):
            if batch["labels"][r, t] != -100:
                expected[r] += logp[r, t - 1, batch["labels"][r, t]]
    torch.testing.assert_close(got.logps.double().detach(), expected, rtol=1e-5, atol=1e-4)
    n_resp = sum(len(p.chosen_ids) for p in pairs[:5]) + sum(len(p.rejected_ids) for p in pairs[:5])
    assert int(got.lengths.sum()) == n_resp


def test_fifty_steps_learn_the_preference(tiny_model_dir, pairs_file, tmp_path):
    cfg = make_cfg(tiny_model_dir, pairs_file, tmp_path / "out", max_steps=50, per_device_train_batch_size=8,
                   learning_rate=2e-3, warmup_steps=5)
    train(cfg)
    rows = read_metrics(tmp_path / "out")
    last5 = [r["rewards/accuracies"] for r in rows[-5:]]
    assert sum(last5) / 5 >= 0.9, last5
    assert rows[-1]["rewards/margins"] > 0


def test_resume_equals_uninterrupted(tiny_model_dir, pairs_file, tmp_path):
    """A run resumed from checkpoint-3 (metrics past step 3 discarded, RNG/optimizer/scheduler restored) ends
    with the same weights and metrics as one that never stopped."""
    import shutil

    full, part = tmp_path / "full", tmp_path / "part"
    common = dict(max_steps=6, save_steps=3, gradient_accumulation_steps=2, per_device_train_batch_size=3)
    train(make_cfg(tiny_model_dir, pairs_file, full, **common))
    train(make_cfg(tiny_model_dir, pairs_file, part, **common))
    shutil.rmtree(part / "checkpoint-6")  # as if the run had died after step 5 …
    (part / "model.safetensors").unlink()
    (part / "metrics.jsonl").write_text((part / "metrics.jsonl").read_text() + '{"step": 99, "loss": 1.0}\n')
    cfg = make_cfg(tiny_model_dir, pairs_file, part, **common)
    cfg.train.resume_from = "latest"
    train(cfg)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "tokens_per_second"} for r in rows]  # noqa: E731
    assert strip(read_metrics(part)) == strip(read_metrics(full))
    a = load_model(str(full)).state_dict()
    b = load_model(str(part)).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_rejects_changed_config(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "out"
    train(make_cfg(tiny_model_dir, pairs_file, out, max_steps=2, save_steps=2))
    rc = main(["--model", str(tiny_model_dir), "--dataset", str(pairs_file), "--output_dir", str(out),
               "--resume_from", "latest", "--beta", "0.5", "--max_steps", "4"])
    assert rc == 2


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "robust", "simpo", "tdpo1", "tdpo2"])
def test_every_loss_trains(tiny_model_dir, pairs_file, tmp_path, loss_type):
    cfg = make_cfg(tiny_model_dir, pairs_file, tmp_path / "out", loss_type=loss_type, max_steps=2,
                   label_smoothing=0.1 if loss_type == "robust" else 0.0)
    result = train(cfg)
    assert math.isfinite(result["loss"])
    assert math.isfinite(result["grad_norm"]) and result["grad_norm"] > 0


def test_kernels_give_same_losses(tiny_model_dir, pairs_file, tmp_path):
    """5 steps through every --kernel give the same losses (≤ 1e-5); triton runs in the interpreter on CPU."""
    losses = {}
    for kernel in ("naive", "chunked", "triton"):
        out = tmp_path / kernel
        train(make_cfg(tiny_model_dir, pairs_file, out, max_steps=5, kernel=kernel, per_device_train_batch_size=2))
        losses[kernel] = [r["loss"] for r in read_metrics(out)]
    for kernel in ("chunked", "triton"):
        assert losses[kernel] == pytest.approx(losses["naive"], abs=1e-5, rel=1e-5), kernel


def test_cli_writes_everything_and_errors_cleanly(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "cli"
    env_cmd = [sys.executable, "-m", "tokendpo.train", "--model", str(tiny_model_dir), "--dataset",
               str(pairs_file), "--max_steps", "2", "--output_dir", str(out), "--progress", "false"]
    res = subprocess.run(env_cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for name in ("metrics.jsonl", "train_config.yaml", "config.json", "model.safetensors", "tokenizer.json"):
        assert (out / name).is_file(), name
    bad = subprocess.run(env_cmd + ["--bta", "0.1"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "did you mean --beta" in bad.stderr and "Traceback" not in bad.stderr


def test_num_threads_sets_torch_threads_and_rejects_negatives(tiny_model_dir, pairs_file, tmp_path):
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    try:
        train(make_cfg(tiny_model_dir, pairs_file, tmp_path / "a", max_steps=1, num_threads=want))
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="num_threads"):
        train(make_cfg(tiny_model_dir, pairs_file, tmp_path / "b", max_steps=1, num_threads=-1))
