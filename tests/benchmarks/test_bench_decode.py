"""benchmarks/bench_decode.py: the --quick rows are consistent (asserted on returned numbers, never on timings),
the HF arm's rewards are the implicit rewards our scorer computes for the same tokens, the floor's byte and FLOP
counts match a hand count on a fresh random shape, and --quick / bad flags write nothing."""

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks import bench_decode, bench_models
from search.scorer import ForwardCounter, PairScorer


@pytest.fixture(scope="module")
def quick_rows():
    return bench_decode.quick()


def test_quick_rows_are_consistent(quick_rows):
    arms = [(r["arm"], r.get("width"), r.get("batch")) for r in quick_rows]
    assert arms == [("sample", 1, None), ("beam", 1, None), ("beam", 3, None), ("decode_step", None, 1),
                    ("decode_step", None, 4)]
    for r in quick_rows:
        if r["arm"] == "decode_step":
            assert r["step_ms"] > 0 and r["floor_ms"] > 0
            assert r["ratio_to_floor"] == pytest.approx(r["step_ms"] / r["floor_ms"], rel=0.02)
            mem_s = (r["weight_bytes"] + r["kv_bytes"]) / (r["copy_gbps"] * 1e9)
            comp_s = r["flops"] / (r["matmul_gflops"] * 1e9)
            assert 1e3 * max(mem_s, comp_s) == pytest.approx(r["floor_ms"], rel=0.02, abs=2e-3)
            assert r["bound"] == ("memory" if mem_s >= comp_s else "compute")
            continue
        assert r["n"] == len(r["ours_times"]) == len(r["hf_times"]) == 2
        assert r["ours_s"] == min(r["ours_times"])
        assert r["hf_ref_s"] == min(r["hf_times"])
        assert r["time_ratio"] == pytest.approx(r["ours_s"] / r["hf_ref_s"], rel=0.01)
    sample = quick_rows[0]
    assert sample["tokens"] == sample["prompts"] * sample["new_tokens"]  # EOS banned: every row runs to the end
    for r in quick_rows[1:3]:
        assert r["same"] is True  # likelihood beam search: ours and transformers' decode the same tokens


def test_hf_sample_rewards_are_the_implicit_rewards():
    torch.manual_seed(random.randrange(2**31))
    cfg = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=48, vocab_size=97, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    models = [LlamaForCausalLM(LlamaConfig(**cfg)).eval() for _ in range(2)]
    pair = bench_models.Pair("rand", models[0], models[1], eos=2, pad=0, special=4)
    prompts = bench_models.random_prompts(pair, 3, 7, seed=random.randrange(1000))
    gen, rewards = bench_decode.hf_sample_with_rewards(pair, prompts, 6, 0.3, seed=1)
    assert all(len(g) == 6 and 2 not in g for g in gen)  # EOS suppressed
    scorer = PairScorer(models[0], models[1], beta=0.3, pad_token_id=0)
    own = torch.arange(3)
    lp = scorer.sequence_logps(models[0], prompts, gen, ForwardCounter(3), own)
    lr = scorer.sequence_logps(models[1], prompts, gen, ForwardCounter(3), own)
    for a, p, r in zip(rewards, lp, lr):
        assert a == pytest.approx((0.3 * (p - r)).tolist(), abs=1e-4)


@pytest.mark.parametrize("tied", [True, False])
def test_step_cost_matches_a_hand_count(tied):
    rng = random.Random()
    heads, kv = rng.choice([(4, 2), (6, 3), (4, 4)])
    hd, layers, inter, vocab = rng.choice([8, 16]), rng.randint(1, 3), rng.randint(20, 60), rng.randint(50, 120)
    h = heads * hd
    model = LlamaForCausalLM(LlamaConfig(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                                         num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab,
                                         tie_word_embeddings=tied))
    b, ctx = rng.randint(1, 9), rng.randint(1, 50)
    linear = layers * (2 * h * h + 2 * h * kv * hd + 3 * h * inter) + vocab * h  # incl. the LM head
    norms = layers * 2 * h + h
    cost = bench_decode.step_cost(model, b, ctx)
    assert cost["weight_bytes"] == 4 * (linear + norms)  # the embedding table is read once, as the LM head
    assert cost["kv_bytes"] == 4 * layers * 2 * kv * hd * b * ctx
    assert cost["flops"] == 2 * b * linear + layers * 4 * heads * hd * b * ctx
    floor, bound = bench_decode.floor_seconds(cost, copy_bps=1e9, matmul_fps=1e12)
    assert floor == max((cost["weight_bytes"] + cost["kv_bytes"]) / 1e9, cost["flops"] / 1e12)
    assert bound == "memory"


def test_quick_writes_nothing_and_bad_flags_are_errors(monkeypatch, capsys):
    def no_write(*a, **k):
        raise AssertionError("--quick must not write results")

    monkeypatch.setattr(bench_decode, "write_results", no_write)
    monkeypatch.setattr(bench_decode, "quick", lambda: [])
    assert bench_decode.main(["--quick"]) == 0
    for bad in (["--beams", "4,x"], ["--batches", "0"], ["--repeats", "0"]):
        assert bench_decode.main(bad) == 2
        err = capsys.readouterr().err
        assert "error:" in err and "Traceback" not in err


def test_headline_reads_the_rows(quick_rows):
    from benchmarks.headlines import HEADLINES, bench_decode as headline

    assert HEADLINES["bench_decode"] is headline
    text = headline(quick_rows)
    assert f"sampling {quick_rows[0]['speed_vs_hf']:.2f}×" in text
    assert f"beam-3 {quick_rows[2]['speed_vs_hf']:.2f}×" in text
    assert f"B=4 {quick_rows[4]['ratio_to_floor']:.2f}×" in text and "n = 2" in text
