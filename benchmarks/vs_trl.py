"""tokendpo.train vs TRL's DPOTrainer on the same job: tokens/s, peak memory, and the first steps' trajectories.

"The same job" means, for both frameworks:
  * the same saved transformers checkpoint; policy and reference are both loaded from it (reference online,
    `precompute_ref_log_probs` off in TRL, `--ref_logps online` in tokendpo);
  * the same tokenised pairs: HH-RLHF harmless-base pairs (../shared/data) that fit `max_prompt_length` and
    `max_length` untruncated, so neither framework's truncation rule applies. Both read the same explicit
    prompt/chosen/rejected texts (split from the HH dialogues by tokendpo's own extractor); TRL's tokenisation
    of them is checked id for id against tokendpo's before any step is timed;
  * the same data order: tokendpo's seeded order (`tokendpo.train.micro_batch`) is written out row by row and
    TRL reads it with `train_sampling_strategy="sequential"`;
  * torch AdamW (fused: `optim="adamw_torch_fused"`, as tokendpo's optimizer) with the same lr / betas / eps /
    weight decay 0, transformers' cosine schedule with the same warmup, the same batch size, no gradient
    accumulation, clipping at 1.0, the same loss (`LOSSES`: TRL's `loss_type` / `loss_weights` / `use_weighting`,
    tokendpo's flags of the same names) with the same β, no dropout, fp32 on CPU, no gradient checkpointing and no
    bf16 (TRL's DPOConfig defaults both on: set off here);
  * TRL's own fused LM head: DPOTrainer 1.16 always patches the model with `trl.trainer.utils.add_fused_lm_head`
    (chunked per-token log-probs, and log Σ_v p_v² for WPO); DPOConfig has no switch to turn it off.

Cases: model × loss, the losses being apo_zero, sigmoid + 0.5·sft (a weighted mixture) and sigmoid with WPO
weighting. Results: benchmarks/results/vs_trl.json, one row per case: {"model", "loss", "speed_ratio" (tokendpo
over TRL, tokens per CPU-second over steps 2..N), "memory_ratio" (peak RSS), "max_abs_diff" (|Δ loss| over steps
1..10), "speed_ratios", "memory_ratios" (each run's), "n_runs", "steps", "tokens_per_run"}.

Models (random init, seed 0, saved with safetensors):
  tiny-llama   tokendpo's preset: H=32, 2 layers, V=260. Framework overhead dominates.
  llama-v32k   Llama, V=32000, H=256, 2 layers, 4 heads, MLP 1024: the LM head (8.2M of ~18.5M parameters;
               ~4x the body's FLOPs per token) dominates.
  gemma2-softcap  Gemma-2-shaped (`GEMMA2`): final_logit_softcapping 3, V=16384, H=128, 2 full-attention layers.
Tokenizer: tokendpo's byte-level tokenizer (260 ids) for every model. For llama-v32k the rows 260..31999 are
never targets but enter every softmax, so the LM-head cost is that of a real 32k vocabulary; tokenisation does
not change the compute, and byte-level ids make "same tokens" exact by construction (and checked).

With `--packing`, a third framework row, `tokendpo+packing`, is tokendpo with `--packing` (padding-free rows;
TRL 1.16 has disabled its `padding_free`): the same job through tokendpo's other batch layout.

Each framework × model × repetition runs in a FRESH subprocess with the same torch thread count (`--threads`,
default 1); repetitions reverse the order (A B C, C B A) so a load change on the shared machine hits all alike.
Reported per run:
  * tokens/s: non-padding tokens (prompt + chosen + prompt + rejected) per second of the training loop, from
    the loop's start to each step's log (tokendpo: its own `tokens_per_second`; TRL: a TrainerCallback's clock
    from `on_train_begin` to each `on_log`): over all steps, over steps 2..N, the median step; and tokens per
    CPU-second of the process over steps 2..N (process time at each step's log: TRL's callback, and for
    tokendpo a thread watching metrics.jsonl) — the figure least moved by other jobs, so the ratios use it;
  * peak RSS of the whole process (VmHWM; not ru_maxrss, which on Linux inherits the parent's RSS) and
    Δ = peak − RSS after the libraries are imported and the texts read (before any model exists): the memory of
    models, gradients, optimizer state and activations;
  * the logged metrics of every step; steps 1-10 are compared, and step 1's batch is replayed through one body
    with both LM heads and float64 to account for the differences (`logps_accuracy`).

    python -m benchmarks.vs_trl             # 3 models × 3 losses, 10 steps × 1 run: RESULTS_vs_trl.md + results json
    python -m benchmarks.vs_trl --quick     # 2 cases, 6 steps; asserts agreement; writes no results file
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results_file import command_line, write_results
from benchmarks.vs_trl_report import (
    HPARAMS,
    compare,
    misses,
    report,
    result_rows,
)
from benchmarks.vs_trl_workers import worker_tokendpo, worker_trl

REPO = Path(__file__).resolve().parents[1]
HH_FILE = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
FRAMEWORKS = ("tokendpo", "trl", "tokendpo+packing")  # the third: tokendpo's padding-free mode (TRL 1.16 has none)
MODELS = ("tiny-llama", "llama-v32k", "gemma2-softcap")
V32K = dict(vocab_size=32000, hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            intermediate_size=1024, max_position_embeddings=512)
# Gemma-2-shaped: soft-capped final logits y = c·tanh(z/c), √H-scaled embeddings, GeGLU MLP, sandwich norms,
# query_pre_attn_scalar; full attention in both layers (no sliding window); a 16k vocabulary (Gemma-2's is 256k,
# out of reach on 2 CPU cores). The LM head is scaled ×GEMMA_HEAD_GAIN after init so the raw logits (std ~1.1,
# tails ~5) reach the cap's curved region (c = 3): with random-init logits (std ~0.2) the cap would be the
# identity. A larger gain makes the distribution so peaked that WPO's weights underflow to ~0.
GEMMA2 = dict(vocab_size=16384, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              head_dim=32, query_pre_attn_scalar=32, intermediate_size=512, max_position_embeddings=512,
              final_logit_softcapping=3.0, attn_logit_softcapping=None,
              layer_types=["full_attention", "full_attention"])
GEMMA_HEAD_GAIN = 5.0
# The DPO-family variants compared (TRL DPOConfig keys; tokendpo takes the same names): two non-default losses,
# one of them a weighted mixture, and WPO's weighting (which needs log Σ_v p_v² per token from each LM head).
LOSSES = {
    "apo_zero": dict(loss_type=["apo_zero"], loss_weights=None, use_weighting=False),
    "sigmoid+0.5sft": dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5], use_weighting=False),
    "sigmoid+wpo": dict(loss_type=["sigmoid"], loss_weights=None, use_weighting=True),
    # --quick only: apo_zero and WPO in one run, to keep the smoke test short (TRL 1.16 cannot combine WPO with
    # the sft term: its in-place weighting of the expanded per-sequence loss raises a RuntimeError)
    "apo_zero+wpo": dict(loss_type=["apo_zero"], loss_weights=None, use_weighting=True),
}
# Full run: 10 steps once per model × loss (the agreement window; bounded to finish in ~20 min on the shared
# 2-core machine, where a TRL llama-v32k step takes 5-20 s depending on load).
FULL = dict(models=MODELS, losses=("apo_zero", "sigmoid+0.5sft", "sigmoid+wpo"), batch_size=4, max_length=256, max_prompt_length=128, steps=10,
            reps=1)
QUICK = dict(cases=(("tiny-llama", "sigmoid+0.5sft"), ("gemma2-softcap", "apo_zero+wpo")),
             batch_size=2, max_length=192, max_prompt_length=96, steps=6, reps=1)
QUICK_STEPS = QUICK["steps"]


# ------------------------------------------------------------------------------------------ in the parent

def build_model(name: str, out_dir: Path) -> Path:
    """Save model `name` (random init, seed 0) with tokendpo's byte-level tokenizer to `out_dir`."""
    from tokendpo.modeling import build_preset

    if (out_dir / "config.json").is_file():  # built once per run, shared by its losses
        return out_dir
    if name == "tiny-llama":
        return build_preset(name, out_dir, seed=0)
    import torch
    from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig

    from tokendpo.modeling import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    ids = dict(tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    config = LlamaConfig(**V32K, **ids) if name == "llama-v32k" else Gemma2Config(**GEMMA2, **ids)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    if name == "gemma2-softcap":
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(GEMMA_HEAD_GAIN)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def hh_texts(tokenizer, max_length: int, max_prompt_length: int) -> list[dict]:
    """HH-RLHF rows split into prompt/chosen/rejected by tokendpo's extractor, kept when no truncation applies."""
    from tokendpo.data.formats import Extractor
    from tokendpo.data.rows import read_rows

    if not HH_FILE.is_file():
        raise FileNotFoundError(f"HH-RLHF data not found at {HH_FILE} (expected ../shared/data beside the repo)")
    extract = Extractor(("prompt", "chosen", "rejected"), tokenizer, False)
    kept = []
    for src, row in read_rows(str(HH_FILE), "train"):
        try:
            t = extract(row, src)
        except Exception:  # the 4 whitespace-only replies etc.: skipped, as --skip_bad_rows would
            continue
        n_p, n_c, n_r = (len(tokenizer(x, add_special_tokens=False)["input_ids"])
                         for x in (t.prompt, t.chosen, t.rejected))
        if t.chosen != t.rejected and 1 + n_p <= max_prompt_length and 1 + n_p + max(n_c, n_r) + 1 <= max_length:
            kept.append({"prompt": t.prompt, "chosen": t.chosen, "rejected": t.rejected})
    return kept


def prepare(model: str, loss: str, work: Path, setup: dict) -> dict:
    """Model dir, tokendpo config + data file, TRL's rows in tokendpo's order, and the ids both must train on."""
    from tokendpo import config as config_mod
    from tokendpo.config import Config
    from tokendpo.data import load_preference_data
    from tokendpo.modeling import load_tokenizer
    from tokendpo.batches import micro_batch

    model_dir = build_model(model, work / model)
    tokenizer = load_tokenizer(str(model_dir))
    data = work / "pairs.jsonl"
    if not data.is_file():
        texts = hh_texts(tokenizer, setup["max_length"], setup["max_prompt_length"])
        data.write_text("".join(json.dumps(t) + "\n" for t in texts))
    texts = [json.loads(line) for line in data.read_text().splitlines()]
    cfg = Config()
    h = HPARAMS
    cfg.model.model, cfg.model.ref_logps = str(model_dir), "online"
    cfg.data.dataset = str(data)
    cfg.data.max_length, cfg.data.max_prompt_length = setup["max_length"], setup["max_prompt_length"]
    cfg.loss.beta, cfg.loss.loss_type = h["beta"], ",".join(LOSSES[loss]["loss_type"])
    cfg.loss.loss_weights, cfg.loss.use_weighting = LOSSES[loss]["loss_weights"], LOSSES[loss]["use_weighting"]
    for key in ("learning_rate", "warmup_steps", "max_grad_norm", "adam_beta1", "adam_beta2", "adam_epsilon"):
        setattr(cfg.optim, key, h[key])
    cfg.optim.weight_decay = 0.0
    steps = setup["steps"]
    cfg.train.max_steps, cfg.train.per_device_train_batch_size = steps, setup["batch_size"]
    cfg.train.gradient_accumulation_steps, cfg.train.logging_steps, cfg.train.seed = 1, 1, h["seed"]
    cfg.train.kernel, cfg.train.device, cfg.train.progress = "auto", "cpu", False
    config_path = work / f"{model}-{loss}-tokendpo.yaml"
    config_mod.save_yaml(cfg, config_path)

    pairs, _, stats = load_preference_data(cfg.data, tokenizer, seed=cfg.train.seed)
    assert len(pairs) == len(texts) and stats.prompts_truncated == 0 and stats.responses_truncated == 0, stats
    order = [i for step in range(steps) for i in micro_batch(len(pairs), step, 0, cfg)]
    trl_rows = work / f"{model}-{loss}-trl-rows.jsonl"
    trl_rows.write_text("".join(json.dumps(texts[i]) + "\n" for i in order))
    bs = setup["batch_size"]
    step_tokens = [sum(2 * len(pairs[i].prompt_ids) + len(pairs[i].chosen_ids) + len(pairs[i].rejected_ids)
                       for i in order[s * bs:(s + 1) * bs]) for s in range(steps)]
    expected = [[pairs[i].prompt_ids, pairs[i].chosen_ids, pairs[i].rejected_ids] for i in order]
    return {"model_dir": str(model_dir), "config": str(config_path), "trl_rows": str(trl_rows),
            "step_tokens": step_tokens, "expected_ids": expected, "n_pairs": len(pairs), "steps": steps,
            "model": model, "loss": loss}


def run_worker(framework: str, spec: dict, work: Path, timeout: float) -> dict:
    spec_path, out_path = work / f"spec-{framework}.json", work / f"result-{framework}.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "benchmarks.vs_trl", "--worker", framework, "--spec", str(spec_path),
           "--result", str(out_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{framework} worker failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-5000:]}")
    return json.loads(out_path.read_text())


