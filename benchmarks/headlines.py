"""README's headline table, generated from `benchmarks/results/*.json` (never typed by hand).

    python -m benchmarks.headlines          # print the table; README.md carries it between
                                            # <!-- results-table --> markers, and tests/test_docs.py checks it

Each results file has its own row keys; one small function per file turns its rows into one headline with the
interval and n the file records. A file that does not exist yet is listed as "not run".
"""

from __future__ import annotations

import sys

from benchmarks.results_file import RESULTS_DIR, read_results


def _ci(ci) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def _pct_ci(ci) -> str:
    return f"[{ci[0]:.1%}, {ci[1]:.1%}]"


def credit(rows: list[dict]) -> str:
    """Plain DPO, all positions: the implicit reward's hit rate against the best baseline."""
    mine = [r for r in rows if r["recipe"] == "plain" and r["scope"] == "all" and r.get("samples", "stratified")
            == "stratified"]
    imp = next(r for r in mine if r["method"] == "implicit")
    best = max((r for r in mine if r["method"] != "implicit"), key=lambda r: r["rate"])
    return (f"{imp['task']}, plain DPO: argmin r_t finds the first wrong token in {imp['rate']:.1%} "
            f"{_pct_ci(imp['ci'])} vs best baseline {best['method']} {best['rate']:.1%} {_pct_ci(best['ci'])}, "
            f"n = {imp['n']} (goal: ≥ 80 % and +15 points)")


def tasks(rows: list[dict]) -> str:
    parts = []
    for r in rows:
        if r["recipe"] != "plain":
            continue
        gap = r["oracle_minus_greedy"]
        parts.append(f"{r['task']}: oracle best-of-16 − greedy {gap:+.3f} {_ci(r['ci']['oracle_minus_greedy'])}, "
                     f"greedy at ceiling {r['greedy_at_ceiling']}/{r['n_prompts']}")
    return "; ".join(parts) + " (plain DPO; targets ≥ 0.25 and ≤ 50 %)"


def likelihood_dynamics(rows: list[dict]) -> str:
    train = [r for r in rows if r["pairs"] == "train"]
    last = max(train, key=lambda r: r["step"])
    return (f"plain DPO, step {last['step']}: chosen Δlog π {last['chosen_dlogp']:+.2f} "
            f"{_ci(last['ci']['chosen_dlogp'])}, rejected {last['rejected_dlogp']:+.2f}, Eq. 16 predicts "
            f"{last['eq16_prediction']:+.2f}, n = {last['n']} pairs")


def bench_search(rows: list[dict]) -> str:
    beam = next(r for r in rows if r["decoder"] == "beam" and r["new_tokens"] == 32)
    mcts = next(r for r in rows if r["decoder"] == "mcts" and r["new_tokens"] == 32)
    return (f"SmolLM2-135M, {mcts['prompts']} prompts × {mcts['new_tokens']} tokens: MCTS S={mcts['width']} "
            f"{mcts['peak_extra_mb']:.0f} MB extra vs beam-{beam['width']} {beam['peak_extra_mb']:.0f} MB "
            f"({mcts['peak_extra_mb'] / beam['peak_extra_mb']:.2f}×; target ≤ 1.5×)")


def bench_search_grid(rows: list[dict]) -> str:
    """Every MCTS row against beam's row of the same prompts and new tokens: extra memory and time per forward
    token, as ratios."""
    parts = []
    for r in rows:
        beam = next((b for b in rows if b["decoder"] == "beam" and b["prompts"] == r["prompts"]
                     and b["new_tokens"] == r["new_tokens"]), None)
        if r["decoder"] != "mcts" or beam is None:
            continue
        parts.append(f"S={r['width']} leaf batch {r['leaf_batch']}: memory {r['peak_extra_mb'] / beam['peak_extra_mb']:.2f}×, "
                     f"time/forward token {r['ms_per_forward_token'] / beam['ms_per_forward_token']:.2f}×")
    r0 = rows[0]
    return (f"SmolLM2-135M, {r0['prompts']} prompts × {r0['new_tokens']} tokens, MCTS vs beam-4 (n = 1 run each): "
            + "; ".join(parts) + " (targets ≤ 1.5×)")


