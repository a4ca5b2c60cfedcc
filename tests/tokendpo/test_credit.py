"""Credit assignment: the blame metrics and baselines on hand-built log-probs, the stratified sampling of the
reference's own wrong answers, the HTML/PNG views (one cell per token), and the CLI on tiny random-init
arithmetic models."""

import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

import random

import tokendpo.tasks.sampling
from tokendpo.credit import (blame_hits, collect_wrong_samples, credit_rows, first_wrong_hit_rate, heatmap_figure,
                             heatmap_html, main)
from tokendpo.tasks import get_task
from tokendpo.tasks.arithmetic import answer


def test_hit_rate_hand_built():
    rewards = [
        [0.1, -0.5, 0.0, 0.2],   # argmin 1, first wrong 1: hit
        [-0.3, 0.1, -0.2],       # argmin 0, first wrong 2: miss
        [0.0, 0.0],              # equal minima: the first (0) counts; first wrong 0: hit
    ]
    m = first_wrong_hit_rate(rewards, [1, 2, 0])
    assert m["hit_rate"] == pytest.approx(2 / 3)
    assert m["uniform_baseline"] == pytest.approx((1 / 4 + 1 / 3 + 1 / 2) / 3)
    assert m["n"] == 3
    with pytest.raises(ValueError, match="outside its 2 tokens"):
        first_wrong_hit_rate([[0.1, 0.2]], [2])
    assert first_wrong_hit_rate([], [])["n"] == 0


def _row(pieces, rewards):
    return {"tokens": pieces, "text_pieces": pieces, "rewards": rewards, "reward": sum(rewards)}


def test_html_and_figure_have_one_cell_per_token():
    rows = [_row(["8", "5", "9", "</s>"], [0.2, -0.4, 0.05, 0.0]), _row(["8", "6", "</s>"], [0.1, -0.9, 0.3])]
    page = heatmap_html(rows, ["chosen", "rejected"], prompt="482+377=")
    assert page.count('class="tok"') == 7
    assert "r=-0.9000" in page and "&lt;/s&gt;" in page  # values on hover, pieces escaped
    # the most negative token is full red, a zero-reward token white
    assert 'background:rgb(255,0,0)" title="r=-0.9000"' in page
    assert 'background:rgb(255,255,255)" title="r=+0.0000"' in page
    fig = heatmap_figure(rows, ["chosen", "rejected"])
    cells = [p for p in fig.axes[0].patches if p.get_gid() == "cell"]
    assert len(cells) == 7
    assert sorted(t.get_text() for t in fig.axes[0].texts) == sorted(["8", "5", "9", "</s>", "8", "6", "</s>"])


@pytest.fixture(scope="module")
def arith_models(tmp_path_factory):
    task = get_task("arithmetic")
    tok = task.tokenizer(task.corpus(200, seed=0))
    dirs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        cfg = task.model_config(tok)
        cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers = 16, 32, 1
        d = tmp_path_factory.mktemp(f"arith{seed}")
        AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
        tok.save_pretrained(d)
        dirs.append(str(d))
    return dirs


