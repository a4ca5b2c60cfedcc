"""The real-model search experiment (benchmarks/real_search.py, `real_sentiment --search`) on tiny random models:
rows per decoder, gold judged on the decoded text, paired comparisons recomputed here from the per-prompt gold, a
rerun that skips finished decoders, a split grid that reports only when complete; and the results-file merge that
puts its rows into paper_search.json beside the built-in tasks' rows."""

import argparse
import json
import random

import pytest

from benchmarks import real_search
from benchmarks.paired import ROW_KEYS
from benchmarks.results_file import merge_results, read_results, write_results
from tokendpo.modeling import build_preset, load_model, load_tokenizer

WORDS = ["good", "bad", "happy", "sad", "the", "movie", "was", "really", "awful", "great", "?", "I"]


@pytest.fixture(scope="module")
def pair(tiny_model_dir, tmp_path_factory):
    ref_dir = build_preset("tiny-llama", tmp_path_factory.mktemp("ref"), seed=1)
    return (load_model(str(tiny_model_dir)).eval(), load_model(str(ref_dir)).eval(),
            load_tokenizer(str(tiny_model_dir)))


def _args(**kw):
    base = dict(beta=0.1, max_new_tokens=6, seed=0, decode_batch=3, search_decoders="", quick=True)
    return argparse.Namespace(**{**base, **kw})


def _letters_gold(prompt, completion):
    """A stand-in gold with spread (random tiny models rarely write a word VADER scores): share of a–m letters."""
    letters = [c for c in completion.lower() if c.isalpha()]
    return round(sum(c <= "m" for c in letters) / len(letters), 1) if letters else 0.0


def test_vader_gold_is_vader_compound():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    vader = SentimentIntensityAnalyzer()
    rng = random.Random()
    for _ in range(20):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 8)))
        assert real_search.VaderGold().gold_reward("prompt", text) == pytest.approx(
            vader.polarity_scores(text)["compound"])


