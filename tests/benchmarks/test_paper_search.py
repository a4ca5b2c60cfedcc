"""benchmarks/paper_search.py end to end: --quick trains tiny plain-DPO policies, decodes every decoder family, the
frontier and the β-variant picks, and writes rows whose numbers agree with independent recomputation (task gold,
win/tie/loss counts, the ±25 % matched likelihood baseline); a rerun skips finished rows and redoes a missing one.
"""

import json
import math

import pytest

from benchmarks import paper_search_grid as grid
from benchmarks.paired import ROW_KEYS
from benchmarks.paper_search import main, read_rows
from benchmarks.paper_search_report import json_rows, paired
from benchmarks.results_file import RESULTS_DIR
from tokendpo.tasks import get_task

RESULTS_JSON = RESULTS_DIR / "paper_search.json"


def _stamp():
    return RESULTS_JSON.stat().st_mtime_ns if RESULTS_JSON.exists() else None


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper_search")
    before = _stamp()
    assert main(["--quick", "--out", str(out)]) == 0
    assert _stamp() == before  # --quick never writes benchmarks/results
    return out, read_rows(out)


def _group(rows, beta, checkpoint):
    return {r["decoder"]: r for r in rows if r["beta"] == beta and r["checkpoint"] == checkpoint}


def test_every_job_has_its_rows(quick_run):
    _, rows = quick_run
    main_names = {d.name for d in grid.main_grid(quick=True)}
    frontier = {d.name for d in grid.frontier_grid(quick=True)}
    assert set(_group(rows, 0.1, "final")) == main_names | frontier
    assert set(_group(rows, 0.1, "early")) == main_names
    # every family of the issue is there, and every score for beam and MCTS
    fams = {r["family"] for r in rows}
    for fam in ("sample", "greedy", "beam-lik", "beam-implicit", "beam-mixed0.5", "bon-implicit-ref",
                "bon-implicit-policy", "cbs-implicit-ref", "mcts-lik", "mcts-implicit", "mcts-mixed0.5"):
        assert fam in fams, fam
    # β = 0.5: sampling + the best likelihood beam + the best implicit-guided decoder of β = 0.1 final, by gold,
    # + the likelihood beam nearest the latter's forward tokens
    final = list(_group(rows, 0.1, "final").values())
    lik = max((r for r in final if r["family"] == "beam-lik" and r["support_tag"] == "default"),
              key=lambda r: (r["gold"], -r["forward_tokens"]))
    guided = max((r for r in final if r["ref_weight"] < 1), key=lambda r: (r["gold"], -r["forward_tokens"]))
    near = min((r for r in final if r["family"] == "beam-lik"),
               key=lambda r: abs(math.log(r["forward_tokens"] / guided["forward_tokens"])))
    assert set(_group(rows, 0.5, "final")) == {"sample", lik["decoder"], guided["decoder"], near["decoder"]}
    assert lik["ref_weight"] == 1.0 and lik["score"] == "likelihood" and guided["score"] in ("implicit", "mixed")


def test_numbers_match_independent_recomputation(quick_run):
    _, rows = quick_run
    task = get_task("sentiment")
    prompts = task.prompts("heldout", rows[0]["prompts"], seed=0)
    for r in rows:
        g = r["per_prompt_gold"]
        assert len(g) == len(r["completions"]) == len(prompts)
        for p, y, gold in zip(prompts, r["completions"], g):  # stored completions score what the task says
            assert task.gold_reward(p, y) == pytest.approx(gold, abs=1e-12)
        assert r["gold"] == pytest.approx(sum(g) / len(g), abs=1e-9)
        assert r["log_ratio"] == pytest.approx(sum(r["per_prompt_log_ratio"]) / len(g), abs=1e-9)
        assert r["distinct"] == pytest.approx(len(set(r["completions"])) / len(prompts))
        for k in ("length", "repetition", "forward_tokens", "seconds"):
            assert math.isfinite(r[k]), (k, r["decoder"])
        assert r["forward_tokens"] > 0 and 1 <= r["length"] <= r["max_new_tokens"]


