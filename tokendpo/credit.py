"""Credit assignment: which tokens a DPO policy credits or blames (the paper's Figure 1), and a score for it.

Every response token gets the implicit reward r_t = β·(log π(y_t|x, y_<t) − log π_ref(y_t|x, y_<t))
(`tokendpo.eval.token_rewards`). This module

* renders the per-token rewards of a response or a chosen/rejected pair as an HTML heatmap and as a PNG
  (matplotlib), one cell per token, red for blame (r_t < 0) and blue for credit (r_t > 0);
* scores credit assignment on the `arithmetic` task, whose gold checker knows the first wrong token of a wrong
  answer. The wrong answers are the reference (SFT) model's own temperature-1 samples on held-out prompts,
  stratified so that every answer position (each digit and the EOS) holds the same share of first errors. A
  method blames one token per answer; its hit rate is the share of answers where it blames the first wrong token.
  The DPO token reward (argmin_t r_t) is reported beside four baselines on the same answers: a uniformly random
  token, the positional prior (always the most frequent first-error position of a natural sample), argmin_t
  log π and argmin_t log π_ref; each rate over all tokens and over the tokens up to the first error, with its
  Wilson 95 % interval (`credit_on_task`, `blame_hits`).

    python -m tokendpo.credit --policy outputs/tasks/arithmetic/dpo --ref outputs/tasks/arithmetic/sft --task arithmetic
    python -m tokendpo.credit --policy DIR --ref DIR --prompt "12+34=" --response "47" [--rejected "46"]
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

# --------------------------------------------------------------------------------------------- the metric


def first_wrong_hit_rate(rewards: Sequence[Sequence[float]], first_wrong: Sequence[int]) -> dict:
    """Credit-assignment score over wrong responses.

    rewards[i]: per-token rewards of response i (EOS included); first_wrong[i]: index of its first wrong token.
    Returns hit_rate = mean 1[argmin_t rewards[i][t] == first_wrong[i]], uniform_baseline = mean 1/len(rewards[i])
    and n. The argmin takes the first of equal minima.
    """
    if len(rewards) != len(first_wrong):
        raise ValueError(f"{len(rewards)} reward rows but {len(first_wrong)} first-wrong indices")
    if not rewards:
        return {"hit_rate": float("nan"), "uniform_baseline": float("nan"), "n": 0}
    hits = 0
    for i, (r, w) in enumerate(zip(rewards, first_wrong)):
        if not 0 <= w < len(r):
            raise ValueError(f"response {i}: first wrong token {w} outside its {len(r)} tokens")
        hits += min(range(len(r)), key=r.__getitem__) == w
    return {"hit_rate": hits / len(rewards), "uniform_baseline": sum(1 / len(r) for r in rewards) / len(rewards),
            "n": len(rewards)}


# --------------------------------------------------------------------------------------------- the views


def _colour(r: float, scale: float) -> tuple[float, float, float]:
    """White at 0, red for blame, blue for credit, saturating at |r| = scale."""
    a = min(1.0, abs(r) / scale) if scale > 0 else 0.0
    return (1.0, 1.0 - a, 1.0 - a) if r < 0 else (1.0 - a, 1.0 - 0.6 * a, 1.0)


def _scale(rows: Sequence[dict]) -> float:
    return max((abs(r) for row in rows for r in row["rewards"]), default=0.0) or 1.0


def _pieces(row: dict) -> list[str]:
    return row.get("text_pieces") or row["tokens"]


def heatmap_html(rows: Sequence[dict], labels: Sequence[str], prompt: str = "", title: str = "") -> str:
    """A standalone HTML page: one line per response, one <span class="tok"> cell per token, coloured by r_t
    (hover shows the value). `rows` are `token_rewards` dicts (tokens or text_pieces, rewards, reward)."""
    scale = _scale(rows)
    lines = []
    for label, row in zip(labels, rows):
        cells = []
        for piece, r in zip(_pieces(row), row["rewards"]):
            rgb = ",".join(str(round(255 * c)) for c in _colour(r, scale))
            text = html.escape(piece.strip() or "·")
            cells.append(f'<span class="tok" style="background:rgb({rgb})" title="r={r:+.4f}">{text}</span>')
        lines.append(f'<div class="resp"><b>{html.escape(label)}</b> (Σ r = {row["reward"]:+.3f}) '
                     + "".join(cells) + "</div>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>token rewards</title><style>"
        "body{font-family:sans-serif} .tok{display:inline-block;padding:2px 4px;margin:1px;border:1px solid #ccc;"
        "font-family:monospace} .resp{margin:6px 0}</style></head><body>"
        f"<h3>{html.escape(title)}</h3><p>prompt: <code>{html.escape(prompt)}</code></p>"
        f"<p>red: r<sub>t</sub> &lt; 0 (blame), blue: r<sub>t</sub> &gt; 0 (credit); full colour at |r| = "
        f"{scale:.3g}</p>" + "".join(lines) + "</body></html>"
    )


def heatmap_figure(rows: Sequence[dict], labels: Sequence[str], title: str = ""):
    """A matplotlib Figure: one row per response, one Rectangle cell (gid 'cell') per token with its text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    scale = _scale(rows)
    width = max((len(r["rewards"]) for r in rows), default=1)
    fig, ax = plt.subplots(figsize=(4.0 + 0.6 * width, 0.8 + 0.55 * len(rows)))
    for y, row in enumerate(rows):
        for x, (piece, r) in enumerate(zip(_pieces(row), row["rewards"])):
            ax.add_patch(Rectangle((x, -y - 1), 1, 1, facecolor=_colour(r, scale), edgecolor="grey", gid="cell"))
            ax.text(x + 0.5, -y - 0.5, piece.strip() or "·", ha="center", va="center", fontsize=8)
    ax.set_xlim(0, width)
    ax.set_ylim(-len(rows), 0)
    ax.set_yticks([-y - 0.5 for y in range(len(rows))],
                  [f"{lab} ({row['reward']:+.2f})" for lab, row in zip(labels, rows)])
    ax.set_xticks([])
    ax.set_title(title or f"per-token reward β·log π/π_ref (full colour at |r| = {scale:.3g})", fontsize=9)
    fig.tight_layout()
    return fig


