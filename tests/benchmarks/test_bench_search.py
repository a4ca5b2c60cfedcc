"""benchmarks/bench_search.py: the --quick grid returns consistent rows (asserted on the returned numbers, never
on timings), cached and re-encoding MCTS agree, and --quick writes nothing to benchmarks/results/."""

import pytest

from benchmarks import bench_search
from search.mcts import expected_live_slots


def test_quick_rows_are_consistent():
    rows = bench_search.quick()
    by = {(r["decoder"], r["width"], r["leaf_batch"]): r for r in rows}
    assert set(by) == {("beam", 4, None), ("mcts", 4, 1), ("mcts-reencode", 4, 1), ("mcts", 8, 2)}
    for r in rows:
        assert set(bench_search.ROW_KEYS) <= set(r)
        assert r["forward_tokens"] > 0 and r["generated"] > 0
        assert r["ms_per_forward_token"] == pytest.approx(1e3 * r["seconds"] / r["forward_tokens"], rel=0.01, abs=1e-3)
    cached, fresh = by[("mcts", 4, 1)], by[("mcts-reencode", 4, 1)]
    assert cached["token_ids"] == fresh["token_ids"]
    for a, b in zip(cached["token_rewards"], fresh["token_rewards"]):
        assert a == pytest.approx(b, abs=1e-5)
    assert cached["forward_tokens"] < fresh["forward_tokens"]
    for key in [("mcts", 4, 1), ("mcts", 8, 2)]:
        r = by[key]
        assert 0 < r["pool_peak_slots"] <= expected_live_slots([12] * r["prompts"], r["new_tokens"], r["width"],
                                                               r["leaf_batch"])


def test_quick_writes_nothing_and_bad_grid_is_an_error(tmp_path, capsys):
    out = tmp_path / "bench_search.json"
    assert bench_search.main(["--quick", "--output", str(out)]) == 0
    assert not out.exists()
    assert "| tiny-llama | mcts |" in capsys.readouterr().out
    assert bench_search.main(["--grid", "mcts:2:x:4", "--output", str(out)]) == 2
    assert "error:" in capsys.readouterr().err and not out.exists()
