"""The paper's search experiment on a real model (issue item 7(b)): SmolLM2-135M-Instruct `real_sentiment`.

    python -m benchmarks.real_sentiment --out OUT --search --decode_batch 32     # after (or as) a full run
    python -m benchmarks.real_sentiment --out OUT --search --search_decoders mcts-implicit-16,beam-lik-16
                                                  # a subset: a second process can decode the rest at the same time

The DPO policy of `benchmarks.real_sentiment` (LoRA DPO on VADER-labelled pairs of the base model's samples) and
its reference (the base model) decode the run's held-out prompts (64 × at most 40 new tokens, chat template on)
through `search.decode.run`, the CLI's own loop, with `SEARCH_GRID`:
- the policy's temperature-1 sample and greedy;
- likelihood beam K ∈ {2, 4, 8, 16, 24} and likelihood best-of-N on the policy's samples, N ∈ {8, 16} (they reach
  the ranked decoders' forward tokens, so that best-of-8 and MCTS have a likelihood decoder within ±25 % of their
  compute);
- mixed beam (λ = 0.5) K = 4;
- best-of-8 with the reference proposal, ranked by the implicit (λ = 0) and mixed (λ = 0.5) score;
- MCTS with S ∈ {8, 16} simulations per token, with the implicit, the mixed (λ = 0.5) and the likelihood score,
  and S = 32 with the implicit and the likelihood score.
Gold is VADER's compound score of exactly the decoded ids' text.

Each decoder's row (`benchmarks.paper_search.decode_row`, task "real_sentiment") is appended to
OUT/search_rows.jsonl as it finishes; a rerun skips finished rows. When every decoder of the grid is there:
paired comparisons (`benchmarks.paired`: against the policy's sample and the best likelihood decoder within ±25 %
forward tokens; W/T/L, win rate (W + T/2)/n with a paired-bootstrap 95 % interval) go to OUT/search.md,
benchmarks/RESULTS_real_search.md and benchmarks/results/paper_search_real.json, and replace the task's rows in
benchmarks/results/paper_search.json; gold and Σ log π/π_ref against forward tokens per family are plotted to
OUT/real_search_compute.png and benchmarks/figures/. --quick writes only under OUT.
"""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

from benchmarks import paper_search_grid as grid
from benchmarks import paper_search_report as report
from benchmarks.paper_search import decode_row, read_rows
from benchmarks.results_file import merge_results, write_results

TASK = "real_sentiment"
ROWS_FILE = "search_rows.jsonl"  # OUT/results_*.jsonl would be read as paper_search's own rows
HERE = Path(__file__).parent
FIGURE = HERE / "figures" / "real_search_compute.png"


def _dec(name: str, family: str, method: str, tag: str, x: int, **extra) -> grid.Decoder:
    """A ranked decoder named as in `benchmarks.paper_search_grid` (tag: lik | implicit | mixed0.5)."""
    return grid.Decoder(name, family, x, grid.weight_of(tag), fields=grid.scored_fields(method, tag, extra))


SEARCH_GRID: list[grid.Decoder] = [
    grid.Decoder("sample", "sample", 1, 1.0, fields={"method": "sample"}),
    grid.Decoder("greedy", "greedy", 1, 1.0, fields={"method": "greedy"}),
    *grid.beams("lik", (2, 4, 8, 16, 24)),
    *grid.beams("mixed0.5", (4,)),
    _dec("bon-lik-8-policy", "bon-lik-policy", "bon", "lik", 8, bon=8, proposal="policy"),
    _dec("bon-lik-16-policy", "bon-lik-policy", "bon", "lik", 16, bon=16, proposal="policy"),
    _dec("bon-implicit-8-ref", "bon-implicit-ref", "bon", "implicit", 8, bon=8, proposal="reference"),
    _dec("bon-mixed0.5-8-ref", "bon-mixed0.5-ref", "bon", "mixed0.5", 8, bon=8, proposal="reference"),
    _dec("mcts-implicit-8", "mcts-implicit", "mcts", "implicit", 8, simulations=8),
    _dec("mcts-implicit-16", "mcts-implicit", "mcts", "implicit", 16, simulations=16),
    _dec("mcts-implicit-32", "mcts-implicit", "mcts", "implicit", 32, simulations=32),
    _dec("mcts-lik-8", "mcts-lik", "mcts", "lik", 8, simulations=8),
    _dec("mcts-lik-16", "mcts-lik", "mcts", "lik", 16, simulations=16),
    _dec("mcts-lik-32", "mcts-lik", "mcts", "lik", 32, simulations=32),
    _dec("mcts-mixed0.5-8", "mcts-mixed0.5", "mcts", "mixed0.5", 8, simulations=8),
    _dec("mcts-mixed0.5-16", "mcts-mixed0.5", "mcts", "mixed0.5", 16, simulations=16),
]
QUICK_GRID = ("sample", "beam-lik-2", "beam-mixed0.5-4", "bon-lik-8-policy", "bon-mixed0.5-8-ref", "mcts-implicit-8")


class VaderGold:
    """The gold reward `search.decode.run` gives each record: VADER's compound score of the completion, in [−1, 1]."""

    def gold_reward(self, prompt: str, completion: str) -> float:
        from tokendpo.tasks.sentiment import vader_compound

        return vader_compound(completion)


def grid_of(names: str, quick: bool) -> list[grid.Decoder]:
    """The decoders named in the comma-separated `names` (all of the grid when empty; --quick: QUICK_GRID)."""
    table = {d.name: d for d in SEARCH_GRID}
    wanted = [n for n in names.split(",") if n] or (list(QUICK_GRID) if quick else list(table))
    unknown = [n for n in wanted if n not in table]
    if unknown:
        raise SystemExit(f"real_sentiment: error: --search_decoders: unknown {unknown}; choose from "
                         f"{', '.join(table)}")
    return [table[n] for n in wanted]


