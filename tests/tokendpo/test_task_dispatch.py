"""`python -m tokendpo.train` with no arguments or --task NAME runs the built-in pipeline, in its own output dir."""

import pytest

import tokendpo.tasks.pipeline as pipeline
from tokendpo.train import main


@pytest.mark.parametrize("argv,task,out", [
    ([], "sentiment", "outputs/default"),
    (["--task", "sentiment"], "sentiment", "outputs/default"),
    (["--task", "arithmetic"], "arithmetic", "outputs/arithmetic"),
    (["--task", "arithmetic", "--output_dir", "elsewhere", "--seed", "7"], "arithmetic", "elsewhere"),
])
def test_dispatch(monkeypatch, argv, task, out):
    calls = []
    monkeypatch.setattr(pipeline, "run_pipeline", lambda t, d, **kw: calls.append((t, d, kw)))
    assert main(argv) == 0
    assert [(t, d) for t, d, _ in calls] == [(task, out)]
    assert calls[0][2]["seed"] == (7 if "--seed" in argv else 42)
