"""Smoke test of benchmarks/paper_search.py: --quick trains tiny policies, decodes with every decoder family and
writes rows whose numbers agree with independent recomputation (task gold reward, win rate, SFT log-ratio 0)."""

import json
import math

import pytest

from benchmarks.paper_search import main
from tokendpo.tasks import get_task

QUICK_DECODERS = {"sample", "greedy", "bon-4", "beam-2", "beam-lik-2", "cbs-2,2,4", "mcts-4", "mcts-lik-4"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper_search")
    assert main(["--quick", "--out", str(out), "--seed", "3"]) == 0
    rows = [json.loads(line) for line in open(out / "results_sentiment.jsonl")]
    return out, rows


def test_rows_present_and_finite(quick_run):
    _, rows = quick_run
    policies = {r["checkpoint"] for r in rows}
    assert any(c.startswith("early") for c in policies) and any(c.startswith("final") for c in policies)
    for ck in policies - {"sft"}:
        assert {r["decoder"] for r in rows if r["checkpoint"] == ck} == QUICK_DECODERS
    assert {r["decoder"] for r in rows if r["checkpoint"] == "sft"} == {"sample", "greedy"}
    for r in rows:
        for k in ("gold", "win", "log_ratio", "length", "distinct", "repetition", "forward_tokens", "seconds"):
            assert math.isfinite(r[k]), (k, r["decoder"])
        assert r["forward_tokens"] > 0 and 1 <= r["length"] <= r["max_new_tokens"]
        assert 0 <= r["repetition"] <= 1 and 1 / r["prompts"] <= r["distinct"] <= 1


def test_numbers_match_independent_recomputation(quick_run):
    _, rows = quick_run
    task = get_task("sentiment")
    prompts = task.prompts("heldout", rows[0]["prompts"], seed=3)
    for r in rows:
        g, b = r["per_prompt_gold"], r["baseline_gold"]
        assert len(g) == len(b) == len(prompts)
        # win rate: an independent count, ties ½
        wins = sum(1.0 for x, y in zip(g, b) if x > y) + 0.5 * sum(1 for x, y in zip(g, b) if x == y)
        assert r["win"] == pytest.approx(wins / len(g), abs=1e-12)
        assert r["gold"] == pytest.approx(sum(g) / len(g), abs=1e-9)
        assert r["log_ratio"] == pytest.approx(sum(r["per_prompt_log_ratio"]) / len(g), abs=1e-9)
        # the stored completions score what the task's own gold reward says
        for p, y, gold in zip(prompts, r["examples"], g):
            assert task.gold_reward(p, y) == pytest.approx(gold, abs=1e-12)
        if r["checkpoint"] == "sft":  # π = π_ref: every log-ratio is 0 (cached decode vs one rescoring pass: 1e-4)
            assert all(abs(x) < 1e-4 for x in r["per_prompt_log_ratio"])


def test_report_and_figures(quick_run):
    out, rows = quick_run
    text = (out / "RESULTS.md").read_text()
    assert "command: `python -m benchmarks.paper_search --quick" in text
    pivot, full = text.split("All metrics:")
    assert len([ln for ln in full.splitlines() if ln.startswith("| sentiment |")]) == len(rows)
    assert len([ln for ln in pivot.splitlines() if ln.startswith("| sentiment |")]) == len({r["checkpoint"] for r in rows})
    for png in ("winrate_vs_search.png", "quality_vs_compute.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
