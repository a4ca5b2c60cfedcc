"""Padding-free packing vs padded batches: positions computed and forward+backward time per micro-batch.

    python -m benchmarks.bench_packing [--quick] [--batch_size 8] [--batches 12]

Real HH-RLHF pairs (../shared/data, tokenised with the byte-level preset tokenizer, max_length 256) through a
`small-llama` preset; the same micro-batches in both layouts, timed alternately in one process.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from tokendpo.config import DataConfig
from tokendpo.data import collate_packed, collate_pairs, load_preference_data
from tokendpo.logps import PolicyLogps
from tokendpo.modeling import build_preset, load_model, load_tokenizer

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"


def step_time(policy, batch) -> float:
    t0 = time.perf_counter()
    out = policy(batch)
    out.logps.sum().backward()
    return time.perf_counter() - t0


def run(quick: bool, batch_size: int, n_batches: int, preset: str) -> list[dict]:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_preset(preset, tmp, seed=0)
        tok = load_tokenizer(str(model_dir))
        policy = PolicyLogps(load_model(str(model_dir)), kernel="chunked")
    cfg = DataConfig(dataset=str(HH), skip_bad_rows=True, max_length=128 if quick else 256,
                     max_prompt_length=64 if quick else 128)
    pairs, _, _ = load_preference_data(cfg, tok)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(pairs), generator=g).tolist()
    batches = [[pairs[i] for i in order[b * batch_size:(b + 1) * batch_size]] for b in range(n_batches)]
    rows = {"padded": {"positions": 0, "real": 0, "times": []}, "packed": {"positions": 0, "real": 0, "times": []}}
    step_time(policy, collate_pairs(batches[0], tok.pad_token_id))  # warm-up
    for b in batches:
        padded, packed = collate_pairs(b, tok.pad_token_id), collate_packed(b)
        for name, batch in (("padded", padded), ("packed", packed)):
            policy.zero_grad(set_to_none=True)
            rows[name]["times"].append(step_time(policy, batch))
            rows[name]["positions"] += batch["input_ids"].numel()
            rows[name]["real"] += int(padded["attention_mask"].sum())
    # the two layouts must agree on the numbers they produce (checked on the last batch)
    a, p = policy(collate_pairs(batches[-1], tok.pad_token_id)), policy(collate_packed(batches[-1]))
    torch.testing.assert_close(p.logps, a.logps, rtol=1e-5, atol=1e-4)
    out = []
    for name, r in rows.items():
        out.append({"layout": name, "positions": r["positions"], "pad_share": 1 - r["real"] / r["positions"],
                    "median_s": statistics.median(r["times"]), "total_s": sum(r["times"])})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, few batches (smoke test; never reported)")
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--preset", default="small-llama")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch_size, args.batches, args.preset = 4, 3, "tiny-llama"
    rows = run(args.quick, args.batch_size, args.batches, args.preset)
    print(f"# {' '.join(['python -m benchmarks.bench_packing', *(argv if argv is not None else sys.argv[1:])])}")
    print(f"# machine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, preset {args.preset}, {args.batches} micro-batches of {args.batch_size} pairs")
    print("| layout | positions computed | padding share | median s / micro-batch (fwd+bwd) | total s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layout']} | {r['positions']} | {r['pad_share']:.1%} | {r['median_s']:.3f} | {r['total_s']:.2f} |")
    pad, pack = rows
    print(f"packing computes {pack['positions'] / pad['positions']:.2f}x the positions in "
          f"{pack['total_s'] / pad['total_s']:.2f}x the time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