def test_search_rows_and_paired_comparisons(pair, tmp_path, monkeypatch):
    monkeypatch.setattr(real_search.VaderGold, "gold_reward", lambda self, p, c: _letters_gold(p, c))
    policy, reference, tok = pair
    rng = random.Random()
    prompts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) for _ in range(7)]
    assert real_search.run_search(policy, reference, tok, prompts, tmp_path, _args(), "cmd", "setup") == 0
    rows = [json.loads(line) for line in (tmp_path / real_search.ROWS_FILE).read_text().splitlines()]
    assert [r["decoder"] for r in rows] == list(real_search.QUICK_GRID)
    for r in rows:
        assert r["task"] == real_search.TASK and r["prompts"] == 7 and r["max_new_tokens"] == 6
        assert r["per_prompt_gold"] == [_letters_gold(p, c) for p, c in zip(prompts, r["completions"])]
        assert r["gold"] == pytest.approx(sum(r["per_prompt_gold"]) / 7)
    text = (tmp_path / "search.md").read_text()
    assert "command: `cmd`" in text and "Paired per prompt" in text
    assert (tmp_path / "real_search_compute.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # every paired comparison, recomputed from the rows
    _, results = real_search.search_report(rows, "cmd", "setup")
    by = {r["decoder"]: r for r in rows}
    sample = by["sample"]
    likelihood = [r for r in rows if r["score"] == "likelihood" and r["decoder"] != "sample"]
    for c in results:
        assert tuple(c) == ROW_KEYS
        d = by[c["decoder"]]
        if c["baseline"] == "sample":
            b = sample
        else:
            near = [x for x in likelihood if x is not d and abs(x["forward_tokens"] / d["forward_tokens"] - 1) <= 0.25]
            if not near:
                assert c["baseline_decoder"] is None and c["win_rate"] is None  # listed as not met
                continue
            b = max(near, key=lambda x: sum(x["per_prompt_gold"]) / 7)
            assert sum(b["per_prompt_gold"]) == pytest.approx(sum(by[c["baseline_decoder"]]["per_prompt_gold"]))
            b = by[c["baseline_decoder"]]
        w = sum(x > y for x, y in zip(d["per_prompt_gold"], b["per_prompt_gold"]))
        t = sum(x == y for x, y in zip(d["per_prompt_gold"], b["per_prompt_gold"]))
        assert (c["wins"], c["ties"], c["losses"]) == (w, t, 7 - w - t)
        assert c["win_rate"] == pytest.approx((w + t / 2) / 7) and c["ci"][0] <= c["win_rate"] <= c["ci"][1]
        assert c["forward_tokens_ratio"] == pytest.approx(d["forward_tokens"] / b["forward_tokens"])
        assert c["distinct_ratio"] == pytest.approx(d["distinct"] / sample["distinct"])
    assert {c["decoder"] for c in results} == set(real_search.QUICK_GRID) - {"sample"}


def test_split_grid_reports_when_complete_and_rerun_skips(pair, tmp_path, monkeypatch):
    policy, reference, tok = pair
    prompts = ["the movie was", "I was happy", "bad"]
    first = ",".join(real_search.QUICK_GRID[:2])
    real_search.run_search(policy, reference, tok, prompts, tmp_path, _args(search_decoders=first), "c", "s")
    assert not (tmp_path / "search.md").exists()  # two of six decoders: no report yet
    rest = ",".join(real_search.QUICK_GRID[2:])
    real_search.run_search(policy, reference, tok, prompts, tmp_path, _args(search_decoders=rest), "c", "s")
    assert (tmp_path / "search.md").exists()
    lines = (tmp_path / real_search.ROWS_FILE).read_text().splitlines()
    assert len(lines) == len(real_search.QUICK_GRID)

    def boom(*a, **k):
        raise AssertionError("a finished decoder was decoded again")

    monkeypatch.setattr(real_search, "decode_row", boom)
    real_search.run_search(policy, reference, tok, prompts, tmp_path, _args(), "c", "s")
    assert len((tmp_path / real_search.ROWS_FILE).read_text().splitlines()) == len(lines)


def test_unknown_decoder_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown \\['beam-lik-99'\\]"):
        real_search.grid_of("sample,beam-lik-99", quick=False)
    assert [d.name for d in real_search.grid_of("", quick=False)] == [d.name for d in real_search.SEARCH_GRID]


def test_merge_results_keeps_the_other_tasks(tmp_path):
    """paper_search writes its tasks; real_search merges its task; a paper_search rerun keeps the merged rows; a
    second merge replaces only its own task's rows."""
    rng = random.Random()
    built = [{"task": t, "x": rng.random()} for t in ("arithmetic", "sentiment") for _ in range(3)]
    real = [{"task": "real_sentiment", "x": rng.random()} for _ in range(2)]
    write_results("ps", built, "python -m benchmarks.paper_search", directory=tmp_path)
    merge_results("ps", real, "python -m benchmarks.real_sentiment --search", task="real_sentiment",
                  directory=tmp_path)
    got = read_results("ps", directory=tmp_path)
    assert got["rows"] == built + real and got["command"] == "python -m benchmarks.paper_search"
    assert got["sources"]["real_sentiment"]["command"] == "python -m benchmarks.real_sentiment --search"
    write_results("ps", built[:3], "rerun", directory=tmp_path)  # the main benchmark again: merged rows survive
    got = read_results("ps", directory=tmp_path)
    assert got["rows"] == built[:3] + real and got["command"] == "rerun" and "real_sentiment" in got["sources"]
    merge_results("ps", real[:1], "again", task="real_sentiment", directory=tmp_path)
    got = read_results("ps", directory=tmp_path)
    assert got["rows"] == built[:3] + real[:1] and got["sources"]["real_sentiment"]["command"] == "again"
    with pytest.raises(ValueError, match="every row must have task 'real_sentiment'"):
        merge_results("ps", built[:1], "x", task="real_sentiment", directory=tmp_path)


def test_a_decoder_another_process_finished_is_skipped(tmp_path, monkeypatch):
    """Two processes on one OUT: a decoder whose row appears while this process decodes another is not redone."""
    first, second = real_search.QUICK_GRID[:2]
    calls = []

    def fake_decode_row(gold, dec, *a, **k):
        calls.append(dec.name)
        if dec.name == first:  # meanwhile, the other process finishes `second`
            with open(tmp_path / real_search.ROWS_FILE, "a") as fh:
                fh.write(json.dumps({"decoder": second}) + "\n")
        return {"decoder": dec.name, "gold": 0.0, "log_ratio": 0.0, "length": 1.0, "distinct": 1.0,
                "forward_tokens": 1.0, "seconds": 0.0}

    monkeypatch.setattr(real_search, "decode_row", fake_decode_row)
    real_search.decode_grid(None, None, None, ["p"], tmp_path, _args(search_decoders=f"{first},{second}"), "x")
    assert calls == [first]
    assert [json.loads(line)["decoder"] for line in (tmp_path / real_search.ROWS_FILE).read_text().splitlines()] \
        == [second, first]
