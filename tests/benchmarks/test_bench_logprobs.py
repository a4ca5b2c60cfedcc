"""Smoke test of benchmarks/bench_logprobs.py --quick: it runs, checks chunked == naive, and its table holds
a measured peak and time for every impl × mode, with chunked's fwd+bwd peak below naive's."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_logprobs_quick():
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_logprobs", "--quick"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "agree on logps, d_hidden, d_weight" in text and "# command: python -m benchmarks.bench_logprobs --quick" in text
    table = text.split("\n\n")[1]  # the final table: header + one row per impl × mode
    rows = {}
    for line in table.splitlines()[1:]:
        f = line.split()
        rows[(f[4], f[3])] = dict(peak=float(f[5]), sec=float(f[7]), floor=float(f[8]))
    assert set(rows) == {(i, m) for i in ("naive", "chunked") for m in ("fwd", "fb")}, table
    assert all(r["sec"] > 0 and r["floor"] > 0 and r["peak"] >= 0 for r in rows.values())
    assert rows[("chunked", "fb")]["peak"] < rows[("naive", "fb")]["peak"], table
    assert re.search(r"GPU speed is unmeasured", text)
