"""Decoding throughput against the anchors: our sampler and beam search against transformers' `generate` plus a
reference pass, and one decode step of policy + reference against its hardware floor.

Arms (same model pair, same batch of prompts, same max_new_tokens):

    sample   ours: `search.sampling.sample` (policy steps, then the reference rescores each response in one pass;
             it returns per-token rewards r_t = β·(log π − log π_ref)).
             HF: `policy.generate(do_sample=True, top_k=0, top_p=1, temperature=1)`, the policy log-probs from
             its scores, then one reference forward over prompt + response (the same rewards).
             EOS is banned in both (ours `banned_tokens`, HF `suppress_tokens`), so both generate exactly
             prompts × new_tokens tokens and do the same work whatever they sample.
    beam     likelihood beam search, K beams: `search.beam.beam_search(score="likelihood")` against
             `generate(num_beams=K, do_sample=False, length_penalty=0)` + the reference pass
             (`bench_models.hf_beam_with_rewards`); `same` says whether both return the same tokens.

Timing: each pair of arms is run round-robin `repeats` times in one process (interleaved, so a load change on a
shared machine hits both alike); the row keeps the min of each arm and every raw time. time_ratio =
ours_s / hf_ref_s (< 1: ours is faster); target: time_ratio ≤ 1, i.e. ours ≥ 1.0× generate + ref.

Decode step: one token for every row through the policy and the reference from a prefilled cache of `context`
positions (`PairScorer.step`, the step every decoder takes), at batch 1 and 8; min over `repeats`. Its floor is

    floor = max((W + KV) / copy_bandwidth, FLOPs / matmul_rate)

over both models, where per model W = bytes of every weight read by one step (the LM head once; an untied input
embedding reads only B rows, so it is left out), KV = layers · 2 · kv_heads · head_dim · B · context · 4 bytes
(the cache read by attention), FLOPs = 2 · B · (matmul weights) + layers · 4 · heads · head_dim · B · context
(QKᵀ and PV). copy_bandwidth = 2 · N bytes / t of `dst.copy_(src)` on N = 128 MiB fp32 (read + write, the STREAM
convention) and matmul_rate = 2 · n³ / t of an n = 1024 fp32 matmul, both measured in the same run, same
threads, min of `repeats`. Target: step_ms ≤ 3 × floor_ms.

    python -m benchmarks.bench_decode --workdir /tmp/smollm2   # real SmolLM2-135M; writes results/bench_decode.json
    python -m benchmarks.bench_decode --quick                  # tiny random model, writes nothing

Rows: {"arm", "model", "prompts", "new_tokens", "width", "tokens", "ours_s", "hf_ref_s", "time_ratio",
"speed_vs_hf", "same", "n", "ours_times", "hf_times"} for sample/beam; {"arm": "decode_step", "model", "batch",
"context", "step_ms", "floor_ms", "bound", "ratio_to_floor", "weight_bytes", "kv_bytes", "flops",
"copy_gbps", "matmul_gflops", "n", "read_gbps", "floor_read_ms"} for the step (read_gbps: N/t of a sum over the
copy's source; floor_read_ms: the floor with it instead of the copy bandwidth, a reference figure, not the
target's). Times are min over n interleaved runs (no interval: wall times on a shared machine are indicative;
compare rows of the same run).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import torch

from benchmarks.bench_models import (Pair, best_time, build_pair, hf_beam_with_rewards, left_pad, make_pair,
                                     prepare_smollm2, random_prompts)
from benchmarks.results_file import command_line, write_results
from search.beam import beam_search
from search.sampling import sample
from search.scorer import ForwardCounter, PairScorer

BETA = 0.1


# ---- sampling and beam against generate ---------------------------------------------------------------------
def hf_sample_with_rewards(pair: Pair, prompts: list[list[int]], max_new: int, beta: float,
                           seed: int) -> tuple[list[list[int]], list[list[float]]]:
    """transformers' ancestral sampling (EOS suppressed), the policy log-probs from its scores, one reference
    forward; returns the sampled ids and their per-token implicit rewards β·(log π − log π_ref), (B, N) lists."""
    ids, mask = left_pad(prompts, pair.pad)  # (B, T)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = pair.policy.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0,
                                   temperature=1.0, max_new_tokens=max_new, min_new_tokens=0,
                                   suppress_tokens=[pair.eos], eos_token_id=pair.eos, pad_token_id=pair.pad,
                                   output_logits=True, return_dict_in_generate=True)
        seqs = out.sequences  # (B, T + N)
        gen = seqs[:, ids.shape[1]:]  # (B, N)
        # the raw logits, not the processed scores: those renormalise without the suppressed EOS
        pol = torch.log_softmax(torch.stack(out.logits, 1).float(), -1).gather(-1, gen[..., None])[..., 0]
        full_mask = torch.cat([mask, torch.ones_like(gen)], dim=1)
        pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
        logits = pair.reference(input_ids=seqs, attention_mask=full_mask, position_ids=pos).logits
        ref = torch.log_softmax(logits[:, ids.shape[1] - 1:-1].float(), -1).gather(-1, gen[..., None])[..., 0]
        rewards = beta * (pol - ref)  # (B, N)
    assert torch.isfinite(rewards).all()
    return gen.tolist(), rewards.tolist()


def _arm_row(arm, pair, prompts, max_new, width, times, raw, tokens, same) -> dict:
    (t_ours, t_hf), (r_ours, r_hf) = times, raw
    return dict(arm=arm, model=pair.name, prompts=len(prompts), new_tokens=max_new, width=width, tokens=tokens,
                ours_s=round(t_ours, 4), hf_ref_s=round(t_hf, 4), time_ratio=round(t_ours / t_hf, 4),
                speed_vs_hf=round(t_hf / t_ours, 4), same=same, n=len(r_ours), ours_times=[round(t, 4) for t in r_ours],
                hf_times=[round(t, 4) for t in r_hf])


def timed(fns: list, repeats: int) -> tuple[list[float], list[list[float]], list]:
    """`best_time` that also keeps every round's time per fn: (mins, raw times, last results)."""
    raw: list[list[float]] = [[] for _ in fns]

    def wrap(i, fn):
        def run():
            t0 = time.perf_counter()
            res = fn()
            raw[i].append(time.perf_counter() - t0)
            return res
        return run

    _, results = best_time([wrap(i, fn) for i, fn in enumerate(fns)], repeats)
    return [min(r) for r in raw], raw, results


