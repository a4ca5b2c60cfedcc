"""The report of `benchmarks.paper_search`: per-policy tables, paired comparisons, the #15 goal, the frontier plot.

Paired comparisons come from `benchmarks.paired.comparison_rows` over each (task, policy) group: every decoder
against the policy's own temperature-1 sample ("sample") and against the best likelihood decoder within ±25 %
forward tokens per prompt ("best_likelihood"). A decoder with no such match is listed as not met, and appears in
the JSON rows as a best_likelihood row whose baseline_decoder and figures are null.

The goal (issue 15): an implicit-guided decoder (λ < 1) whose win rate is ≥ 0.55 with the 95 % interval's low
end > 0.5 against both baselines, with distinct_ratio ≥ 0.9 and repetition_delta ≤ 0.
"""

from __future__ import annotations

import datetime
import math
import platform
from pathlib import Path

import torch

from benchmarks.paired import ROW_KEYS, comparison_rows
from benchmarks.paper_search_grid import frontier_rows
from benchmarks.results_file import git_commit
from tokendpo.tasks.metrics import mean_interval

GOAL_WIN, GOAL_DISTINCT = 0.55, 0.9
LAMBDA_COLOURS = {0.0: "tab:red", 0.5: "tab:purple", 1.0: "tab:blue"}  # λ of the score → plot colour