def decode_grid(policy, reference, tokenizer, prompts: list[str], out: Path, args, label: str) -> list[dict]:
    """Decode every decoder of `--search_decoders` not yet in OUT/search_rows.jsonl, appending each row; returns
    all rows of the file."""
    rows = read_rows(out, ROWS_FILE)
    done = {r["decoder"] for r in rows}
    todo = [d for d in grid_of(args.search_decoders, args.quick) if d.name not in done]
    print(f"search: {len(todo)} decoders to run on {len(prompts)} prompts × {args.max_new_tokens} tokens "
          f"({len(done)} done): {', '.join(d.name for d in todo)}", flush=True)
    for dec in todo:
        if dec.name in {r["decoder"] for r in read_rows(out, ROWS_FILE)}:  # another process on OUT decoded it
            continue
        row = {"task": TASK, "beta": args.beta, "checkpoint": "final", "policy": label, "job": "search",
               **decode_row(VaderGold(), dec, policy, reference, tokenizer, prompts, beta=args.beta,
                            max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.decode_batch,
                            chat_template=True),
               "prompts": len(prompts), "eval_seed": args.seed, "max_new_tokens": args.max_new_tokens}
        with open(out / ROWS_FILE, "a") as fh:  # one write per row: a second process appends whole lines too
            fh.write(json.dumps(row) + "\n")
        print(f"[search] {dec.name:<20} gold {row['gold']:+.3f} log-ratio {row['log_ratio']:+.2f} len "
              f"{row['length']:.1f} distinct {row['distinct']:.2f} fwd {row['forward_tokens']:.0f} "
              f"({row['seconds'] / 60:.1f} min)", flush=True)
    return read_rows(out, ROWS_FILE)


def search_report(rows: list[dict], command: str, setup: str) -> tuple[str, list[dict]]:
    """The markdown report and the results-file rows (`benchmarks.paired.ROW_KEYS`) of the search rows."""
    compared, unmatched = report.paired(rows)
    met = report.goal(compared)
    lines = [f"# Search on SmolLM2-135M-Instruct `real_sentiment` — {datetime.date.today()}", "",
             f"command: `{command}`", "", setup, "",
             "Goal (an implicit-guided decoder, λ < 1, with win rate ≥ 0.55 and interval low end > 0.5 against the "
             "policy's sample and the best likelihood decoder within ±25 % forward tokens, distinct ratio ≥ 0.9, "
             "repetition Δ ≤ 0): " + ("met by " + ", ".join(d for _, _, d in met) if met else "**not met**") + ".",
             "", "Implicit-guided decoders, best first (by the lower of the two interval low ends):", ""]
    lines += report.closest(compared) or ["- none has both comparisons"]
    lines += ["", "Best member of each family (by mean gold):", ""] + report.family_table(rows, compared)
    lines += ["", "Every decoder (gold: mean VADER compound [normal 95 % CI]; fwd: policy + reference forward "
              "tokens per prompt; s: wall seconds):", ""] + report.policy_table(rows)
    lines += ["", "Paired per prompt:", ""] + report.paired_table(compared, unmatched)
    return "\n".join(lines) + "\n", report.json_rows(compared, unmatched)


def run_search(policy, reference, tokenizer, prompts: list[str], out: Path, args, command: str, setup: str) -> int:
    """Decode the grid (or the asked subset), then write the report and results once every decoder is done."""
    label = f"beta={args.beta:g} LoRA DPO"
    rows = decode_grid(policy, reference, tokenizer, prompts, out, args, label)
    missing = [d.name for d in grid_of("", args.quick) if d.name not in {r["decoder"] for r in rows}]
    if missing:
        print(f"search: {len(missing)} decoders of the grid still to run ({', '.join(missing)}); report not "
              f"written yet", flush=True)
        return 0
    text, results = search_report(rows, command, setup)
    (out / "search.md").write_text(text)
    plot_compute(rows, out / "real_search_compute.png")
    print(text)
    if not args.quick:
        (HERE / "RESULTS_real_search.md").write_text(text)
        FIGURE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "real_search_compute.png", FIGURE)
        write_results("paper_search_real", results, command)
        merge_results("paper_search", results, command, task=TASK)
    return 0


def plot_compute(rows: list[dict], path: Path) -> Path:
    """Mean gold (left) and Σ log π/π_ref (right) against forward tokens per prompt, one line per decoder family
    (by budget), the policy's sample as a dotted line: where each score's extra compute goes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    families = list(dict.fromkeys(r["family"] for r in rows if r["decoder"] != "sample"))
    sample = next((r for r in rows if r["decoder"] == "sample"), None)
    for ax, (what, label) in zip(axes, (("gold", "mean gold (VADER)"), ("log_ratio", "Σ log π/π_ref (nats)"))):
        for i, fam in enumerate(families):
            rs = sorted((r for r in rows if r["family"] == fam), key=lambda r: r["forward_tokens"])
            ax.plot([r["forward_tokens"] for r in rs], [r[what] for r in rs], "-", ms=4,
                    color=report.LAMBDA_COLOURS.get(rs[0]["ref_weight"], "grey"), marker="os^Dv<>"[i % 7], label=fam)
        report.finish_axis(ax, sample[what] if sample else None, "forward tokens per prompt (policy + reference)",
                           label, f"SmolLM2 real_sentiment: {label} (red λ = 0, purple 0.5, blue 1)")
    return report.save_figure(fig, path)