def bench_sample(pair: Pair, prompts, max_new: int, repeats: int) -> tuple[dict, list, list]:
    scorer = PairScorer(pair.policy, pair.reference, beta=BETA, pad_token_id=pair.pad)

    def ours():
        return sample(scorer, prompts, max_new_tokens=max_new, eos_token_id=pair.eos,
                      generator=torch.Generator().manual_seed(0), banned_tokens=[pair.eos])

    mins, raw, (r_ours, r_hf) = timed([ours, lambda: hf_sample_with_rewards(pair, prompts, max_new, BETA, 0)],
                                      repeats)
    tokens = sum(len(d.token_ids) for d in r_ours)
    return _arm_row("sample", pair, prompts, max_new, 1, mins, raw, tokens, None), r_ours, r_hf


def bench_beam_k(pair: Pair, prompts, k: int, max_new: int, repeats: int) -> tuple[dict, list, list]:
    scorer = PairScorer(pair.policy, pair.reference, beta=BETA, pad_token_id=pair.pad)

    def ours():
        return beam_search(scorer, prompts, num_beams=k, max_new_tokens=max_new, eos_token_id=pair.eos,
                           score="likelihood")

    mins, raw, (r_ours, r_hf) = timed([ours, lambda: hf_beam_with_rewards(pair, prompts, k, max_new, BETA)],
                                      repeats)
    same = [d.token_ids for d in r_ours] == r_hf
    tokens = sum(len(d.token_ids) for d in r_ours)
    return _arm_row("beam", pair, prompts, max_new, k, mins, raw, tokens, same), r_ours, r_hf


