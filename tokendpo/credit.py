"""Credit assignment: which tokens a DPO policy credits or blames (the paper's Figure 1), and a score for it.

Every response token gets the implicit reward r_t = β·(log π(y_t|x, y_<t) − log π_ref(y_t|x, y_<t))
(`tokendpo.eval.token_rewards`). This module

* renders the per-token rewards of a response or a chosen/rejected pair as an HTML heatmap and as a PNG
  (matplotlib), one cell per token, red for blame (r_t < 0) and blue for credit (r_t > 0);
* scores credit assignment on the `arithmetic` task, whose gold checker knows the first wrong token of a wrong
  answer: hit rate = share of wrong responses whose most negative r_t sits on their first wrong token, beside
  the uniform baseline mean(1/len) (the hit rate of blaming a token at random).

    python -m tokendpo.credit --policy outputs/arith/dpo --ref outputs/arith/sft --task arithmetic
    python -m tokendpo.credit --policy DIR --ref DIR --prompt "12+34=" --response "47" [--rejected "46"]
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from collections.abc import Sequence
from pathlib import Path

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


def credit_on_task(policy, reference, tokenizer, task, *, n_prompts: int, seed: int, beta: float,
                   max_new_tokens: int, sample_from: str = "ref", split: str = "heldout"
                   ) -> tuple[dict, list[tuple[str, str, dict, int]]]:
    """Sample responses to `split` prompts (from the reference by default: it makes the mistakes), keep the
    wrong ones, score where the policy's most negative token reward falls. Returns (metric dict, [(prompt,
    response, token-reward row, first wrong index)])."""
    from tokendpo.eval import token_rewards
    from tokendpo.tasks.sampling import sample

    if not hasattr(task, "first_wrong_token"):
        raise ValueError(f"task {task.name!r} has no first-wrong-token checker; credit is scored on 'arithmetic'")
    prompts = task.prompts(split, n_prompts, seed=seed)
    sampler = reference if sample_from == "ref" else policy
    texts, _ = sample(sampler, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed)
    wrong = [(p, y, task.first_wrong_token(p, y)) for p, y in zip(prompts, texts)]
    wrong = [(p, y, w) for p, y, w in wrong if w is not None and y.strip()]
    rows = token_rewards(policy, reference, tokenizer, [p for p, _, _ in wrong], [y for _, y, _ in wrong],
                         beta=beta, batch_size=64) if wrong else []
    metric = first_wrong_hit_rate([r["rewards"] for r in rows], [w for _, _, w in wrong])
    metric.update(n_prompts=len(prompts), wrong_share=len(wrong) / max(1, len(prompts)), sampled_from=sample_from,
                  split=split)
    return metric, [(p, y, r, w) for (p, y, w), r in zip(wrong, rows)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tokendpo.credit", description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", required=True, help="DPO policy dir")
    ap.add_argument("--ref", required=True, help="reference (SFT) dir")
    ap.add_argument("--task", default=None, help="built-in task: sample held-out responses (arithmetic: score "
                                                 "credit assignment against the first wrong token)")
    ap.add_argument("--prompt", default=None, help="render this prompt's --response (and --rejected) instead")
    ap.add_argument("--response", default=None)
    ap.add_argument("--rejected", default=None, help="a second response, shown under --response as a pair")
    ap.add_argument("--n_prompts", type=int, default=256)
    ap.add_argument("--sample_from", choices=("ref", "policy"), default="ref")
    ap.add_argument("--split", choices=("heldout", "train"), default="heldout",
                    help="prompts to score on (train: the prompts DPO's pairs came from)")
    ap.add_argument("--max_new_tokens", type=int, default=None, help="default: the task's")
    ap.add_argument("--examples", type=int, default=8, help="responses drawn in the task view")
    ap.add_argument("--beta", type=float, default=None, help="default: the policy's training β (else 0.1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output_dir", default=None, help="where credit.html/.png/.json go (default: --policy)")
    a = ap.parse_args(argv)
    if (a.prompt is None) == (a.task is None):
        ap.error("give either --task NAME or --prompt P --response Y")
    if a.prompt is not None and a.response is None:
        ap.error("--prompt needs --response")

    from tokendpo.eval import token_rewards
    from tokendpo.modeling import load_model, load_tokenizer

    try:
        tokenizer = load_tokenizer(a.policy)
        policy, reference = load_model(a.policy).eval(), load_model(a.ref).eval()
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    beta = a.beta if a.beta is not None else training_beta(a.policy)
    out = Path(a.output_dir or a.policy)
    if a.prompt is not None:
        responses = [a.response] + ([a.rejected] if a.rejected is not None else [])
        rows = token_rewards(policy, reference, tokenizer, [a.prompt] * len(responses), responses, beta=beta)
        labels = ["chosen", "rejected"] if a.rejected is not None else ["response"]
        paths = write_views(rows, labels, out / "credit", prompt=a.prompt)
        for lab, row in zip(labels, rows):
            print(f"{lab}: " + " ".join(f"{p.strip()}[{r:+.3f}]" for p, r in zip(_pieces(row), row["rewards"])))
        print(f"wrote {paths[0]} and {paths[1]}")
        return 0

    from tokendpo.tasks import get_task

    task = get_task(a.task)
    metric, wrong = credit_on_task(policy, reference, tokenizer, task, n_prompts=a.n_prompts, seed=a.seed,
                                   beta=beta, max_new_tokens=a.max_new_tokens or task.recipe.max_new_tokens,
                                   sample_from=a.sample_from, split=a.split)
    metric["beta"] = beta
    out.mkdir(parents=True, exist_ok=True)
    (out / "credit.json").write_text(json.dumps(metric, indent=1) + "\n")
    shown = wrong[: a.examples]
    if shown:
        labels = [f"{p} {y} (first wrong: {w})" for p, y, _, w in shown]
        paths = write_views([r for _, _, r, _ in shown], labels, out / "credit", prompt=f"{a.task}: {a.split}")
        print(f"wrote {paths[0]} and {paths[1]}")
    print(f"{'wrong responses':<34}{metric['n']:>8d}  ({metric['wrong_share']:.1%} of {metric['n_prompts']}, "
          f"{a.split} prompts, sampled from {a.sample_from})")
    print(f"{'argmin r_t on first wrong token':<34}{metric['hit_rate']:>8.1%}")
    print(f"{'uniform baseline mean(1/len)':<34}{metric['uniform_baseline']:>8.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
