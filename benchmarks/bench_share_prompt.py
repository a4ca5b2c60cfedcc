"""--share_prompt against the plain padded forward: CPU time of a DPO step (policy forward + backward, reference
forward) and the largest log-prob difference, on real HH-RLHF pairs.

    python -m benchmarks.bench_share_prompt            # full: tiny-llama and the SmolLM2-135M shape, 12 steps each
    python -m benchmarks.bench_share_prompt --quick    # tiny-llama, 2 steps: checks agreement, not a result

The pairs are HH-RLHF harmless-base rows (../shared/data) through tokendpo's own extractor and the byte-level
tokenizer, truncated as training would (`--max_prompt_length`, `--max_length`): multi-turn prompts are long and
replies short, the case sharing is for. Models are random-init transformers Llamas: `tiny-llama` (the preset,
H=32) and `smollm2-shape` (SmolLM2-135M's config: 30 layers, H=576, V=49152). Both arms run the same batches in
alternating order in one process with 1 torch thread; time is process CPU time (robust to other jobs on the
machine). Saving: the prompt positions run for B rows instead of 2B, at the price of a second body call, the
cache copy and the padding of prompts and responses separately — so it pays when prompts are long and the body
is deep, and can lose on tiny models.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

from benchmarks.results_file import command_line, write_results
from tokendpo.data import collate_pairs
from tokendpo.data.pairs import TokenizedPair
from tokendpo.logps import sequence_logps

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, tie_word_embeddings=True, max_position_embeddings=2048)


def hh_pairs(n: int, max_length: int, max_prompt_length: int) -> list[TokenizedPair]:
    from benchmarks.real_hh import HH_FILE
    from tokendpo.config import DataConfig
    from tokendpo.data import load_preference_data
    from tokendpo.modeling import byte_level_tokenizer

    cfg = DataConfig(dataset=str(HH_FILE), max_length=max_length, max_prompt_length=max_prompt_length,
                     skip_bad_rows=True)
    pairs, _, _ = load_preference_data(cfg, byte_level_tokenizer())
    return pairs[:n]


def model(name: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    from tokendpo.modeling import byte_level_tokenizer, preset_config

    torch.manual_seed(0)
    cfg = LlamaConfig(**SMOLLM2) if name == "smollm2-shape" else preset_config(name, len(byte_level_tokenizer()))
    return LlamaForCausalLM(cfg)


def step(policy, reference, batch) -> tuple[float, torch.Tensor]:
    t = time.process_time()
    out = sequence_logps(policy, batch)
    with torch.no_grad():
        ref = sequence_logps(reference, batch)
    (out.logps - ref.logps).sum().backward()
    policy.zero_grad(set_to_none=True)
    return time.process_time() - t, out.logps.detach()


def bench(name: str, pairs: list[TokenizedPair], batch_size: int, steps: int) -> dict:
    policy, reference = model(name), model(name).eval()
    cpu = {False: 0.0, True: 0.0}
    max_diff = 0.0
    for i in range(steps):
        chunk = pairs[i * batch_size:(i + 1) * batch_size]
        logps = {}
        for share in ((False, True) if i % 2 == 0 else (True, False)):  # alternate against drifting load
            dt, logps[share] = step(policy, reference, collate_pairs(chunk, 0, share_prompt=share))
            cpu[share] += dt
        max_diff = max(max_diff, float((logps[True] - logps[False]).abs().max()))
    n_prompt = sum(len(p.prompt_ids) for p in pairs[:steps * batch_size])
    n_resp = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs[:steps * batch_size])
    return {"model": name, "steps": steps, "plain_s": cpu[False], "shared_s": cpu[True],
            "speedup": cpu[False] / cpu[True] if cpu[True] > 0 else float("nan"), "max_abs_dlogp": max_diff,
            "prompt_share": 2 * n_prompt / (2 * n_prompt + n_resp)}


def run(argv: list[str] | None = None) -> list[dict]:
    """Parse the flags, run every model, print the table; returns the rows (what tests assert on)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_share_prompt", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny-llama, 2 steps: an agreement check, not a result")
    ap.add_argument("--models", default="tiny-llama,smollm2-shape")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch_size", type=int, default=2, help="pairs per step")
    ap.add_argument("--max_length", type=int, default=256)
    ap.add_argument("--max_prompt_length", type=int, default=192)
    a = ap.parse_args(argv)
    models, steps = (["tiny-llama"], 2) if a.quick else (a.models.split(","), a.steps)
    torch.set_num_threads(1)
    pairs = hh_pairs(steps * a.batch_size, a.max_length, a.max_prompt_length)
    print(f"# python -m benchmarks.bench_share_prompt {' '.join(sys.argv[1:] if argv is None else argv)}"
          f"   ({platform.machine()}, torch {torch.__version__}, 1 thread; {'QUICK: not a result' if a.quick else 'full'})")
    print("| model | steps × pairs | prompt share of row tokens | plain CPU s | shared CPU s | speed-up | max |Δ log p| |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for name in models:
        r = bench(name, pairs, a.batch_size, steps)
        rows.append(r)
        print(f"| {name} | {steps} × {a.batch_size} | {r['prompt_share']:.2f} | {r['plain_s']:.1f} | "
              f"{r['shared_s']:.1f} | {r['speedup']:.2f}× | {r['max_abs_dlogp']:.1e} |", flush=True)
    if not a.quick:
        keep = ("model", "steps", "speedup", "max_abs_dlogp", "prompt_share")
        path = write_results("bench_share_prompt", [{k: r[k] for k in keep} for r in rows],
                             command_line("benchmarks.bench_share_prompt", argv))
        print(f"wrote {path}")
    return rows


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
