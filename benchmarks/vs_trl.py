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
    accumulation, clipping at 1.0, the sigmoid loss with the same β, no dropout, fp32 on CPU, no gradient
    checkpointing and no bf16 (TRL's DPOConfig defaults both on: set off here).

Models (random init, seed 0, saved with safetensors):
  tiny-llama   tokendpo's preset: H=32, 2 layers, V=260. Framework overhead dominates.
  llama-v32k   Llama, V=32000, H=256, 2 layers, 4 heads, MLP 1024: the LM head (8.2M of ~18.5M parameters;
               ~4x the body's FLOPs per token) dominates.
Tokenizer: tokendpo's byte-level tokenizer (260 ids) for both models. For llama-v32k the rows 260..31999 are
never targets but enter every softmax, so the LM-head cost is that of a real 32k vocabulary; tokenisation does
not change the compute, and byte-level ids make "same tokens" exact by construction (and checked).

A third framework row, `tokendpo+packing`, is tokendpo with `--packing` (padding-free rows; TRL 1.16 has
disabled its `padding_free`): the same job through tokendpo's other batch layout.

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

    python -m benchmarks.vs_trl             # tiny-llama 50 steps × 2, llama-v32k 20 steps × 1; RESULTS_vs_trl.md
    python -m benchmarks.vs_trl --quick     # <= 60 s: tiny-llama, 6 steps, tokendpo vs trl; asserts agreement
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HH_FILE = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
FRAMEWORKS = ("tokendpo", "trl", "tokendpo+packing")  # the third: tokendpo's padding-free mode (TRL 1.16 has none)
MODELS = ("tiny-llama", "llama-v32k")
V32K = dict(vocab_size=32000, hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            intermediate_size=1024, max_position_embeddings=512)
# Steps 1..10 are compared: the DPO quantities within TOL absolute; summed log-probs (|x| ~ 100-2000, where one
# fp32 rounding unit is 6e-6-1.2e-4, so 1e-4 absolute is below their resolution) and the gradient norm (which
# drifts most, see `logps_accuracy`) within REL_TOL relative; the LR identically. logits/* are reported, not
# gated: the two define the batch mean differently (see `compare`).
GATED_ABS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
GATED_REL = ("logps/chosen", "logps/rejected", "grad_norm")
REPORTED = GATED_ABS + GATED_REL + ("logits/chosen", "logits/rejected")
TOL = 1e-4
REL_TOL = {"logps/chosen": 1e-5, "logps/rejected": 1e-5, "grad_norm": 1e-4}
# Full run: bounded to ~15 min on the shared 2-core machine, where a llama-v32k step takes 5-20 s under load,
# so llama-v32k runs 20 steps once while tiny-llama runs 50 steps twice (order reversed in the second run).
FULL = dict(models=MODELS, steps={"tiny-llama": 50, "llama-v32k": 20}, reps={"tiny-llama": 2, "llama-v32k": 1},
            batch_size=4, max_length=256, max_prompt_length=128)
QUICK = dict(models=("tiny-llama",), batch_size=2, max_length=192, max_prompt_length=96)
QUICK_STEPS = 6
HPARAMS = dict(learning_rate=1e-4, warmup_steps=5, beta=0.1, seed=42, adam_beta1=0.9, adam_beta2=0.999,
               adam_epsilon=1e-8, max_grad_norm=1.0)


# ------------------------------------------------------------------------------------------ in the workers

def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _peak_bytes() -> int:
    """Peak RSS of this process's own address space (VmHWM). Not `ru_maxrss`: Linux carries the parent's RSS at
    fork into a child's ru_maxrss across exec, so a worker spawned by a 1 GiB parent would read >= 1 GiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


class LogWatcher(threading.Thread):
    """tokendpo's per-step clock, read from outside: polls metrics.jsonl every millisecond and, when it gains a
    line (one per optimizer step), stamps the process CPU time and the RSS. A stamp is late by at most a poll
    interval plus a GIL switch (~5 ms); the errors do not add up over steps."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.stamps, self.done = path, [], threading.Event()

    def run(self):
        lines = 0
        while not self.done.is_set():
            try:
                n = self.path.read_bytes().count(b"\n") if self.path.stat().st_size else 0
            except FileNotFoundError:
                n = 0
            if n > lines:
                self.stamps += [(time.process_time(), _rss_bytes())] * (n - lines)
                lines = n
            time.sleep(0.001)


def worker_tokendpo(spec: dict) -> dict:
    """tokendpo.train.train(cfg) on the saved config; trajectories from its metrics.jsonl."""
    import torch

    from tokendpo import config as config_mod
    from tokendpo.train import train

    torch.set_num_threads(spec["threads"])
    cfg = config_mod.from_yaml_file(spec["config"])
    cfg.train.output_dir = spec["output_dir"]
    cfg.data.packing = spec["framework"] == "tokendpo+packing"
    metrics = Path(spec["output_dir"]) / "metrics.jsonl"
    watcher = LogWatcher(metrics)
    base = _rss_bytes()
    watcher.start()
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    watcher.done.set()
    watcher.join()
    peak = _peak_bytes()
    rows = [r for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r]
    # tokens_per_second is cumulative tokens / seconds since the loop started: invert it for each step's clock
    cum, times = 0, []
    for n, r in zip(spec["step_tokens"], rows):
        cum += n
        times.append(cum / r["tokens_per_second"])
    return {"rows": [{k: r[k] for k in REPORTED + ("learning_rate",)} for r in rows], "times": times,
            "cpu": [c for c, _ in watcher.stamps], "rss": [m for _, m in watcher.stamps], "base_rss": base,
            "peak_rss": peak, "wall": wall, "cum_tokens": cum}


def worker_trl(spec: dict) -> dict:
    """TRL's DPOTrainer on the same texts in the same order; ids, per-step clock and log history."""
    import datasets
    import torch
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class Clock(TrainerCallback):
        """Wall time since the start of training, process CPU time and RSS at each train log (one per step)."""

        def __init__(self):
            self.t0, self.times, self.cpu, self.rss = None, [], [], []

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.times.append(time.perf_counter() - self.t0)
                self.cpu.append(time.process_time())
                self.rss.append(_rss_bytes())

    torch.set_num_threads(spec["threads"])
    texts = [json.loads(line) for line in Path(spec["trl_rows"]).read_text().splitlines()]
    dataset = datasets.Dataset.from_list(texts)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    base = _rss_bytes()
    h = spec["hparams"]
    args = DPOConfig(
        output_dir=spec["output_dir"], max_steps=spec["steps"], per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1, learning_rate=h["learning_rate"], lr_scheduler_type="cosine",
        warmup_steps=h["warmup_steps"], optim="adamw_torch_fused", adam_beta1=h["adam_beta1"], adam_beta2=h["adam_beta2"],
        adam_epsilon=h["adam_epsilon"], weight_decay=0.0, max_grad_norm=h["max_grad_norm"], beta=h["beta"],
        loss_type=["sigmoid"], max_length=spec["max_length"], precompute_ref_log_probs=False,
        gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True, disable_dropout=True,
        train_sampling_strategy="sequential", seed=h["seed"], logging_steps=1, save_strategy="no",
        eval_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )
    clock = Clock()
    t0 = time.perf_counter()
    trainer = DPOTrainer(model=spec["model_dir"], args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[clock])
    assert trainer.model.dtype == torch.float32, trainer.model.dtype
    ids = [[r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]] for r in trainer.train_dataset]
    trainer.train()
    wall = time.perf_counter() - t0
    peak = _peak_bytes()
    rows = [r for r in trainer.state.log_history if "loss" in r]
    return {"rows": [{k: r[k] for k in REPORTED + ("learning_rate", "num_tokens")} for r in rows],
            "times": clock.times, "cpu": clock.cpu, "rss": clock.rss, "base_rss": base, "peak_rss": peak,
            "wall": wall, "cum_tokens": int(rows[-1]["num_tokens"]), "ids": ids,
            "optimizer": type(trainer.optimizer).__name__}


# ------------------------------------------------------------------------------------------ in the parent

def build_model(name: str, out_dir: Path) -> Path:
    """Save model `name` (random init, seed 0) with tokendpo's byte-level tokenizer to `out_dir`."""
    from tokendpo.modeling import build_preset

    if name == "tiny-llama":
        return build_preset(name, out_dir, seed=0)
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tokendpo.modeling import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    config = LlamaConfig(**V32K, tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out_dir, safe_serialization=True)
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


def prepare(model: str, work: Path, setup: dict) -> dict:
    """Model dir, tokendpo config + data file, TRL's rows in tokendpo's order, and the ids both must train on."""
    from tokendpo import config as config_mod
    from tokendpo.config import Config
    from tokendpo.data import load_preference_data
    from tokendpo.modeling import load_tokenizer
    from tokendpo.train import micro_batch

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
    cfg.loss.beta, cfg.loss.loss_type = h["beta"], "sigmoid"
    for key in ("learning_rate", "warmup_steps", "max_grad_norm", "adam_beta1", "adam_beta2", "adam_epsilon"):
        setattr(cfg.optim, key, h[key])
    cfg.optim.weight_decay = 0.0
    steps = setup["steps"][model]
    cfg.train.max_steps, cfg.train.per_device_train_batch_size = steps, setup["batch_size"]
    cfg.train.gradient_accumulation_steps, cfg.train.logging_steps, cfg.train.seed = 1, 1, h["seed"]
    cfg.train.kernel, cfg.train.device, cfg.train.progress = "auto", "cpu", False
    config_path = work / f"{model}-tokendpo.yaml"
    config_mod.save_yaml(cfg, config_path)

    pairs, _, stats = load_preference_data(cfg.data, tokenizer, seed=cfg.train.seed)
    assert len(pairs) == len(texts) and stats.prompts_truncated == 0 and stats.responses_truncated == 0, stats
    order = [i for step in range(steps) for i in micro_batch(len(pairs), step, 0, cfg)]
    trl_rows = work / f"{model}-trl-rows.jsonl"
    trl_rows.write_text("".join(json.dumps(texts[i]) + "\n" for i in order))
    bs = setup["batch_size"]
    step_tokens = [sum(2 * len(pairs[i].prompt_ids) + len(pairs[i].chosen_ids) + len(pairs[i].rejected_ids)
                       for i in order[s * bs:(s + 1) * bs]) for s in range(steps)]
    expected = [[pairs[i].prompt_ids, pairs[i].chosen_ids, pairs[i].rejected_ids] for i in order]
    return {"model_dir": str(model_dir), "config": str(config_path), "trl_rows": str(trl_rows),
            "step_tokens": step_tokens, "expected_ids": expected, "n_pairs": len(pairs), "steps": steps}


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


def throughput(result: dict, step_tokens: list[int]) -> dict[str, float]:
    """Tokens per second: over all steps and over steps 2..N (wall), the median of each step's rate over steps
    2..N (wall; the figure least moved by a burst of another job), and tokens per CPU-second of the process over
    steps 2..N (the figure least moved by load at all: time spent waiting for a core is not counted)."""
    t, cpu = result["times"], result["cpu"]
    per_step = [n / (b - a) for n, a, b in zip(step_tokens[1:], t, t[1:])]
    rest = sum(step_tokens[1:])
    return {"all": sum(step_tokens) / t[-1], "rest": rest / (t[-1] - t[0]), "median": statistics.median(per_step),
            "cpu": rest / (cpu[-1] - cpu[0])}


def compare(ours: list[dict], theirs: list[dict], n: int = 10) -> dict[str, tuple[float, float]]:
    """(max |tokendpo − TRL|, max |tokendpo − TRL| / |TRL|) over steps 1..n per metric.

    logits/*: tokendpo averages each sequence's mean logit over the batch; TRL pools all completion tokens of the
    batch (Σ logits / Σ tokens), so they agree only for equal lengths. Both log the LR the step used.
    """
    n = min(n, len(ours), len(theirs))
    out = {}
    for k in REPORTED + ("learning_rate",):
        d = [(abs(a[k] - b[k]), abs(a[k] - b[k]) / max(abs(b[k]), 1e-30)) for a, b in zip(ours[:n], theirs[:n])]
        out[k] = (max(x for x, _ in d), max(r for _, r in d))
    return out


def misses(diffs: dict[str, tuple[float, float]]) -> dict[str, str]:
    """Gates missed: GATED_ABS within TOL absolute; GATED_REL (values of magnitude ~10-1000) within REL_TOL
    relative; the learning rate identical."""
    out = {k: f"{diffs[k][0]:.1e} > {TOL}" for k in GATED_ABS if not diffs[k][0] <= TOL}
    out.update({k: f"{diffs[k][1]:.1e} > {REL_TOL[k]} relative" for k in GATED_REL if not diffs[k][1] <= REL_TOL[k]})
    if not diffs["learning_rate"][0] <= 1e-12:
        out["learning_rate"] = f"{diffs['learning_rate'][0]:.1e}"
    return out


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
    from tokendpo.modeling import load_model, load_tokenizer

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
                                        impl="naive").view(targets.shape).sum(-1)
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