def bench_search_chat(rows: list[dict]) -> str:
    r = rows[0]
    return (f"SmolLM2-135M, {r['prompts']} chat prompts in one batch × {r['new_tokens']} tokens, MCTS S={r['width']}: "
            f"{r['peak_total_mb'] / 1024:.2f} GiB total process memory (target ≤ 8 GiB), {r['seconds'] / 60:.0f} min")


def bench_search_timing(rows: list[dict]) -> str:
    beam = next(r for r in rows if r["decoder"] == "beam")
    parts = [f"leaf batch {r['leaf_batch']}: {r['ms_per_forward_token'] / beam['ms_per_forward_token']:.2f}×"
             for r in rows if r["decoder"] == "mcts"]
    return f"MCTS time per forward token vs beam-{beam['width']} (interleaved): " + ", ".join(parts) + \
        " (target ≤ 1.5×)"


def score_family(rows: list[dict]) -> str:
    """The best implicit-guided decoder by its worse comparison (issue goal: beat sampling and the best
    likelihood decoder at matched compute)."""
    guided = {}
    for r in rows:
        if r["score"] in ("implicit", "mixed"):
            guided.setdefault(r["decoder"], {})[r["baseline"]] = r
    name, both = max(((k, v) for k, v in guided.items() if len(v) == 2),
                     key=lambda kv: min(r["win_rate"] for r in kv[1].values()))
    s, b = both["sample"], both["best_likelihood"]
    return (f"{s['task']}, best implicit-guided `{name}`: win {s['win_rate']:.2f} {_ci(s['ci'])} vs the policy's "
            f"sample, {b['win_rate']:.2f} {_ci(b['ci'])} vs `{b['baseline_decoder']}` at matched compute "
            f"(W/T/L {b['wins']}/{b['ties']}/{b['losses']}, n = {b['n']}); distinct outputs {s['distinct_ratio']:.2f}")


def bench_decode(rows: list[dict]) -> str:
    """Our sampler and beam search against generate + a reference pass; the decode step against its floor."""
    arms = [f"{'sampling' if r['arm'] == 'sample' else 'beam-' + str(r['width'])} {r['speed_vs_hf']:.2f}×"
            for r in rows if r["arm"] in ("sample", "beam")]
    n = max(r["n"] for r in rows if r["arm"] in ("sample", "beam"))
    steps = [f"B={r['batch']} {r['ratio_to_floor']:.2f}×" for r in rows if r["arm"] == "decode_step"]
    return (f"{rows[0]['model']}: speed vs generate + ref pass " + ", ".join(arms) + f" (min of n = {n}; target "
            "≥ 1.0×); decode step / floor " + ", ".join(steps) + " (target ≤ 3×)")


def bench_sampler(rows: list[dict]) -> str:
    """`tokendpo.generation` against `model.generate` on the same sampling workloads (median of interleaved runs)."""
    parts = [f"{r['model']} ({r['prompts']} prompts × {r['samples_per_prompt']}, {r['new_tokens']} tokens) "
             f"{r['speedup']:.2f}× [range {r['speedup_range'][0]:.2f}–{r['speedup_range'][1]:.2f}]" for r in rows]
    return (f"sampling speed vs transformers' generate, median of n = {rows[0]['runs']} interleaved runs: "
            + "; ".join(parts))


