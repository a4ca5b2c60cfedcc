"""Config tree: flat unique keys, precedence default < YAML < CLI, loud unknown keys, --help lists everything."""

import dataclasses
import re

import pytest

from tokendpo import config as C

CONTRACT_KEYS = """model ref_model dataset dataset_split eval_dataset eval_fraction prompt_field chosen_field
rejected_field output_dir beta loss_type label_smoothing max_steps num_epochs per_device_train_batch_size
gradient_accumulation_steps learning_rate warmup_steps max_grad_norm max_length max_prompt_length logging_steps
eval_steps save_steps save_total_limit early_stopping_patience resume_from seed kernel skip_bad_rows
gradient_checkpointing""".split()


def test_every_contract_key_exists_and_keys_are_unique():
    index = C.key_index()
    missing = [k for k in CONTRACT_KEYS if k not in index]
    assert not missing
    n_fields = sum(len(dataclasses.fields(getattr(C.Config(), f.name))) for f in dataclasses.fields(C.Config))
    assert len(index) == n_fields  # no key shadowed another


def test_defaults_match_contract():
    cfg = C.Config()
    assert cfg.train.logging_steps == 1
    assert cfg.train.kernel == "auto"
    assert cfg.model.ref_model is None


def test_precedence_default_yaml_cli(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("loss:\n  beta: 0.3\n  loss_type: ipo\nlearning_rate: 0.001\nmax_steps: 7\n")
    cfg = C.resolve(["--config", str(y), "--beta", "0.7"])
    assert cfg.loss.beta == 0.7  # CLI beats YAML
    assert cfg.loss.loss_type == "ipo"  # YAML beats default (nested form)
    assert cfg.optim.learning_rate == 0.001  # YAML flat form
    assert cfg.train.max_steps == 7
    assert cfg.data.max_length == C.DataConfig().max_length  # untouched default


def test_booleans_lists_and_equals_form():
    cfg = C.resolve(["--skip_bad_rows", "--gradient_checkpointing", "false", "--lora_targets", "q_proj, v_proj",
                     "--seed=5", "--progress"])
    assert cfg.data.skip_bad_rows is True
    assert cfg.model.gradient_checkpointing is False
    assert cfg.model.lora_targets == ["q_proj", "v_proj"]
    assert cfg.train.seed == 5
    assert cfg.train.progress is True


@pytest.mark.parametrize("argv, needle", [
    (["--betta", "0.1"], "did you mean --beta"),
    (["--learning_rat", "1"], "--learning_rate"),
    (["--kernel", "cuda"], "not one of auto, naive, chunked, triton"),  # kernels.IMPLS, in its order
    (["--max_steps", "ten"], "'max_steps'"),
    (["--beta"], "needs a value"),
    (["beta", "0.1"], "unexpected argument"),
])
def test_bad_cli_is_a_clear_error(argv, needle):
    with pytest.raises(C.ConfigError, match=re.escape(needle)):
        C.resolve(argv)


def test_unknown_yaml_key_names_the_file(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("optim:\n  learnin_rate: 0.1\n")
    with pytest.raises(C.ConfigError) as e:
        C.resolve(["--config", str(y)])
    assert str(y) in str(e.value) and "--learning_rate" in str(e.value)


def test_help_lists_every_key_with_default():
    text = C.help_text()
    for key, (comp, f, _t) in C.key_index().items():
        assert f"--{key}" in text
        assert f.metadata["help"] in text
    assert "(default: 0.1)" in text  # beta


def test_yaml_round_trip(tmp_path):
    cfg = C.resolve(["--beta", "0.25", "--loss_type", "hinge", "--lora_targets", "a,b"])
    C.save_yaml(cfg, tmp_path / "train_config.yaml")
    assert C.from_yaml_file(tmp_path / "train_config.yaml") == cfg
