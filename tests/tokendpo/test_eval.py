"""Per-token implicit rewards: the API against an independent full-logits rescoring, and the eval CLI."""

import json

import pytest
import torch

from tokendpo.eval import main, token_rewards
from tokendpo.modeling import build_preset, load_model, load_tokenizer


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory):
    return build_preset("tiny-llama", tmp_path_factory.mktemp("other"), seed=7)


def full_logits_logp(model, ids: list[int], n_prompt: int) -> torch.Tensor:
    """log π of ids[n_prompt:] from the model's own full logits (float64), one value per response token."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logp = logits.log_softmax(-1)
    return torch.stack([logp[t - 1, ids[t]] for t in range(n_prompt, len(ids))])


def test_token_rewards_match_full_sequence_rescoring(tiny_model_dir, other_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    policy, ref = load_model(str(other_model_dir)), load_model(str(tiny_model_dir))
    prompts = ["Hello there.", "A much longer prompt, to force padding in the batch!", ""]
    responses = ["Fine, thanks", "ok", "empty prompt reply"]
    beta = 0.3
    rows = token_rewards(policy, ref, tok, prompts, responses, beta=beta, batch_size=2, kernel="naive")
    assert len(rows) == 3
    for p, y, row in zip(prompts, responses, rows):
        p_ids = tok(p).input_ids
        y_ids = tok(y, add_special_tokens=False).input_ids + [tok.eos_token_id]
        ids = p_ids + y_ids
        expected = beta * (full_logits_logp(policy, ids, len(p_ids)) - full_logits_logp(ref, ids, len(p_ids)))
        assert row["token_ids"] == y_ids
        torch.testing.assert_close(torch.tensor(row["rewards"], dtype=torch.float64), expected, rtol=1e-4,
                                   atol=1e-5)
        assert row["reward"] == pytest.approx(float(expected.sum()), abs=1e-4)
        assert len(row["tokens"]) == len(row["rewards"])


def test_rewards_vanish_when_policy_is_reference(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    m = load_model(str(tiny_model_dir))
    rows = token_rewards(m, m, tok, ["x"], ["some response"], beta=1.0)
    assert all(r == 0.0 for r in rows[0]["rewards"])


def test_eval_cli_writes_token_rewards(tiny_model_dir, other_model_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Q{i}?", "chosen": f"answer {i}", "rejected": f"no {i * 3}"} for i in range(5)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    rc = main(["--policy", str(other_model_dir), "--ref", str(tiny_model_dir), "--dataset", str(data),
               "--output_dir", str(out), "--beta", "0.5"])
    assert rc == 0
    lines = [json.loads(x) for x in (out / "token_rewards.jsonl").read_text().splitlines()]
    assert len(lines) == 5
    summary = json.loads((out / "eval_summary.json").read_text())
    wins = sum(1.0 if x["chosen"]["reward"] > x["rejected"]["reward"] else 0.0 for x in lines) / 5
    assert summary["reward_accuracy"] == pytest.approx(wins)
    for x in lines:
        assert x["chosen"]["reward"] == pytest.approx(sum(x["chosen"]["rewards"]), abs=1e-5)
        assert x["source"].endswith(":%d" % (lines.index(x) + 1))


def test_eval_cli_bad_file_is_clear(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": 3, "rejected": "c"}\n')
    rc = main(["--policy", str(tiny_model_dir), "--ref", str(tiny_model_dir), "--dataset", str(bad)])
    assert rc == 2
    assert f"{bad}:2: field 'chosen'" in capsys.readouterr().err
