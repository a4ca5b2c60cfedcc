"""The score family and support on a trained DPO policy: which decoder wins, paired per prompt, at what compute.

    python -m benchmarks.score_family                      # the default run (python -m tokendpo.train first)
    python -m benchmarks.score_family --policy outputs/arithmetic/dpo --task arithmetic
    python -m benchmarks.score_family --quick              # smoke run on whatever --policy/--ref, 4 prompts

Every decoder runs through `search.decode.run` (the CLI's own loop) on the same held-out prompts of the task,
at its defaults unless named (support, proposal: `search.scoring`). Each decoder is then compared prompt by
prompt (`benchmarks.paired`) with the policy's own temperature-1 sample and with the best likelihood decoder
within ±25 % forward tokens per prompt: wins/ties/losses, win rate (W + T/2)/n with a paired-bootstrap 95 %
interval, distinct ratio and repetition delta against the sample.

Writes benchmarks/RESULTS_score_family_TASK.md and benchmarks/results/score_family_TASK.json (rows:
`paired.ROW_KEYS` plus `gold`); --quick writes neither.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks.paired import comparison_rows
from benchmarks.results_file import git_commit, write_results
from search import scoring
from search.config import SearchConfig
from search.decode import run, trained_against
from tokendpo.modeling import load_model, load_tokenizer
from tokendpo.tasks import get_task
from tokendpo.tasks.metrics import REPETITION_N, distinct_rate, repetition

HERE = Path(__file__).parent
DECODERS = [  # name, SearchConfig fields
    ("sample", dict(method="sample")),
    ("greedy", dict(method="greedy")),
    *[(f"beam-lik-{k}", dict(method="beam", beam=k, score="likelihood")) for k in (2, 4, 8, 12, 16, 24)],
    *[(f"bon-lik-{n}", dict(method="bon", bon=n, score="likelihood")) for n in (4, 8)],
    ("beam-implicit-4", dict(method="beam", beam=4, score="implicit")),
    ("beam-implicit-4-unrestricted", dict(method="beam", beam=4, score="implicit", top_k=0)),
    ("beam-mixed-4", dict(method="beam", beam=4, score="mixed", ref_weight=0.5)),
    ("bon-implicit-8-ref", dict(method="bon", bon=8, score="implicit", proposal="reference")),
    ("bon-implicit-8-policy", dict(method="bon", bon=8, score="implicit", proposal="policy")),
    ("cbs-implicit-2,4,4-ref", dict(method="cbs", cbs=(2, 4, 4), score="implicit", proposal="reference")),
    ("cbs-implicit-2,4,4-policy", dict(method="cbs", cbs=(2, 4, 4), score="implicit", proposal="policy")),
    ("cbs-mixed-2,4,4-policy", dict(method="cbs", cbs=(2, 4, 4), score="mixed", ref_weight=0.5, proposal="policy")),
    *[(f"mcts-{s}-8", dict(method="mcts", simulations=8, score=s)) for s in ("likelihood", "implicit", "mixed")],
    *[(f"mcts-likelihood-{n}", dict(method="mcts", simulations=n, score="likelihood")) for n in (4, 12, 16)],
]
QUICK = ("sample", "beam-lik-2", "beam-mixed-4", "bon-implicit-8-ref")


def decode_rows(policy, reference, tokenizer, task, task_name: str, prompts: list[str], names, *, beta: float,
                max_new_tokens: int | None, seed: int, batch_size: int, label: str) -> list[dict]:
    """One measured row per decoder name (per-prompt gold kept for the paired comparisons)."""
    rows = []
    table = dict(DECODERS)
    eos = tokenizer.eos_token_id
    for name in names:
        cfg = SearchConfig(policy="<in memory>", ref="<in memory>", beta=beta, max_new_tokens=max_new_tokens,
                           seed=seed, batch_size=batch_size, progress=False, **table[name])
        cfg.validate()
        t0 = time.perf_counter()
        recs = list(run(cfg, policy, reference, tokenizer, prompts, task))
        gold = [r["gold_reward"] for r in recs]
        support = (scoring.describe_support(cfg.support()) if cfg.method not in ("greedy",) else "argmax")
        rows.append({
            "task": task_name, "policy": label, "decoder": name,
            "score": cfg.score if cfg.method in ("beam", "bon", "cbs", "mcts") else "likelihood",
            "ref_weight": cfg.lam, "support": support + (f", proposal {cfg.proposal}" if cfg.proposal else ""),
            "forward_tokens": sum(r["forward_tokens"] for r in recs) / len(recs),
            "gold": sum(gold) / len(gold), "per_prompt_gold": gold,
            "distinct": distinct_rate([r["completion"] for r in recs]),
            "repetition": repetition([[t for t in r["token_ids"] if t != eos] for r in recs], REPETITION_N),
            "log_ratio": sum(r["reward"] for r in recs) / beta / len(recs),
            "length": sum(len(r["token_ids"]) for r in recs) / len(recs),
            "seconds": time.perf_counter() - t0, "example": recs[0]["completion"],
        })
        r = rows[-1]
        print(f"{name:<30} gold {r['gold']:+.3f} distinct {r['distinct']:.2f} log-ratio {r['log_ratio']:+.2f} "
              f"len {r['length']:.1f} fwd {r['forward_tokens']:.0f}", flush=True)
    return rows


def markdown(measured: list[dict], compared: list[dict], unmatched: list[dict], command: str, setup: str) -> str:
    lines = [f"# Score family and support — {datetime.date.today()}", "", f"command: `{command}`", "", setup, "",
             "| decoder | score | λ | support | gold | distinct | rep (3-gram) | log π/π_ref | len | fwd/prompt |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in measured:
        lines.append(f"| {r['decoder']} | {r['score']} | {r['ref_weight']:g} | {r['support']} | {r['gold']:+.3f} | "
                     f"{r['distinct']:.2f} | {r['repetition']:.3f} | {r['log_ratio']:+.2f} | {r['length']:.1f} | "
                     f"{r['forward_tokens']:.0f} |")
    lines += ["", "Paired per prompt (W/T/L; win rate (W + T/2)/n, paired-bootstrap 95 % interval):", "",
              "| decoder | baseline | baseline decoder | fwd ratio | W | T | L | n | win rate | 95 % CI | "
              "distinct ratio | rep Δ |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in compared:
        lines.append(f"| {c['decoder']} | {c['baseline']} | {c['baseline_decoder']} | "
                     f"{c['forward_tokens_ratio']:.2f} | {c['wins']} | {c['ties']} | {c['losses']} | {c['n']} | "
                     f"{c['win_rate']:.3f} | [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}] | {c['distinct_ratio']:.2f} | "
                     f"{c['repetition_delta']:+.3f} |")
    if unmatched:
        lines += ["", "No likelihood decoder within ±25 % forward tokens (matched-compute comparison not met): "
                  + ", ".join(u["decoder"] for u in unmatched)]
    met = goal_met(compared)
    lines += ["", "Goal (an implicit or mixed decoder with win rate ≥ 0.55 and interval low end > 0.5 against both "
              "baselines, distinct ratio ≥ 0.9, repetition Δ ≤ 0): "
              + (f"met by {', '.join(met)}." if met else "not met by any decoder here.")]
    return "\n".join(lines) + "\n"


def goal_met(compared: list[dict]) -> list[str]:
    """Implicit/mixed decoders that beat both baselines (win ≥ 0.55, CI low > 0.5) with distinct ratio ≥ 0.9 and
    repetition Δ ≤ 0."""
    ok: dict[str, set] = {}
    for c in compared:
        if (c["score"] in ("implicit", "mixed") and c["win_rate"] >= 0.55 and c["ci"][0] > 0.5
                and c["distinct_ratio"] >= 0.9 and c["repetition_delta"] <= 0):
            ok.setdefault(c["decoder"], set()).add(c["baseline"])
    return sorted(d for d, bases in ok.items() if bases == {"sample", "best_likelihood"})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.score_family", description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", default="outputs/default/dpo")
    ap.add_argument("--ref", default=None, help="default: the policy's recorded reference")
    ap.add_argument("--task", default="sentiment")
    ap.add_argument("--prompts", type=int, default=128, help="held-out prompts")
    ap.add_argument("--max_new_tokens", type=int, default=None, help="default: the task's response length")
    ap.add_argument("--beta", type=float, default=None, help="default: the policy's training β")
    ap.add_argument("--decoders", default="", help="comma-separated subset of: " + ", ".join(n for n, _ in DECODERS))
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of the result names (e.g. plain: score_family_TASK_plain)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true",
                    help=f"4 prompts, decoders {', '.join(QUICK)} unless --decoders; writes nothing")
    a = ap.parse_args(argv)
    command = "python -m benchmarks.score_family " + " ".join(argv if argv is not None else sys.argv[1:])
    names = [n for n in a.decoders.split(",") if n] or [n for n, _ in DECODERS]
    unknown = set(names) - dict(DECODERS).keys()
    if a.quick:
        names, a.prompts = (names if a.decoders else list(QUICK)), min(a.prompts, 4)
    ref, beta = trained_against(a.policy) if os.path.isdir(a.policy) else (None, None)
    ref, beta = a.ref or ref, a.beta or beta or 0.1
    if unknown or "sample" not in names or not os.path.isdir(a.policy) or ref is None:
        why = (f"unknown decoder(s) {sorted(unknown)}" if unknown else "the decoders must include 'sample'"
               if "sample" not in names else f"no policy at {a.policy} (run `python -m tokendpo.train` first)"
               if not os.path.isdir(a.policy) else "--ref is required (the policy records none)")
        print(f"score_family: error: {why}", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    task = get_task(a.task)
    tokenizer = load_tokenizer(a.policy)
    policy, reference = load_model(a.policy).eval(), load_model(ref).eval()
    prompts = task.prompts("heldout", a.prompts, a.seed)
    measured = decode_rows(policy, reference, tokenizer, task, a.task, prompts, names, beta=beta,
                           max_new_tokens=a.max_new_tokens, seed=a.seed, batch_size=a.batch_size, label=a.policy)
    compared, unmatched = comparison_rows(measured)
    gold = {r["decoder"]: r["gold"] for r in measured}
    for c in compared:
        c["gold"] = gold[c["decoder"]]
    setup = (f"policy {a.policy} against {ref}, β = {beta:g}, task {a.task}: {len(prompts)} held-out prompts, "
             f"commit {git_commit()}, {torch.get_num_threads()} torch thread(s). Gold: the task's gold reward of the "
             f"decoded text; fwd: forward tokens per prompt (policy + reference positions).")
    text = markdown(measured, compared, unmatched, command, setup)
    print(text)
    if not a.quick:
        name = f"score_family_{a.task}" + (f"_{a.tag}" if a.tag else "")
        (HERE / f"RESULTS_{name}.md").write_text(text)
        write_results(name, compared, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