def paired(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(comparison rows, unmatched) of every (task, policy) group that has a sample row."""
    groups = {}
    for r in rows:
        groups.setdefault((r["task"], r["policy"]), []).append(r)
    usable = [r for g in groups.values() if any(x["decoder"] == "sample" for x in g) for r in g]
    return comparison_rows(usable) if usable else ([], [])


def json_rows(compared: list[dict], unmatched: list[dict]) -> list[dict]:
    """The results-file rows (ROW_KEYS): the comparisons, then each unmatched decoder as a best_likelihood row
    with null figures (not met)."""
    nothing = {k: None for k in ROW_KEYS}
    return list(compared) + [{**nothing, **{k: u[k] for k in ("task", "policy", "decoder", "forward_tokens")},
                              "score": u["score"], "ref_weight": u["ref_weight"], "support": u["support"],
                              "baseline": "best_likelihood"} for u in unmatched]


def goal(compared: list[dict]) -> list[tuple[str, str, str]]:
    """(task, policy, decoder) of the implicit-guided decoders that meet the goal against both baselines."""
    ok: dict[tuple, set] = {}
    for c in compared:
        if (c["ref_weight"] < 1 and c["win_rate"] >= GOAL_WIN and c["ci"][0] > 0.5
                and c["distinct_ratio"] >= GOAL_DISTINCT and c["repetition_delta"] <= 0):
            ok.setdefault((c["task"], c["policy"], c["decoder"]), set()).add(c["baseline"])
    return sorted(k for k, v in ok.items() if v == {"sample", "best_likelihood"})


def closest(compared: list[dict], n: int = 8) -> list[str]:
    """The implicit-guided decoders with the best worse-of-two interval low end: how near the goal came."""
    by: dict[tuple, dict] = {}
    for c in compared:
        if c["ref_weight"] < 1:
            by.setdefault((c["task"], c["policy"], c["decoder"]), {})[c["baseline"]] = c
    both = [(min(v["sample"]["ci"][0], v["best_likelihood"]["ci"][0]), k, v) for k, v in by.items() if len(v) == 2]
    out = []
    for low, (task, pol, dec), v in sorted(both, key=lambda x: -x[0])[:n]:
        s, b = v["sample"], v["best_likelihood"]
        out.append(f"- {task} {pol} {dec}: vs sample {_wr(s)}; vs {b['baseline_decoder']} (fwd ratio "
                   f"{b['forward_tokens_ratio']:.2f}) {_wr(b)}; distinct ratio {s['distinct_ratio']:.2f}, rep Δ "
                   f"{s['repetition_delta']:+.3f}")
    return out


def _wr(c: dict) -> str:
    return f"{c['win_rate']:.3f} [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}] ({c['wins']}/{c['ties']}/{c['losses']})"


def _f(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) and math.isfinite(v) else "—"


def family_table(rows: list[dict], compared: list[dict]) -> list[str]:
    """One line per decoder family of one policy: its member with the highest mean gold, and that member's two
    paired comparisons (the full tables list every member)."""
    cmp = {(c["decoder"], c["baseline"]): c for c in compared}
    met = {d for _, _, d in goal(compared)}
    lines = ["| family | best member | λ | gold [95 % CI] | fwd/prompt | vs sample: win [CI] (W/T/L) | "
             "vs best likelihood ±25 %: decoder, win [CI] (W/T/L) | distinct ratio | rep Δ | goal |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    fams = list(dict.fromkeys(r["family"] for r in rows))
    for fam in fams:
        r = max((x for x in rows if x["family"] == fam), key=lambda x: (x["gold"], -x["forward_tokens"]))
        m, lo, hi = mean_interval(r["per_prompt_gold"])
        s, b = cmp.get((r["decoder"], "sample")), cmp.get((r["decoder"], "best_likelihood"))
        vs_s = _wr(s) if s else "—"
        vs_b = f"{b['baseline_decoder']}, {_wr(b)}" if b else ("not met (no match)" if s else "—")
        dr = f"{s['distinct_ratio']:.2f} | {s['repetition_delta']:+.3f}" if s else "— | —"
        ok = "—" if r["ref_weight"] >= 1 else ("met" if r["decoder"] in met else "no")
        lines.append(f"| {fam} | {r['decoder']} | {r['ref_weight']:g} | {m:+.3f} [{lo:+.3f}, {hi:+.3f}] | "
                     f"{r['forward_tokens']:.0f} | {vs_s} | {vs_b} | {dr} | {ok} |")
    return lines


def policy_table(rows: list[dict]) -> list[str]:
    lines = ["| decoder | score | λ | support | gold [95 % CI] | log π/π_ref | len | distinct | rep | fwd/prompt | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m, lo, hi = mean_interval(r["per_prompt_gold"])
        lines.append(f"| {r['decoder']} | {r['score']} | {r['ref_weight']:g} | {r['support']} | {m:+.3f} "
                     f"[{lo:+.3f}, {hi:+.3f}] | {r['log_ratio']:+.2f} | {r['length']:.1f} | {r['distinct']:.2f} | "
                     f"{r['repetition']:.3f} | {r['forward_tokens']:.0f} | {r['seconds']:.1f} |")
    return lines


def paired_table(compared: list[dict], unmatched: list[dict]) -> list[str]:
    lines = ["| decoder | baseline | vs | fwd ratio | W/T/L | n | win rate [95 % CI] | distinct ratio | rep Δ |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in compared:
        lines.append(f"| {c['decoder']} | {c['baseline']} | {c['baseline_decoder']} | "
                     f"{c['forward_tokens_ratio']:.2f} | {c['wins']}/{c['ties']}/{c['losses']} | {c['n']} | "
                     f"{c['win_rate']:.3f} [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}] | {_f(c['distinct_ratio'], '.2f')} | "
                     f"{c['repetition_delta']:+.3f} |")
    if unmatched:
        lines += ["", "No likelihood decoder within ±25 % forward tokens (matched-compute comparison not met): "
                  + ", ".join(f"{u['decoder']} ({u['forward_tokens']:.0f})" for u in unmatched)]
    return lines


def frontier_table(rows: list[dict]) -> list[str]:
    """Gold and Σ log π/π_ref per K for each (λ, support) line of one policy."""
    lines_by = frontier_rows(rows)
    ks = sorted({r["x"] for v in lines_by.values() for r in v})
    lines = ["| λ | support | " + " | ".join(f"K={k}" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
    for (lam, tag), rs in lines_by.items():
        at = {r["x"]: r for r in rs}
        cells = [f"{at[k]['gold']:+.3f} / {at[k]['log_ratio']:+.1f}" if k in at else "" for k in ks]
        lines.append(f"| {lam:g} | {tag} | " + " | ".join(cells) + " |")
    return lines


def plot_frontier(rows: list[dict], main_beta: float, path: Path) -> Path | None:
    """Per task (β = main_beta final policy): gold and Σ log π/π_ref against K, one line per (λ, support)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows if r["beta"] == main_beta and r["checkpoint"] == "final"))
    if not tasks:
        return None
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 4 * len(tasks)), squeeze=False)
    colours = LAMBDA_COLOURS
    for i, task in enumerate(tasks):
        pol = [r for r in rows if r["task"] == task and r["beta"] == main_beta and r["checkpoint"] == "final"]
        samp = [r for r in pol if r["decoder"] == "sample"]
        for j, (what, label) in enumerate((("gold", "mean gold reward"), ("log_ratio", "Σ log π/π_ref (nats)"))):
            ax = axes[i][j]
            for (lam, tag), rs in frontier_rows(pol).items():
                ax.plot([r["x"] for r in rs], [r[what] for r in rs], "-" if tag == "restricted" else "--",
                        marker="o", ms=3, color=colours.get(lam, "grey"), label=f"λ={lam:g}, {tag}")
            finish_axis(ax, samp[0][what] if samp else None, "beams K", label,
                        f"{task}, β = {main_beta:g} final policy: {label} (solid: top-p 0.9)", base=2)
    return save_figure(fig, path)


