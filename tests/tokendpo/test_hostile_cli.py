"""Hostile command lines and files for `tokendpo.train` and `tokendpo.eval`: each class is one `error: ...` line
and exit 2 — never a traceback, never a silent result. Expected flags and words are written here by hand.

Classes: bad numbers; YAML values of the wrong type; a device this machine lacks; corrupt, truncated and
pickled model files; a model smaller than its tokenizer; policy and reference that do not share a vocabulary;
sequences longer than the model's positions; eval arguments (batch size, β, output path); conflicting length flags.
"""

import json
import os
import shutil

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tests.tokendpo.test_train import write_pairs
from tokendpo.eval import main as eval_main
from tokendpo.modeling import SPECIAL_TOKENS, build_preset, byte_level_tokenizer
from tokendpo.train import main as train_main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("d") / "p.jsonl", n=8, seed=4)


def train_argv(model, data, out, *extra):
    return ["--model", str(model), "--dataset", str(data), "--output_dir", str(out), "--max_length", "64",
            "--max_prompt_length", "32", "--max_steps", "1", "--progress", "false", *extra]


def expect_error(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error:") and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


# ----------------------------------------------------------------------------------------------------- numbers

@pytest.mark.parametrize("flag, value", [
    ("--per_device_train_batch_size", "0"), ("--per_device_train_batch_size", "-2"),
    ("--per_device_eval_batch_size", "0"), ("--gradient_accumulation_steps", "0"), ("--logging_steps", "0"),
    ("--max_steps", "0"), ("--max_grad_norm", "nan"), ("--beta", "0"), ("--beta", "-0.1"), ("--beta", "nan"),
    ("--learning_rate", "-1e-5"), ("--learning_rate", "inf"), ("--num_epochs", "0"), ("--warmup_steps", "-1"),
    ("--label_smoothing", "0.7"), ("--eval_fraction", "1.0"), ("--save_steps", "-1"), ("--adam_beta2", "1.0"),
])
def test_bad_numbers_are_named(tiny_model_dir, data, tmp_path, capsys, flag, value):
    code = train_main(train_argv(tiny_model_dir, data, tmp_path / "o", flag, value))
    expect_error(capsys, code, flag)
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_conflicting_length_flags_are_named_at_startup(tiny_model_dir, data, tmp_path, capsys):
    code = train_main(train_argv(tiny_model_dir, data, tmp_path / "o", "--max_prompt_length", "64"))
    expect_error(capsys, code, "--max_prompt_length 64", "--max_length 64")


# ------------------------------------------------------------------------------------------ YAML value types

@pytest.mark.parametrize("yaml_text, key", [
    ("beta: [0.1, 0.2]\n", "beta"),
    ("max_steps: {a: 1}\n", "max_steps"),
    ("per_device_train_batch_size: true\n", "per_device_train_batch_size"),
    ("train: {logging_steps: false}\n", "logging_steps"),
    ("learning_rate: 2026-01-01\n", "learning_rate"),
    ("dataset: [a.jsonl, b.jsonl]\n", "dataset"),
])
def test_yaml_values_of_the_wrong_type(tiny_model_dir, data, tmp_path, capsys, yaml_text, key):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    code = train_main(["--config", str(cfg), *train_argv(tiny_model_dir, data, tmp_path / "o")])
    expect_error(capsys, code, str(cfg), key)


# ------------------------------------------------------------------------------------------------------ device

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(tiny_model_dir, data, tmp_path, capsys):
    code = train_main(train_argv(tiny_model_dir, data, tmp_path / "o", "--device", "cuda"))
    expect_error(capsys, code, "--device cuda", "CUDA is not available")
    code = train_main(train_argv(tiny_model_dir, data, tmp_path / "o", "--device", "tpu9"))
    expect_error(capsys, code, "--device")


# ------------------------------------------------------------------------------------------------- model files

def broken_copy(src, dst, how: str):
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    blob = weights.read_bytes()
    if how == "corrupt":
        weights.write_bytes(os.urandom(len(blob)))
    elif how == "truncated":
        weights.write_bytes(blob[: len(blob) // 2])
    elif how == "empty":
        weights.write_bytes(b"")
    elif how == "pickle":  # a .bin whose unpickling would run code: refused by weights-only loading
        weights.unlink()
        marker = dst / "PWNED"

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        torch.save({"model.embed_tokens.weight": Evil()}, dst / "pytorch_model.bin", _use_new_zipfile_serialization=True)
    return dst


@pytest.mark.parametrize("how", ["corrupt", "truncated", "empty", "pickle"])
def test_broken_model_files(tiny_model_dir, data, tmp_path, capsys, how):
    model = broken_copy(tiny_model_dir, tmp_path / f"m-{how}", how)
    code = train_main(train_argv(model, data, tmp_path / "o"))
    expect_error(capsys, code, str(model))
    assert not (model / "PWNED").exists()
    code = eval_main(["--policy", str(model), "--ref", str(tiny_model_dir), "--dataset", str(data),
                      "--output_dir", str(tmp_path / "e")])
    expect_error(capsys, code, str(model))


def save_llama(dst, tokenizer, vocab_size: int):
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    return dst


def test_model_vocabulary_smaller_than_its_tokenizer(data, tmp_path, capsys):
    tok = byte_level_tokenizer()
    model = save_llama(tmp_path / "small-vocab", tok, vocab_size=100)  # the tokenizer has 260 ids
    code = train_main(train_argv(model, data, tmp_path / "o"))
    expect_error(capsys, code, "260 ids", "100 rows")


def permuted_byte_tokenizer() -> PreTrainedTokenizerFast:
    """Same size and specials as the byte-level tokenizer, but the byte tokens' ids reversed."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    specials = list(SPECIAL_TOKENS.values())
    vocab = {t: i for i, t in enumerate(specials + alphabet[::-1])}
    t = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    t.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=t, **SPECIAL_TOKENS)


def test_policy_and_reference_with_different_vocabularies(tiny_model_dir, data, tmp_path, capsys):
    same_size = save_llama(tmp_path / "permuted", permuted_byte_tokenizer(), vocab_size=260)
    bigger = save_llama(tmp_path / "bigger", byte_level_tokenizer(), vocab_size=300)
    code = train_main(train_argv(tiny_model_dir, data, tmp_path / "o", "--ref_model", str(same_size)))
    expect_error(capsys, code, "different tokenizer vocabularies", str(same_size))
    code = train_main(train_argv(tiny_model_dir, data, tmp_path / "o", "--ref_model", str(bigger)))
    expect_error(capsys, code, "300", "260")
    for ref in (same_size, bigger):
        code = eval_main(["--policy", str(tiny_model_dir), "--ref", str(ref), "--dataset", str(data),
                          "--output_dir", str(tmp_path / "e")])
        expect_error(capsys, code, str(ref))
    assert not (tmp_path / "o").exists() and not (tmp_path / "e").exists()


# ------------------------------------------------------------------------------------------------------ length

def test_max_length_beyond_the_models_positions(tiny_model_dir, data, tmp_path, capsys):
    # the tiny preset has 512 positions
    code = train_main(train_argv(tiny_model_dir, data, tmp_path / "o", "--max_length", "4096"))
    expect_error(capsys, code, "--max_length 4096", "512")
    code = eval_main(["--policy", str(tiny_model_dir), "--ref", str(tiny_model_dir), "--dataset", str(data),
                      "--max_length", "4096", "--output_dir", str(tmp_path / "e")])
    expect_error(capsys, code, "--max_length 4096")


# ---------------------------------------------------------------------------------------------- eval arguments

@pytest.mark.parametrize("extra, needle", [
    (["--batch_size", "0"], "--batch_size 0"), (["--batch_size", "-3"], "--batch_size -3"),
    (["--beta", "0"], "--beta"), (["--beta", "-1"], "--beta"), (["--beta", "nan"], "--beta"),
    (["--max_pairs", "-1"], "--max_pairs"), (["--max_prompt_length", "600"], "--max_prompt_length"),
])
def test_eval_bad_arguments_keep_earlier_results(tiny_model_dir, data, tmp_path, capsys, extra, needle):
    out = tmp_path / "e"
    out.mkdir()
    (out / "token_rewards.jsonl").write_text('{"earlier": "result"}\n')
    code = eval_main(["--policy", str(tiny_model_dir), "--ref", str(tiny_model_dir), "--dataset", str(data),
                      "--output_dir", str(out), *extra])
    expect_error(capsys, code, needle)
    assert (out / "token_rewards.jsonl").read_text() == '{"earlier": "result"}\n'


def test_eval_output_path_that_is_a_file(tiny_model_dir, data, tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("x")
    code = eval_main(["--policy", str(tiny_model_dir), "--ref", str(tiny_model_dir), "--dataset", str(data),
                      "--output_dir", str(f)])
    expect_error(capsys, code, str(f), "not a directory")
    assert f.read_text() == "x"


def test_eval_writes_token_rewards_whole(tiny_model_dir, data, tmp_path):
    """The happy path still works and leaves no temporary files behind."""
    out = tmp_path / "e"
    assert eval_main(["--policy", str(tiny_model_dir), "--ref", str(tiny_model_dir), "--dataset", str(data),
                      "--output_dir", str(out)]) == 0
    rows = [json.loads(x) for x in (out / "token_rewards.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    assert sorted(p.name for p in out.iterdir()) == ["eval_summary.json", "token_rewards.jsonl"]


# -------------------------------------------------------------------------------------------- credit arguments

@pytest.mark.parametrize("extra, needle", [
    (["--task", "sentiment", "--per_position", "0"], "--per_position 0"),
    (["--task", "sentiment", "--max_rounds", "-1"], "--max_rounds"),
    (["--task", "sentiment", "--beta", "0"], "--beta"),
    (["--task", "sentiment", "--beta", "nan"], "--beta"),
    (["--task", "no-such-task"], "no-such-task"),
    (["--prompt", "hi", "--response", "yo", "--beta", "-2"], "--beta"),
])
def test_credit_bad_arguments(tiny_model_dir, tmp_path, capsys, extra, needle):
    from tokendpo.credit import main as credit_main

    code = credit_main(["--policy", str(tiny_model_dir), "--ref", str(tiny_model_dir),
                        "--output_dir", str(tmp_path / "c"), *extra])
    expect_error(capsys, code, needle)
    assert not (tmp_path / "c").exists()


def test_credit_output_path_that_is_a_file_and_vocab_mismatch(tiny_model_dir, tmp_path, capsys):
    from tokendpo.credit import main as credit_main

    f = tmp_path / "a-file"
    f.write_text("x")
    code = credit_main(["--policy", str(tiny_model_dir), "--ref", str(tiny_model_dir), "--prompt", "hi",
                        "--response", "yo", "--output_dir", str(f)])
    expect_error(capsys, code, "not a directory")
    bigger = save_llama(tmp_path / "bigger", byte_level_tokenizer(), vocab_size=300)
    code = credit_main(["--policy", str(tiny_model_dir), "--ref", str(bigger), "--prompt", "hi", "--response", "yo",
                        "--output_dir", str(tmp_path / "c")])
    expect_error(capsys, code, "300", "260")
