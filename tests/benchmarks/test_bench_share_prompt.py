"""Smoke test of benchmarks/bench_share_prompt.py --quick: both arms run on real HH pairs and agree."""

import re

from benchmarks.bench_share_prompt import main


def test_quick_runs_and_agrees(capsys):
    assert main(["--quick"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| tiny-llama"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    plain, shared, diff = float(cells[3]), float(cells[4]), float(cells[6])
    assert plain > 0 and shared > 0 and diff < 1e-3
    assert re.search(r"QUICK: not a result", out)
