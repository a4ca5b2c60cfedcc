"""Smoke test of benchmarks/bench_packing.py --quick: both layouts measured, packing computes no padding."""

import re

from benchmarks.bench_packing import main


def test_quick_packing_benchmark(capsys):
    assert main(["--quick"]) == 0
    out = capsys.readouterr().out
    rows = {m.group(1): (int(m.group(2)), float(m.group(3))) for m in
            re.finditer(r"^\| (padded|packed) \| (\d+) \| ([\d.]+)% \|", out, re.M)}
    assert set(rows) == {"padded", "packed"}
    assert rows["packed"][1] == 0.0
    assert rows["packed"][0] < rows["padded"][0]  # HH responses differ in length: padding exists to remove