def test_cli_pair_view(arith_models, tmp_path, capsys):
    policy, ref = arith_models
    assert main(["--policy", policy, "--ref", ref, "--prompt", "12+34=", "--response", "46", "--rejected", "47",
                 "--output_dir", str(tmp_path)]) == 0
    page = (tmp_path / "credit.html").read_text()
    assert page.count('class="tok"') == 6  # "4" "6" EOS and "4" "7" EOS
    assert (tmp_path / "credit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    vals = [float(v) for v in re.findall(r"\[([+-]\d\.\d+)\]", printed)]
    assert len(vals) == 6 and any(v != 0 for v in vals)


def test_blame_hits_hand_built():
    """Three answers (first wrong token w); r = lp − lr.
    1: lp [-.1 -2 -.1 -.5], lr [-.1 -.7 -.1 -3], w 1: r [0 -1.3 0 2.5] -> implicit 1 hit; lp 1 hit; lr 3 miss,
       but up to w: lr[:2] -> 1 hit; random 1/4 (all), 1/2 (up to w)
    2: lp [-1 -.2 -.3], lr [-.2 -.2 -2], w 0: r [-.8 0 1.7] -> implicit hit; lp hit; lr 2 miss, up to w hit;
       random 1/3, 1; positional 0 hits only here
    3: lp [-.5 -.5], lr [-.1 -.9], w 1: r [-.4 .4] -> implicit 0 miss; lp tie -> first (0) miss; lr 1 hit;
       random 1/2, 1/2
    """
    lp = [[-0.1, -2.0, -0.1, -0.5], [-1.0, -0.2, -0.3], [-0.5, -0.5]]
    lr = [[-0.1, -0.7, -0.1, -3.0], [-0.2, -0.2, -2.0], [-0.1, -0.9]]
    h = blame_hits(lp, lr, [1, 0, 1], positional=0)
    expect = {"implicit": (2, 2), "argmin_logp_policy": (2, 2), "argmin_logp_ref": (1, 3), "positional": (1, 1),
              "random": (1 / 4 + 1 / 3 + 1 / 2, 1 / 2 + 1 + 1 / 2)}
    for m, (all_, up) in expect.items():
        assert h["all", m] == pytest.approx(all_) and h["up_to_first_error", m] == pytest.approx(up), m
    rows = credit_rows(h, 3, task="arithmetic", recipe="plain")
    imp = next(r for r in rows if r["method"] == "implicit" and r["scope"] == "all")
    assert imp["rate"] == pytest.approx(2 / 3) and imp["n"] == 3 and imp["task"] == "arithmetic"
    # Wilson 95 % for 2/3 (z = 1.96): centre (2/3 + 0.640)/2.280 = 0.573, half 1.96·sqrt(2/27 + 0.107)/2.280
    assert imp["ci"] == pytest.approx([0.2077, 0.9385], abs=2e-3)
    with pytest.raises(ValueError, match="first wrong token 2"):
        blame_hits([[0.0, 0.0]], [[0.0, 0.0]], [2], positional=0)


def _fake_sampler(seed_rng):
    """A stand-in for the reference's sampler: the right answer, or (60 %) one with an error at a uniformly
    drawn position 0..L (the EOS position: an extra digit)."""
    def fake(model, tokenizer, prompts, *, max_new_tokens, seed=0, **kw):
        rng = random.Random(f"{seed_rng}/{seed}")
        out = []
        for p in prompts:
            y = answer(p)
            if rng.random() < 0.6:
                i = rng.randrange(len(y) + 1)
                y = y + "7" if i == len(y) else y[:i] + str((int(y[i]) + rng.randint(1, 9)) % 10) + y[i + 1:]
            out.append(y)
        return out, [[0] * len(y) for y in out]
    return fake


def test_collect_wrong_samples_is_stratified(monkeypatch):
    seed_rng = random.random()  # fresh answers every run
    monkeypatch.setattr(tokendpo.tasks.sampling, "sample", _fake_sampler(seed_rng))
    task = get_task("arithmetic")
    strat, natural, info = collect_wrong_samples(task, None, None, per_position=7, seed=0, max_new_tokens=7,
                                                 batch_prompts=16, max_rounds=50)
    L1 = task.answer_positions()
    assert len(strat) == 7 * L1
    assert sorted(w.first_wrong for w in strat) == sorted(list(range(L1)) * 7)
    for w in strat + natural:
        assert task.first_wrong_token(w.prompt, w.response) == w.first_wrong
    assert sum(info["natural_first_wrong_counts"].values()) == len(natural) >= len(strat)
    with pytest.raises(ValueError, match="below 1000"):
        collect_wrong_samples(task, None, None, per_position=1000, seed=0, max_new_tokens=7, batch_prompts=8,
                              max_rounds=2)


def test_cli_task_metric(arith_models, tmp_path, monkeypatch):
    policy, ref = arith_models
    monkeypatch.setattr(tokendpo.tasks.sampling, "sample", _fake_sampler(random.random()))
    assert main(["--policy", policy, "--ref", ref, "--task", "arithmetic", "--per_position", "4", "--examples", "5",
                 "--output_dir", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "credit.json").read_text())
    assert m["beta"] == 0.1  # no train_config.yaml: the default
    rows = m["rows"]
    assert {(r["samples"], r["scope"], r["method"]) for r in rows} >= {("stratified", "all", "implicit"),
                                                                        ("stratified", "all", "random")}
    for r in rows:
        assert r["n"] == 4 * get_task("arithmetic").answer_positions() and 0.0 <= r["ci"][0] <= r["rate"] <= r["ci"][1] <= 1.0
    assert (tmp_path / "credit.html").read_text().count('class="tok"') > 0
    assert m["split"] == "heldout"


def test_cli_reports_unfillable_positions(arith_models, tmp_path, capsys, monkeypatch):
    """A reference that is always wrong at the units digit never fills the other positions: a clear error."""
    policy, ref = arith_models

    def always_wrong_first(model, tokenizer, prompts, **kw):
        out = [str((int(answer(p)[0]) + 1) % 10) + answer(p)[1:] for p in prompts]
        return out, [[0] * len(y) for y in out]

    monkeypatch.setattr(tokendpo.tasks.sampling, "sample", always_wrong_first)
    assert main(["--policy", policy, "--ref", ref, "--task", "arithmetic", "--per_position", "50",
                 "--max_rounds", "1", "--output_dir", str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err


def test_cli_needs_a_task_or_a_response(arith_models):
    policy, ref = arith_models
    with pytest.raises(SystemExit):
        main(["--policy", policy, "--ref", ref])
    with pytest.raises(SystemExit):
        main(["--policy", policy, "--ref", ref, "--prompt", "1+1="])
