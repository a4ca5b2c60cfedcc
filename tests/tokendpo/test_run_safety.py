"""Runs that cannot corrupt each other, checked against the files on disk (hashes before and after):

- a second run into a locked output dir fails at once, naming the holder's pid, and touches nothing;
- a stale lock file left by a killed run does not block --resume_from;
- a fresh run into a dir that holds a run is refused (naming --overwrite_output_dir and --resume_from);
  --overwrite_output_dir deletes only tokendpo's files; the "resume" policy continues the newest checkpoint;
- a bad config value, data file or model against an existing run is refused before anything is written;
- a resume with a larger --max_steps follows the new learning-rate schedule from its first resumed step;
- a full disk during a checkpoint save is a clear error that leaves the previous checkpoint intact.
"""

import errno
import hashlib
import json
import math
import os
import subprocess
import sys

import pytest

from tests.tokendpo.test_train import make_cfg, write_pairs
from tokendpo import checkpoint as checkpoint_mod
from tokendpo.rundir import LOCK_NAME, OutputLock, RunExistsError, RunLockedError, holds_run
from tokendpo.train import main
from tokendpo.training import train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("d") / "p.jsonl", n=16, seed=7)


def tree_hashes(d) -> dict[str, str]:
    """Every file under d (the lock file excluded: it is the lock's own bookkeeping) -> its sha256."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file() and p.name != LOCK_NAME}


def argv(model_dir, data, out, *extra):
    return ["--model", str(model_dir), "--dataset", str(data), "--output_dir", str(out), "--max_length", "64",
            "--max_prompt_length", "32", "--per_device_train_batch_size", "4", "--learning_rate", "1e-3",
            "--progress", "false", *extra]


@pytest.fixture
def finished_run(tiny_model_dir, data, tmp_path):
    """A finished 3-step run with checkpoints at steps 1, 2, 3."""
    out = tmp_path / "run"
    assert main(argv(tiny_model_dir, data, out, "--max_steps", "3", "--save_steps", "1")) == 0
    assert holds_run(out) and (out / "checkpoint-3").is_dir()
    return out


def run_cli(args):
    return subprocess.run([sys.executable, "-m", "tokendpo.train", *args], capture_output=True, text=True)


# ------------------------------------------------------------------------------------------------ the lock

def test_second_run_into_a_locked_dir_fails_at_once_naming_the_pid(tiny_model_dir, data, finished_run):
    before = tree_hashes(finished_run)
    with OutputLock(finished_run):  # this test process is the "first run"
        res = run_cli(argv(tiny_model_dir, data, finished_run, "--max_steps", "5", "--resume_from", "latest"))
    assert res.returncode == 2, res.stderr
    assert f"pid {os.getpid()}" in res.stderr and "in use" in res.stderr and "Traceback" not in res.stderr
    assert tree_hashes(finished_run) == before


def test_lock_is_exclusive_in_process_too(tmp_path):
    with OutputLock(tmp_path / "x"):
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            OutputLock(tmp_path / "x").acquire()
    OutputLock(tmp_path / "x").acquire().release()  # released: free again


def test_stale_lock_of_a_killed_run_does_not_block_resume(tiny_model_dir, data, finished_run):
    # a killed run leaves its lock file (with its pid) behind; the kernel dropped the flock with the process
    (finished_run / LOCK_NAME).write_text("999999\n")
    assert main(argv(tiny_model_dir, data, finished_run, "--max_steps", "4", "--resume_from", "latest")) == 0
    rows = [json.loads(x) for x in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]


def test_rejected_run_leaves_no_trace_in_a_new_dir(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(argv(tiny_model_dir, tmp_path / "missing.jsonl", out, "--max_steps", "1")) == 2
    assert "error:" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------------------------- reusing an output dir

def test_fresh_run_into_a_run_dir_is_refused_and_touches_nothing(tiny_model_dir, data, finished_run, capsys):
    before = tree_hashes(finished_run)
    assert main(argv(tiny_model_dir, data, finished_run, "--max_steps", "2", "--seed", "9")) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--overwrite_output_dir" in err and "--resume_from" in err
    assert tree_hashes(finished_run) == before
    with pytest.raises(RunExistsError):  # train() itself enforces the rule, for every caller
        train(make_cfg(tiny_model_dir, data, finished_run, max_steps=2))
    assert tree_hashes(finished_run) == before


@pytest.mark.parametrize("marker", ["train_config.yaml", "metrics.jsonl", "checkpoint-7"])
def test_each_marker_makes_a_dir_hold_a_run(tmp_path, marker):
    (tmp_path / "notes.txt").write_text("mine")
    assert not holds_run(tmp_path)
    (tmp_path / marker).mkdir() if marker.startswith("checkpoint") else (tmp_path / marker).write_text("")
    assert holds_run(tmp_path)


def test_overwrite_deletes_only_tokendpo_files(tiny_model_dir, data, finished_run):
    (finished_run / "notes.txt").write_text("the user's own file")
    (finished_run / "README.md").write_text("the user's own notes")
    assert main(argv(tiny_model_dir, data, finished_run, "--max_steps", "2", "--overwrite_output_dir")) == 0
    assert not list(finished_run.glob("checkpoint-*"))  # the old run's checkpoints are gone, none mixed in
    rows = [json.loads(x) for x in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert (finished_run / "notes.txt").read_text() == "the user's own file"
    assert (finished_run / "README.md").read_text() == "the user's own notes"


def test_resume_policy_continues_the_newest_checkpoint_or_clears(tiny_model_dir, data, finished_run, tmp_path):
    # the settings finished_run was made with through the CLI (seed 42 is the CLI's default)
    cfg = make_cfg(tiny_model_dir, data, finished_run, max_steps=5, save_steps=1, seed=42)
    train(cfg, on_existing="resume")
    rows = [json.loads(x) for x in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5]
    # a dir that holds a run but no checkpoint is cleared and started afresh
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "metrics.jsonl").write_text('{"step": 99, "loss": 1.0}\n')
    train(make_cfg(tiny_model_dir, data, stale, max_steps=1), on_existing="resume")
    rows = [json.loads(x) for x in (stale / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]


# ----------------------------------------------------------------- nothing written before everything is checked

@pytest.mark.parametrize("extra, needle", [
    (["--beta", "0"], "--beta"),
    (["--max_prompt_length", "64"], "--max_prompt_length 64 must be < --max_length 64"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size"),
])
def test_config_error_against_an_existing_run_writes_nothing(tiny_model_dir, data, finished_run, extra, needle,
                                                             capsys):
    before = tree_hashes(finished_run)
    for mode in (["--resume_from", "latest"], ["--overwrite_output_dir"]):
        assert main(argv(tiny_model_dir, data, finished_run, "--max_steps", "5", *mode, *extra)) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and needle in err, err
        assert tree_hashes(finished_run) == before


def test_bad_data_or_model_with_overwrite_writes_nothing(tiny_model_dir, data, finished_run, tmp_path, capsys):
    before = tree_hashes(finished_run)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": 5, "rejected": "b"}\n')
    assert main(argv(tiny_model_dir, bad, finished_run, "--max_steps", "2", "--overwrite_output_dir")) == 2
    assert f"{bad}:2: field 'chosen'" in capsys.readouterr().err
    assert main(argv(tmp_path / "no-model", data, finished_run, "--max_steps", "2", "--overwrite_output_dir")) == 2
    assert "error:" in capsys.readouterr().err
    assert tree_hashes(finished_run) == before


# ------------------------------------------------------------------------------- resume with a new max_steps

def test_resume_with_larger_max_steps_follows_the_new_schedule(tiny_model_dir, data, tmp_path):
    """Cosine schedule, no warmup: lr(s) = lr0·½(1 + cos(π·s/S)). Stopped at step 2 of S = 4 and resumed with
    S = 8, step 3 must run at lr0·½(1 + cos(2π/8)) (the new schedule), not at ½(1 + cos(2π/4))·lr0 = ½·lr0."""
    a = tmp_path / "a"  # a finished 4-step run with checkpoints at 2 and 4; resumed from 2 with max_steps 8
    assert main(argv(tiny_model_dir, data, a, "--max_steps", "4", "--save_steps", "2")) == 0
    assert main(argv(tiny_model_dir, data, a, "--max_steps", "8", "--resume_from", str(a / "checkpoint-2"))) == 0
    rows = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines() if "loss" in x]
    lr = {r["step"]: r["learning_rate"] for r in rows}
    assert sorted(lr) == list(range(1, 9))
    lr0 = 1e-3
    for step in range(3, 9):  # the learning rate logged for step s is the rate that step ran at: lr(s − 1)
        assert lr[step] == pytest.approx(lr0 * 0.5 * (1 + math.cos(math.pi * (step - 1) / 8)), rel=1e-9), step
    assert lr[2] == pytest.approx(lr0 * 0.5 * (1 + math.cos(math.pi * 1 / 4)), rel=1e-9)  # ran under S = 4


# ----------------------------------------------------------------------------------------------- full disk

def test_full_disk_during_a_checkpoint_save_is_a_clear_error(tiny_model_dir, data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "disk"
    real_save = checkpoint_mod.torch.save

    def save_until_full(obj, f, *a, **kw):
        if "checkpoint-2" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(checkpoint_mod.torch, "save", save_until_full)
    assert main(argv(tiny_model_dir, data, out, "--max_steps", "3", "--save_steps", "1")) == 2
    err = capsys.readouterr().err
    assert "no space left" in err.lower() and "checkpoint-2" in err and "checkpoint-1 is intact" in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.glob("*checkpoint*")) == ["checkpoint-1"]  # no half-written dir left
    monkeypatch.setattr(checkpoint_mod.torch, "save", real_save)
    assert main(argv(tiny_model_dir, data, out, "--max_steps", "3", "--resume_from", "latest")) == 0
