"""benchmarks/bench_share_prompt.py --quick: both arms run on real HH pairs and agree.

The verdict rests on the returned numbers (the log-prob agreement), never on a timing: a fast machine may
measure a CPU time of 0.0 s for a tiny step, a loaded one anything at all."""

from benchmarks.bench_share_prompt import run
from benchmarks.results_file import RESULTS_DIR


def test_quick_runs_and_agrees(capsys):
    before = sorted(RESULTS_DIR.glob("*.json")) if RESULTS_DIR.exists() else []
    rows = run(["--quick"])
    assert [r["model"] for r in rows] == ["tiny-llama"]
    (row,) = rows
    assert row["steps"] == 2
    assert row["max_abs_dlogp"] < 1e-3  # shared-prompt log-probs equal the padded path's up to fp32 rounding
    assert 0.0 < row["prompt_share"] < 1.0
    assert "QUICK: not a result" in capsys.readouterr().out
    assert (sorted(RESULTS_DIR.glob("*.json")) if RESULTS_DIR.exists() else []) == before  # quick writes nothing
