"""benchmarks/likelihood_dynamics.py: the pair statistics on hand-built log-probs, and a --quick smoke run (tiny
SFT, a few plain-DPO steps, checkpoints every 2) that writes no results file."""

import json

import pytest

from benchmarks.likelihood_dynamics import main, pair_stats, result_rows


def test_pair_stats_hand_built():
    """z = 1.96 (tolerance 1e-3 for its 1.959964). Δ chosen = [-1, -3] (mean -2, s = √2, half-width 1.96·√2/√2 = 1.96); Δ rejected = [-2, -6] (mean -4,
    s = √8, half 1.96·2 = 3.92); margin β(Δc − Δr) = 0.1·[1, 3] (mean 0.2, half 0.196)."""
    pol = {"chosen": [-11.0, -13.0], "rejected": [-22.0, -26.0]}
    ref = {"chosen": [-10.0, -10.0], "rejected": [-20.0, -20.0]}
    st = pair_stats(pol, ref, beta=0.1)
    assert st["n"] == 2
    assert st["chosen_dlogp"] == pytest.approx(-2.0) and st["chosen_dlogp_ci"] == pytest.approx([-3.96, -0.04], abs=1e-3)
    assert st["rejected_dlogp"] == pytest.approx(-4.0) and st["rejected_dlogp_ci"] == pytest.approx([-7.92, -0.08], abs=1e-3)
    assert st["margin"] == pytest.approx(0.2) and st["margin_ci"] == pytest.approx([0.004, 0.396], abs=1e-3)


def test_quick_smoke(tmp_path, capsys):
    out, results = tmp_path / "ld", tmp_path / "results"
    assert main(["--quick", "--task", "arithmetic", "--output_dir", str(out), "--results_dir", str(results)]) == 0
    result = json.loads((out / "likelihood_dynamics.json").read_text())
    assert result["recipe"] == "plain"
    steps = [p["step"] for p in result["points"]]
    assert steps == [0, 2, 4]  # the reference itself, then every checkpoint
    p0 = result["points"][0]
    for name in ("train", "heldout"):  # π = π_ref at step 0: every log-ratio is exactly 0
        assert p0[name]["chosen_dlogp"] == 0.0 and p0[name]["rejected_dlogp"] == 0.0 and p0[name]["margin"] == 0.0
    assert p0["eq16_prediction"] == 0.0
    last = result["points"][-1]["train"]
    assert last["chosen_dlogp"] != 0.0 and last["chosen_dlogp_ci"][0] <= last["chosen_dlogp"] <= last["chosen_dlogp_ci"][1]
    rows = result_rows(result)
    assert len(rows) == 6 and {"chosen_dlogp", "margin", "eq16_prediction", "ci", "n"} <= set(rows[0])
    assert (out / "likelihood_dynamics.png").read_bytes()[:4] == b"\x89PNG"
    assert "Eq.16" in capsys.readouterr().out
    assert not results.exists()  # --quick never writes results


def test_bad_base_is_a_clear_error(tmp_path, capsys):
    assert main(["--quick", "--base", str(tmp_path), "--output_dir", str(tmp_path / "o")]) == 2
    assert "error:" in capsys.readouterr().err