def paper_search(rows: list[dict]) -> str:
    """Per task: the implicit-guided decoder (λ < 1) whose worse comparison has the highest interval low end,
    with both paired win rates (against the policy's sample and matched-compute likelihood search)."""
    pairs: dict[tuple, dict] = {}
    for r in rows:
        if r["score"] != "likelihood" and r["win_rate"] is not None:
            pairs.setdefault((r["task"], r["policy"], r["decoder"]), {})[r["baseline"]] = r
    best: dict[str, tuple] = {}
    met: dict[str, int] = {}
    tried: dict[str, int] = {}
    for (task, policy, decoder), v in pairs.items():
        if {"sample", "best_likelihood"} <= set(v):
            s, m = v["sample"], v["best_likelihood"]
            ok = (min(s["win_rate"], m["win_rate"]) >= 0.55 and min(s["ci"][0], m["ci"][0]) > 0.5
                  and s["distinct_ratio"] >= 0.9 and s["repetition_delta"] <= 0)
            met[task] = met.get(task, 0) + ok
            tried[task] = tried.get(task, 0) + 1
            key = (ok, min(s["ci"][0], m["ci"][0]))  # goal-meeting first, then the worse interval's low end
            if task not in best or key > best[task][0]:
                best[task] = (key, policy, decoder, s, m)
    parts = []
    for task, ((ok, _), policy, decoder, s, m) in sorted(best.items()):
        parts.append(f"{task}: goal met by {met[task]} of {tried[task]} compared guided configurations; "
                     f"{'best' if ok else 'closest'} `{decoder}` ({policy}) win {s['win_rate']:.2f} {_ci(s['ci'])} vs "
                     f"the policy's sample, {m['win_rate']:.2f} {_ci(m['ci'])} vs `{m['baseline_decoder']}` at matched "
                     f"compute (n = {s['n']}), distinct {s['distinct_ratio']:.2f}, repetition Δ "
                     f"{s['repetition_delta']:+.4f}")
    return "; ".join(parts) + " (goal: both ≥ 0.55 with low end > 0.5, distinct ≥ 0.9, repetition Δ ≤ 0)"


def vs_trl(rows: list[dict]) -> str:
    """tokendpo over TRL 1.16's DPOTrainer per model × loss: the range of speed and memory ratios, how many rows meet
    the goal (≥ 1.5× tokens per CPU-second with less peak memory), and the worst loss gap over steps 1–10."""
    speed, memory = [r["speed_ratio"] for r in rows], [r["memory_ratio"] for r in rows]
    met = sum(r["speed_ratio"] >= 1.5 and r["memory_ratio"] < 1 for r in rows)
    n_runs = min(r["n_runs"] for r in rows)
    return (f"vs TRL DPOTrainer, {len(rows)} model × loss rows: tokens per CPU-s {min(speed):.2f}–{max(speed):.2f}×, "
            f"peak RSS {min(memory):.2f}–{max(memory):.2f}×, goal (≥ 1.5×, < 1×) met on {met}/{len(rows)}; "
            f"max |Δ loss| steps 1–10 {max(r['max_abs_diff'] for r in rows):.1e} (n = {n_runs} run per row)")


HEADLINES = {  # results file → headline function
    "bench_search": bench_search,
    "bench_search_32": bench_search_grid,
    "bench_search_chat64": bench_search_chat,
    "bench_search_8_timing": bench_search_timing,
    "bench_decode": bench_decode,
    "bench_sampler": bench_sampler,
    "score_family_sentiment": score_family,
    "score_family_sentiment_plain": score_family,
    "score_family_arithmetic": score_family,
    "paper_search": paper_search,
    "tasks": tasks,
    "credit": credit,
    "likelihood_dynamics": likelihood_dynamics,
    "vs_trl": vs_trl,
}


def render() -> str:
    lines = ["| results file | headline (95 % intervals) | date |", "|---|---|---|"]
    for name, fn in HEADLINES.items():
        path = RESULTS_DIR / f"{name}.json"
        if not path.exists():
            lines.append(f"| `{name}.json` | not run | — |")
            continue
        data = read_results(name)
        cell = fn(data["rows"]).replace("|", "\\|")  # a headline's own bars must not split the table cell
        lines.append(f"| [`{name}.json`](benchmarks/results/{name}.json) | {cell} | "
                     f"{data['date'][:10]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
