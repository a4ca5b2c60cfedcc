"""The built-in pipeline end to end (quick sizes, fixed seed): layout, DPO beats SFT on gold reward without
collapsing, resumability; and pair labelling on hand-built rewards."""

import json
import time

import pytest
from transformers import AutoModelForCausalLM

from tokendpo.tasks import get_task
from tokendpo.tasks.pipeline import label_pairs, run_pipeline

SUMMARY_KEYS = {"gold_reward", "win_rate_vs_sft", "kl_to_ref", "eval_reward_accuracy", "distinct_rate",
                "repetition"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    t0 = time.perf_counter()
    summary = run_pipeline("sentiment", str(out), seed=0, quick=True, progress=False, print_summary=False)
    return out, summary, time.perf_counter() - t0


@pytest.mark.slow
def test_quick_run_layout(quick_run):
    out, summary, _ = quick_run
    for d in ("sft", "dpo"):
        for f in ("config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl", "train_config.yaml"):
            assert (out / d / f).is_file(), f"{d}/{f} missing"
        AutoModelForCausalLM.from_pretrained(out / d)
    rows = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert rows and all(r["chosen"].strip() and r["rejected"].strip() and r["chosen"] != r["rejected"] for r in rows)
    task = get_task("sentiment")
    r = rows[0]
    assert task.gold_reward(r["prompt"], r["chosen"]) == pytest.approx(r["chosen_reward"])
    assert json.loads((out / "summary.json").read_text()) == summary
    assert set(summary) == {"sft", "dpo"}
    for policy in ("sft", "dpo"):
        m = summary[policy]
        assert SUMMARY_KEYS <= set(m)
        w, t, l = m["win_tie_loss_vs_sft"]
        assert w + t + l == m["n_prompts"] and (w + t / 2) / m["n_prompts"] == pytest.approx(m["win_rate_vs_sft"])
        for name, (lo, hi) in m["ci"].items():  # every interval holds its estimate and is a proper interval
            assert lo <= m[name] <= hi and lo < hi, (policy, name, lo, m[name], hi)
    assert summary["sft"]["kl_to_ref"] == 0.0 and summary["sft"]["eval_reward_accuracy"] == 0.5


@pytest.mark.slow
def test_quick_run_dpo_beats_sft_without_collapse(quick_run):
    _, s, seconds = quick_run
    print(f"quick pipeline: {seconds:.0f} s; sft gold {s['sft']['gold_reward']:.3f}, dpo {s['dpo']['gold_reward']:.3f}")
    assert s["dpo"]["gold_reward"] > s["sft"]["gold_reward"] + 0.05
    assert s["dpo"]["win_rate_vs_sft"] > 0.55
    assert s["dpo"]["distinct_rate"] > 0.8  # a collapsed policy would repeat one output per topic (~0.05)
    assert s["dpo"]["repetition"] < 0.05
    assert s["dpo"]["valid_rate"] > 0.8
    assert s["dpo"]["eval_reward_accuracy"] > 0.55
    assert 0.0 < s["dpo"]["kl_to_ref"] < 10.0


@pytest.mark.slow
def test_rerun_skips_finished_stages_and_refuses_other_settings(quick_run):
    out, summary, _ = quick_run
    stamp = (out / "sft" / "model.safetensors").stat().st_mtime_ns
    assert run_pipeline("sentiment", str(out), seed=0, quick=True, progress=False, print_summary=False) == summary
    assert (out / "sft" / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="holds a run with other settings"):
        run_pipeline("sentiment", str(out), seed=1, quick=True, progress=False)


def test_label_pairs_argmax_drops_ties_and_empties():
    task = get_task("sentiment")
    p = "thoughts on the quiet diner :"
    good, bad = "the food was superb .", "the food was bad ."
    also_bad = "the service was bad ."  # same gold reward as `bad`: a tie
    rows, counts = label_pairs(task, [p, p, p], [[good, bad], [bad, also_bad], [good, ""]], temperature=0.1,
                               argmax=True, seed=0)
    assert counts == {"kept": 1, "tie": 1, "empty": 1}
    assert rows[0]["chosen"] == good and rows[0]["rejected"] == bad
    assert rows[0]["chosen_reward"] > rows[0]["rejected_reward"]