def check_agreement(model: str, prep: dict, res: dict[str, dict], n: int = 10) -> dict[str, dict]:
    """Assert every framework trained on identical ids and tokens for the same steps with finite values; return
    each tokendpo variant's diffs against TRL."""
    theirs = res["trl"]["rows"]
    assert res["trl"]["ids"] == prep["expected_ids"], f"{model}: TRL's tokenised pairs differ from tokendpo's"
    diffs = {}
    for fw, r in res.items():
        assert r["cum_tokens"] == sum(prep["step_tokens"]), f"{model} {fw}: {r['cum_tokens']} tokens, expected " \
                                                            f"{sum(prep['step_tokens'])}"
        assert len(r["rows"]) == len(r["cpu"]) == len(prep["step_tokens"]), (fw, len(r["rows"]), len(r["cpu"]))
        assert all(math.isfinite(v) for row in r["rows"] for v in row.values()), f"{model} {fw}: non-finite metric"
        if fw != "trl":
            diffs[fw] = compare(r["rows"], theirs, n)
    return diffs


def logps_accuracy(prep: dict, batch_size: int) -> dict:
    """Why the two are not bit-identical, measured on step 1's batch through ONE fp32 model body.

    Log-probs: three LM-head computations of the per-sequence sums on the same hidden states — tokendpo's
    (`sequence_logps`: fused chunked kernel, response positions only), TRL's fused LM head (every position, one
    32768-column vocabulary tile) and float64 (kernels' naive path: the oracle).
    Gradients: ∇ of Σ(chosen − rejected) log-probs (the direction of step 2's DPO gradient, when policy ==
    reference) through each head. Adam's first update is lr·ĝ/(|ĝ| + ε/…) ≈ ±lr per component whatever |g|, so
    components whose sign the two roundings disagree on move 2·lr apart: `sign_flips` counts them."""
    import torch
    from trl.trainer.utils import add_fused_lm_head

    import kernels
    from tokendpo.data import TokenizedPair, collate_pairs
    from tokendpo.logps import final_hidden, lm_head, sequence_logps
    from tokendpo.modeling import lm_head_spec, load_model, load_tokenizer

    tokenizer = load_tokenizer(prep["model_dir"])
    model = load_model(prep["model_dir"]).eval()
    pairs = [TokenizedPair(p, c, r, "") for p, c, r in prep["expected_ids"][:batch_size]]
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    b = len(pairs)

    def grads(logps: torch.Tensor) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        (logps[:b] - logps[b:]).sum().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    ours = sequence_logps(model, batch, kernel="auto").logps
    g_ours = grads(ours)
    with torch.no_grad():
        hidden = final_hidden(model, batch["input_ids"], batch["attention_mask"])[:, :-1]  # (R, T-1, H) fp32
        targets = batch["labels"][:, 1:]  # (R, T-1)
        weight, bias = lm_head(model)
        oracle = kernels.token_logprobs(hidden.reshape(-1, hidden.shape[-1]).double(), weight.double(),
                                        targets.reshape(-1), bias=None if bias is None else bias.double(),
                                        impl="naive", **lm_head_spec(model).kwargs()).view(targets.shape).sum(-1)
    add_fused_lm_head(model)  # TRL's own patch, as DPOTrainer applies it
    theirs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                   fused_lm_head=True, use_cache=False).log_probs.sum(-1)
    g_theirs = grads(theirs)
    ours, theirs = ours.detach().double(), theirs.detach().double()
    eps = 1e-8  # AdamW ε; first bias-corrected update: g / (|g| + ε)
    u_ours, u_theirs = g_ours / (g_ours.abs() + eps), g_theirs / (g_theirs.abs() + eps)
    biggest = float(oracle.abs().max())
    return {"tokendpo_vs_fp64": float((ours - oracle).abs().max()), "trl_vs_fp64": float((theirs - oracle).abs().max()),
            "tokendpo_vs_trl": float((ours - theirs).abs().max()), "max_abs_logp": biggest,
            "ulp": 2.0 ** (math.floor(math.log2(biggest)) - 23),
            "grad_rel": float((g_ours - g_theirs).norm() / g_theirs.norm()), "params": g_ours.numel(),
            "sign_flips": int(((u_ours - u_theirs).abs() > 1).sum()),
            "update_rel": float((u_ours - u_theirs).norm() / u_theirs.norm())}


