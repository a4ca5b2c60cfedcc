"""Controlled sentiment on a real model (the paper's setting, on CPU): SmolLM2-135M-Instruct, gold reward = VADER.

    python -m benchmarks.real_sentiment              # full run
    python -m benchmarks.real_sentiment --quick      # a few prompts and tokens: checks the pipeline, not a result
    python -m benchmarks.real_sentiment --search --decode_batch 32   # the search experiment on the same policy

1. prompts: the first human turn of each HH-RLHF harmless row (deduplicated, ≤ `--max_prompt_chars`), shuffled
   with `--seed` and split into disjoint train and held-out prompts. Rendered with the model's chat template.
2. pairs: `--samples` replies per train prompt sampled from the base model at temperature 1
   (`tokendpo.tasks.sampling.sample`, one prefill per prompt); gold reward r*(reply) = VADER compound(reply) ∈ [−1, 1]; the pair is
   (highest r*, lowest r*), dropped when they tie (e.g. two neutral replies at 0.0).
3. DPO: `python -m tokendpo.train --model M --dataset OUT/pairs.jsonl --chat_template --lora_r R
   --ref_logps precompute ...` in a fresh subprocess (reference = the base model, adapter disabled).
4. decode the held-out prompts with the DPO policy (reference = base) via `search.decode.run`: sampling
   (temperature 1), beam search (`--beam` beams, score `--beam_score`) and MCTS (`--simulations` per token,
   implicit-reward score), plus the base model's own samples. Report per decoder: mean gold reward (95 %
   bootstrap interval), win rate against the base model's sample for the same prompt (ties 0.5; 95 % Wilson
   interval), mean implicit reward Σ β·log π/π_ref, distinct replies, forward tokens per prompt, wall time.

`--search` replaces step 4 with the paper's search experiment on the same held-out prompts and the trained policy
(reused from a previous run of the same `--out`): every decoder family, each paired per prompt with the policy's
sample and with the best likelihood decoder at matched compute (`benchmarks.real_search`).

`--threads N` sets torch's intra-op threads here and OMP_NUM_THREADS of the training subprocess (1 is fastest on
a CPU shared with other jobs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

from tokendpo.rundir import continue_flags
from benchmarks.real_hh import (HH_FILE, REPO, Run, bootstrap_interval, read_lines, run_step, train_summary,
                               wilson_interval)


def first_human_turns(path: Path, max_chars: int) -> list[str]:
    """Distinct first human turns of an HH-RLHF file ("\\n\\nHuman: X\\n\\nAssistant: ..."), in file order."""
    seen, out = set(), []
    for line in read_lines(path):
        text = json.loads(line).get("chosen", "")
        turn = text.split("Human:", 1)[-1].split("\n\nAssistant:", 1)[0].strip()
        if turn and len(turn) <= max_chars and turn not in seen:
            seen.add(turn)
            out.append(turn)
    return out


def vader(text: str) -> float:
    from tokendpo.tasks.sentiment import vader_compound

    return vader_compound(text)


def decode(method: str, policy, reference, tokenizer, prompts: list[str], args, **overrides) -> tuple[list[dict], float]:
    """search.decode.run over `prompts` with the chat template; records get `gold_reward` (VADER); wall time."""
    from search.config import SearchConfig
    from search.decode import run

    cfg = SearchConfig(method=method, chat_template=True, beta=args.beta, max_new_tokens=args.max_new_tokens,
                       seed=args.seed, batch_size=args.decode_batch, progress=False, **overrides)
    cfg.validate()
    t0 = time.perf_counter()
    records = list(run(cfg, policy, reference, tokenizer, prompts))
    wall = time.perf_counter() - t0
    for r in records:
        r["gold_reward"] = vader(r["completion"])
    return records, wall


def sample_replies(model, tokenizer, prompts: list[str], args) -> tuple[list[dict], float]:
    """`--samples` temperature-1 replies per prompt from one prefill each (`tokendpo.tasks.sampling.sample`, the
    project's fastest sampler), as records {"completion", "gold_reward"} grouped by prompt; wall time."""
    from tokendpo.tasks.sampling import sample

    t0 = time.perf_counter()
    texts, _ = sample(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, seed=args.seed, n=args.samples,
                      batch_size=args.decode_batch, chat_template=True, progress=False)
    return [{"completion": t, "gold_reward": vader(t)} for t in texts], time.perf_counter() - t0


def make_pairs(texts: list[str], records: list[dict], k: int) -> tuple[list[dict], dict]:
    """Group k samples per prompt; pair (max r*, min r*), dropping ties."""
    pairs, ties, gaps = [], 0, []
    for i, prompt in enumerate(texts):
        group = records[i * k:(i + 1) * k]
        best = max(group, key=lambda r: r["gold_reward"])
        worst = min(group, key=lambda r: r["gold_reward"])
        if best["gold_reward"] == worst["gold_reward"] or best["completion"].strip() == worst["completion"].strip() \
                or not best["completion"].strip() or not worst["completion"].strip():
            ties += 1
            continue
        pairs.append({"prompt": prompt, "chosen": best["completion"], "rejected": worst["completion"],
                      "chosen_gold": best["gold_reward"], "rejected_gold": worst["gold_reward"]})
        gaps.append(best["gold_reward"] - worst["gold_reward"])
    stats = {"prompts": len(texts), "pairs": len(pairs), "dropped_ties_or_empty": ties,
             "mean_gold_gap": sum(gaps) / len(gaps) if gaps else float("nan"),
             "sample_gold_mean": sum(r["gold_reward"] for r in records) / max(1, len(records))}
    return pairs, stats


def summarise(name: str, records: list[dict], base: list[dict], wall: float, seed: int) -> dict:
    gold = [r["gold_reward"] for r in records]
    wins = sum(1.0 if g > b["gold_reward"] else 0.5 if g == b["gold_reward"] else 0.0 for g, b in zip(gold, base))
    n = len(records)
    return {
        "decoder": name, "prompts": n, "gold_reward": sum(gold) / n, "gold_ci95": bootstrap_interval(gold, seed=seed),
        "win_rate_vs_base": wins / n, "win_ci95": wilson_interval(wins, n),
        "implicit_reward": sum(r["reward"] for r in records) / n,
        "distinct": len({r["completion"] for r in records}) / n,
        "mean_tokens": sum(len(r["token_ids"]) for r in records) / n,
        "forward_tokens_per_prompt": sum(r["forward_tokens"] for r in records) / n, "wall_s": wall,
    }


QUICK = dict(grad_accum=1, warmup_steps=0, train_prompts=4, heldout_prompts=2, samples=2, max_new_tokens=10, beam=2, simulations=2,
             mcts_prompts=2, max_length=96, max_prompt_length=64)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.real_sentiment", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few prompts and tokens (the `real` test); not a result")
    ap.add_argument("--model", default=None, help="a .gguf file, local dir or hub id (default: fetch smollm2)")
    ap.add_argument("--cache_dir", default=None)
    ap.add_argument("--data", default=str(HH_FILE))
    ap.add_argument("--out", default="outputs/real_sentiment")
    ap.add_argument("--max_prompt_chars", type=int, default=200)
    ap.add_argument("--train_prompts", type=int, default=256)
    ap.add_argument("--heldout_prompts", type=int, default=64)
    ap.add_argument("--samples", type=int, default=4, help="replies sampled per train prompt (pair = best, worst)")
    ap.add_argument("--max_new_tokens", type=int, default=40)
    ap.add_argument("--max_length", type=int, default=160)
    ap.add_argument("--max_prompt_length", type=int, default=96)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--learning_rate", type=float, default=5e-4)
    ap.add_argument("--lora_r", type=int, default=8)
    ap.add_argument("--warmup_steps", type=int, default=5)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--batch_size", type=int, default=1)
    ap.add_argument("--grad_accum", type=int, default=8)
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--beam_score", default="likelihood", choices=("likelihood", "implicit"),
                    help="likelihood = Σ β·log π_DPO (the paper's likelihood search, Eq. 13)")
    ap.add_argument("--simulations", type=int, default=8, help="MCTS simulations per committed token")
    ap.add_argument("--mcts_prompts", type=int, default=4,
                    help="held-out prompts decoded with MCTS. Every expanded node keeps the KV caches (policy + "
                         "reference) of its whole prefix, so on this 30-layer model 32 prompts passed 23 GiB of RSS")
    ap.add_argument("--decode_batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true",
                    help="reuse the pairs and the DPO model a previous run of the same --out finished")
    ap.add_argument("--search", action="store_true",
                    help="instead of the decoder table, the search experiment (`benchmarks.real_search`): every "
                         "decoder family paired against the policy's sample and the best likelihood decoder at "
                         "matched compute, on the held-out prompts. Implies --resume")
    ap.add_argument("--search_decoders", default="",
                    help="with --search: a comma-separated subset of the grid (default: all; e.g. split the grid "
                         "between two processes on the same --out)")
    args = ap.parse_args(argv)
    args.resume = args.resume or args.search
    if args.quick:
        for k, v in QUICK.items():
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, v)
    command = "python -m benchmarks.real_sentiment " + " ".join(sys.argv[1:] if argv is None else argv)

    import torch

    from tokendpo.modeling import load_model, load_tokenizer

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.model is None:
        from tokendpo.fetch import fetch

        args.model = str(fetch("smollm2", args.cache_dir))
    out = Path(args.out)
    out = out if out.is_absolute() else REPO / out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    turns = first_human_turns(Path(args.data), args.max_prompt_chars)
    random.Random(args.seed).shuffle(turns)
    if len(turns) < args.heldout_prompts + args.train_prompts:
        raise SystemExit(f"only {len(turns)} distinct prompts; lower --train_prompts / --heldout_prompts")
    heldout, train = turns[:args.heldout_prompts], turns[args.heldout_prompts:args.heldout_prompts + args.train_prompts]

    tokenizer = load_tokenizer(args.model)
    base = load_model(args.model).eval()

    # ---- pairs from the base model, labelled by VADER (reused when a previous run of the same --out wrote them)
    stats_path = out / "pairs_stats.json"
    if args.resume and stats_path.is_file() and (out / "pairs.jsonl").is_file():
        pair_stats = json.loads(stats_path.read_text())
        pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines() if line.strip()]
        t_pairs = pair_stats["wall_s"]
        print(f"pairs (reused): {json.dumps(pair_stats)}", flush=True)
    else:
        samples, t_pairs = sample_replies(base, tokenizer, train, args)
        pairs, pair_stats = make_pairs(train, samples, args.samples)
        pair_stats["wall_s"] = t_pairs
        with (out / "pairs.jsonl").open("w") as f:
            f.writelines(json.dumps(p) + "\n" for p in pairs)
        stats_path.write_text(json.dumps(pair_stats))
        print(f"pairs: {json.dumps(pair_stats)}", flush=True)
    if len(pairs) < 2:
        raise SystemExit("fewer than 2 usable pairs; raise --train_prompts or --samples")

    # ---- DPO (subprocess)
    train_args = [
        "tokendpo.train", "--model", args.model, "--dataset", str(out / "pairs.jsonl"), "--chat_template",
        "--output_dir", str(out / "dpo"), "--lora_r", str(args.lora_r), "--ref_logps", "precompute",
        "--max_length", str(args.max_length), "--max_prompt_length", str(args.max_prompt_length),
        "--beta", str(args.beta), "--learning_rate", str(args.learning_rate), "--warmup_steps", str(args.warmup_steps),
        "--per_device_train_batch_size", str(args.batch_size), "--gradient_accumulation_steps", str(args.grad_accum),
        "--num_epochs", str(args.epochs), "--logging_steps", "1", "--seed", str(args.seed), "--progress", "false",
        *continue_flags(out / "dpo"),
    ]
    done = out / "dpo" / "train_run.json"
    if args.resume and done.is_file() and (out / "dpo" / "model.safetensors").is_file():
        train_run = Run(**json.loads(done.read_text()))
        print("DPO (reused)", flush=True)
    else:
        train_run = run_step("train", train_args, out / "train.log", args.threads)
        done.write_text(json.dumps(dataclasses.asdict(train_run)))
    tr = train_summary(out / "dpo" / "metrics.jsonl")

    # ---- decode held-out prompts
    policy = load_model(str(out / "dpo")).eval()
    if args.search:
        from benchmarks.real_search import run_search

        setup = (f"Policy: LoRA DPO (r {args.lora_r}, β {args.beta}) of `{args.model}` on {pair_stats['pairs']} "
                 f"VADER-labelled pairs of its own samples; reference: the base model. {len(heldout)} held-out "
                 f"HH-RLHF first human turns (chat template) × at most {args.max_new_tokens} new tokens, seed "
                 f"{args.seed}, batches of {args.decode_batch} prompts; {platform.machine()}, {os.cpu_count()} "
                 f"CPU cores, {torch.get_num_threads()} torch thread(s), fp32.")
        return run_search(policy, base, tokenizer, heldout, out, args, command, setup)
    rows, outputs = [], {}
    base_recs, w = decode("sample", base, base, tokenizer, heldout, args)
    outputs["base sample"] = base_recs
    rows.append(summarise("base sample (T=1)", base_recs, base_recs, w, args.seed))
    runs = [("DPO sample (T=1)", "sample", heldout, {}),
            (f"DPO beam K={args.beam} ({args.beam_score})", "beam", heldout,
             dict(beam=args.beam, score=args.beam_score)),
            (f"DPO MCTS S={args.simulations} (implicit)", "mcts", heldout[:args.mcts_prompts],
             dict(simulations=args.simulations, score="implicit"))]
    for name, method, prompts, over in runs:
        recs, w = decode(method, policy, base, tokenizer, prompts, args, **over)
        outputs[name] = recs
        rows.append(summarise(name, recs, base_recs[:len(recs)], w, args.seed))
        print(f"{name}: gold {rows[-1]['gold_reward']:+.3f}, win {rows[-1]['win_rate_vs_base']:.3f}", flush=True)
    with (out / "decoded.jsonl").open("w") as f:
        for name, recs in outputs.items():
            f.writelines(json.dumps({"decoder": name, **r}, ensure_ascii=False) + "\n" for r in recs)

    total = time.perf_counter() - t_start
    lines = [
        f"### Controlled sentiment on SmolLM2-135M-Instruct (VADER gold reward) ({'QUICK — not a result' if args.quick else 'full run'})",
        "", f"`{command}`", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared), {args.threads or 'default'} torch "
        f"thread(s); fp32. Model `{args.model}`; chat template on.",
        f"Pairs: {pair_stats['pairs']} from {pair_stats['prompts']} train prompts × {args.samples} base samples "
        f"(max {args.max_new_tokens} new tokens; {pair_stats['dropped_ties_or_empty']} prompts dropped as ties), "
        f"mean gold gap chosen − rejected {pair_stats['mean_gold_gap']:.3f}; sampling {t_pairs / 60:.1f} min.",
        f"DPO: LoRA r={args.lora_r}, β {args.beta}, lr {args.learning_rate}, {tr.get('steps', '?')} steps of "
        f"{args.batch_size}×{args.grad_accum} pairs ({args.epochs} epochs), precomputed reference; "
        f"{train_run.wall_s / 60:.1f} min wall ({train_run.cpu_s / 60:.1f} min CPU), peak RSS {train_run.peak_rss_gib:.2f} GiB, "
        f"{tr.get('tokens_per_second') or float('nan'):.1f} train tokens/s; loss {tr.get('first_loss', float('nan')):.3f} → "
        f"{tr.get('last_fifth_loss', float('nan')):.3f}, train reward accuracy (last fifth) "
        f"{tr.get('last_fifth_train_accuracy', float('nan')):.2f}.",
        "",
        "| decoder (held-out prompts) | n | gold reward (VADER) | 95 % CI | win rate vs base | 95 % CI | Σ β·log π/π_ref | distinct | tokens | forward tokens / prompt | wall |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['decoder']} | {r['prompts']} | {r['gold_reward']:+.3f} | [{r['gold_ci95'][0]:+.3f}, "
            f"{r['gold_ci95'][1]:+.3f}] | {r['win_rate_vs_base']:.3f} | [{r['win_ci95'][0]:.3f}, {r['win_ci95'][1]:.3f}] | "
            f"{r['implicit_reward']:+.3f} | {r['distinct']:.2f} | {r['mean_tokens']:.1f} | "
            f"{r['forward_tokens_per_prompt']:.0f} | {r['wall_s'] / 60:.1f} min |")
    lines += ["", f"Total wall time {total / 60:.1f} min. The base row's win rate is against itself (0.5 by "
                  f"construction); MCTS rows compare with the base samples of the same (first "
                  f"{min(args.mcts_prompts, len(heldout))}) prompts."]
    text = "\n".join(lines)
    result = {"args": vars(args), "command": command, "quick": args.quick, "pairs": pair_stats, "train": tr,
              "train_run": dataclasses.asdict(train_run), "decoders": rows, "total_wall_s": total}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "results.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
