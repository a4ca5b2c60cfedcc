"""Crash safety: SIGKILL mid-run then resume is bit-identical; SIGTERM saves and exits; non-finite losses stop
the run with the last good checkpoint intact."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.tokendpo.test_train import write_pairs
from tokendpo.modeling import load_model


def cmd(model_dir, data, out, *extra):
    return [sys.executable, "-m", "tokendpo.train", "--model", str(model_dir), "--dataset", str(data),
            "--output_dir", str(out), "--max_length", "64", "--max_prompt_length", "32", "--per_device_train_batch_size", "2",
            "--learning_rate", "1e-3", "--seed", "3", "--progress", "false", *extra]


def metrics(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_second"} for r in rows]


def wait_for(path, proc, timeout=180):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("d") / "p.jsonl", n=16, seed=5)


def test_sigkill_then_resume_is_bit_identical(tiny_model_dir, data, tmp_path):
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    args = ("--max_steps", "10", "--save_steps", "2", "--save_total_limit", "2")
    subprocess.run(cmd(tiny_model_dir, data, full, *args), check=True, capture_output=True)
    proc = subprocess.Popen(cmd(tiny_model_dir, data, crashed, *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(crashed / "checkpoint-4", proc)
    proc.send_signal(signal.SIGKILL)  # no handler can run: whatever was half-written stays half-written
    proc.wait()
    assert not (crashed / "model.safetensors").exists()  # the killed run left no final model behind
    res = subprocess.run(cmd(tiny_model_dir, data, crashed, *args, "--resume_from", "latest"),
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert metrics(crashed) == metrics(full)
    a, b = load_model(str(full)).state_dict(), load_model(str(crashed)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    kept = sorted(p.name for p in crashed.iterdir() if p.name.startswith("checkpoint-"))
    assert kept == ["checkpoint-10", "checkpoint-8"]  # save_total_limit=2, no temp dirs left
    assert not [p for p in crashed.iterdir() if p.name.startswith(".tmp")]


def test_sigterm_saves_and_exits(tiny_model_dir, data, tmp_path):
    out = tmp_path / "term"
    proc = subprocess.Popen(cmd(tiny_model_dir, data, out, "--max_steps", "100000"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(out / "metrics.jsonl", proc)
    while proc.poll() is None and len((out / "metrics.jsonl").read_text().splitlines()) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    ckpts = [p for p in out.iterdir() if p.name.startswith("checkpoint-")]
    assert len(ckpts) == 1 and (ckpts[0] / "model.safetensors").is_file()
    step = int(ckpts[0].name.split("-")[1])
    assert metrics(out)[-1]["step"] == step
    assert "saved checkpoint" in err


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_non_finite_loss(tiny_model_dir, data, tmp_path, policy, capsys):
    """A learning rate of 1e6 blows the weights up within a few steps; the run must not save garbage."""
    from tests.tokendpo.test_train import make_cfg
    from tokendpo.train import NonFiniteError, train

    out = tmp_path / policy
    cfg = make_cfg(tiny_model_dir, data, out, max_steps=12, save_steps=1, learning_rate=1e6, max_grad_norm=0.0,
                   nan_policy=policy, per_device_train_batch_size=2)
    if policy == "stop":
        with pytest.raises(NonFiniteError, match=r"step \d+: non-finite") as e:
            train(cfg)
        bad_step = int(str(e.value).split("step ")[1].split(":")[0])
        last = out / f"checkpoint-{bad_step - 1}"
        assert last.is_dir()
        sd = load_model(str(last)).state_dict()
        assert all(torch.isfinite(v).all() for v in sd.values())  # the last good checkpoint is intact
        assert not (out / f"checkpoint-{bad_step}").exists()
        assert not (out / "model.safetensors").exists()  # no final model that looks complete
    else:
        train(cfg)
        assert "skipping the update" in capsys.readouterr().err
        sd = load_model(str(out)).state_dict()
        assert all(torch.isfinite(v).all() for v in sd.values())