# ------------------------------------------------------------------------------------------ report

def _mib(x: float) -> str:
    return f"{x / 2**20:.0f}"


def machine() -> str:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor() or platform.machine())
    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True,
                               text=True).stdout.strip()
        return head + (" (+ uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def report(runs: dict, preps: dict, accuracy: dict, setup: dict, argv: list[str], quick: bool) -> str:
    import transformers
    import trl

    first = preps[next(iter(preps))]
    steps = ", ".join(f"{m} {preps[m]['steps']} steps × {len(runs[m])} run(s)" for m in runs)
    lines = [f"# tokendpo.train vs TRL DPOTrainer — {date.today()}", "",
             f"- machine: {machine()}; torch threads {setup['threads']} in every worker. The machine is shared "
             "with other jobs (load average 6-9 on 2 cores during these runs): every run is a fresh subprocess, "
             "the frameworks alternate order run by run (A B C, C B A, ...), and speed ratios use tokens per "
             "CPU-second (process time, which excludes waiting for a core), with wall-clock figures beside them",
             f"- command: `{' '.join(['python -m benchmarks.vs_trl', *argv])}`",
             f"- commit: {commit()}; trl {trl.__version__}, transformers {transformers.__version__}",
             f"- job: {steps}; {setup['batch_size']} pairs per step from {first['n_pairs']} HH-RLHF harmless-base "
             f"pairs that fit max_prompt_length={setup['max_prompt_length']}, max_length={setup['max_length']} "
             f"untruncated (byte-level tokens); AdamW lr {HPARAMS['learning_rate']}, cosine to 0 at the last step, "
             f"warmup {HPARAMS['warmup_steps']}, β={HPARAMS['beta']}, sigmoid, clip {HPARAMS['max_grad_norm']}, "
             "fp32 CPU, reference online, no gradient checkpointing",
             "- frameworks: `tokendpo` (defaults: padded batches), `trl` (DPOTrainer, configured to match), "
             "`tokendpo+packing` (tokendpo's `--packing`: padding-free rows; TRL 1.16 has disabled its padding_free)",
             ""]
    if quick:
        lines += ["**--quick smoke run: these numbers are not results.**", ""]
    lines += ["| model | framework | run | tok/s all steps | tok/s steps 2–N | median step tok/s | tok per CPU-s "
              "steps 2–N | peak RSS MiB | Δ peak − post-import RSS MiB | wall s incl. setup |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for model, reps in runs.items():
        for i, res in enumerate(reps):
            for fw, r in res["results"].items():
                tp = throughput(r, preps[model]["step_tokens"])
                lines.append(f"| {model} | {fw} | {i + 1} | {tp['all']:.0f} | {tp['rest']:.0f} | {tp['median']:.0f} | "
                             f"{tp['cpu']:.0f} | {_mib(r['peak_rss'])} | {_mib(r['peak_rss'] - r['base_rss'])} | "
                             f"{r['wall']:.1f} |")
    lines += ["", "tokendpo relative to TRL: median over runs (each run in parentheses). Targets: speed ≥ 1.5×, "
              "memory ratio < 1.", "",
              "| model | framework | speed: tok per CPU-s | speed: median step tok/s (wall) | peak RSS ratio | "
              "Δ-memory ratio |", "|---|---|---|---|---|---|"]
    for model, reps in runs.items():
        st = preps[model]["step_tokens"]
        for fw in [f for f in reps[0]["results"] if f != "trl"]:
            cells = []
            for ratio in (lambda o, t: throughput(o, st)["cpu"] / throughput(t, st)["cpu"],
                          lambda o, t: throughput(o, st)["median"] / throughput(t, st)["median"],
                          lambda o, t: o["peak_rss"] / t["peak_rss"],
                          lambda o, t: (o["peak_rss"] - o["base_rss"]) / (t["peak_rss"] - t["base_rss"])):
                xs = [ratio(res["results"][fw], res["results"]["trl"]) for res in reps]
                cells.append(f"{statistics.median(xs):.2f}" + (f" ({', '.join(f'{x:.2f}' for x in xs)})"
                                                               if len(xs) > 1 else ""))
            lines.append(f"| {model} | {fw} | " + " | ".join(cells) + " |")
    lines += ["", "Agreement with TRL over steps 1–10 of run 1: max |Δ| (max relative Δ). Gates: "
              f"{', '.join(GATED_ABS)} "
              f"≤ {TOL} absolute; logps/* ≤ {REL_TOL['logps/chosen']} and grad_norm ≤ {REL_TOL['grad_norm']} relative "
              "(see below); learning_rate identical. logits/* are not gated: tokendpo averages per-sequence mean "
              "logits, TRL pools the tokens of the batch.", "",
              "| model | framework | " + " | ".join(REPORTED + ("learning_rate",)) + " | gates missed |",
              "|---" * (len(REPORTED) + 4) + "|"]
    for model, reps in runs.items():
        for fw, d in reps[0]["diffs"].items():
            missed = misses(d)
            lines.append(f"| {model} | {fw} | " + " | ".join(f"{d[k][0]:.1e} ({d[k][1]:.0e})"
                                                            for k in REPORTED + ("learning_rate",))
                         + f" | {'; '.join(f'{k}: {v}' for k, v in missed.items()) or 'none'} |")
    lines += ["", "Why they are not bit-identical. Step 1's batch through one fp32 body (the same hidden states for "
              "both), then each framework's LM head: per-sequence summed log-probs against float64, and the "
              "gradient of Σ(chosen − rejected) log-probs:", "",
              "| model | max abs logp | fp32 unit there | tokendpo − fp64 | TRL − fp64 | tokendpo − TRL | "
              "‖Δgrad‖/‖grad‖ | Adam first-update sign flips | ‖Δupdate‖/‖update‖ |",
              "|---|---|---|---|---|---|---|---|---|"]
    for model, a in accuracy.items():
        lines.append(f"| {model} | {a['max_abs_logp']:.1f} | {a['ulp']:.1e} | {a['tokendpo_vs_fp64']:.1e} | "
                     f"{a['trl_vs_fp64']:.1e} | {a['tokendpo_vs_trl']:.1e} | {a['grad_rel']:.1e} | "
                     f"{a['sign_flips']} of {a['params']} | {a['update_rel']:.1e} |")
    lines += ["", "The body, loss, optimizer, schedule and data are the same; only the fp32 LM-head arithmetic differs "
              "(tokendpo: online log-sum-exp over 1024-column vocabulary tiles on response positions only; TRL: "
              "one 32768-column tile over every position, so GEMMs of other shapes). Each token's log-prob rounds "
              "differently by about one unit, the summed log-probs by a few units of their own magnitude (both "
              "equally close to float64), and the gradients by ~1e-7 relative. Step 1 is identical (its LR is 0 in "
              "the warmup). From step 2 on the roundings enter the weights, and Adam amplifies them: its first "
              "update is ±lr per component whatever the gradient's size, so a component whose sign the two "
              "roundings disagree on ends 2·lr apart. The trajectories then drift apart slowly: the DPO quantities "
              "(loss, rewards) stay within 1e-4 over the first 10 steps; grad_norm (magnitude 2-50) drifts most.",
              ""]
    for model, reps in runs.items():
        ours, theirs = reps[0]["results"]["tokendpo"]["rows"], reps[0]["results"]["trl"]["rows"]
        n = len(ours)
        show = sorted(set(range(min(10, n))) | set(range(9, n, 5)) | {n - 1})
        lines += [f"Trajectory, {model} (run 1): tokendpo / TRL", "",
                  "| step | loss | rewards/margins | rewards/accuracies | logps/chosen | logps/rejected | grad_norm |",
                  "|---|---|---|---|---|---|---|"]
        for k in show:
            a, b = ours[k], theirs[k]
            lines.append(f"| {k + 1} | " + " | ".join(
                f"{a[m]:.6f} / {b[m]:.6f}" if abs(a[m]) < 100 else f"{a[m]:.4f} / {b[m]:.4f}"
                for m in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected",
                          "grad_norm")) + " |")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="<= 60 s smoke run (tiny-llama, 6 steps); asserts agreement")
    p.add_argument("--models", default=None, help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: tiny-llama 50, "
                                                           "llama-v32k 20; --quick 6)")
    p.add_argument("--reps", type=int, default=None, help="runs per framework × model, alternating order (default: "
                                                          "tiny-llama 2, llama-v32k 1; --quick 1)")
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
    args = p.parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        result = (worker_trl if args.worker == "trl" else worker_tokendpo)(spec)
        Path(args.result).write_text(json.dumps(result))
        return 0

    try:
        import trl  # noqa: F401 - the benchmark-only extra
    except ImportError as e:
        raise SystemExit(f"benchmarks.vs_trl needs trl (the benchmark extra: pip install trl==1.16.0): {e}")
    setup = dict(QUICK if args.quick else FULL)
    if args.models:
        unknown = set(args.models.split(",")) - set(MODELS)
        if unknown:
            raise SystemExit(f"--models: unknown {sorted(unknown)}; choose from {', '.join(MODELS)}")
        setup["models"] = tuple(args.models.split(","))
    setup["steps"] = {m: args.steps or (QUICK_STEPS if args.quick else FULL["steps"][m]) for m in setup["models"]}
    setup["threads"] = args.threads
    setup["reps"] = {m: args.reps or (1 if args.quick else FULL["reps"][m]) for m in setup["models"]}
    output = args.output or (None if args.quick else str(REPO / "benchmarks" / "RESULTS_vs_trl.md"))

    frameworks = FRAMEWORKS[:2] if args.quick else FRAMEWORKS  # --quick: the default-config pair only
    runs, preps, accuracy = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="vs_trl-") as tmp:
        work = Path(tmp)
        for model in setup["models"]:
            preps[model] = prep = prepare(model, work, setup)
            accuracy[model] = logps_accuracy(prep, setup["batch_size"])
            runs[model] = []
            for rep in range(setup["reps"][model]):
                results = {}
                for fw in (frameworks if rep % 2 == 0 else frameworks[::-1]):  # ABC, CBA: against drifting load
                    spec = {k: v for k, v in prep.items() if k != "expected_ids"}
                    spec.update(framework=fw, threads=setup["threads"], batch_size=setup["batch_size"],
                                max_length=setup["max_length"], hparams=HPARAMS,
                                output_dir=str(work / f"out-{model}-{fw}-{rep}"))
                    t = time.perf_counter()
                    results[fw] = run_worker(fw, spec, work, args.timeout)
                    print(f"# {model} {fw} run {rep + 1}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
                results = {fw: results[fw] for fw in frameworks}
                diffs = check_agreement(model, prep, results)
                results["trl"].pop("ids")
                runs[model].append({"results": results, "diffs": diffs})
    table = report(runs, preps, accuracy, setup, argv, args.quick)
    print(table)
    if output:
        Path(output).write_text(table + "\n")
    if args.raw:
        Path(args.raw).write_text(json.dumps({"runs": runs, "accuracy": accuracy, "step_tokens":
                                              {m: p["step_tokens"] for m, p in preps.items()}}))
    if args.quick:  # the smoke test's gate: any miss on the tiny model's first steps is a regression
        missed = {m: misses(d) for m, r in runs.items() for d in r[0]["diffs"].values()}
        assert not any(missed.values()), f"trajectories disagree: {missed}"
    return 0


if __name__ == "__main__":
    sys.exit(main())