def write_views(rows: Sequence[dict], labels: Sequence[str], out_stem: str | Path, prompt: str = "") -> tuple[Path, Path]:
    """Write OUT_STEM.html and OUT_STEM.png for the given responses; returns both paths."""
    import matplotlib.pyplot as plt

    stem = Path(out_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    html_path, png_path = stem.with_suffix(".html"), stem.with_suffix(".png")
    html_path.write_text(heatmap_html(rows, labels, prompt=prompt, title=f"per-token rewards: {prompt}"))
    fig = heatmap_figure(rows, labels, title=f"prompt: {prompt}")
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return html_path, png_path


# --------------------------------------------------------------------------------------------- the experiment


def training_beta(policy_dir: str, default: float = 0.1) -> float:
    """β the policy was trained with (its train_config.yaml), else `default`."""
    path = Path(policy_dir) / "train_config.yaml"
    if path.exists():
        cfg = yaml.safe_load(path.read_text()) or {}
        beta = (cfg.get("loss") or {}).get("beta", cfg.get("beta"))
        if beta is not None:
            return float(beta)
    return default


@dataclass
class WrongSample:
    """A wrong response with the index of its first wrong token (EOS counted; see `tasks.arithmetic`)."""

    prompt: str
    response: str
    first_wrong: int


def collect_wrong_samples(task, reference, tokenizer, *, per_position: int, seed: int, max_new_tokens: int,
                          split: str = "heldout", batch_prompts: int = 1024, max_rounds: int = 40
                          ) -> tuple[list[WrongSample], list[WrongSample], dict]:
    """The reference's own temperature-1 wrong answers, stratified by the position of their first error.

    Rounds of one sample per prompt on `batch_prompts` fresh `split` prompts; every wrong, non-empty answer joins
    the natural pool (in order). Stratified set: the first `per_position` wrong answers whose first error sits at
    position i, for every answer position i = 0..L (L answer digits, position L = the EOS), so every position
    holds exactly 1/(L+1) of them. Returns (stratified, natural pool, info); ValueError when `max_rounds` rounds
    cannot fill every position.
    """
    from tokendpo.tasks.sampling import sample

    if not hasattr(task, "first_wrong_token"):
        raise ValueError(f"task {task.name!r} has no first-wrong-token checker; credit is scored on 'arithmetic'")
    positions = task.answer_positions()
    buckets: dict[int, list[WrongSample]] = {i: [] for i in range(positions)}
    natural: list[WrongSample] = []
    drawn = 0
    for r in range(max_rounds):
        prompts = task.prompts(split, batch_prompts, seed=seed * 1000 + r)
        texts, _ = sample(reference, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed * 1000 + r)
        drawn += len(prompts)
        for p, y in zip(prompts, texts):
            w = task.first_wrong_token(p, y)
            if w is None or not y.strip():
                continue
            ws = WrongSample(p, y, w)
            natural.append(ws)
            if w in buckets and len(buckets[w]) < per_position:
                buckets[w].append(ws)
        if all(len(v) >= per_position for v in buckets.values()):
            break
    short = {i: len(v) for i, v in buckets.items() if len(v) < per_position}
    if short:
        raise ValueError(f"{drawn} reference samples left positions {short} below {per_position} wrong answers")
    counts: dict[int, int] = {}
    for ws in natural:
        counts[ws.first_wrong] = counts.get(ws.first_wrong, 0) + 1
    info = {"samples_drawn": drawn, "natural_wrong": len(natural), "natural_first_wrong_counts": counts}
    return [ws for i in range(positions) for ws in buckets[i]], natural, info


@torch.no_grad()
def token_logps_rows(model, tokenizer, prompts: list[str], responses: list[str], *, batch_size: int = 64
                     ) -> list[list[float]]:
    """log π(y_t | x, y_<t) for every response token (EOS appended), through the training code's log-prob path."""
    from tokendpo.data import collate_rows, encode_rows
    from tokendpo.logps import sequence_logps

    out: list[list[float]] = []
    for i in range(0, len(prompts), batch_size):
        rows = encode_rows(tokenizer, prompts[i:i + batch_size], responses[i:i + batch_size], add_eos=True)
        batch = collate_rows(rows, tokenizer.pad_token_id)  # (B, T) each
        lp = sequence_logps(model, batch)
        for row, m in zip(lp.token_logps, lp.mask):  # (T-1,) each
            out.append(row[m].tolist())
    return out


METHODS = ("implicit", "random", "positional", "argmin_logp_policy", "argmin_logp_ref")
SCOPES = ("all", "up_to_first_error")


def _argmin(xs: Sequence[float]) -> int:
    return min(range(len(xs)), key=xs.__getitem__)  # the first of equal minima


def blame_hits(logp_policy: Sequence[Sequence[float]], logp_ref: Sequence[Sequence[float]],
               first_wrong: Sequence[int], *, positional: int) -> dict[tuple[str, str], float]:
    """Successes (hits; the random baseline's expected hits) per (scope, method) over the given samples.

    Per sample with token log-probs lp (policy) and lr (reference) and first wrong token w, a method blames one
    token; a hit is blaming w:

        implicit            argmin_t (lp_t − lr_t)       (r_t = β·(lp_t − lr_t); β > 0 does not move the argmin)
        argmin_logp_policy  argmin_t lp_t
        argmin_logp_ref     argmin_t lr_t
        positional          the fixed position `positional` (the most frequent first error of a natural sample)
        random              a uniform token: expected hit 1/len (all) or 1/(w+1) (up to the first error)

    Scope "all" takes the argmin over every response token (EOS included); "up_to_first_error" over t ≤ w only
    (the question: among the tokens up to the mistake, is the mistake the most blamed?).
    """
    if not (len(logp_policy) == len(logp_ref) == len(first_wrong)):
        raise ValueError("blame_hits: logp_policy, logp_ref and first_wrong differ in length")
    hits = {(s, m): 0.0 for s in SCOPES for m in METHODS}
    for i, (lp, lr, w) in enumerate(zip(logp_policy, logp_ref, first_wrong)):
        if len(lp) != len(lr) or not 0 <= w < len(lp):
            raise ValueError(f"sample {i}: {len(lp)} policy / {len(lr)} reference log-probs, first wrong token {w}")
        r = [a - b for a, b in zip(lp, lr)]
        for scope, end in (("all", len(lp)), ("up_to_first_error", w + 1)):
            hits[scope, "implicit"] += _argmin(r[:end]) == w
            hits[scope, "argmin_logp_policy"] += _argmin(lp[:end]) == w
            hits[scope, "argmin_logp_ref"] += _argmin(lr[:end]) == w
            hits[scope, "positional"] += positional == w
            hits[scope, "random"] += 1.0 / end
    return hits


def credit_rows(hits: dict[tuple[str, str], float], n: int, **keys) -> list[dict]:
    """One row per (scope, method): keys + scope, method, n, rate and its Wilson 95 % interval."""
    from tokendpo.tasks.metrics import wilson_interval

    return [{**keys, "scope": s, "method": m, "n": n, "rate": hits[s, m] / n,
             "ci": list(wilson_interval(hits[s, m], n))} for s in SCOPES for m in METHODS]


def credit_on_task(policy, reference, tokenizer, task, *, per_position: int, seed: int, max_new_tokens: int,
                   beta: float, split: str = "heldout", max_rounds: int = 40, samples=None) -> tuple[list[dict], list[tuple[WrongSample, dict]], dict]:
    """Credit assignment of `policy` on the reference's own stratified wrong answers (`collect_wrong_samples`,
    or the given (stratified, natural, info)). Returns (rows for the stratified set and the natural pool's first
    n, [(sample, token-reward row)] of the stratified set for the views, info)."""
    from tokendpo.eval import token_rewards

    strat, natural, info = samples or collect_wrong_samples(
        task, reference, tokenizer, per_position=per_position, seed=seed, max_new_tokens=max_new_tokens,
        split=split, max_rounds=max_rounds)
    counts = info["natural_first_wrong_counts"]
    positional = max(sorted(counts), key=counts.get)
    rows = []
    for name, ws in (("stratified", strat), ("natural", natural[: len(strat)])):
        prompts, responses = [w.prompt for w in ws], [w.response for w in ws]
        lp = token_logps_rows(policy, tokenizer, prompts, responses)
        lr = token_logps_rows(reference, tokenizer, prompts, responses)
        hits = blame_hits(lp, lr, [w.first_wrong for w in ws], positional=positional)
        rows += credit_rows(hits, len(ws), samples=name)
    views = token_rewards(policy, reference, tokenizer, [w.prompt for w in strat], [w.response for w in strat],
                          beta=beta, batch_size=64)
    info = {**info, "positional_prior": positional, "split": split, "per_position": per_position}
    return rows, list(zip(strat, views)), info


def pick_views(shown: Sequence, k: int) -> list:
    """Up to k samples for the heatmap, spread over the first-error positions (round robin)."""
    by_pos: dict[int, list] = {}
    for item in shown:
        by_pos.setdefault(item[0].first_wrong, []).append(item)
    out = []
    while len(out) < k and any(by_pos.values()):
        for pos in sorted(by_pos):
            if by_pos[pos] and len(out) < k:
                out.append(by_pos[pos].pop(0))
    return out


def format_rows(rows: Sequence[dict]) -> str:
    lines = [f"{'samples':<11}{'scope':<19}{'method':<20}{'n':>5}  {'hit rate':>9}  95 % Wilson"]
    for r in rows:
        lines.append(f"{r.get('samples', ''):<11}{r['scope']:<19}{r['method']:<20}{r['n']:>5}  {r['rate']:>9.1%}  "
                     f"[{r['ci'][0]:.1%}, {r['ci'][1]:.1%}]")
    return "\n".join(lines)


def _check_args(a, tasks) -> None:
    """Every argument checked before a model is loaded or a file written (ValueError -> `error: ...`, exit 2)."""
    for flag, value, lo in (("--per_position", a.per_position, 1), ("--max_rounds", a.max_rounds, 1),
                            ("--examples", a.examples, 0), ("--max_new_tokens", a.max_new_tokens, 1)):
        if value is not None and value < lo:
            raise ValueError(f"{flag} {value}: must be >= {lo}")
    if a.beta is not None and not (math.isfinite(a.beta) and a.beta > 0):
        raise ValueError(f"--beta {a.beta}: must be a finite number > 0")
    if a.task is not None and a.task not in tasks:
        raise ValueError(f"--task {a.task!r}: unknown task; tasks: {', '.join(sorted(tasks))}")
    out = Path(a.output_dir or a.policy)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output_dir {out}: exists and is not a directory")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tokendpo.credit", description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", required=True, help="DPO policy dir")
    ap.add_argument("--ref", required=True, help="reference (SFT) dir")
    ap.add_argument("--task", default=None, help="built-in task: sample held-out responses (arithmetic: score "
                                                 "credit assignment against the first wrong token)")
    ap.add_argument("--prompt", default=None, help="render this prompt's --response (and --rejected) instead")
    ap.add_argument("--response", default=None)
    ap.add_argument("--rejected", default=None, help="a second response, shown under --response as a pair")
    ap.add_argument("--per_position", type=int, default=80,
                    help="wrong reference samples per first-error position (n = per_position · (L+1))")
    ap.add_argument("--split", choices=("heldout", "train"), default="heldout",
                    help="prompts to score on (train: the prompts DPO's pairs came from)")
    ap.add_argument("--max_rounds", type=int, default=40, help="rounds of 1024 reference samples at most")
    ap.add_argument("--max_new_tokens", type=int, default=None, help="default: the task's")
    ap.add_argument("--examples", type=int, default=8, help="responses drawn in the task view")
    ap.add_argument("--beta", type=float, default=None, help="default: the policy's training β (else 0.1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output_dir", default=None, help="where credit.html/.png/.json go (default: --policy)")
    return ap


def _load(a):
    """(policy, reference, tokenizer) after every argument check; raises OSError / ValueError."""
    from tokendpo.model_checks import check_model_fits_tokenizer, check_same_model_vocab
    from tokendpo.modeling import load_model, load_tokenizer
    from tokendpo.tasks import TASKS

    _check_args(a, TASKS)
    tokenizer = load_tokenizer(a.policy)
    policy, reference = load_model(a.policy).eval(), load_model(a.ref).eval()
    check_model_fits_tokenizer(policy, tokenizer, f"--policy {a.policy}")
    check_same_model_vocab(policy, reference, f"--policy {a.policy}", f"--ref {a.ref}")
    return policy, reference, tokenizer


def _pair_view(a, policy, reference, tokenizer, beta: float, out: Path) -> int:
    """--prompt/--response[/--rejected]: print each token's reward and write credit.html / credit.png."""
    from tokendpo.eval import token_rewards

    responses = [a.response] + ([a.rejected] if a.rejected is not None else [])
    rows = token_rewards(policy, reference, tokenizer, [a.prompt] * len(responses), responses, beta=beta)
    labels = ["chosen", "rejected"] if a.rejected is not None else ["response"]
    paths = write_views(rows, labels, out / "credit", prompt=a.prompt)
    for lab, row in zip(labels, rows):
        print(f"{lab}: " + " ".join(f"{p.strip()}[{r:+.3f}]" for p, r in zip(_pieces(row), row["rewards"])))
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


def _task_view(a, policy, reference, tokenizer, beta: float, out: Path) -> int:
    """--task: the credit-assignment score (credit.json, printed table) and views of a few scored answers."""
    from tokendpo.rundir import write_atomic
    from tokendpo.tasks import get_task

    task = get_task(a.task)
    try:
        rows, shown, info = credit_on_task(policy, reference, tokenizer, task, per_position=a.per_position,
                                           seed=a.seed, beta=beta, split=a.split, max_rounds=a.max_rounds,
                                           max_new_tokens=a.max_new_tokens or task.recipe.max_new_tokens)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "credit.json", json.dumps({"beta": beta, **info, "rows": rows}, indent=1) + "\n")
    picked = pick_views(shown, a.examples)
    if picked:
        labels = [f"{w.prompt} {w.response} (first wrong: {w.first_wrong})" for w, _ in picked]
        paths = write_views([r for _, r in picked], labels, out / "credit", prompt=f"{a.task}: {a.split}")
        print(f"wrote {paths[0]} and {paths[1]}")
    print(format_rows(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if (a.prompt is None) == (a.task is None):
        ap.error("give either --task NAME or --prompt P --response Y")
    if a.prompt is not None and a.response is None:
        ap.error("--prompt needs --response")
    try:
        policy, reference, tokenizer = _load(a)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    beta = a.beta if a.beta is not None else training_beta(a.policy)
    out = Path(a.output_dir or a.policy)
    view = _pair_view if a.prompt is not None else _task_view
    return view(a, policy, reference, tokenizer, beta, out)

if __name__ == "__main__":
    raise SystemExit(main())
