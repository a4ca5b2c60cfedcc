"""TR-DPO reference syncing (`--sync_ref_model`): π_ref ← α·π + (1 − α)·π_ref every k optimizer steps.

Oracles: a hand-computed mix of two small layers; a training run whose step-3 rewards are recomputed from the
checkpointed step-2 policy and a reference mixed by hand from it and the initial weights; the α = 1, k = 1 identity
(the reference is always the previous policy, so every step starts at π = π_ref: loss ln 2); a resumed run against
an uninterrupted one; and, on torchrun with 2 CPU processes, DDP and FSDP2 runs against one process at the same
global batch.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tokendpo.config import ConfigError
from tokendpo.data import collate_pairs, load_preference_data
from tokendpo.logps import sequence_logps
from tokendpo.modeling import load_model, load_tokenizer
from tokendpo.reference import Reference
from tokendpo.train import main, micro_batch, train

from tests.tokendpo.test_distributed import free_port
from tests.tokendpo.test_train import make_cfg, read_metrics, write_pairs

REPO = Path(__file__).resolve().parents[2]


def _layer(weight, bias) -> torch.nn.Module:
    lin = torch.nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(weight))
        lin.bias.copy_(torch.tensor(bias))
    return torch.nn.Sequential(lin)


def test_mix_in_hand_computed():
    """α = 0.25, policy W = [[1, 2], [3, 4]], b = [1, −1]; reference W = [[5, 6], [7, 8]], b = [3, 3]:
    W ← 0.25·W_π + 0.75·W_ref = [[0.25 + 3.75, 0.5 + 4.5], [0.75 + 5.25, 1 + 6]] = [[4, 5], [6, 7]],
    b ← [0.25 + 2.25, −0.25 + 2.25] = [2.5, 2].  A second mix with α = 0.5: W = [[2.5, 3.5], [4.5, 5.5]],
    b = [1.75, 0.5]. The policy is untouched."""
    policy = _layer([[1.0, 2.0], [3.0, 4.0]], [1.0, -1.0])
    ref = Reference(_layer([[5.0, 6.0], [7.0, 8.0]], [3.0, 3.0]))
    ref.mix_in(policy, 0.25)
    torch.testing.assert_close(ref.model[0].weight, torch.tensor([[4.0, 5.0], [6.0, 7.0]]), rtol=0, atol=1e-7)
    torch.testing.assert_close(ref.model[0].bias, torch.tensor([2.5, 2.0]), rtol=0, atol=1e-7)
    ref.mix_in(policy, 0.5)
    torch.testing.assert_close(ref.model[0].weight, torch.tensor([[2.5, 3.5], [4.5, 5.5]]), rtol=0, atol=1e-7)
    torch.testing.assert_close(ref.model[0].bias, torch.tensor([1.75, 0.5]), rtol=0, atol=1e-7)
    torch.testing.assert_close(policy[0].weight, torch.tensor([[1.0, 2.0], [3.0, 4.0]]), rtol=0, atol=0)


def test_mix_in_refuses_what_it_cannot_mix():
    policy = _layer([[1.0, 2.0], [3.0, 4.0]], [0.0, 0.0])
    with pytest.raises(ValueError, match="different parameters"):
        Reference(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))).mix_in(policy, 0.5)
    with pytest.raises(ValueError, match="needs a separate reference model"):
        Reference(policy, adapter_host=policy).mix_in(policy, 0.5)
    cached = Reference(None)
    with pytest.raises(ValueError, match="needs a separate reference model"):
        cached.mix_in(policy, 0.5)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("data") / "pairs.jsonl")


def test_alpha_one_every_step_keeps_pi_equal_ref(tiny_model_dir, pairs_file, tmp_path):
    """α = 1, k = 1: after each step the reference becomes the policy, so every step's forward has π = π_ref:
    loss = −log σ(0) = ln 2 and rewards 0 at every step, while the policy does move (grad_norm > 0)."""
    out = tmp_path / "out"
    train(make_cfg(tiny_model_dir, pairs_file, out, sync_ref_model=True, ref_model_mixup_alpha=1.0,
                   ref_model_sync_steps=1, max_steps=3))
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["loss"] == pytest.approx(math.log(2), abs=1e-6)
        assert r["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
        assert r["grad_norm"] > 0


def test_synced_reference_matches_hand_mix(tiny_model_dir, pairs_file, tmp_path):
    """α = 0.5, k = 2, 3 steps, checkpoint at step 2. Step 3 runs the step-2 policy θ₂ against
    θ_ref = 0.5·θ₂ + 0.5·θ₀ (θ₀ the initial weights, the first reference). Recompute step 3's rewards by hand
    from the checkpoint and that mix: β·mean(π_θ₂ − π_mix) over its batch must match the logged ones (≤ 1e-5);
    against the unsynced θ₀ they would not (checked, so the comparison is not vacuous)."""
    out = tmp_path / "out"
    cfg = make_cfg(tiny_model_dir, pairs_file, out, sync_ref_model=True, ref_model_mixup_alpha=0.5,
                   ref_model_sync_steps=2, max_steps=3, save_steps=2, kernel="naive")
    train(cfg)
    step3 = read_metrics(out)[2]
    assert step3["step"] == 3

    policy = load_model(str(out / "checkpoint-2"))
    theta0 = load_model(str(tiny_model_dir)).state_dict()
    mixed = load_model(str(tiny_model_dir))
    mixed.load_state_dict({k: 0.5 * v + 0.5 * theta0[k] for k, v in policy.state_dict().items()})
    tokenizer = load_tokenizer(str(tiny_model_dir))
    train_pairs, _, _ = load_preference_data(cfg.data, tokenizer, seed=cfg.train.seed)
    indices = micro_batch(len(train_pairs), 2, 0, cfg)  # step index 2 = the third optimizer step
    batch = collate_pairs([train_pairs[i] for i in indices], tokenizer.pad_token_id)
    b = len(indices)
    with torch.no_grad():
        pi = sequence_logps(policy.eval(), batch, kernel="naive").logps
        ref_mix = sequence_logps(mixed.eval(), batch, kernel="naive").logps
        ref_0 = sequence_logps(load_model(str(tiny_model_dir)).eval(), batch, kernel="naive").logps
    beta = cfg.loss.beta
    expected_c = float(beta * (pi[:b] - ref_mix[:b]).mean())
    expected_r = float(beta * (pi[b:] - ref_mix[b:]).mean())
    assert step3["rewards/chosen"] == pytest.approx(expected_c, abs=1e-5)
    assert step3["rewards/rejected"] == pytest.approx(expected_r, abs=1e-5)
    unsynced_c = float(beta * (pi[:b] - ref_0[:b]).mean())
    assert abs(unsynced_c - expected_c) > 1e-4


def test_precompute_and_lora_are_refused(tiny_model_dir, pairs_file, tmp_path, capsys):
    """Precomputed reference log-probs would go stale, and under LoRA the reference is the adapter-disabled
    policy (nothing to mix into): one `error:` line and exit 2 from the CLI, a ConfigError from train()."""
    base = ["--model", str(tiny_model_dir), "--dataset", str(pairs_file), "--progress", "false", "--sync_ref_model"]
    assert main([*base, "--output_dir", str(tmp_path / "a"), "--ref_logps", "precompute"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "use --ref_logps online" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="--lora_r"):
        train(make_cfg(tiny_model_dir, pairs_file, tmp_path / "c", sync_ref_model=True, lora_r=4))


def test_unmixable_ref_model_is_refused_before_training(tiny_model_dir, pairs_file, tmp_path):
    """A --ref_model of another shape cannot be mixed into: refused at setup, before any step or file."""
    from tokendpo.modeling import build_preset

    other = build_preset("small-llama", tmp_path / "small", seed=0)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="--sync_ref_model: "):
        train(make_cfg(tiny_model_dir, pairs_file, out, sync_ref_model=True, ref_model=str(other)))
    assert not (out / "metrics.jsonl").exists()


def test_resume_continues_from_the_synced_reference(tiny_model_dir, pairs_file, tmp_path):
    """The moving reference is training state: checkpoint-3 holds it (reference.safetensors, already moved by the
    sync at step 2), and a run resumed from there to step 5 equals an uninterrupted one — metrics and final
    weights, exactly — with another sync at step 4."""
    from safetensors.torch import load_file

    common = dict(max_steps=5, save_steps=3, sync_ref_model=True, ref_model_mixup_alpha=0.5, ref_model_sync_steps=2)
    full, part = tmp_path / "full", tmp_path / "part"
    train(make_cfg(tiny_model_dir, pairs_file, full, **common))
    train(make_cfg(tiny_model_dir, pairs_file, part, **common))
    saved_ref = load_file(str(part / "checkpoint-3" / "reference.safetensors"))
    init = load_model(str(tiny_model_dir)).state_dict()
    assert max(float((saved_ref[k] - init[k]).abs().max()) for k in saved_ref) > 1e-4  # the sync moved it
    (part / "model.safetensors").unlink()  # as if the run had died after step 4
    cfg = make_cfg(tiny_model_dir, pairs_file, part, **common)
    cfg.train.resume_from = "latest"
    train(cfg)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "tokens_per_second"} for r in rows]  # noqa: E731
    assert strip(read_metrics(part)) == strip(read_metrics(full))
    a, b = load_model(str(full)).state_dict(), load_model(str(part)).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------------------------- torchrun


def _run(nproc: int, out: Path, model_dir, data, *extra) -> list[dict]:
    """`python -m tokendpo.train` on nproc CPU processes (gloo) → metrics.jsonl rows."""
    flags = ["--model", str(model_dir), "--dataset", str(data), "--output_dir", str(out), "--max_length", "64",
             "--max_prompt_length", "32", "--learning_rate", "1e-3", "--adam_epsilon", "1e-3", "--seed", "2",
             "--progress", "false", "--kernel", "chunked", "--max_steps", "4", *extra]
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                                      "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    cmd = [sys.executable, *launcher, "-m", "tokendpo.train", *flags]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-4000:]
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


SYNC = ("--sync_ref_model", "--ref_model_sync_steps", "2", "--ref_model_mixup_alpha", "0.5")


@pytest.mark.slow
def test_sync_under_ddp_and_fsdp_matches_one_process(tiny_model_dir, tmp_path):
    """2 processes × batch 2 (DDP, then FSDP2 — whose policy parameters are shards, gathered in full for the mix)
    against 1 process × batch 4 with the same sync: the same losses and margins at every step (≤ 1e-5). Steps 3-4
    run against the synced reference, and a run without syncing differs there (so the check is not vacuous)."""
    data = write_pairs(tmp_path / "p.jsonl", n=16, seed=9)
    single = _run(1, tmp_path / "one", tiny_model_dir, data, "--per_device_train_batch_size", "4", *SYNC)
    unsynced = _run(1, tmp_path / "plain", tiny_model_dir, data, "--per_device_train_batch_size", "4")
    assert abs(single[3]["rewards/margins"] - unsynced[3]["rewards/margins"]) > 1e-4
    for mode in ("ddp", "fsdp"):
        rows = _run(2, tmp_path / mode, tiny_model_dir, data, "--per_device_train_batch_size", "2",
                    "--parallel", mode, *SYNC)
        assert [r["step"] for r in rows] == [1, 2, 3, 4]
        for key in ("loss", "rewards/margins", "rewards/chosen"):
            assert [r[key] for r in rows] == pytest.approx([r[key] for r in single], abs=1e-5, rel=1e-5), (mode, key)
