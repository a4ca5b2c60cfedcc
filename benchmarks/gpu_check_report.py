"""The report half of `benchmarks.gpu_check`: the Markdown page (RESULTS_gpu.md) made from a run's result dict
(rows, verdicts, command, commit, date). Pure formatting; the measurements are in benchmarks/gpu_check.py.
"""

from __future__ import annotations


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 and v != 0 else f"{v:,.2f}"
    return str(v)


def markdown(result: dict, machine: str, dry_run: bool) -> str:
    lines = ["# GPU check", ""]
    if dry_run:
        lines += ["**Dry run** (CPU, tiny shapes, Triton in its interpreter): the script end to end, no GPU figures.",
                  ""]
    lines += [f"Machine: {machine}. Date: {result['date']}. Commit: `{result['commit']}`.", "",
              f"    {result['command']}", "",
              "`tflops` counts the three useful products of a fused log-prob forward + backward (6·N·V·H flops); "
              "`pct_of_matmul` is that rate over a bare bf16 `torch.mm` of the same shape in the same run; "
              "`max_abs_err` is against fp32 naive log-probs on the same inputs (train: the largest |Δloss| "
              "between kernels per step). `ms` is the mean over `n` repeats, with its 95 % t-interval.", "",
              "| check | impl | dtype | shape | ms | 95 % CI | n | TFLOP/s | % matmul | max abs err |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        ci = "–" if not r.get("ms_ci95") else f"{r['ms_ci95'][0]:.3g}–{r['ms_ci95'][1]:.3g}"
        lines.append(f"| {r['check']} | {r['impl']} | {r['dtype']} | {r['shape']} | {_fmt(r['ms'])} | {ci} | "
                     f"{_fmt(r.get('n'))} | {_fmt(r['tflops'])} | {_fmt(r['pct_of_matmul'])} | "
                     f"{_fmt(r['max_abs_err'])} |")
    train = [r for r in result["rows"] if r["check"] == "train"]
    if train:
        lines += ["", "Training throughput (tokens/s, from metrics.jsonl) and loss at the first and last step:", ""]
        lines += [f"- `--kernel {r['impl']}`: {r['tokens_per_second']:,} tokens/s, loss {r['loss_first_last'][0]} "
                  f"→ {r['loss_first_last'][1]}" for r in train]
    lines += ["", "Verdicts:", ""] + [f"- {k}: {v}" for k, v in result["verdicts"].items()]
    return "\n".join(lines) + "\n"
