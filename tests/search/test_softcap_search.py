"""Search on a soft-capped LM head (Gemma-2's c·tanh(z/c)): the scorer uses the models' own logits, so the
per-token rewards that `search.decode` reports equal β·(log π − log π_ref) recomputed from each model's full,
soft-capped logits — for greedy, beam and MCTS (which run through cached and pooled KV paths). Models with
sliding-window layers are refused by search with a clear error (tested below)."""

import json

import pytest
import torch

from search.decode import encode_prompt, main
from tests.tokendpo.test_lm_head_spec import tiny_model
from tokendpo.modeling import byte_level_tokenizer, load_model

BETA = 0.1


@pytest.fixture(scope="module")
def capped_pair(tmp_path_factory):
    tok = byte_level_tokenizer()
    dirs = []
    for seed in (3, 4):
        out = tmp_path_factory.mktemp(f"gemma2-search-{seed}")
        # full attention in every layer: search's KV caches do not handle sliding-window layers (a clear error)
        tiny_model("gemma2", seed, tok, layer_types=["full_attention"] * 2).save_pretrained(out,
                                                                                        safe_serialization=True)
        tok.save_pretrained(out)
        dirs.append(out)
    return dirs, tok


def full_logps(model, ids: list[int], n_prompt: int) -> torch.Tensor:
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits.double(), -1)[0]  # (T, V), soft-capped
    return torch.stack([logp[t - 1, ids[t]] for t in range(n_prompt, len(ids))])


@pytest.mark.parametrize("method", [["--greedy"], ["--beam", "2"], ["--mcts", "--simulations", "4"]])
def test_decode_rewards_equal_the_soft_capped_logits(capped_pair, tmp_path, method):
    (pol_dir, ref_dir), tok = capped_pair
    prompts = ["the cat", "zebra"]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    out = tmp_path / "o.jsonl"
    assert main(["--policy", str(pol_dir), "--ref", str(ref_dir), "--prompts", str(tmp_path / "p.jsonl"),
                 *method, "--max_new_tokens", "6", "--beta", str(BETA), "--output", str(out),
                 "--progress", "false"]) == 0
    policy, reference = load_model(str(pol_dir)).eval(), load_model(str(ref_dir)).eval()
    assert policy.config.final_logit_softcapping == 3.0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        p = encode_prompt(tok, row["prompt"], False)
        ids = p + row["token_ids"]
        want = BETA * (full_logps(policy, ids, len(p)) - full_logps(reference, ids, len(p)))
        torch.testing.assert_close(torch.tensor(row["token_rewards"], dtype=torch.float64), want,
                                   atol=1e-4, rtol=1e-4)


def test_sliding_window_layers_are_a_clear_error(tmp_path, capsys):
    tok = byte_level_tokenizer()
    out = tmp_path / "sliding"
    tiny_model("gemma2", 5, tok).save_pretrained(out, safe_serialization=True)  # alternating sliding layers
    tok.save_pretrained(out)
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "hi"}) + "\n")
    assert main(["--policy", str(out), "--ref", str(out), "--prompts", str(tmp_path / "p.jsonl"), "--greedy",
                 "--max_new_tokens", "3", "--progress", "false"]) == 2
    err = capsys.readouterr().err
    assert "sliding-window" in err and "Traceback" not in err