# ---- one decode step against its floor ----------------------------------------------------------------------
def machine_rates(repeats: int, copy_mib: int = 128, n: int = 1024) -> tuple[float, float, float]:
    """(copy bandwidth in bytes/s, 2·N/t; fp32 matmul rate in FLOP/s, 2·n³/t; read bandwidth N/t of a sum over
    the same N bytes, for reference only), min time of `repeats`."""
    src = torch.rand(copy_mib * 2**20 // 4)
    dst = torch.empty_like(src)
    a, b = torch.rand(n, n), torch.rand(n, n)
    t_copy = t_mm = t_read = float("inf")
    for _ in range(max(repeats, 3)):
        t0 = time.perf_counter()
        dst.copy_(src)
        t_copy = min(t_copy, time.perf_counter() - t0)
        t0 = time.perf_counter()
        torch.mm(a, b)
        t_mm = min(t_mm, time.perf_counter() - t0)
        t0 = time.perf_counter()
        src.sum()
        t_read = min(t_read, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / t_copy, 2 * n ** 3 / t_mm, src.numel() * 4 / t_read


def step_cost(model: torch.nn.Module, batch: int, context: int) -> dict:
    """Bytes read and FLOPs of one decode step of ONE model (see the module docstring for the formulas)."""
    cfg = model.config
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    params = {id(p): p for p in model.parameters()}  # tied weights counted once
    all_bytes = sum(p.numel() * p.element_size() for p in params.values())
    tied = emb.data_ptr() == head.data_ptr()
    weight_bytes = all_bytes - (0 if tied else emb.numel() * emb.element_size())
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    if tied and not any(m.weight is head for m in model.modules() if isinstance(m, torch.nn.Linear)):
        matmul += head.numel()
    heads, kv_heads, layers = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.num_hidden_layers
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv_bytes = layers * 2 * kv_heads * head_dim * batch * context * 4
    flops = 2 * batch * matmul + layers * 4 * heads * head_dim * batch * context
    return dict(weight_bytes=weight_bytes, kv_bytes=kv_bytes, flops=flops)


def floor_seconds(cost: dict, copy_bps: float, matmul_fps: float) -> tuple[float, str]:
    mem = (cost["weight_bytes"] + cost["kv_bytes"]) / copy_bps
    comp = cost["flops"] / matmul_fps
    return max(mem, comp), ("memory" if mem >= comp else "compute")


def bench_step(pair: Pair, batch: int, context: int, repeats: int, rates: tuple[float, float, float]) -> dict:
    """Min time of `PairScorer.step` (both models, one token per row) from a prefilled `context`-token cache."""
    scorer = PairScorer(pair.policy, pair.reference, beta=BETA, pad_token_id=pair.pad)
    g = torch.Generator().manual_seed(batch)
    vocab = pair.policy.get_output_embeddings().weight.shape[0]
    prompts = torch.randint(pair.special, vocab, (batch, context), generator=g).tolist()
    state = scorer.prefill(prompts, ForwardCounter(batch))
    tok = torch.randint(pair.special, vocab, (batch,), generator=g)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        scorer.step(state, tok, ForwardCounter(batch))  # `state` stays valid: the caches are forked
        best = min(best, time.perf_counter() - t0)
    costs = [step_cost(m, batch, context) for m in (pair.policy, pair.reference)]
    cost = {k: sum(c[k] for c in costs) for k in costs[0]}
    floor, bound = floor_seconds(cost, rates[0], rates[1])
    floor_read, _ = floor_seconds(cost, rates[2], rates[1])  # with the read-only bandwidth: a reference figure
    return dict(arm="decode_step", model=pair.name, batch=batch, context=context, step_ms=round(1e3 * best, 6),
                floor_ms=round(1e3 * floor, 6), bound=bound, ratio_to_floor=round(best / floor, 4), **cost,
                copy_gbps=round(rates[0] / 1e9, 4), matmul_gflops=round(rates[1] / 1e9, 4), n=repeats,
                read_gbps=round(rates[2] / 1e9, 4), floor_read_ms=round(1e3 * floor_read, 6))


# ---- driver ------------------------------------------------------------------------------------------------
def run_all(pair: Pair, *, prompts: int, prompt_len: int, max_new: int, beams: list[int], batches: list[int],
            context: int, repeats: int, step_repeats: int, log=None) -> list[dict]:
    ps = random_prompts(pair, prompts, prompt_len, seed=0)
    rows = []
    for name, fn in [("sample", lambda: bench_sample(pair, ps, max_new, repeats)[0])] + \
            [(f"beam-{k}", lambda k=k: bench_beam_k(pair, ps, k, max_new, repeats)[0]) for k in beams]:
        t0 = time.perf_counter()
        rows.append(fn())
        if log:
            log(f"[{time.perf_counter() - t0:.0f} s] {name}: {rows[-1]['time_ratio']}× time of generate+ref")
    rates = machine_rates(step_repeats)
    for b in batches:
        rows.append(bench_step(pair, b, context, step_repeats, rates))
        if log:
            log(f"decode step B={b}: {rows[-1]['step_ms']} ms, floor {rows[-1]['floor_ms']} ms")
    return rows


def render(rows: list[dict]) -> str:
    a = ["| arm | model | prompts × new tokens | K | ours s | generate + ref s | time ratio (ours / HF) | "
         "target ≤ 1 | same tokens | n |", "|---|---|---|---|---|---|---|---|---|---|"]
    s = ["| model | batch | context | step ms | floor ms | bound | step / floor | target ≤ 3 | copy GB/s | "
         "matmul GFLOP/s | n |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["arm"] == "decode_step":
            s.append(f"| {r['model']} | {r['batch']} | {r['context']} | {r['step_ms']} | {r['floor_ms']} | "
                     f"{r['bound']} | {r['ratio_to_floor']:.2f}× | {'met' if r['ratio_to_floor'] <= 3 else 'MISSED'}"
                     f" | {r['copy_gbps']} | {r['matmul_gflops']} | {r['n']} |")
        else:
            same = "—" if r["same"] is None else ("yes" if r["same"] else "no")
            a.append(f"| {r['arm']} | {r['model']} | {r['prompts']} × {r['new_tokens']} | {r['width']} | "
                     f"{r['ours_s']} | {r['hf_ref_s']} | {r['time_ratio']:.2f} | "
                     f"{'met' if r['time_ratio'] <= 1 else 'MISSED'} | {same} | {r['n']} |")
    return "\n".join(a) + "\n\n" + "\n".join(s)


def quick() -> list[dict]:
    """tiny-llama pair, in this process, 1 thread, small sizes: the rows (never written)."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as workdir:
        pair = build_pair("tiny-llama", workdir)
        return run_all(pair, prompts=3, prompt_len=8, max_new=5, beams=[1, 3], batches=[1, 4], context=8,
                       repeats=2, step_repeats=3)


def _ints(text: str) -> list[int]:
    vals = [int(x) for x in text.split(",")]
    if not vals or min(vals) < 1:
        raise ValueError
    return vals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_decode", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny random model, in-process; writes nothing")
    ap.add_argument("--workdir", help="keep (and reuse) the converted SmolLM2 safetensors here")
    ap.add_argument("--prompts", type=int, default=8, help="prompts in the batch (sample and beam arms)")
    ap.add_argument("--prompt_len", type=int, default=64, help="prompts have prompt_len/2..prompt_len tokens")
    ap.add_argument("--max_new_tokens", type=int, default=32)
    ap.add_argument("--beams", default="4", help="beam widths, comma-separated")
    ap.add_argument("--batches", default="1,8", help="decode-step batch sizes")
    ap.add_argument("--context", type=int, default=64, help="cached positions before the timed decode step")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs per arm (min kept)")
    ap.add_argument("--step_repeats", type=int, default=20, help="timed decode steps per batch (min kept)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args(argv)
    try:
        beams, batches = _ints(args.beams), _ints(args.batches)
        if min(args.prompts, args.prompt_len, args.max_new_tokens, args.context, args.repeats,
               args.step_repeats, args.threads) < 1:
            raise ValueError
    except ValueError:
        print("bench_decode: error: --beams/--batches take positive integers separated by commas, and every count "
              "must be >= 1", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    header = (f"decode benchmark — {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"{args.threads} thread(s)\n\ncommand: `{command_line('benchmarks.bench_decode', argv)}`")
    if args.quick:
        print(header + "\n\n" + render(quick()))
        return 0
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        pair = make_pair("smollm2", prepare_smollm2(workdir))
        pair.name = "SmolLM2-135M"
        rows = run_all(pair, prompts=args.prompts, prompt_len=args.prompt_len, max_new=args.max_new_tokens,
                       beams=beams, batches=batches, context=args.context, repeats=args.repeats,
                       step_repeats=args.step_repeats, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(header + "\n\n" + render(rows))
    write_results("bench_decode", rows, command_line("benchmarks.bench_decode", argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
