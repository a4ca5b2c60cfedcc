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


def _hh_file(path, turns):
    import gzip
    import json

    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for t in turns:
            fh.write(json.dumps({"chosen": f"\n\nHuman: {t}\n\nAssistant: ok", "rejected": "x"}) + "\n")
    return str(path)


def test_chat_prompts_are_first_human_turns_through_the_chat_template(tmp_path):
    from search.scoring import banned_token_ids
    from tokendpo.modeling import build_preset

    turns = ["how do I bake bread?", "how do I bake bread?", "x" * 300, "tell me a joke", "what is a pen"]
    path = _hh_file(tmp_path / "hh.jsonl.gz", turns)
    d = str(build_preset("tiny-llama", tmp_path / "m", seed=0))
    pair = bench_search.make_pair("tiny-llama", {"policy": d, "reference": d})
    prompts = bench_search.chat_prompts(pair, 3, path)  # duplicate and > 200-char turns skipped, file order kept
    for ids, text in zip(prompts, ["how do I bake bread?", "tell me a joke", "what is a pen"]):
        assert ids == pair.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                         add_generation_prompt=True, tokenize=True)["input_ids"]
        assert text in pair.tokenizer.decode(ids)
    with pytest.raises(ValueError, match="3 first human turns"):
        bench_search.chat_prompts(pair, 4, path)
    row = bench_search.measure(pair, dict(decoder="mcts", prompts=3, width=4, new_tokens=5, leaf_batch=1),
                               prompt_len=12, chat=path)
    banned = set(banned_token_ids(pair.tokenizer, pair.policy.get_output_embeddings().weight.shape[0]))
    assert row["prompt_source"].startswith("HH-RLHF") and row["generated"] > 0
    assert not banned & {t for ids in row["token_ids"] for t in ids}
    assert row["peak_total_mb"] >= row["load_peak_mb"] > 0


def test_profile_splits_time_and_counts_rows_per_forward(capsys):
    """beam-K runs prompts·K rows per one-token forward; sequential MCTS at most one row per open tree; the time
    split adds up to the wall time."""
    assert bench_search.main(["--profile", "--models", "tiny-llama", "--prompts", "3", "--max_new_tokens", "4",
                              "--simulations", "4", "--beams", "4", "--profile_top", "3"]) == 0
    import json

    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    by = {r["decoder"]: r for r in rows}
    assert set(by) == {"beam-4", "mcts S=4 leaf batch 1", "mcts S=4 leaf batch 4"}
    assert 3 < by["beam-4"]["rows_per_forward"] <= 12  # up to 3 prompts × 4 beams
    assert 1 <= by["mcts S=4 leaf batch 1"]["rows_per_forward"] <= 3
    assert by["mcts S=4 leaf batch 4"]["rows_per_forward"] > by["mcts S=4 leaf batch 1"]["rows_per_forward"]
    for r in rows:
        assert r["step_forwards"] > 0
        assert r["step_s"] + r["prefill_s"] + r["other_s"] == pytest.approx(r["seconds"], abs=0.03)


def test_grid_run_writes_every_row_in_the_results_schema(tmp_path):
    """A grid run (fresh subprocess per configuration) writes {"rows", "command", "commit", "date"}; peak memory
    and total peak are per-process figures."""
    import json

    out = tmp_path / "r.json"
    assert bench_search.main(["--models", "tiny-llama", "--grid", "mcts:2:3:3", "--prompt_len", "10",
                              "--workdir", str(tmp_path / "w"), "--output", str(out)]) == 0
    data = json.loads(out.read_text())
    assert {"rows", "command", "commit", "date"} <= set(data) and data["complete"] is True
    (row,) = data["rows"]
    assert "error" not in row and set(bench_search.ROW_KEYS) <= set(row)
    assert (row["decoder"], row["prompts"], row["width"], row["new_tokens"]) == ("mcts", 2, 3, 3)
    assert row["peak_total_mb"] >= row["load_peak_mb"] > row["peak_extra_mb"] >= 0
    assert "token_ids" not in row and data["command"].endswith(f"--output {out}")
