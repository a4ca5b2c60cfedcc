"""Every decoder through the CLI's dispatch: rewards against full-sequence rescoring, edge cases, the CLI."""

import json
import math

import pytest
import torch

from search.config import SearchConfig
from search.decode import decode_batch, encode_prompt, main, parse_args, run
from search.scorer import PairScorer

METHODS = [
    dict(method="greedy"), dict(method="sample"), dict(method="bon", bon=3),
    dict(method="beam", beam=3), dict(method="beam", beam=2, score="likelihood"),
    dict(method="cbs", cbs=(2, 2, 3)), dict(method="mcts", simulations=3, topk=3, rollout_len=2),
    dict(method="mcts", simulations=2, topk=2, score="likelihood", reuse_cache=False),
    dict(method="mcts", simulations=4, topk=3, leaf_batch=3, rollout_len=1),
    dict(method="bon", bon=3, length_norm=1.0, length_penalty=0.05, no_repeat_ngram=2),
]


def _id(m):
    return "-".join(f"{k}={v}" for k, v in m.items())


@pytest.mark.parametrize("overrides", METHODS, ids=_id)
def test_token_rewards_equal_full_rescoring(scorer, policy, reference, tokenizer, make_prompts, rescore, overrides):
    """Σ token_rewards == β·(log π − log π_ref) of the whole response, each model re-run on the full sequence
    without cache or padding (≤ 1e-5); also per token. Prompts include an empty one (BOS only)."""
    cfg = SearchConfig(max_new_tokens=7, beta=scorer.beta, **overrides)
    prompts = make_prompts(4, seed=51) + [tokenizer("")["input_ids"]]
    eos = tokenizer.eos_token_id
    out = decode_batch(scorer, prompts, cfg, eos, torch.Generator().manual_seed(0))
    assert len(out) == len(prompts)
    for p, d in zip(prompts, out):
        assert 1 <= len(d.token_ids) <= 7 and len(d.token_rewards) == len(d.token_ids)
        assert eos not in d.token_ids[:-1]  # never past EOS
        want = scorer.beta * (rescore(policy, p, d.token_ids) - rescore(reference, p, d.token_ids))
        torch.testing.assert_close(torch.tensor(d.token_rewards, dtype=torch.float64), want, atol=1e-5, rtol=0)
        assert d.reward == pytest.approx(float(want.sum()), abs=1e-5)
        assert d.forward_tokens >= 2 * len(p)


@pytest.mark.parametrize("overrides", METHODS, ids=_id)
def test_eos_first_model(table_lm, overrides):
    """A policy that puts 0.99+ on EOS everywhere: every decoder returns [EOS] with its exact reward."""
    V, EOS = 5, 1
    pol = table_lm({}, V, default=[0.0, 12.0, 0.0, 0.0, 0.0])
    ref = table_lm({}, V)  # uniform
    scorer = PairScorer(pol, ref, beta=0.5, pad_token_id=0)
    cfg = SearchConfig(max_new_tokens=4, beta=0.5, **overrides)
    out = decode_batch(scorer, [[0], [0, 3, 4]], cfg, EOS, torch.Generator().manual_seed(0))
    want = 0.5 * (float(torch.log_softmax(torch.tensor([0.0, 12.0, 0.0, 0.0, 0.0]), 0)[1]) - math.log(1 / V))
    for d in out:
        assert d.token_ids == [EOS]
        assert d.token_rewards == pytest.approx([want], abs=1e-6)


@pytest.mark.parametrize("overrides", METHODS, ids=_id)
def test_max_new_tokens_zero(scorer, make_prompts, overrides):
    out = decode_batch(scorer, make_prompts(2, seed=52), SearchConfig(max_new_tokens=0, **overrides), 2,
                       torch.Generator())
    assert [(d.token_ids, d.token_rewards, d.reward, d.forward_tokens) for d in out] == [([], [], 0.0, 0)] * 2