# ------------------------------------------------------------------------------------------ main

def parse_cases(args) -> list[tuple[str, str]]:
    """(model, loss) pairs to run: --quick's three, or every --models × --losses (default: all of both)."""
    if args.quick and not (args.models or args.losses):
        return list(QUICK["cases"])
    chosen = []
    for flag, value, known in (("--models", args.models, MODELS), ("--losses", args.losses, tuple(LOSSES))):
        names = value.split(",") if value else list(FULL["models"] if flag == "--models" else FULL["losses"])
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise ValueError(f"{flag}: unknown {unknown}; choose from {', '.join(known)}")
        chosen.append(names)
    return [(m, loss) for m in chosen[0] for loss in chosen[1]]


def run(argv: list[str]) -> dict:
    """Run the benchmark; returns {"rows": result rows, "table": Markdown, "runs", "preps"} (main writes them)."""
    args = _parser().parse_args(argv)
    cases = parse_cases(args)
    setup = {k: v for k, v in (QUICK if args.quick else FULL).items() if k not in ("cases", "models", "losses")}
    setup["steps"] = args.steps or setup["steps"]
    setup["reps"] = args.reps or setup["reps"]
    setup["threads"] = args.threads
    setup["load_start"] = os.getloadavg()[0]
    frameworks = FRAMEWORKS[:2] if not args.packing else FRAMEWORKS
    runs, preps, accuracy = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="vs_trl-") as tmp:
        work = Path(tmp)
        for model, loss in cases:
            case = f"{model} · {loss}"
            preps[case] = prep = prepare(model, loss, work, setup)
            if model not in accuracy:
                accuracy[model] = logps_accuracy(prep, setup["batch_size"])
            runs[case] = []
            for rep in range(setup["reps"]):
                results = {}
                for fw in (frameworks if rep % 2 == 0 else frameworks[::-1]):  # ABC, CBA: against drifting load
                    spec = {k: v for k, v in prep.items() if k != "expected_ids"}
                    spec.update(framework=fw, threads=setup["threads"], batch_size=setup["batch_size"],
                                max_length=setup["max_length"], hparams=HPARAMS, loss=LOSSES[loss],
                                output_dir=str(work / f"out-{model}-{loss}-{fw}-{rep}"))
                    t = time.perf_counter()
                    results[fw] = run_worker(fw, spec, work, args.timeout)
                    print(f"# {case} {fw} run {rep + 1}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
                results = {fw: results[fw] for fw in frameworks}
                diffs = check_agreement(case, prep, results)
                results["trl"].pop("ids")
                runs[case].append({"results": results, "diffs": diffs})
    setup["load_end"] = os.getloadavg()[0]
    table = report(runs, preps, accuracy, setup, argv, args.quick)
    return {"rows": result_rows(runs, preps), "table": table, "runs": runs, "preps": preps, "accuracy": accuracy}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.vs_trl", description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run (tiny-llama sigmoid+0.5sft, gemma2-softcap apo_zero+wpo; 6 steps); asserts "
                        "agreement, writes nothing")
    p.add_argument("--models", default=None, help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--losses", default=None, help=f"comma-separated subset of {','.join(LOSSES)}")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 10; --quick 6)")
    p.add_argument("--reps", type=int, default=None, help="runs per framework × case, alternating order (default 1)")
    p.add_argument("--packing", action="store_true", help="also run tokendpo --packing (a third framework)")
    p.add_argument("--output", default=None, help="write the table here (default benchmarks/RESULTS_vs_trl.md "
                                                 "for a full run; none for --quick)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in every worker (default 1: on a shared, oversubscribed CPU a 2-thread op "
                        "waits for its slower thread)")
    p.add_argument("--raw", default=None, help="also dump every run's per-step clocks and metrics as JSON here")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per worker")
    p.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        result = (worker_trl if args.worker == "trl" else worker_tokendpo)(spec)
        Path(args.result).write_text(json.dumps(result))
        return 0
    try:
        import trl  # noqa: F401 - the benchmark-only extra
    except ImportError as e:
        print(f"error: benchmarks.vs_trl needs trl (the benchmark extra: pip install trl==1.16.0): {e}",
              file=sys.stderr)
        return 2
    try:
        parse_cases(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.steps is not None and args.steps < 2 or args.reps is not None and args.reps < 1:
        print("error: --steps must be >= 2 and --reps >= 1", file=sys.stderr)
        return 2
    out = run(argv)
    print(out["table"])
    output = args.output or (None if args.quick else str(REPO / "benchmarks" / "RESULTS_vs_trl.md"))
    if output:
        Path(output).write_text(out["table"] + "\n")
    if args.raw:
        Path(args.raw).write_text(json.dumps({"runs": out["runs"], "accuracy": out["accuracy"], "step_tokens":
                                              {c: p["step_tokens"] for c, p in out["preps"].items()}}))
    if not args.quick:
        write_results("vs_trl", out["rows"], command_line("benchmarks.vs_trl", argv))
    else:  # the smoke run's gate: any miss on the first steps is a regression
        missed = {c: misses(d) for c, r in out["runs"].items() for d in r[0]["diffs"].values()}
        assert not any(missed.values()), f"trajectories disagree: {missed}"
    return 0


if __name__ == "__main__":
    sys.exit(main())
