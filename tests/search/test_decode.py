"""Every decoder through the CLI's dispatch: rewards against full-sequence rescoring, edge cases, the CLI —
its defaults (read from the policy, the default run), its output file (streamed, resumable) and its errors."""

import inspect
import json
import math
import os
import shutil

import pytest
import torch
import yaml

from search import beam, sampling
from search.config import DEFAULT_BETA, SearchConfig
from search.decode import decode_batch, encode_prompt, main, parse_args, run
from search.scorer import PairScorer
from search.scoring import banned_token_ids

METHODS = [
    dict(method="greedy"), dict(method="sample"), dict(method="bon", bon=3),
    dict(method="beam", beam=3), dict(method="beam", beam=2, score="likelihood"),
    dict(method="cbs", cbs=(2, 2, 3)), dict(method="mcts", simulations=3, top_k=3, rollout_len=2),
    dict(method="mcts", simulations=2, top_k=2, score="likelihood", reuse_cache=False),
    dict(method="mcts", simulations=4, top_k=3, leaf_batch=3, rollout_len=1),
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

        def __call__(self, texts, **kwargs):  # a tokenizer that gives an empty prompt no ids at all
            return {"input_ids": [[] for _ in texts] if isinstance(texts, list) else []}

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
    assert (cfg.method, cfg.cbs, cfg.score, cfg.beta) == ("cbs", (3, 2, 5), "likelihood", DEFAULT_BETA)
    cfg = parse_args(["--policy", "a", "--ref", "b", "--task", "t", "--mcts", "--simulations", "5",
                      "--reuse_cache", "false"])
    assert (cfg.method, cfg.simulations, cfg.reuse_cache) == ("mcts", 5, False)
    assert parse_args(["--policy", "a", "--ref", "b", "--prompts", "p"]).method == "greedy"
    cfg = parse_args(["--policy", "a", "--ref", "b", "--prompts", "p", "--mcts", "--topk", "3"])
    assert cfg.top_k == 3 and cfg.support() == (3, 1.0)  # --topk is an alias of --top_k


def test_python_api_defaults_equal_the_cli():
    """Every decoder's keyword defaults are SearchConfig's (= the CLI's): score, λ, support, proposal, guards."""
    cfg = SearchConfig()
    fields = {"score": cfg.score, "ref_weight": cfg.ref_weight, "top_k": cfg.top_k, "top_p": cfg.top_p,
              "proposal": cfg.proposal, "temperature": cfg.temperature, "length_norm": cfg.length_norm,
              "length_penalty": cfg.length_penalty, "no_repeat_ngram": cfg.no_repeat_ngram}
    checked = 0
    for fn in (beam.beam_search, beam.chunk_beam_search, sampling.best_of_n, sampling.sample, sampling.greedy):
        for name, p in inspect.signature(fn).parameters.items():
            if name in fields:
                assert p.default == fields[name], (fn.__name__, name)
                checked += 1
    assert checked >= 25


def _cli(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def _trained_policy(tmp_path, tiny_model_dir, name, model, beta, ref_model=None):
    d = tmp_path / name
    shutil.copytree(tiny_model_dir, d)
    (d / "train_config.yaml").write_text(yaml.safe_dump(
        {"model": {"model": str(model), "ref_model": ref_model}, "loss": {"beta": beta}}))
    return d


def test_beta_and_ref_come_from_the_policy(tmp_path, tiny_model_dir, ref_model_dir, capsys):
    """--ref and --beta missing: the reference is the model the policy was trained from (or its recorded
    ref_model) and β its training β; flags still win; a policy with no record needs --ref."""
    pol = _trained_policy(tmp_path, tiny_model_dir, "dpo", ref_model_dir, 0.37)
    cfg = parse_args(["--policy", str(pol), "--prompts", "p"])
    assert (cfg.ref, cfg.beta) == (str(ref_model_dir), 0.37)
    cfg = parse_args(["--policy", str(pol), "--prompts", "p", "--beta", "0.2", "--ref", "x"])
    assert (cfg.ref, cfg.beta) == ("x", 0.2)
    pol2 = _trained_policy(tmp_path, tiny_model_dir, "dpo2", "tiny-llama", 0.05, ref_model=str(ref_model_dir))
    assert parse_args(["--policy", str(pol2), "--prompts", "p"]).ref == str(ref_model_dir)
    rc, err = _cli(["--policy", str(tiny_model_dir), "--prompts", "p"], capsys)
    assert rc == 2 and "--ref is required" in err


def test_default_run_missing_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, err = _cli(["--mcts"], capsys)
    assert rc == 2 and "error:" in err and "python -m tokendpo.train" in err


def test_bare_command_decodes_the_default_run(tmp_path, monkeypatch, tiny_model_dir, ref_model_dir, policy,
                                              reference, tokenizer, rescore):
    """`python -m search.decode --mcts` with no paths: outputs/default/dpo against outputs/default/sft (read
    from its train_config.yaml, β too), the sentiment task's held-out prompts, gold_reward in the output; the
    rewards are β·(log π − log π_ref) of those two models, re-run independently."""
    from tokendpo.tasks import get_task

    monkeypatch.chdir(tmp_path)
    os.makedirs("outputs/default")
    shutil.copytree(ref_model_dir, "outputs/default/sft")
    _trained_policy(tmp_path / "outputs/default", tiny_model_dir, "dpo", "outputs/default/sft", 0.25)
    rc = main(["--mcts", "--simulations", "2", "--num_prompts", "3", "--max_new_tokens", "3", "--progress", "false",
               "--output", "new/dir/out.jsonl"])
    assert rc == 0
    rows = [json.loads(x) for x in open("new/dir/out.jsonl")]
    assert [r["prompt"] for r in rows] == get_task("sentiment").prompts("heldout", 3, 0)
    for r in rows:
        assert isinstance(r["gold_reward"], float)
        ids = encode_prompt(tokenizer, r["prompt"], False)
        want = 0.25 * (rescore(policy, ids, r["token_ids"]) - rescore(reference, ids, r["token_ids"]))
        torch.testing.assert_close(torch.tensor(r["token_rewards"], dtype=torch.float64), want, atol=1e-5, rtol=0)


def test_gold_is_judged_on_exactly_the_decoded_ids(tiny_model_dir, ref_model_dir, reference, tokenizer):
    """A policy that prefers BOS/UNK/PAD: none is generated, and gold judges the text of exactly the token ids
    (EOS excluded, nothing stripped)."""
    from tokendpo.modeling import load_model

    pol = load_model(str(tiny_model_dir)).eval()
    with torch.no_grad():
        for t in banned_token_ids(tokenizer):
            pol.lm_head.weight[t] *= 6.0

    class EchoTask:
        def gold_reward(self, prompt, response):
            return float(len(response))

    texts = ["the cat", "zebra", "", "ab"]
    for method in ("greedy", "beam", "bon", "mcts"):
        cfg = SearchConfig(method=method, beam=2, bon=2, simulations=2, max_new_tokens=6, progress=False,
                           batch_size=2)
        for r in run(cfg, pol, reference, tokenizer, texts, EchoTask()):
            body = r["token_ids"][:-1] if r["token_ids"][-1:] == [tokenizer.eos_token_id] else r["token_ids"]
            assert not set(body) & set(banned_token_ids(tokenizer)) and tokenizer.eos_token_id not in body
            assert r["completion"] == tokenizer.decode(body, skip_special_tokens=False)
            assert r["gold_reward"] == float(len(r["completion"]))


def _base(tiny_model_dir, ref_model_dir, prompts_file):
    return ["--policy", str(tiny_model_dir), "--ref", str(ref_model_dir), "--prompts", prompts_file,
            "--progress", "false", "--max_new_tokens", "4"]


def test_output_streams_to_partial_and_resumes(tiny_model_dir, ref_model_dir, tmp_path, monkeypatch, capsys):
    """A run killed after 3 of 7 records (batch size 2) leaves F.partial, never F; --resume keeps the whole
    first batch, re-decodes from prompt 3 and ends with F equal to an uninterrupted run's (sampling included:
    each batch has its own seeded generator)."""
    import search.decode as dec

    pfile = write_prompts(tmp_path / "p.jsonl", [f"prompt {i}" for i in range(7)])
    args = _base(tiny_model_dir, ref_model_dir, pfile) + ["--sample", "--batch_size", "2"]
    clean = tmp_path / "clean.jsonl"
    assert main(args + ["--output", str(clean)]) == 0
    out = tmp_path / "out.jsonl"
    real_record, calls = dec.record, []

    def dying_record(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_record(*a, **k)

    monkeypatch.setattr(dec, "record", dying_record)
    with pytest.raises(KeyboardInterrupt):
        main(args + ["--output", str(out)])
    monkeypatch.setattr(dec, "record", real_record)
    partial = tmp_path / "out.jsonl.partial"
    assert not out.exists() and len(partial.read_text().splitlines()) == 3
    with open(partial, "a") as fh:
        fh.write('{"prompt": "prompt 3", "compl')  # a torn last line
    rc, err = _cli(args + ["--output", str(out)], capsys)
    assert rc == 2 and "--resume" in err  # never overwrites unfinished work silently
    assert main(args + ["--output", str(out), "--resume"]) == 0
    assert out.read_text() == clean.read_text() and not partial.exists()


HOSTILE = [
    (["--beam", "0"], "--beam must be >= 1"), (["--bon", "0"], "--bon must be >= 1"),
    (["--beam", "-2"], "--beam must be >= 1"), (["--cbs", "2,0,3"], "--cbs"),
    (["--temperature", "nan"], "--temperature"), (["--beta", "-0.1"], "--beta"), (["--beta", "nan"], "--beta"),
    (["--top_p", "nan"], "top_p"), (["--top_k", "-1"], "top_k"), (["--max_new_tokens", "-1"], "--max_new_tokens"),
    (["--beam", "2", "--score", "mixed", "--ref_weight", "inf"], "--ref_weight"),
    (["--beam", "2", "--ref_weight", "0.5"], "--score mixed"), (["--beam", "2", "--proposal", "reference"], "--bon"),
    (["--resume"], "--resume needs --output"), (["--mcts", "--top_k", "0"], "bounded support"),
]


@pytest.mark.parametrize("extra,message", HOSTILE, ids=[" ".join(e) for e, _ in HOSTILE])
def test_bad_numbers_are_clear_errors(tiny_model_dir, ref_model_dir, tmp_path, capsys, extra, message):
    """Zero, negative and NaN values: one `error:` line naming the flag, exit 2 (--beam 0 used to run greedy)."""
    pfile = write_prompts(tmp_path / "p.jsonl", ["a"])
    rc, err = _cli(_base(tiny_model_dir, ref_model_dir, pfile) + extra, capsys)
    assert rc == 2 and "error:" in err and message in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(tiny_model_dir, ref_model_dir, tmp_path, capsys):
    pfile = write_prompts(tmp_path / "p.jsonl", ["a"])
    rc, err = _cli(_base(tiny_model_dir, ref_model_dir, pfile) + ["--device", "cuda"], capsys)
    assert rc == 2 and "CUDA" in err


def test_reference_with_another_tokenizer_of_the_same_size(tiny_model_dir, ref_model_dir, tmp_path, capsys):
    """Two tokens' ids swapped in the reference's tokenizer: same vocabulary size, different mapping — refused."""
    other = tmp_path / "other"
    shutil.copytree(ref_model_dir, other)
    tj = json.loads((other / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
    (other / "tokenizer.json").write_text(json.dumps(tj))
    pfile = write_prompts(tmp_path / "p.jsonl", ["a"])
    rc, err = _cli(_base(tiny_model_dir, other, pfile), capsys)
    assert rc == 2 and "different tokenizer vocabularies" in err


def test_prompt_longer_than_the_model(tiny_model_dir, ref_model_dir, tmp_path, capsys):
    """The tiny Llama has 512 positions; a 600-character prompt (601 tokens) leaves none to generate."""
    pfile = write_prompts(tmp_path / "p.jsonl", ["ok", "x" * 600])
    rc, err = _cli(_base(tiny_model_dir, ref_model_dir, pfile) + ["--output", str(tmp_path / "o.jsonl")], capsys)
    assert rc == 2 and "positions" in err and "prompt 2" in err
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.jsonl.partial").exists()


def test_output_that_is_a_directory(tiny_model_dir, ref_model_dir, tmp_path, capsys):
    pfile = write_prompts(tmp_path / "p.jsonl", ["a"])
    rc, err = _cli(_base(tiny_model_dir, ref_model_dir, pfile) + ["--output", str(tmp_path)], capsys)
    assert rc == 2 and "is a directory" in err