def test_encode_prompt_empty_and_without_bos(tokenizer):
    assert encode_prompt(tokenizer, "", False) == [tokenizer.bos_token_id]

    class NoBos:
        bos_token_id, eos_token_id = None, 7

        def __call__(self, text):
            return {"input_ids": []}

    assert encode_prompt(NoBos(), "", False) == [7]
    chat = encode_prompt(tokenizer, "hi", True)
    assert tokenizer.decode(chat).endswith("<|assistant|>\n")


def write_prompts(path, prompts):
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return str(path)


def test_cli_writes_contract_jsonl(tiny_model_dir, ref_model_dir, tmp_path):
    prompts = ["the cat", "", "zebra crossing", "a"]
    out = tmp_path / "out.jsonl"
    rc = main(["--policy", str(tiny_model_dir), "--ref", str(ref_model_dir), "--prompts",
               write_prompts(tmp_path / "p.jsonl", prompts), "--beam", "2", "--max_new_tokens", "5",
               "--output", str(out), "--progress", "false", "--batch_size", "3", "--beta", "0.2"])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == prompts  # input order across batches
    for r in rows:
        assert set(r) == {"prompt", "completion", "token_ids", "token_rewards", "reward", "forward_tokens"}
        assert len(r["token_ids"]) == len(r["token_rewards"]) <= 5
        assert r["reward"] == pytest.approx(sum(r["token_rewards"]), abs=1e-6)
        assert isinstance(r["forward_tokens"], int) and r["forward_tokens"] > 0
        assert isinstance(r["completion"], str)


def test_cli_task_adds_gold_reward(tiny_model_dir, ref_model_dir, policy, reference, tokenizer):
    """--task code path with a stand-in task (the real tasks are tested by their owners)."""

    class FakeTask:
        def prompts(self, split, n, seed):
            assert split == "heldout"
            return [f"prompt {i}" for i in range(n)]

        def gold_reward(self, prompt, response):
            return float(len(response))

    cfg = SearchConfig(policy=str(tiny_model_dir), ref=str(ref_model_dir), task="fake", num_prompts=3,
                       max_new_tokens=4, method="greedy", progress=False)
    rows = list(run(cfg, policy, reference, tokenizer, FakeTask().prompts("heldout", 3, 0), FakeTask()))
    assert [r["gold_reward"] for r in rows] == [float(len(r["completion"])) for r in rows]


def test_cli_errors(tiny_model_dir, ref_model_dir, tmp_path, capsys):
    base = ["--policy", str(tiny_model_dir), "--ref", str(ref_model_dir)]
    assert main(base + ["--prompts", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    assert main(base + ["--prompts", str(bad)]) == 2
    assert "bad.jsonl:2: field 'prompt'" in capsys.readouterr().err
    assert main(base + ["--prompts", str(bad), "--task", "sentiment"]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert main(base + ["--prompts", str(bad), "--cbs", "2,2,3", "--beta", "0"]) == 2
    assert "--beta" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(base + ["--prompts", "x", "--beam", "2", "--mcts"])  # one decoder at a time
    with pytest.raises(SystemExit):
        parse_args(base + ["--prompts", "x", "--cbs", "2,2"])


def test_parse_args_sets_method_and_defaults():
    cfg = parse_args(["--policy", "a", "--ref", "b", "--prompts", "p", "--cbs", "3,2,5", "--score", "likelihood"])
    assert (cfg.method, cfg.cbs, cfg.score, cfg.beta) == ("cbs", (3, 2, 5), "likelihood", SearchConfig.beta)
    cfg = parse_args(["--policy", "a", "--ref", "b", "--task", "t", "--mcts", "--simulations", "5",
                      "--reuse_cache", "false"])
    assert (cfg.method, cfg.simulations, cfg.reuse_cache) == ("mcts", 5, False)
    assert parse_args(["--policy", "a", "--ref", "b", "--prompts", "p"]).method == "greedy"
