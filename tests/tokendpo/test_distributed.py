"""torchrun on CPU (gloo): 2 processes (DDP, FSDP2) follow the 1-process loss trajectory at the same global batch,
and their checkpoints resume at another world size."""

import json
import os
import subprocess
import sys

import pytest

from tests.tokendpo.test_train import write_pairs


def run(nproc, model_dir, data, out, *extra):
    base = ["-m", "tokendpo.train", "--model", str(model_dir), "--dataset", str(data), "--output_dir", str(out),
            "--max_length", "64", "--learning_rate", "1e-3", "--seed", "2", "--progress", "false",
            "--kernel", "chunked", *extra]
    if nproc == 1:
        cmd = [sys.executable, *base]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(29500 + os.getpid() % 1000), *base]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("d") / "p.jsonl", n=16, seed=9)


@pytest.fixture(scope="module")
def single(tiny_model_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return run(1, tiny_model_dir, data, out, "--per_device_train_batch_size", "4", "--max_steps", "4")


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one(tiny_model_dir, data, single, tmp_path, parallel):
    rows = run(2, tiny_model_dir, data, tmp_path / parallel, "--per_device_train_batch_size", "2", "--max_steps", "4",
               "--parallel", parallel, "--save_steps", "2")
    assert [r["step"] for r in rows] == [r["step"] for r in single]
    for key in ("loss", "rewards/margins", "logps/chosen", "grad_norm"):
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in single], abs=1e-5, rel=1e-5), key
    assert (tmp_path / parallel / "model.safetensors").is_file()


def test_fsdp_checkpoint_resumes_in_one_process(tiny_model_dir, data, single, tmp_path):
    """A 2-process FSDP run 'dies' after its step-2 checkpoint; one process resumes it (accumulation 2 keeps the
    global batch of 4) and ends on the 1-process trajectory."""
    import shutil

    out = tmp_path / "resume"
    run(2, tiny_model_dir, data, out, "--per_device_train_batch_size", "2", "--max_steps", "4", "--parallel", "fsdp",
        "--save_steps", "2")
    shutil.rmtree(out / "checkpoint-4")
    (out / "model.safetensors").unlink()
    rows = run(1, tiny_model_dir, data, out, "--resume_from", "latest")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("loss", "rewards/margins", "grad_norm"):
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in single], abs=1e-5, rel=1e-5), key
