"""LM heads that transform their logits (Gemma-2's soft-cap, Cohere's and Granite's scales): the head spec read
from the config, and per-token rewards from `tokendpo.eval` equal to those of the models' own full logits."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from kernels import LogitHead
from tokendpo.eval import token_rewards
from tokendpo.logps import sequence_logps
from tokendpo.modeling import byte_level_tokenizer, check_lm_head_supported, load_model, load_tokenizer, lm_head_spec

# Tiny configs of three families; the LM head is scaled up after init (HEAD_GAIN) so that the raw logits are of
# order 5–20 and each transform changes the log-probs by far more than the test tolerance.
FAMILIES = {
    "gemma2": dict(final_logit_softcapping=3.0, head_dim=16, query_pre_attn_scalar=16, sliding_window=8),
    "cohere": dict(logit_scale=0.25),
    "granite": dict(logits_scaling=6.0),
}
HEAD_GAIN = 200.0


def tiny_model(family: str, seed: int, tokenizer, **overrides):
    cfg = AutoConfig.for_model(family, vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                               tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                               **{**FAMILIES[family], **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(HEAD_GAIN)
    return model.eval()


@pytest.fixture(scope="module")
def gemma_dirs(tmp_path_factory):
    """A soft-capped Gemma-2-style policy and reference (random init, seeds 1 and 2), saved to disk with the
    byte-level tokenizer, like tests/conftest.py's tiny_model_dir."""
    tok = byte_level_tokenizer()
    dirs = []
    for seed in (1, 2):
        out = tmp_path_factory.mktemp(f"gemma2-{seed}")
        tiny_model("gemma2", seed, tok).save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        dirs.append(out)
    return dirs


def full_logit_logps(model, tokenizer, prompt: str, response: str) -> torch.Tensor:
    """log_softmax(model(...).logits) at the response tokens (EOS appended): the model's own head, in full."""
    p = tokenizer(prompt).input_ids
    r = tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    ids = torch.tensor([p + r])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits.double(), -1)[0]  # (T, V)
    pos = torch.arange(len(p) - 1, len(p) + len(r) - 1)
    return logp[pos, torch.tensor(r)]


PROMPTS = ["Review: the film was", "2+2=", "Say something nice:"]
RESPONSES = [" great fun, truly", " 4", " hello there, friend!"]


@pytest.mark.parametrize("kernel", ["chunked", "naive"])
def test_eval_rewards_of_a_soft_capped_gemma2_equal_its_full_logits(gemma_dirs, kernel):
    policy, reference = (load_model(str(d)) for d in gemma_dirs)
    tok = load_tokenizer(str(gemma_dirs[0]))
    assert lm_head_spec(policy) == LogitHead(softcap=3.0)
    beta = 0.5
    rows = token_rewards(policy, reference, tok, PROMPTS, RESPONSES, beta=beta, batch_size=2, kernel=kernel)
    for row, prompt, response in zip(rows, PROMPTS, RESPONSES):
        want = beta * (full_logit_logps(policy, tok, prompt, response)
                       - full_logit_logps(reference, tok, prompt, response))
        torch.testing.assert_close(torch.tensor(row["rewards"], dtype=torch.float64), want, rtol=1e-4, atol=1e-4)


def test_the_soft_cap_matters_here(gemma_dirs):
    """The uncapped head gives log-probs far from the model's own: the test above could fail."""
    tok = load_tokenizer(str(gemma_dirs[0]))
    model = load_model(str(gemma_dirs[0]))
    capped = full_logit_logps(model, tok, PROMPTS[0], RESPONSES[0])
    model.config.final_logit_softcapping = None
    uncapped = full_logit_logps(model, tok, PROMPTS[0], RESPONSES[0])
    assert (capped - uncapped).abs().max() > 0.5


@pytest.mark.parametrize("family,want", [("cohere", LogitHead(logit_scale=0.25)),
                                         ("granite", LogitHead(logit_scale=1 / 6.0))])
def test_scaled_heads_give_the_models_own_log_probs(family, want):
    """Cohere multiplies its logits by logit_scale, Granite divides them by logits_scaling: sequence_logps
    (mean logit included) equals the full logits of the model's own forward."""
    tok = byte_level_tokenizer()
    model = tiny_model(family, 3, tok)
    assert lm_head_spec(model) == want
    ids = torch.tensor([tok("a test of the head").input_ids])  # (1, T)
    labels = ids.clone()
    labels[0, :3] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    got = sequence_logps(model, batch, kernel="chunked")
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].double()  # (T-1, V)
    logp = torch.log_softmax(logits, -1)[torch.arange(ids.shape[1] - 1), ids[0, 1:]]
    mask = got.mask[0]
    torch.testing.assert_close(got.token_logps[0][mask].double(), logp[mask], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.mean_logit[0].double(), logits[mask].mean(), rtol=1e-4, atol=1e-4)
    plain = torch.log_softmax(logits / want.logit_scale, -1)[torch.arange(ids.shape[1] - 1), ids[0, 1:]]
    assert (plain[mask] - logp[mask]).abs().max() > 0.5  # the scale matters


@pytest.mark.parametrize("field,value,match", [
    ("logits_scaling", 4.0, r"logits_scaling=4.0 \(model_type 'gemma2'\).*not supported"),
    ("lm_head_multiplier", 2.0, r"lm_head_multiplier=2.0 \(model_type 'gemma2'\)"),
    ("final_logit_softcapping", 0.0, r"final_logit_softcapping=0.0: .*finite number > 0"),
])
def test_heads_we_cannot_express_are_refused_by_name_in_eval_and_training(field, value, match):
    tok = byte_level_tokenizer()
    model = tiny_model("gemma2", 4, tok)
    setattr(model.config, field, value)
    with pytest.raises(ValueError, match=match):
        check_lm_head_supported(model)
    with pytest.raises(ValueError, match=match):
        token_rewards(model, model, tok, PROMPTS[:1], RESPONSES[:1], beta=0.1)
