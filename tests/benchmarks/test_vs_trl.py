"""Smoke test of benchmarks/vs_trl.py: --quick trains tiny-llama with tokendpo and with TRL's DPOTrainer on the
same ids and asserts (inside main) that the ids, token counts and steps 1-6 agree; here we check the table."""

import math
import re

import pytest

pytest.importorskip("trl", reason="trl is not importable (benchmark extra: pip install trl==1.16.0)")

from benchmarks.vs_trl import QUICK_STEPS, main  # noqa: E402
from benchmarks.vs_trl_report import TOL  # noqa: E402


def _cells(table: str, prefix: str, n: int | None = None) -> list[list[str]]:
    """Cells of the table rows starting with `prefix` (and having `n` cells, when given)."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()
            if line.startswith(prefix)]
    return [r for r in rows if n is None or len(r) == n]


def test_quick_mode_agrees_and_reports(tmp_path, capsys):
    out = tmp_path / "results.md"
    assert main(["--quick", "--output", str(out)]) == 0  # raises AssertionError if ids, tokens or steps disagree
    table = out.read_text()
    assert table.strip() == capsys.readouterr().out.strip()
    assert f"command: `python -m benchmarks.vs_trl --quick --output {out}`" in table and "not results" in table

    runs = _cells(table, "| tiny-llama | tokendpo | 1 |") + _cells(table, "| tiny-llama | trl | 1 |")
    assert len(runs) == 2
    for row in runs:  # tok/s ×3, tok per CPU-s, peak RSS, Δ, wall: positive and finite; Δ below the peak
        nums = [float(x) for x in row[3:]]
        assert len(nums) == 7 and all(math.isfinite(x) and x > 0 for x in nums), row
        assert nums[5] < nums[4]

    ratio = _cells(table, "| tiny-llama | tokendpo |", n=6)  # speed (CPU), speed (wall), peak, Δ: vs TRL
    assert len(ratio) == 1 and all(float(x) > 0 for x in ratio[0][2:]), ratio

    agreement = _cells(table, "| tiny-llama | tokendpo |", n=14)  # model, framework, 11 metrics, gates missed
    assert len(agreement) == 1 and agreement[0][-1] == "none", agreement
    loss_diff = float(agreement[0][2].split()[0])
    assert 0 <= loss_diff <= TOL

    steps = re.findall(r"^\| (\d+) \| ([-\d.]+) / ([-\d.]+) \|", table, re.M)
    assert [int(s) for s, _, _ in steps] == list(range(1, QUICK_STEPS + 1))
    assert float(steps[0][1]) == float(steps[0][2]) == pytest.approx(math.log(2), abs=1e-6)  # policy == reference
    for _, ours, theirs in steps:
        assert abs(float(ours) - float(theirs)) <= TOL + 1e-6  # printed with 6 decimals

    accuracy = [r for r in _cells(table, "| tiny-llama |", n=9) if r[1][0].isdigit()]  # the fp64 account
    assert len(accuracy) == 1
    max_logp, unit, ours, theirs, between, grad_rel = map(float, accuracy[0][1:7])
    assert max_logp > 1 and 0 < unit < 1e-3
    assert ours < 8 * unit and theirs < 8 * unit and between < 16 * unit  # a few fp32 units of the sums
    assert 0 <= grad_rel < 1e-5
