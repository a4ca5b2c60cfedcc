"""Smoke test of benchmarks/vs_trl.py: --quick trains tokendpo and TRL 1.16's DPOTrainer (with TRL's own fused LM
head) on the same ids for 6 steps — tiny-llama with the sigmoid + 0.5·sft mixture, and a soft-capped Gemma-2-shaped
model with apo_zero under WPO weighting — and we check the numbers `run` returns: agreement, never timings."""

import math

import pytest

pytest.importorskip("trl", reason="trl is not importable (benchmark extra: pip install trl==1.16.0)")

import benchmarks.vs_trl as vs_trl  # noqa: E402
from benchmarks.vs_trl_report import TOL, misses  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One --quick run through `main` (which must not write benchmarks/results); `run`'s return value kept."""
    out = tmp_path_factory.mktemp("vs_trl") / "results.md"
    seen = {}
    real_run = vs_trl.run

    def spy(argv):
        seen.update(real_run(argv))
        return seen

    def no_write(*args, **kwargs):
        raise AssertionError("--quick must not write benchmarks/results")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vs_trl, "run", spy)
        mp.setattr(vs_trl, "write_results", no_write)
        assert vs_trl.main(["--quick", "--output", str(out)]) == 0  # asserts every agreement gate inside
    seen["markdown"] = out.read_text()
    return seen


def test_quick_rows_agree_with_trl(quick):
    rows = quick["rows"]
    assert [(r["model"], r["loss"]) for r in rows] == list(vs_trl.QUICK["cases"])
    for r in rows:
        assert 0 <= r["max_abs_diff"] <= TOL, r  # |Δ loss| over steps 1..6
        for key in ("speed_ratio", "memory_ratio"):  # present and sane; their size is not asserted (load-dependent)
            assert math.isfinite(r[key]) and r[key] > 0, r
        assert r["steps"] == vs_trl.QUICK_STEPS and r["n_runs"] == 1
    for case, reps in quick["runs"].items():
        assert misses(reps[0]["diffs"]["tokendpo"]) == {}, case
    assert "not results" in quick["markdown"]


def test_quick_trajectories_start_at_the_reference(quick):
    """Step 1: policy == reference, so every implicit reward is 0 in both frameworks, and both report the same
    summed log-probs; the mixture's loss is log 2 (sigmoid at 0) plus 0.5 × a positive NLL term."""
    for case, reps in quick["runs"].items():
        ours, theirs = (reps[0]["results"][fw]["rows"] for fw in ("tokendpo", "trl"))
        assert len(ours) == len(theirs) == vs_trl.QUICK_STEPS
        for row in (ours[0], theirs[0]):
            assert row["rewards/chosen"] == row["rewards/rejected"] == row["rewards/margins"] == 0.0, case
        assert ours[0]["logps/chosen"] == pytest.approx(theirs[0]["logps/chosen"], rel=1e-6)
        assert ours[0]["loss"] == pytest.approx(theirs[0]["loss"], abs=1e-6)
        if "sft" in case:
            assert ours[0]["loss"] > math.log(2) + 0.1
        assert len({round(r["loss"], 6) for r in ours}) > 1  # it trained: the loss moved


def test_both_heads_apply_the_soft_cap(quick):
    """On the soft-capped model both LM heads match a float64 head that applies c·tanh(z/c) to a few fp32 units
    of the summed log-probs (a head ignoring the cap would be off by far more: the raw logits reach ±5, c = 3)."""
    a = quick["accuracy"]["gemma2-softcap"]
    assert a["max_abs_logp"] > 10
    assert a["tokendpo_vs_fp64"] < 8 * a["ulp"] and a["trl_vs_fp64"] < 8 * a["ulp"], a


@pytest.mark.parametrize("argv, message", [(["--models", "nope"], "--models: unknown"),
                                            (["--losses", "sigmoid"], "--losses: unknown"),
                                            (["--steps", "1"], "--steps")])
def test_bad_flags_are_an_error_line(argv, message, capsys):
    assert vs_trl.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_headline_counts_rows_meeting_the_goal():
    from benchmarks.headlines import HEADLINES, vs_trl as headline

    assert HEADLINES["vs_trl"] is headline
    rows = [dict(model="a", loss="apo_zero", speed_ratio=1.62, memory_ratio=0.8, max_abs_diff=3e-5, n_runs=1),
            dict(model="b", loss="apo_zero", speed_ratio=4.1, memory_ratio=1.2, max_abs_diff=7e-5, n_runs=1),
            dict(model="c", loss="sigmoid+wpo", speed_ratio=1.2, memory_ratio=0.5, max_abs_diff=1e-6, n_runs=1)]
    text = headline(rows)  # only row a has both ≥ 1.5× speed and < 1× memory
    assert "1.20–4.10×" in text and "0.50–1.20×" in text and "met on 1/3" in text and "7.0e-05" in text
