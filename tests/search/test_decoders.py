"""The decoder registry drives `python -m search.decode`: every registered decoder has its flag, the dispatch
reaches its function, the docs list it; and a decoder registered at test time (no other file edited) gets a
flag, its own option, validation, dispatch, docs and a full CLI run."""

import dataclasses
import json

import pytest
import torch

from search import decoders, sampling
from search.config import SearchConfig
from search.decode import build_parser, decode_batch, main, parse_args
from search.decoders import DECODERS, Decoder, Option
from search.docgen import render
from search.scorer import PairScorer
from search.scoring import banned_token_ids

BASE = ["--policy", "a", "--ref", "b", "--prompts", "p"]
VALUES = {"bon": "3", "beam": "2", "cbs": "2,3,4"}  # a valid value for each built-in decoder flag that takes one


def _flag_argv(d: Decoder) -> list[str]:
    return [f"--{d.name}"] + ([VALUES[d.name]] if d.flag.get("action") != "store_true" else [])


def test_builtin_decoders_and_their_public_flags():
    """The flags are a public contract: exactly these names, in this order, each in the one exclusive group."""
    assert list(DECODERS) == ["sample", "greedy", "bon", "beam", "cbs", "mcts"]
    ap = build_parser()
    group = [g for g in ap._mutually_exclusive_groups]
    assert len(group) == 1
    assert [a.option_strings for a in group[0]._group_actions] == [[f"--{n}"] for n in DECODERS]


@pytest.mark.parametrize("name", list(DECODERS))
def test_registry_drives_parser(name):
    """--NAME selects method NAME, and a flag with a value sets the decoder's config field to the parsed value."""
    d = DECODERS[name]
    cfg = parse_args(BASE + _flag_argv(d))
    assert cfg.method == name
    if d.sets:
        parsed = tuple(int(x) for x in VALUES[name].split(",")) if "," in VALUES[name] else int(VALUES[name])
        assert getattr(cfg, d.sets) == parsed
    for f in d.fields:  # the config fields it reads exist
        assert f in {x.name for x in dataclasses.fields(SearchConfig)}
    help_text = build_parser().format_help()
    assert f"--{name}" in help_text and d.help.split()[0] in help_text
    assert f"`--{name}`" in render()  # docs/FLAGS.md is generated from the same parser


@pytest.mark.parametrize("name", list(DECODERS))
def test_dispatch_reaches_registered_function(monkeypatch, name):
    """decode_batch calls the registered run with the config, EOS, generator and banned tokens unchanged."""
    calls = []

    def spy(scorer, prompts, cfg, *, eos_token_id, generator, banned):
        calls.append((scorer, prompts, cfg.method, eos_token_id, generator, banned))
        return ["out"] * len(prompts)

    monkeypatch.setitem(DECODERS, name, dataclasses.replace(DECODERS[name], run=spy))
    g = torch.Generator()
    cfg = parse_args(BASE + _flag_argv(DECODERS[name]))
    assert decode_batch("S", [[1], [2, 3]], cfg, 7, g, [5]) == ["out", "out"]
    assert calls == [("S", [[1], [2, 3]], name, 7, g, [5])]


def test_builtin_greedy_is_the_plain_function(scorer, make_prompts, tokenizer):
    """The adapter adds nothing: dispatching greedy equals calling search.sampling.greedy with the same limits."""
    prompts = make_prompts(3, seed=91)
    banned = banned_token_ids(tokenizer, scorer.policy.config.vocab_size)
    cfg = SearchConfig(method="greedy", max_new_tokens=5, no_repeat_ngram=2)
    got = decode_batch(scorer, prompts, cfg, tokenizer.eos_token_id, torch.Generator(), banned)
    want = sampling.greedy(scorer, prompts, max_new_tokens=5, eos_token_id=tokenizer.eos_token_id,
                           no_repeat_ngram=2, banned_tokens=banned)
    assert [d.token_ids for d in got] == [d.token_ids for d in want]


# ---- a decoder added at test time --------------------------------------------------------------------------------
def _run_avoid(scorer, prompts, cfg, *, eos_token_id, generator, banned):
    """Toy decoder: greedy that never emits the token --avoid_token."""
    avoid = DECODERS["avoid"].option(cfg, "avoid_token")
    return sampling.greedy(scorer, prompts, max_new_tokens=cfg.new_tokens(), eos_token_id=eos_token_id,
                           banned_tokens=banned + [avoid], no_repeat_ngram=cfg.no_repeat_ngram)


@pytest.fixture
def avoid(monkeypatch):
    d = Decoder("avoid", _run_avoid, "greedy that never emits --avoid_token", support="greedy",
                options=(Option("avoid_token", 0, "the token id it never emits", int),))
    monkeypatch.setitem(DECODERS, "avoid", d)
    return d


def test_toy_decoder_gets_flag_option_validation_and_docs(avoid):
    cfg = parse_args(BASE + ["--avoid", "--avoid_token", "42"])
    assert (cfg.method, cfg.options) == ("avoid", {"avoid_token": 42})
    assert avoid.option(cfg, "avoid_token") == 42
    assert avoid.option(parse_args(BASE + ["--avoid"]), "avoid_token") == 0  # the Option's default
    with pytest.raises(ValueError, match="--avoid_token applies to --avoid only, not --greedy"):
        parse_args(BASE + ["--avoid_token", "3"])
    with pytest.raises(SystemExit):
        parse_args(BASE + ["--avoid", "--beam", "2"])  # in the one exclusive group
    docs = render()
    assert "`--avoid`" in docs and "`--avoid_token`" in docs
    with pytest.raises(ValueError, match="method must be one of"):
        SearchConfig(method="nope").validate()


def test_toy_decoder_absent_after_the_test():
    assert "avoid" not in DECODERS and "--avoid" not in build_parser().format_help()
    assert decoders.get_decoder("greedy") is DECODERS["greedy"]


def test_toy_decoder_runs_through_the_cli(avoid, tiny_model_dir, ref_model_dir, policy, reference, tokenizer,
                                          tmp_path):
    """The CLI decodes with the toy: its output never holds the avoided token, which plain greedy emits first."""
    texts = ["zq", "the cat", ""]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    scorer = PairScorer(policy, reference, beta=0.2, pad_token_id=tokenizer.pad_token_id)
    banned = banned_token_ids(tokenizer, policy.config.vocab_size)
    plain = sampling.greedy(scorer, ids, max_new_tokens=4, eos_token_id=tokenizer.eos_token_id, banned_tokens=banned)
    first = plain[0].token_ids[0]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    out = tmp_path / "out.jsonl"
    rc = main(["--policy", str(tiny_model_dir), "--ref", str(ref_model_dir), "--prompts", str(tmp_path / "p.jsonl"),
               "--avoid", "--avoid_token", str(first), "--max_new_tokens", "4", "--beta", "0.2", "--progress",
               "false", "--output", str(out)])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    want = sampling.greedy(scorer, ids, max_new_tokens=4, eos_token_id=tokenizer.eos_token_id,
                           banned_tokens=banned + [first])
    assert [r["token_ids"] for r in rows] == [d.token_ids for d in want]
    assert all(first not in r["token_ids"] for r in rows)
    assert rows[0]["token_ids"] != plain[0].token_ids
    for r, d in zip(rows, want):
        assert r["token_rewards"] == pytest.approx(d.token_rewards, abs=1e-6)
