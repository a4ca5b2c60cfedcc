"""Smoke test of benchmarks/bench_search.py: the --quick mode runs, asserts agreement and prints both tables."""

import re

from benchmarks.bench_search import main


def test_quick_mode_agrees_and_reports(tmp_path, capsys):
    out = tmp_path / "results.md"
    assert main(["--quick", "--output", str(out)]) == 0  # raises AssertionError if any output disagrees
    table = out.read_text()
    assert table.strip() == capsys.readouterr().out.strip()
    beam_rows = re.findall(r"^\| tiny-llama \| (\d+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)× \| yes \|", table,
                           re.MULTILINE)
    assert [int(r[0]) for r in beam_rows] == [1, 4]
    for _, tokens, ours, theirs, ratio in beam_rows:
        assert int(tokens) > 0 and float(ours) > 0 and float(theirs) > 0
        assert abs(float(ratio) - float(ours) / float(theirs)) < 0.02 * float(ratio) + 0.01
    mcts_rows = re.findall(r"^\| tiny-llama \| 4 \| 4 \| 4 \| [\d.]+ \| [\d.]+ \| [\d.]+× \| yes \| (\d+) / (\d+) \|",
                           table, re.MULTILINE)
    assert len(mcts_rows) == 1
    cached, reencoded = map(int, mcts_rows[0])
    assert cached < reencoded  # the cache runs fewer positions for the same search
    assert "command: `python -m benchmarks.bench_search --quick" in table
