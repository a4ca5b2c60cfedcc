"""The paper's search experiment ("From r to Q*", Rafailov et al. 2024, §5.2 / Figure 2) on the built-in gold tasks.

    python -m benchmarks.paper_search --out /work/paper_out            # full run (both tasks, β ∈ {0.05, 0.1, 0.5})
    python -m benchmarks.paper_search --quick --out /tmp/ps            # smoke run (tiny training, 4 prompts)

Per task: one SFT model and one set of preference pairs (`tokendpo.tasks.pipeline`, stages sft + pairs); per β a
DPO run of the core loop (`tokendpo.train.train`, the pipeline's `dpo_config`) with `save_steps`, so an early,
not yet saturated checkpoint exists beside the final policy. Each policy (reference = the SFT model) decodes the
same held-out prompts with every decoder of `search` (through `search.decode.run`, the CLI's own loop):
sampling, greedy, best-of-N, beam (implicit score Σ β·log π/π_ref, and likelihood score Σ β·log π as in the
paper), chunk-level beam and MCTS (backups of the implicit per-token rewards, and of β·log π: `mcts-lik`). Per configuration:

    gold       mean r*(x, y) of the decoded outputs
    win        mean over prompts of 1[r*(y) > r*(y_sft)] + ½·1[=], y_sft an independent temperature-1 SFT sample
    log-ratio  mean Σ_t log π(y_t|·) − log π_ref(y_t|·) of the decoded outputs (= implicit reward / β), nats;
               for temperature-1 samples this estimates KL(π ‖ π_ref), for search outputs it is how far from the
               reference the chosen outputs are
    len        generated tokens (EOS included when generated); distinct = distinct outputs / prompts;
    rep        share of repeated token 3-grams (`tokendpo.tasks.metrics.repetition`)
    fwd        forward tokens per prompt (policy + reference positions, `search.scorer`)
    ceiling    share of prompts whose output reaches the best gold reward any decoder found for that prompt

Results: OUT/results_TASK.jsonl (one row per (task, β, checkpoint, config), appended as they finish; a rerun
skips rows already there), OUT/RESULTS.md (tables), OUT/winrate_vs_search.png and OUT/quality_vs_compute.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks.results_file import git_commit
from benchmarks.paired import ROW_KEYS, comparison_rows
from search import scoring
from search.config import SearchConfig
from search.decode import run as decode_run
from tokendpo.modeling import load_model, load_tokenizer
from tokendpo.tasks import get_task
from tokendpo.tasks.metrics import REPETITION_N, distinct_rate, repetition, win_rate
from tokendpo.tasks.pipeline import COMPLETE, PipelineSettings, dpo_config, run_pipeline
from tokendpo.tasks.sampling import sample as hf_sample

TASKS = ("sentiment", "arithmetic")
BETAS = (0.05, 0.1, 0.5)
RANKED = ("bon", "beam", "cbs", "mcts")  # decoders whose --score matters
RESULTS_JSON = Path(__file__).parent / "results" / "paper_search.json"
BASELINE_SEED_OFFSET = 7_919  # the SFT baseline samples use their own seed, as tokendpo.tasks.evaluate does


@dataclass(frozen=True)
class Decoder:
    """One decoding configuration: a row name, a family (for plots), its size x (N, K or S) and SearchConfig fields."""

    name: str
    family: str
    x: int
    fields: dict = field(default_factory=dict)


def decoders(quick: bool) -> list[Decoder]:
    if quick:
        return [Decoder("sample", "sample", 1, {"method": "sample"}),
                Decoder("greedy", "greedy", 1, {"method": "greedy"}),
                Decoder("bon-4", "bon", 4, {"method": "bon", "bon": 4, "score": "implicit"}),
                Decoder("beam-2", "beam", 2, {"method": "beam", "beam": 2, "score": "implicit"}),
                Decoder("beam-lik-2", "beam-lik", 2, {"method": "beam", "beam": 2, "score": "likelihood"}),
                Decoder("cbs-2,2,4", "cbs", 2, {"method": "cbs", "cbs": (2, 2, 4), "score": "implicit"}),
                Decoder("mcts-4", "mcts", 4, {"method": "mcts", "simulations": 4, "score": "implicit"}),
                Decoder("mcts-lik-4", "mcts-lik", 4, {"method": "mcts", "simulations": 4, "score": "likelihood"})]
    out = [Decoder("sample", "sample", 1, {"method": "sample"}), Decoder("greedy", "greedy", 1, {"method": "greedy"})]
    out += [Decoder(f"bon-{n}", "bon", n, {"method": "bon", "bon": n, "score": "implicit"}) for n in (4, 16)]
    out += [Decoder(f"beam-{k}", "beam", k, {"method": "beam", "beam": k, "score": "implicit"}) for k in (1, 2, 4, 8, 16)]
    out += [Decoder(f"beam-lik-{k}", "beam-lik", k, {"method": "beam", "beam": k, "score": "likelihood"})
            for k in (1, 2, 4, 8, 16)]
    out += [Decoder(f"cbs-{w},{k},{c}", "cbs", w * k, {"method": "cbs", "cbs": (w, k, c), "score": "implicit"})
            for w, k, c in ((2, 2, 4), (4, 4, 4))]
    out += [Decoder(f"mcts-{s}", "mcts", s, {"method": "mcts", "simulations": s, "score": "implicit"}) for s in (8, 32, 128)]
    out += [Decoder(f"mcts-lik-{s}", "mcts-lik", s, {"method": "mcts", "simulations": s, "score": "likelihood"})
            for s in (8, 32, 128)]
    return out


# ------------------------------------------------------------------------------------------------ training
def train_policies(task: str, out: Path, *, betas: tuple[float, ...], seed: int, quick: bool, early_frac: float,
                   overrides: dict, progress: bool) -> tuple[Path, dict[float, dict[str, Path]], PipelineSettings]:
    """SFT + pairs once per task (the pipeline's own stages), then one DPO run per β with an early checkpoint.
    Returns (sft_dir, {β: {"early": dir, "final": dir}}, settings)."""
    from tokendpo.training import train

    base = out / task
    run_pipeline(task, str(base), seed=seed, quick=quick, stages=("sft", "pairs"), progress=progress,
                 print_summary=False, **overrides)
    policies = {}
    s = None
    for beta in betas:
        s = PipelineSettings.resolve(get_task(task), seed=seed, quick=quick, **{**overrides, "beta": beta})
        early_step = max(1, int(round(s.dpo_steps * early_frac)))
        dpo_dir = base / f"dpo_beta{beta:g}"
        if not (dpo_dir / COMPLETE).exists():
            cfg = dpo_config(s, base / "sft", base / "pairs.jsonl", base / "pairs_eval.jsonl", dpo_dir,
                             progress=progress)
            cfg.train.save_steps = early_step
            cfg.train.save_total_limit = 0
            t0 = time.perf_counter()
            final = train(cfg, on_existing="resume")  # an interrupted stage continues its checkpoints
            (dpo_dir / COMPLETE).write_text(json.dumps({"stage": "dpo", "beta": beta, "final": final,
                                                        "seconds": round(time.perf_counter() - t0, 1)}) + "\n")
        logged = [json.loads(line) for line in (dpo_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        last = max((int(r["step"]) for r in logged if "step" in r), default=s.dpo_steps)
        policies[beta] = {f"final (step {last})": dpo_dir}
        early = dpo_dir / f"checkpoint-{early_step}"
        if early.is_dir():
            policies[beta] = {f"early (step {early_step})": early, **policies[beta]}
        else:  # the run stopped before the early step (e.g. the epoch cap on few pairs): say so, don't crash
            print(f"[{task} β={beta:g}] no early checkpoint: DPO stopped at step {last} < {early_step}",
                  file=sys.stderr)
    return base / "sft", policies, s


# ------------------------------------------------------------------------------------------------ decoding
def sft_baseline(task, sft_model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int) -> list[float]:
    """Gold rewards of one independent temperature-1 SFT sample per prompt: the win-rate baseline."""
    texts, _ = hf_sample(sft_model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                         seed=seed + BASELINE_SEED_OFFSET, progress=False)
    return [float(task.gold_reward(p, y)) for p, y in zip(prompts, texts)]


def decode_row(task, dec: Decoder, policy, reference, tokenizer, prompts: list[str], baseline: list[float], *,
               beta: float, max_new_tokens: int, seed: int, batch_size: int) -> dict:
    """Decode `prompts` with one configuration through `search.decode.run` and measure it."""
    cfg = SearchConfig(policy="<in memory>", ref="<in memory>", beta=beta, max_new_tokens=max_new_tokens, seed=seed,
                       batch_size=batch_size, progress=False, **dec.fields)
    cfg.validate()
    t0 = time.perf_counter()
    recs = list(decode_run(cfg, policy, reference, tokenizer, prompts, task))
    seconds = time.perf_counter() - t0
    eos = tokenizer.eos_token_id
    gold = [r["gold_reward"] for r in recs]
    log_ratio = [r["reward"] / beta for r in recs]
    return {
        "decoder": dec.name, "family": dec.family, "x": dec.x,
        "gold": sum(gold) / len(gold),
        "win": win_rate(gold, baseline),
        "log_ratio": sum(log_ratio) / len(log_ratio),
        "length": sum(len(r["token_ids"]) for r in recs) / len(recs),
        "distinct": distinct_rate([r["completion"] for r in recs]),
        "repetition": repetition([[t for t in r["token_ids"] if t != eos] for r in recs], REPETITION_N),
        "forward_tokens": sum(r["forward_tokens"] for r in recs) / len(recs),
        "seconds": seconds,
        "per_prompt_gold": gold, "per_prompt_log_ratio": log_ratio,
        "examples": [r["completion"] for r in recs[:3]],
        "score": cfg.score if cfg.method in RANKED else "likelihood", "ref_weight": cfg.lam,
        "support": ("argmax" if cfg.method == "greedy" else scoring.describe_support(cfg.support()))
        + (f", proposal {cfg.proposal}" if cfg.proposal else ""),
    }


def _key(row: dict) -> tuple:
    return (row["task"], row["beta"], row["checkpoint"], row["decoder"])


def read_rows(out: Path) -> list[dict]:
    """Every row of OUT/results_*.jsonl (one file per task, so tasks may run as separate processes)."""
    return [json.loads(line) for path in sorted(out.glob("results_*.jsonl")) for line in open(path) if line.strip()]


def run_task(task_name: str, a, out: Path, overrides: dict, dec_list: list[Decoder]) -> None:
    task = get_task(task_name)
    results = out / f"results_{task_name}.jsonl"
    t0 = time.perf_counter()
    sft_dir, policies, s = train_policies(task_name, out, betas=a.betas, seed=a.seed, quick=a.quick,
                                          early_frac=a.early_frac, overrides=overrides, progress=a.progress)
    print(f"[{task_name}] policies ready in {time.perf_counter() - t0:.0f} s", flush=True)
    max_new = a.max_new_tokens or s.max_new_tokens
    tokenizer = load_tokenizer(str(sft_dir))
    reference = load_model(str(sft_dir)).eval()
    prompts = task.prompts("heldout", a.prompts, seed=a.seed)
    baseline = sft_baseline(task, reference, tokenizer, prompts, max_new, a.seed)
    done = {_key(r) for r in read_rows(out)}
    # the SFT model itself (π = π_ref, any β): sampling ≈ 0.5 win rate is the sanity row
    jobs = [(a.betas[0], "sft", sft_dir, [d for d in dec_list if d.family in ("sample", "greedy")])]
    jobs += [(beta, ck, path, dec_list) for beta in a.betas for ck, path in policies[beta].items()]
    for beta, ck, path, decs in jobs:
        policy = reference if ck == "sft" else load_model(str(path)).eval()
        for dec in decs:
            meta = {"task": task_name, "beta": beta, "checkpoint": ck}
            if _key({**meta, "decoder": dec.name}) in done:
                continue
            row = {**meta, **decode_row(task, dec, policy, reference, tokenizer, prompts, baseline, beta=beta,
                                        max_new_tokens=max_new, seed=a.seed, batch_size=a.batch_size),
                   "baseline_gold": baseline, "prompts": len(prompts), "max_new_tokens": max_new}
            with open(results, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"[{task_name} β={beta:g} {ck}] {dec.name:<12} gold {row['gold']:+.3f} win {row['win']:.3f} "
                  f"log-ratio {row['log_ratio']:+.2f} fwd {row['forward_tokens']:.0f} ({row['seconds']:.1f} s)",
                  flush=True)


# ------------------------------------------------------------------------------------------------ report
def add_ceiling(rows: list[dict]) -> None:
    """Per task, the best gold reward any decoder found for each prompt; `ceiling` = share of prompts at it."""
    best: dict[str, list[float]] = {}
    for r in rows:
        g = r["per_prompt_gold"]
        b = best.setdefault(r["task"], list(g))
        best[r["task"]] = [max(x, y) for x, y in zip(b, g)]
    for r in rows:
        b = best[r["task"]]
        r["ceiling"] = sum(g >= m - 1e-9 for g, m in zip(r["per_prompt_gold"], b)) / len(b)
        r["oracle_gold"] = sum(b) / len(b)


def _fmt(v: float, spec: str) -> str:
    return format(v, spec) if math.isfinite(v) else str(v)


def table(rows: list[dict]) -> list[str]:
    head = ("| task | β | checkpoint | decoder | gold | win vs SFT | log π/π_ref | len | distinct | rep (3-gram) "
            "| at ceiling | fwd tokens / prompt | s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['task']} | {r['beta']:g} | {r['checkpoint']} | {r['decoder']} | {_fmt(r['gold'], '+.3f')} "
                     f"| {_fmt(r['win'], '.3f')} | {_fmt(r['log_ratio'], '+.2f')} | {r['length']:.1f} "
                     f"| {r['distinct']:.2f} | {r['repetition']:.3f} | {r['ceiling']:.2f} "
                     f"| {r['forward_tokens']:.0f} | {r['seconds']:.1f} |")
    return lines


def pivot(rows: list[dict]) -> list[str]:
    """Win rate vs SFT samples (gold in brackets) per policy × decoder: the compact view of the table above."""
    names = list(dict.fromkeys(r["decoder"] for r in rows))
    cells: dict[tuple, dict[str, str]] = {}
    for r in rows:
        cells.setdefault((r["task"], r["beta"], r["checkpoint"]), {})[r["decoder"]] = f"{r['win']:.2f} ({r['gold']:+.2f})"
    lines = ["| task | β | checkpoint | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 3)]
    for (task, beta, ck), c in cells.items():
        lines.append(f"| {task} | {beta:g} | {ck} | " + " | ".join(c.get(n, "") for n in names) + " |")
    return lines


def findings(rows: list[dict]) -> list[str]:
    """Targets and over-optimisation, read off the rows (never asserted: a miss is reported)."""
    out = []
    floors: dict[str, float] = {}  # lowest gold any output got on the task (sentiment: −1 = invalid)
    for r in rows:
        floors[r["task"]] = min(floors.get(r["task"], math.inf), *r["per_prompt_gold"])
    groups: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["beta"], r["checkpoint"]), {})[r["decoder"]] = r
    for (task, beta, ck), g in groups.items():
        if ck == "sft" or "sample" not in g:
            continue
        tag = f"{task} β={beta:g} {ck}"
        samp = g["sample"]["win"]
        for fam in ("beam", "beam-lik"):
            beams = {k: g[f"{fam}-{k}"] for k in (4, 5) if f"{fam}-{k}" in g}
            for k, b in beams.items():
                gain = 100 * (b["win"] - samp)
                ceil = " — gold at its ceiling (at-ceiling share ≥ 0.9), not a search gain" if b["ceiling"] >= 0.9 \
                    else ""
                out.append(f"- {tag}: {fam} K={k} win {b['win']:.3f} vs sampling {samp:.3f}: {gain:+.1f} points "
                           f"(target ≥ +10: {'met' if gain >= 10 else 'NOT met'}){ceil}")
            ks = sorted(int(n.rsplit("-", 1)[1]) for n in g if n.startswith(fam + "-") and n.count("-") ==
                        fam.count("-") + 1)
            if len(ks) >= 3:
                wins = [g[f"{fam}-{k}"]["win"] for k in ks]
                peak = max(range(len(ks)), key=lambda i: wins[i])
                if peak < len(ks) - 1 and wins[-1] < wins[peak] - 0.02:
                    a, b = g[f"{fam}-{ks[peak]}"], g[f"{fam}-{ks[-1]}"]
                    grew = b["log_ratio"] > a["log_ratio"] + 0.1 * abs(a["log_ratio"]) + 0.5
                    what = "over-optimisation" if grew else "more search hurts"
                    out.append(f"- {tag}: {what} in {fam}: win peaks at K={ks[peak]} ({wins[peak]:.3f}) and falls "
                               f"to {wins[-1]:.3f} at K={ks[-1]} (log-ratio {a['log_ratio']:+.1f} → "
                               f"{b['log_ratio']:+.1f}, length {a['length']:.1f} → {b['length']:.1f})")
        hacked = [r["decoder"] for r in g.values() if r["family"] not in ("sample", "greedy")
                  and r["win"] < samp - 0.05 and r["log_ratio"] > g["sample"]["log_ratio"]]
        if hacked:
            out.append(f"- {tag}: below sampling's win rate {samp:.3f} by > 5 points with a higher log π/π_ref "
                       f"than sampling (over-optimised): {', '.join(hacked)}")
        mcts = [r for r in g.values() if r["family"] in ("mcts", "mcts-lik")]
        for m in sorted(mcts, key=lambda r: (r["family"], r["x"])):
            parts = []
            for fam in ("beam", "beam-lik"):
                beam = [r for r in g.values() if r["family"] == fam]
                if not beam:
                    continue
                near = min(beam, key=lambda b: abs(math.log(b["forward_tokens"] / m["forward_tokens"])))
                verdict = "met" if m["win"] >= near["win"] else "NOT met"
                floor = " (both at the gold floor: a tie of failures)" if m["gold"] <= floors[task] + 1e-9 and \
                    near["gold"] <= floors[task] + 1e-9 else ""
                parts.append(f"{near['decoder']} {near['win']:.3f} at {near['forward_tokens']:.0f}: {verdict}{floor}")
            if parts:
                out.append(f"- {tag}: {m['decoder']} win {m['win']:.3f} at {m['forward_tokens']:.0f} fwd tokens vs "
                           f"nearest-compute " + "; ".join(parts))
    return out


def plots(rows: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows}, key=lambda t: TASKS.index(t) if t in TASKS else 99)
    pol = sorted({(r["beta"], r["checkpoint"]) for r in rows if r["checkpoint"] != "sft"})
    paths = []
    panels = ("beam", "beam-lik", "mcts", "mcts-lik")
    fig, axes = plt.subplots(len(tasks), len(panels), figsize=(5 * len(panels), 4 * len(tasks)), squeeze=False)
    for i, task in enumerate(tasks):
        for j, fam in enumerate(panels):
            ax = axes[i][j]
            for beta, ck in pol:
                pts = sorted((r["x"], r["win"]) for r in rows if r["task"] == task and r["beta"] == beta
                             and r["checkpoint"] == ck and r["family"] == fam)
                samp = [r["win"] for r in rows if r["task"] == task and r["beta"] == beta and r["checkpoint"] == ck
                        and r["decoder"] == "sample"]
                if not pts:
                    continue
                style = "-" if ck.startswith("final") else "--"
                line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=f"β={beta:g} {ck}")
                if samp:
                    ax.axhline(samp[0], color=line.get_color(), linestyle=":", linewidth=0.8)
            ax.set_xscale("log", base=2)
            ax.set_ylim(0, 1)
            ax.set_title(f"{task}: {fam} (dotted: sampling)")
            ax.set_xlabel("simulations per token" if fam.startswith("mcts") else "beams K")
            ax.set_ylabel("gold win rate vs SFT samples")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "winrate_vs_search.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)

    fams = sorted({r["family"] for r in rows})
    markers = {fam: "os^vD*PxXh"[k % 10] for k, fam in enumerate(fams)}  # any number of families
    fig, axes = plt.subplots(len(tasks), len(pol) or 1, figsize=(4.5 * max(1, len(pol)), 4 * len(tasks)),
                             squeeze=False)
    for i, task in enumerate(tasks):
        for j, (beta, ck) in enumerate(pol):
            ax = axes[i][j]
            for fam in fams:
                pts = sorted((r["forward_tokens"], r["gold"]) for r in rows if r["task"] == task and
                             r["beta"] == beta and r["checkpoint"] == ck and r["family"] == fam)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=markers[fam], label=fam)
            sft = [r["gold"] for r in rows if r["task"] == task and r["checkpoint"] == "sft" and r["decoder"] == "sample"]
            if sft:
                ax.axhline(sft[0], color="grey", linestyle=":", label="SFT sample")
            ax.set_xscale("log")
            ax.set_title(f"{task} β={beta:g} {ck}", fontsize=9)
            ax.set_xlabel("forward tokens per prompt")
            ax.set_ylabel("mean gold reward")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "quality_vs_compute.png")
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)
    return paths


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{platform.machine()}, {torch.get_num_threads()} torch thread(s) of {__import__('os').cpu_count()} CPUs "
            f"({cpu}), torch {torch.__version__}")


def paired_rows(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Per (task, β, checkpoint) of the DPO policies: every decoder against the policy's own temperature-1 sample
    and against the best likelihood decoder within ±25 % forward tokens (`benchmarks.paired`, row keys ROW_KEYS).
    Rows written before the score fields existed get them from their family (likelihood: *-lik, greedy, sample)."""
    def legacy_lik(r):
        return r["family"].endswith("-lik") or r["family"] in ("greedy", "sample")

    items = [{**r, "policy": f"beta={r['beta']:g} {r['checkpoint']}",
              "score": r.get("score", "likelihood" if legacy_lik(r) else "implicit"),
              "ref_weight": r.get("ref_weight", 1.0 if legacy_lik(r) else 0.0), "support": r.get("support", "default")}
             for r in rows if r["checkpoint"] != "sft"]
    return comparison_rows(items) if items else ([], [])


def paired_table(compared: list[dict], unmatched: list[dict]) -> list[str]:
    lines = ["| decoder | task | policy | baseline | vs | fwd ratio | W/T/L | win rate [95 % CI] | distinct ratio "
             "| rep Δ |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in compared:
        lines.append(f"| {c['decoder']} | {c['task']} | {c['policy']} | {c['baseline']} | {c['baseline_decoder']} | "
                     f"{c['forward_tokens_ratio']:.2f} | {c['wins']}/{c['ties']}/{c['losses']} | {c['win_rate']:.3f} "
                     f"[{c['ci'][0]:.3f}, {c['ci'][1]:.3f}] | {c['distinct_ratio']:.2f} | {c['repetition_delta']:+.3f} |")
    if unmatched:
        lines += ["", "No likelihood decoder within ±25 % forward tokens (not met): "
                  + ", ".join(f"{u['task']} {u['policy']} {u['decoder']}" for u in unmatched)]
    return lines


def report(rows: list[dict], out: Path, command: str, *, plot: bool = True) -> str:
    add_ceiling(rows)
    lines = [f"paper search experiment — {datetime.date.today()} — {machine()} — commit {git_commit()}", "",
             f"command: `{command}`", ""]
    lines += ["Win rate vs SFT temperature-1 samples (mean gold reward):", ""] + pivot(rows)
    lines += ["", "All metrics:", ""] + table(rows)
    lines += ["", "Findings (read off the rows above):", ""] + (findings(rows) or ["- none yet"])
    lines += ["", "Paired per prompt against the policy's own sample and the best likelihood decoder at matched "
              "compute (W/T/L, win rate (W + T/2)/n, paired-bootstrap 95 % interval):", ""]
    lines += paired_table(*paired_rows(rows))
    text = "\n".join(lines) + "\n"
    (out / "RESULTS.md").write_text(text)
    if plot and rows:
        plots(rows, out)
    return text


def check(rows: list[dict], tasks: list[str], betas: tuple[float, ...], dec_list: list[Decoder]) -> None:
    """--quick's own assertions: every (task, β, checkpoint, decoder) row is there and every value is finite."""
    have = {(r["task"], r["beta"], r["checkpoint"].split(" ")[0], r["decoder"]) for r in rows}
    for t in tasks:
        for d in dec_list:
            for beta in betas:
                for ck in ("early", "final"):
                    assert (t, beta, ck, d.name) in have, f"missing row {(t, beta, ck, d.name)}"
    for r in rows:
        for k in ("gold", "win", "log_ratio", "length", "distinct", "repetition", "forward_tokens"):
            assert math.isfinite(r[k]), f"{k} = {r[k]} in {_key(r)}"
        assert 0.0 <= r["win"] <= 1.0 and r["forward_tokens"] > 0, _key(r)
    compared, _ = paired_rows(rows)
    assert compared and all(tuple(c) == ROW_KEYS for c in compared)
    for c in compared:
        assert c["wins"] + c["ties"] + c["losses"] == c["n"] and c["ci"][0] <= c["win_rate"] <= c["ci"][1], c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.paper_search", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="outputs/paper_search", help="models, results.jsonl, RESULTS.md and PNGs")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--betas", default=",".join(f"{b:g}" for b in BETAS))
    ap.add_argument("--prompts", type=int, default=64, help="held-out prompts decoded per configuration")
    ap.add_argument("--max_new_tokens", type=int, default=0, help="0 = the task recipe's")
    ap.add_argument("--early_frac", type=float, default=0.25, help="early checkpoint at this share of DPO steps")
    ap.add_argument("--decoders", default="", help="comma-separated subset of decoder names (default: all)")
    ap.add_argument("--batch_size", type=int, default=64, help="prompts decoded together")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a pipeline setting of the task recipe (PipelineSettings field), e.g. sft_steps=1200")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny training, 4 prompts, 7 decoders, one β")
    ap.add_argument("--report_only", action="store_true", help="rebuild RESULTS.md and the PNGs from results_*.jsonl")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--results", default=str(RESULTS_JSON),
                    help="the paired comparison rows as JSON ('' = none; --quick never writes)")
    a = ap.parse_args(argv)
    command = "python -m benchmarks.paper_search " + " ".join(argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [t for t in a.tasks.split(",") if t]
    a.betas = tuple(float(b) for b in a.betas.split(","))
    overrides: dict = {}
    if a.quick:
        tasks, a.betas, a.prompts = tasks[:1], a.betas[1:2] if len(a.betas) > 1 else a.betas, min(a.prompts, 4)
        a.max_new_tokens = a.max_new_tokens or 8
        overrides = dict(sft_examples=1024, sft_steps=120, sft_batch_size=16, pair_prompts=32, k=4,
                         eval_pair_prompts=16, dpo_steps=4, dpo_batch_size=4, eval_prompts=4)
    for item in a.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key] = type(getattr(PipelineSettings(), key, ""))(value) if hasattr(PipelineSettings, key) \
            else value  # an unknown key is refused by PipelineSettings.resolve with the list of fields
    dec_list = decoders(a.quick)
    if a.decoders:
        wanted = a.decoders.split(",")
        unknown = set(wanted) - {d.name for d in dec_list}
        if unknown:
            raise SystemExit(f"unknown decoder(s) {sorted(unknown)}; choose from {[d.name for d in dec_list]}")
        dec_list = [d for d in dec_list if d.name in wanted]
    if not a.report_only:
        for t in tasks:
            run_task(t, a, out, overrides, dec_list)
    rows = read_rows(out)
    if a.quick:
        check(rows, tasks, a.betas, dec_list)
    print(report(rows, out, command))
    if not a.quick and a.results:
        compared, unmatched = paired_rows(rows)
        doc = {"rows": compared, "unmatched": unmatched, "command": command, "commit": git_commit(),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        path = Path(a.results)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
