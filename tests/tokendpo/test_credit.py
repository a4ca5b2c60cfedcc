"""Credit assignment: the first-wrong-token metric on hand-built rewards, and the HTML/PNG views (one cell per
token), through the CLI on tiny random-init arithmetic models."""

import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from tokendpo.credit import first_wrong_hit_rate, heatmap_figure, heatmap_html, main
from tokendpo.tasks import get_task


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


def test_cli_task_metric(arith_models, tmp_path):
    policy, ref = arith_models
    assert main(["--policy", policy, "--ref", ref, "--task", "arithmetic", "--n_prompts", "24", "--examples", "3",
                 "--output_dir", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "credit.json").read_text())
    assert m["n"] > 0 and 0.0 <= m["hit_rate"] <= 1.0 and 0.0 < m["uniform_baseline"] <= 1.0
    assert m["beta"] == 0.1  # no train_config.yaml: the default
    assert (tmp_path / "credit.html").read_text().count('class="tok"') > 0
    assert m["split"] == "heldout" and m["n_prompts"] == 24
    assert main(["--policy", policy, "--ref", ref, "--task", "arithmetic", "--n_prompts", "8", "--split", "train",
                 "--output_dir", str(tmp_path / "train")]) == 0
    assert json.loads((tmp_path / "train" / "credit.json").read_text())["split"] == "train"


def test_cli_needs_a_task_or_a_response(arith_models):
    policy, ref = arith_models
    with pytest.raises(SystemExit):
        main(["--policy", policy, "--ref", ref])
    with pytest.raises(SystemExit):
        main(["--policy", policy, "--ref", ref, "--prompt", "1+1="])