def finish_axis(ax, sample_value: float | None, xlabel: str, ylabel: str, title: str, base: float = 10) -> None:
    """The shared look of the search plots: the policy's sample as a dotted line, log x axis, labels, grid, legend."""
    if sample_value is not None:
        ax.axhline(sample_value, color="grey", linestyle=":", label="sampling (T = 1)")
    ax.set_xscale("log", base=base)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def machine() -> str:
    cpu = platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"


def write_report(rows: list[dict], out: Path, command: str, *, main_beta: float) -> tuple[str, list[dict], Path | None]:
    """OUT/RESULTS.md and OUT/paper_search_frontier.png from the rows; returns (text, JSON rows, figure)."""
    compared, unmatched = paired(rows)
    lines = [f"paper_search v2 — {datetime.date.today()} — {machine()} — commit {git_commit()}", "",
             f"command: `{command}`", "",
             "Goal (an implicit-guided decoder, λ < 1, with win rate ≥ 0.55 and interval low end > 0.5 against the "
             "policy's sample and the best likelihood decoder within ±25 % forward tokens, distinct ratio ≥ 0.9, "
             "repetition Δ ≤ 0): "
             + ("met by " + "; ".join(" ".join(g) for g in goal(compared)) if goal(compared) else "not met."), "",
             "Closest implicit-guided decoders (by the lower of the two interval low ends):", ""]
    lines += closest(compared) or ["- none compared yet"]
    policies = list(dict.fromkeys((r["task"], r["policy"]) for r in rows))
    for task, pol in policies:
        prs = [r for r in rows if (r["task"], r["policy"]) == (task, pol)]
        n = prs[0]["prompts"]
        lines += ["", f"## {task}, {pol} ({n} held-out prompts, {prs[0]['max_new_tokens']} new tokens at most)", ""]
        pc = [c for c in compared if (c["task"], c["policy"]) == (task, pol)]
        lines += ["Best member of each family (by mean gold):", ""] + family_table(prs, pc) + ["", "Every decoder:", ""]
        lines += policy_table(prs)
        if any(r.get("job") == "frontier" for r in prs):
            lines += ["", "Over-optimisation frontier (beams; cells: gold / Σ log π/π_ref):", ""] + frontier_table(prs)
        lines += ["", "Paired per prompt:", ""]
        lines += paired_table([c for c in compared if (c["task"], c["policy"]) == (task, pol)],
                              [u for u in unmatched if (u["task"], u["policy"]) == (task, pol)])
    text = "\n".join(lines) + "\n"
    (out / "RESULTS.md").write_text(text)
    figure = plot_frontier(rows, main_beta, out / "paper_search_frontier.png") if rows else None
    return text, json_rows(compared, unmatched), figure