def test_paired_rows_schema_counts_and_matching(quick_run):
    _, rows = quick_run
    compared, unmatched = paired(rows)
    by = {(r["policy"], r["decoder"]): r for r in rows}
    assert compared
    for c in compared:
        assert tuple(c) == ROW_KEYS
        ours, theirs = by[(c["policy"], c["decoder"])], by[(c["policy"], c["baseline_decoder"])]
        d, b = ours["per_prompt_gold"], theirs["per_prompt_gold"]
        w, t = sum(x > y for x, y in zip(d, b)), sum(x == y for x, y in zip(d, b))
        assert (c["wins"], c["ties"], c["losses"], c["n"]) == (w, t, len(d) - w - t, len(d))
        assert c["win_rate"] == pytest.approx((w + t / 2) / len(d))
        assert c["ci"][0] <= c["win_rate"] <= c["ci"][1]
        assert c["forward_tokens_ratio"] == pytest.approx(ours["forward_tokens"] / theirs["forward_tokens"])
        sample = by[(c["policy"], "sample")]
        assert c["repetition_delta"] == pytest.approx(ours["repetition"] - sample["repetition"])
        if c["baseline"] == "sample":
            assert c["baseline_decoder"] == "sample"
            continue
        # best_likelihood: a likelihood decoder within ±25 % forward tokens, the best mean gold of those
        near = [r for r in rows if r["policy"] == c["policy"] and r["score"] == "likelihood"
                and r["decoder"] not in ("sample", c["decoder"])
                and abs(r["forward_tokens"] / ours["forward_tokens"] - 1) <= 0.25]
        assert theirs in near and theirs["gold"] == pytest.approx(max(r["gold"] for r in near))
    for u in unmatched:  # no likelihood decoder within ±25 %: listed, and a null best_likelihood JSON row
        ours = by[(u["policy"], u["decoder"])]
        assert not [r for r in rows if r["policy"] == u["policy"] and r["score"] == "likelihood"
                    and r["decoder"] not in ("sample", u["decoder"])
                    and abs(r["forward_tokens"] / ours["forward_tokens"] - 1) <= 0.25]
    doc = json_rows(compared, unmatched)
    assert all(tuple(r) == ROW_KEYS for r in doc)
    assert len([r for r in doc if r["win_rate"] is None]) == len(unmatched)
    assert all(r["baseline"] in ("sample", "best_likelihood") for r in doc)


def test_rerun_skips_done_rows_and_redoes_a_missing_one(quick_run, capsys):
    out, rows = quick_run
    path = out / "results_sentiment.jsonl"
    lines = path.read_text().splitlines()
    dropped = json.loads(lines[5])
    path.write_text("\n".join(lines[:5] + lines[6:]) + "\n")
    capsys.readouterr()
    assert main(["--quick", "--out", str(out)]) == 0
    plan = capsys.readouterr().out
    assert "1 of 23 decoders to do" in plan and "0 of 6 decoders to do" in plan
    again = read_rows(out)
    assert len(again) == len(rows)
    assert [(r["beta"], r["checkpoint"], r["decoder"]) for r in again][-1] == \
        (dropped["beta"], dropped["checkpoint"], dropped["decoder"])


def test_report_and_frontier_figure(quick_run):
    out, rows = quick_run
    text = (out / "RESULTS.md").read_text()
    assert "command: `python -m benchmarks.paper_search --quick" in text
    assert "Goal (an implicit-guided decoder" in text and "Over-optimisation frontier" in text
    assert (out / "paper_search_frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = grid.frontier_rows(list(_group(rows, 0.1, "final").values()))
    # λ ∈ {0, 0.5, 1} × {restricted, unrestricted}, each over the same K grid
    assert set(lines) == {(lam, tag) for lam in (0.0, 0.5, 1.0) for tag in ("restricted", "unrestricted")}
    assert all([r["x"] for r in v] == [1, 2] for v in lines.values())


@pytest.mark.parametrize("argv", [["--set", "nope=1"], ["--tasks", "nope"], ["--prompts", "0"],
                                  ["--betas", "0.1,x"], ["--jobs", "final,nope"]])
def test_bad_input_is_an_error_line_and_exit_2(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--quick", "--out", str(tmp_path), *argv])
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err
    assert not list(tmp_path.glob("results_*.jsonl"))
