"""benchmarks/score_family.py --quick on two tiny random Llamas: every quick decoder is measured and compared per
prompt, the printed rates agree with the W/T/L counts, and --quick writes nothing under benchmarks/."""

import re

from benchmarks import score_family
from tokendpo.modeling import build_preset


def test_quick_runs_compares_and_writes_nothing(tiny_model_dir, tmp_path, capsys):
    ref = build_preset("tiny-llama", tmp_path / "ref", seed=1)
    md = score_family.HERE / "RESULTS_score_family_sentiment.md"
    js = score_family.HERE / "results" / "score_family_sentiment.json"
    before = [(p.stat().st_mtime_ns if p.exists() else None) for p in (md, js)]
    rc = score_family.main(["--quick", "--policy", str(tiny_model_dir), "--ref", str(ref), "--max_new_tokens", "4",
                            "--beta", "0.2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert [(p.stat().st_mtime_ns if p.exists() else None) for p in (md, js)] == before
    paired = re.compile(r"\| \S+ \| (sample|best_likelihood) \|")
    rows = [line.split("|")[1:-1] for line in out.splitlines() if paired.match(line)]
    assert {r[0].strip() for r in rows} == set(score_family.QUICK) - {"sample"}
    for r in rows:
        w, t, l_, n = (int(r[i]) for i in (4, 5, 6, 7))
        assert w + t + l_ == n == 4
        assert float(r[8]) == (w + t / 2) / n
        lo, hi = (float(x) for x in r[9].strip(" []").split(","))
        assert lo <= float(r[8]) <= hi


def test_bad_arguments_are_errors(tiny_model_dir, tmp_path, capsys):
    assert score_family.main(["--quick", "--policy", str(tmp_path / "none")]) == 2
    assert "python -m tokendpo.train" in capsys.readouterr().err
    assert score_family.main(["--quick", "--policy", str(tiny_model_dir), "--ref", "x", "--decoders", "nope"]) == 2
    assert "unknown decoder" in capsys.readouterr().err


def test_goal_needs_both_baselines_and_diversity():
    def c(decoder, baseline, win, lo, distinct=1.0, rep=0.0, score="implicit"):
        return {"decoder": decoder, "baseline": baseline, "win_rate": win, "ci": [lo, 0.9], "score": score,
                "distinct_ratio": distinct, "repetition_delta": rep}

    rows = [c("a", "sample", 0.7, 0.6), c("a", "best_likelihood", 0.6, 0.51),   # met
            c("b", "sample", 0.7, 0.6), c("b", "best_likelihood", 0.6, 0.49),   # interval touches 0.5
            c("d", "sample", 0.7, 0.6, distinct=0.5), c("d", "best_likelihood", 0.7, 0.6, distinct=0.5),
            c("e", "sample", 0.7, 0.6, score="likelihood"), c("e", "best_likelihood", 0.7, 0.6, score="likelihood"),
            c("f", "sample", 0.7, 0.6)]                                          # no matched baseline
    assert score_family.goal_met(rows) == ["a"]
