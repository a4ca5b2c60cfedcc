"""benchmarks/tasks_report.py: the headroom figures on a stand-in sampler whose answers are known (so the
expected sample mean, oracle best-of-N, greedy share at the ceiling are computed here independently), argument
errors, and RESULTS_tasks.md against benchmarks/results/tasks.json."""

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import benchmarks.tasks_report as tr
from tokendpo.tasks import get_task
from tokendpo.tasks.arithmetic import answer

REPO = Path(__file__).resolve().parents[2]


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


def test_headroom_on_known_answers(root, monkeypatch):
    """Sampled answers: right with probability 0.3, else the units digit wrong (gold 0); greedy: right on the
    prompts whose first operand is even. Expected figures follow from those answers alone."""
    task = get_task("arithmetic")
    tag = random.random()
    drawn: dict = {}

    def fake(model, tokenizer, prompts, *, max_new_tokens, greedy=False, seed=0, **kw):
        rng = random.Random(f"{tag}/{seed}")
        out = []
        for p in prompts:
            right = answer(p)
            wrong = str((int(right[0]) + 1) % 10) + right[1:]
            if greedy:
                y = right if int(p.split("+")[0]) % 2 == 0 else wrong
            else:
                y = right if rng.random() < 0.3 else wrong
                drawn.setdefault(p, []).append(y == right)
            out.append(y)
        return out, [[0] * len(y) for y in out]

    monkeypatch.setattr(tr, "sample", fake)
    prompts = task.prompts("heldout", 40, seed=1)
    tok = tr.load_tokenizer(str(root / "arithmetic" / "sft"))
    row = tr.headroom(task, root / "arithmetic" / "dpo", tok, prompts, n_samples=5, max_new_tokens=6, seed=0)
    even = sum(int(p.split("+")[0]) % 2 == 0 for p in prompts)
    assert row["greedy_gold"] == pytest.approx(even / 40) and row["greedy_at_ceiling"] == even
    assert row["sample_gold"] == pytest.approx(sum(sum(v) / 5 for v in drawn.values()) / 40)
    assert row["oracle_bon16_gold"] == pytest.approx(sum(any(v) for v in drawn.values()) / 40)
    assert row["ceiling"] == 1.0
    lo, hi = row["ci"]["greedy_at_ceiling_share"]
    assert lo < row["greedy_at_ceiling_share"] < hi
    for k in ("sample_gold", "greedy_gold", "oracle_bon16_gold"):
        assert row["ci"][k][0] <= row[k] <= row["ci"][k][1]


def test_bad_arguments(capsys):
    assert tr.main(["--tasks", "nope"]) == 2
    assert tr.main(["--recipes", "rpo"]) == 2  # plain is required
    assert tr.main(["--n_prompts", "0"]) == 2
    assert capsys.readouterr().err.count("error:") == 3


def test_results_markdown_matches_the_json():
    """Every row of benchmarks/results/tasks.json appears in RESULTS_tasks.md with the same figures."""
    path = REPO / "benchmarks" / "results" / "tasks.json"
    if not path.exists():
        pytest.skip("no tasks.json yet (written by a full run)")
    md = (REPO / "benchmarks" / "RESULTS_tasks.md").read_text()
    for r in json.loads(path.read_text())["rows"]:
        line = next((x for x in md.splitlines() if x.startswith(f"| {r['task']} | {r['recipe']} |")), None)
        assert line is not None, (r["task"], r["recipe"])
        for k in ("sample_gold", "greedy_gold", "oracle_bon16_gold", "oracle_minus_greedy"):
            assert f"{r[k]:.3f} [{r['ci'][k][0]:.3f}, {r['ci'][k][1]:.3f}]" in line, k
        assert f"{r['greedy_at_ceiling']}/{r['n_prompts']}" in line
