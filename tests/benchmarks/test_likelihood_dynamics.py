"""Smoke run of benchmarks/likelihood_dynamics.py (--quick: tiny SFT, a few DPO steps, checkpoints every 2)."""

import json

from benchmarks.likelihood_dynamics import main


def test_quick_smoke(tmp_path, capsys):
    out = tmp_path / "ld"
    assert main(["--quick", "--task", "arithmetic", "--output_dir", str(out)]) == 0
    result = json.loads((out / "likelihood_dynamics.json").read_text())
    steps = [p["step"] for p in result["points"]]
    assert steps == [0, 2, 4]  # the reference itself, then every checkpoint
    assert result["points"][0]["ref_expectation"] == 0.0  # π = π_ref at step 0: every log-ratio is exactly 0
    assert all(p["ref_expectation"] == p["ref_expectation"] for p in result["points"])  # finite, not NaN
    assert len(result["per_step"]) == 4 and all(r["logps/chosen"] < 0 for r in result["per_step"])
    assert (out / "likelihood_dynamics.png").read_bytes()[:4] == b"\x89PNG"
    assert "E_ref" in capsys.readouterr().out
