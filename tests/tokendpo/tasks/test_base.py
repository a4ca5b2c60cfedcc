"""Task generation: deterministic from a seed, held-out prompts disjoint from train, tokenizer round-trips."""

import pytest

from tokendpo.tasks import TASKS, get_task
from tokendpo.tasks.base import split_of


@pytest.mark.parametrize("name", sorted(TASKS))
def test_prompts_are_deterministic_and_splits_disjoint(name):
    task = get_task(name)
    a = task.prompts("train", 300, seed=3)
    assert a == get_task(name).prompts("train", 300, seed=3)  # a fresh instance, same list
    assert a != task.prompts("train", 300, seed=4)
    assert len(set(a)) == len(a) == 300
    held = task.prompts("heldout", 256, seed=3)
    assert len(set(held)) == 256
    # disjoint whatever the seeds: no held-out prompt appears in a large train draw with other seeds
    train_pool = set(task.prompts("train", 1000, seed=11)) | set(a)
    assert not train_pool & set(held)
    assert all(split_of(p, task.heldout_every) == "heldout" for p in held)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_corpus_is_deterministic_train_only_and_gold_optimal_for_arithmetic(name):
    task = get_task(name)
    c = task.corpus(200, seed=1)
    assert c == task.corpus(200, seed=1) and c != task.corpus(200, seed=2)
    assert all(split_of(p, task.heldout_every) == "train" for p, _ in c)
    assert all(task.is_valid(p, r) for p, r in c)  # the grammar's own outputs are valid


@pytest.mark.parametrize("name", sorted(TASKS))
def test_tokenizer_round_trips_and_never_hits_unk(name):
    task = get_task(name)
    tok = task.tokenizer(task.corpus(500, seed=0))
    assert tok.bos_token_id is not None and tok.eos_token_id is not None and tok.pad_token_id is not None
    for p in task.prompts("heldout", 50, seed=0):
        ids = tok(p)["input_ids"]
        assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
    for p, r in task.corpus(50, seed=9):
        ids = tok(r, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids and tok.bos_token_id not in ids
        assert tok.decode(ids) == r  # what the model generates decodes back to the grammar's text


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get_task("nope")
    task = get_task("sentiment")
    with pytest.raises(ValueError, match="split must be one of"):
        task.prompts("test", 3, seed=0)
    with pytest.raises(ValueError, match="distinct heldout prompts"):
        task.prompts("heldout", 100_000, seed=0)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_has_a_plain_and_an_rpo_recipe_sharing_sft_and_pairs(name):
    from dataclasses import asdict

    from tokendpo.tasks.pipeline import PipelineSettings

    task = get_task(name)
    plain, rpo = task.get_recipe("plain"), task.get_recipe("rpo")
    assert plain.rpo_alpha == 0.0 and rpo.rpo_alpha > 0.0
    shared = ("sft_examples", "sft_steps", "sft_batch_size", "sft_lr", "pair_prompts", "k", "eval_pair_prompts",
              "label_temperature", "max_new_tokens", "beta")
    assert {k: asdict(plain)[k] for k in shared} == {k: asdict(rpo)[k] for k in shared}
    assert task.recipe is task.recipes[task.default_recipe]
    s = PipelineSettings.resolve(task, recipe="plain", seed=0)
    assert s.recipe == "plain" and s.rpo_alpha == 0.0
    assert PipelineSettings.resolve(task, seed=0).recipe == task.default_recipe
    with pytest.raises(ValueError, match="has no recipe 'dpo'"):
        task.get_recipe("dpo")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_ceiling_bounds_the_corpus(name):
    task = get_task(name)
    for p, r in task.corpus(300, seed=5):
        assert task.gold_reward(p, r) <= task.ceiling(p) + 1e-12


@pytest.mark.parametrize("name", sorted(TASKS))
def test_recipe_lengths_reach_the_dpo_config(name, tmp_path):
    """The DPO stage's max_length / max_prompt_length come from the task recipe: 64 / 32 by default (the values
    the pipeline used before they were in the recipe), and a recipe with other lengths gets exactly those."""
    import copy
    import json
    import random
    from dataclasses import asdict, replace

    from tokendpo.tasks.pipeline import PipelineSettings, _run_locked, dpo_config

    task = get_task(name)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    config = lambda s: dpo_config(s, tmp_path / "sft", pairs, pairs, tmp_path / "dpo", progress=False)  # noqa: E731
    for recipe in task.recipes:
        cfg = config(PipelineSettings.resolve(task, recipe=recipe, seed=0))
        assert (cfg.data.max_length, cfg.data.max_prompt_length) == (64, 32)

    rng = random.Random()
    n_prompt = rng.randint(2, 30)
    n_total = rng.randint(n_prompt + 1, task.shape.max_position_embeddings)
    other = copy.copy(task)
    other.recipes = {k: replace(r, max_length=n_total, max_prompt_length=n_prompt) for k, r in task.recipes.items()}
    s = PipelineSettings.resolve(other, recipe="plain", seed=0)
    cfg = config(s)
    assert (cfg.data.max_length, cfg.data.max_prompt_length) == (n_total, n_prompt)
    with pytest.raises(ValueError, match="max_prompt_length < max_length"):
        PipelineSettings.resolve(task, seed=0, max_length=task.shape.max_position_embeddings + 1)

    # a run recorded before the lengths were settings is the default run; one recorded with other lengths is not
    out = tmp_path / "run"
    out.mkdir()
    default = asdict(PipelineSettings.resolve(task, seed=0))
    legacy = {k: v for k, v in default.items() if k not in ("max_length", "max_prompt_length")}
    (out / "pipeline.json").write_text(json.dumps({"settings": legacy}))
    assert _run_locked(task, PipelineSettings.resolve(task, seed=0), out, (), False, False) == {}
    (out / "pipeline.json").write_text(json.dumps({"settings": asdict(s)}))
    with pytest.raises(ValueError, match="other settings"):
        _run_locked(task, PipelineSettings.resolve(task, seed=0, recipe="plain"), out, (), False, False)
