"""benchmarks/bench_sampler.py: both arms sample the model's own distribution (first-token frequencies against
softmax, so the timing compares like with like), the rows are consistent (asserted on the returned numbers, never
on timings), and --quick / bad flags write nothing."""

import random
import statistics

import pytest
import torch
from transformers import AutoModelForCausalLM

from benchmarks import bench_sampler, results_file
from tokendpo.data.encode import encode_prompts
from tokendpo.tasks import get_task


@pytest.fixture(scope="module")
def tiny():
    task = get_task("sentiment")
    tok = task.tokenizer(task.corpus(200, seed=0))
    torch.manual_seed(random.randrange(2**31))
    cfg = task.model_config(tok)
    cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers = 16, 32, 1
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.3)  # a spread-out first-token distribution
    return model, tok, task.prompts("train", 12, seed=random.randrange(1000))


@pytest.mark.parametrize("arm", ["ours_sample", "hf_sample", "search_sample"])
def test_each_arm_samples_the_models_distribution(tiny, arm):
    """2000 copies of one prompt, one new token: frequencies of the 8 likeliest tokens within 4 standard errors."""
    model, tok, prompts = tiny
    n = 2000
    _, ids = getattr(bench_sampler, arm)(model, tok, [prompts[0]] * n, max_new_tokens=1, seed=3, batch_size=500)
    enc = encode_prompts(tok, [prompts[0]], nonempty=True)[0]
    with torch.no_grad():
        p = torch.softmax(model(input_ids=torch.tensor([enc])).logits[0, -1].double(), -1)
    counts = torch.bincount(torch.tensor([y[0] for y in ids]), minlength=p.shape[0]).double()
    top = p.topk(8).indices
    se = (p[top] * (1 - p[top]) / n).sqrt()
    assert ((counts[top] / n - p[top]).abs() <= 4 * se).all(), (counts[top] / n, p[top])


def test_rows_are_consistent(tiny):
    model, tok, prompts = tiny
    row = bench_sampler.compare("tiny", model, tok, prompts[:6], k=2, new_tokens=5, batch=5, runs=3, threads=1)
    assert set(row) == {"model", "batch", "prompts", "samples_per_prompt", "new_tokens", "ours_s", "hf_generate_s",
                        "speedup", "speedup_range", "runs", "ours_unshared_s", "search_s", "ours_tokens", "hf_tokens",
                        "ours_times", "hf_times", "threads"}
    assert (row["prompts"], row["samples_per_prompt"]) == (6, 2)
    assert row["runs"] == len(row["ours_times"]) == len(row["hf_times"]) == 3
    assert row["ours_s"] == pytest.approx(statistics.median(row["ours_times"]), abs=2e-3)
    assert row["hf_generate_s"] == pytest.approx(statistics.median(row["hf_times"]), abs=2e-3)
    # from the per-round times (µs resolution), not the ms-rounded medians: a tiny model's rounds take a few ms
    assert row["speedup"] == pytest.approx(statistics.median(row["hf_times"]) / statistics.median(row["ours_times"]),
                                           rel=0.01)
    paired = [h / o for o, h in zip(row["ours_times"], row["hf_times"])]
    assert row["speedup_range"] == pytest.approx([min(paired), max(paired)], rel=0.02)
    for key in ("ours_tokens", "hf_tokens"):
        assert 12 <= row[key] <= 12 * 5  # 6 prompts × 2 responses: each ≥ 1 token, at most the budget


def test_quick_and_bad_flags_write_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(results_file, "RESULTS_DIR", tmp_path)
    assert bench_sampler.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "| sentiment-shape (random) | 8 | 8 × 2 | 24 |" in out
    assert bench_sampler.main(["--runs", "0"]) == 2
    assert "error: --runs must be >= 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
