"""benchmarks/credit_report.py on tiny random-init arithmetic models laid out like tasks_report's outputs, with
a stand-in sampler for the reference (random models never get four digits right), and its verdict logic."""

import json
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

import tokendpo.tasks.sampling
from benchmarks.credit_report import main, verdict
from tokendpo.tasks import get_task
from tokendpo.tasks.arithmetic import answer


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    task = get_task("arithmetic")
    tok = task.tokenizer(task.corpus(200, seed=0))
    root = tmp_path_factory.mktemp("tasks")
    for seed, sub in enumerate(("sft", "dpo", "rpo/dpo")):
        torch.manual_seed(seed)
        cfg = task.model_config(tok)
        cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers = 16, 32, 1
        d = root / "arithmetic" / sub
        AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
        tok.save_pretrained(d)
    return root


def _fake_sampler(tag):
    def fake(model, tokenizer, prompts, *, seed=0, **kw):
        rng = random.Random(f"{tag}/{seed}")
        out = []
        for p in prompts:
            y = answer(p)
            if rng.random() < 0.7:
                i = rng.randrange(len(y) + 1)
                y = y + "3" if i == len(y) else y[:i] + str((int(y[i]) + rng.randint(1, 9)) % 10) + y[i + 1:]
            out.append(y)
        return out, [[0] * len(y) for y in out]
    return fake


def test_report_rows(root, tmp_path, monkeypatch):
    monkeypatch.setattr(tokendpo.tasks.sampling, "sample", _fake_sampler(random.random()))
    results = tmp_path / "results"
    assert main(["--root", str(root), "--per_position", "6", "--results_dir", str(results)]) == 0
    rows = json.loads((results / "credit.json").read_text())["rows"]
    keys = {"task", "recipe", "scope", "method", "n", "rate", "ci"}
    assert all(keys <= set(r) for r in rows)
    combos = {(r["recipe"], r["scope"], r["method"]) for r in rows if r["samples"] == "stratified"}
    assert len(combos) == 2 * 2 * 5  # recipes x scopes x methods
    positions = get_task("arithmetic").answer_positions()
    for r in rows:
        assert r["n"] == 6 * positions and 0 <= r["ci"][0] <= r["rate"] <= r["ci"][1] <= 1
        if r["method"] == "positional" and r["samples"] == "stratified":
            assert r["rate"] == pytest.approx(1 / positions)  # each position holds exactly 1/(L+1) of them
    assert (root / "arithmetic" / "credit_plain.png").exists() and (root / "credit_report.md").exists()


def test_quick_writes_no_results(root, tmp_path, monkeypatch):
    monkeypatch.setattr(tokendpo.tasks.sampling, "sample", _fake_sampler(random.random()))
    results = tmp_path / "results"
    assert main(["--root", str(root), "--per_position", "2", "--recipes", "plain", "--quick",
                 "--results_dir", str(results)]) == 0
    assert not results.exists()


def test_verdict():
    def row(method, rate, lo, hi):
        return {"recipe": "plain", "scope": "all", "samples": "stratified", "method": method, "rate": rate,
                "ci": [lo, hi]}
    base = [row("random", 0.2, 0.16, 0.25), row("positional", 0.2, 0.16, 0.25),
            row("argmin_logp_policy", 0.5, 0.45, 0.55), row("argmin_logp_ref", 0.6, 0.55, 0.65)]
    v = verdict(base + [row("implicit", 0.85, 0.81, 0.88)])
    assert v["goal_met"] and v["best_baseline"] == "argmin_logp_ref" and v["margin_points"] == pytest.approx(25)
    assert not verdict(base + [row("implicit", 0.7, 0.65, 0.75)])["goal_met"]       # below 80 %
    close = base[:3] + [row("argmin_logp_ref", 0.7, 0.65, 0.82)]
    assert not verdict(close + [row("implicit", 0.86, 0.81, 0.9)])["goal_met"]      # intervals overlap


def test_bad_arguments(capsys):
    assert main(["--per_position", "0"]) == 2
    assert main(["--root", "/nonexistent/tasks"]) == 2
    assert capsys.readouterr().err.count("error:") == 2


def test_results_markdown_matches_the_json():
    """Every rate of benchmarks/results/credit.json appears in RESULTS_tasks.md's credit table unchanged."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    path = repo / "benchmarks" / "results" / "credit.json"
    if not path.exists():
        pytest.skip("no credit.json yet (written by a full run)")
    md = (repo / "benchmarks" / "RESULTS_tasks.md").read_text().splitlines()
    methods = ["implicit", "random", "positional", "argmin_logp_policy", "argmin_logp_ref"]
    for r in json.loads(path.read_text())["rows"]:
        line = next(x for x in md if x.startswith(f"| {r['samples']} | {r['recipe']} | {r['scope']} |"))
        cell = line.strip("|").split("|")[3 + methods.index(r["method"])].strip()
        assert cell == f"{r['rate']:.1%} [{r['ci'][0]:.1%}, {r['ci'][1]:.1%}]", (r, cell)
