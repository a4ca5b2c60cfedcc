"""Benchmark search/: beam search and MCTS on real transformers models, ratios measured in the same run.

1. Beam search, K ∈ {1, 4, 8}: our `beam_search(score="likelihood")` against transformers'
   `generate(num_beams=K, do_sample=False, length_penalty=0.0)` followed by one reference forward over its
   outputs (plus `compute_transition_scores` for the policy log-probs) — the same information: the same
   sequences (asserted) and their per-token implicit rewards. Speed = generated tokens / second (target ≥ 1.0×).
   Our implicit-reward beam search, which must step the reference at every step, is timed alongside.
2. MCTS with KV caches shared across branches and the subtree reused after each commit, against the very same
   search re-encoding every node's prefix: identical outputs (asserted), wall-clock ratio (target ≥ 3×).

    python -m benchmarks.bench_search                  # full run: tiny-llama, small-llama (random init)
    python -m benchmarks.bench_search --quick          # ≤ 60 s, tiny-llama only, asserts agreement
    python -m benchmarks.bench_search --models tiny-llama,smollm2-shape   # + a SmolLM2-135M-shaped random Llama
    python -m benchmarks.bench_search --policy P --ref R   # any two checkpoints (dirs, hub ids, .gguf files)

Models are random-init (two seeds: policy 0, reference 1); prompts are random token ids of random lengths
(left padding exercised). Each timing is the minimum over --repeats runs, ours and theirs interleaved.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date

import torch

from search.beam import beam_search
from search.mcts import mcts
from search.scorer import PairScorer
from tokendpo.modeling import build_preset, load_model

# SmolLM2-135M's shape (hidden, layers, heads, kv heads, MLP, vocab), random weights: its compute without the hub.
SMOLLM2_SHAPE = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                     intermediate_size=1536, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True)


@dataclass
class Pair:
    name: str
    policy: torch.nn.Module
    reference: torch.nn.Module
    eos: int
    pad: int
    special: int  # ids below this are not used in random prompts


def build_pair(name: str, workdir: str) -> Pair:
    if name == "smollm2-shape":
        from transformers import LlamaConfig, LlamaForCausalLM

        models = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            models.append(LlamaForCausalLM(LlamaConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                                       **SMOLLM2_SHAPE)).eval())
        return Pair(name, models[0], models[1], eos=2, pad=0, special=4)
    dirs = [build_preset(name, os.path.join(workdir, f"{name}-{seed}"), seed=seed) for seed in (0, 1)]
    pol, ref = (load_model(str(d)).eval() for d in dirs)
    return Pair(name, pol, ref, eos=pol.config.eos_token_id, pad=pol.config.pad_token_id, special=4)


def load_pair(policy: str, ref: str) -> Pair:
    from tokendpo.modeling import load_tokenizer

    tok = load_tokenizer(policy)
    return Pair(os.path.basename(policy.rstrip("/")), load_model(policy).eval(), load_model(ref).eval(),
                eos=tok.eos_token_id, pad=tok.pad_token_id, special=len(tok.all_special_ids))


def random_prompts(pair: Pair, n: int, length: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    vocab = pair.policy.get_output_embeddings().weight.shape[0]
    lens = torch.randint(max(1, length // 2), length + 1, (n,), generator=g).tolist()
    return [torch.randint(pair.special, vocab, (k,), generator=g).tolist() for k in lens]


def left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
    return ids, mask


def hf_beam_with_rewards(pair: Pair, prompts, k: int, max_new: int, beta: float) -> list[list[int]]:
    """transformers' beam search, then the policy log-probs from its scores and one reference forward."""
    ids, mask = left_pad(prompts, pair.pad)
    with torch.no_grad():
        out = pair.policy.generate(input_ids=ids, attention_mask=mask, num_beams=k, do_sample=False,
                                   length_penalty=0.0, max_new_tokens=max_new, eos_token_id=pair.eos,
                                   pad_token_id=pair.pad, output_scores=True, return_dict_in_generate=True)
        seqs = out.sequences
        pol = pair.policy.compute_transition_scores(seqs, out.scores, out.beam_indices if k > 1 else None,
                                                    normalize_logits=k == 1)  # (B, N)
        gen = seqs[:, ids.shape[1]:]  # (B, N)
        after_eos = (gen == pair.eos).long().cumsum(-1) - (gen == pair.eos).long()  # > 0 past the first EOS
        resp_mask = (after_eos == 0).long()
        full_mask = torch.cat([mask, resp_mask], dim=1)
        pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
        logits = pair.reference(input_ids=seqs, attention_mask=full_mask, position_ids=pos).logits
        ref = torch.log_softmax(logits[:, ids.shape[1] - 1:-1].float(), -1).gather(-1, gen[..., None])[..., 0]
        rewards = beta * (pol[:, : gen.shape[1]] - ref) * resp_mask  # the per-token implicit rewards
    assert torch.isfinite(rewards).all()
    return [g[: int(m.sum())].tolist() for g, m in zip(gen, resp_mask)]


def best_time(fns: list, repeats: int) -> tuple[list[float], list]:
    """Min wall-clock of each fn over `repeats` interleaved rounds, and each fn's last result."""
    times, results = [float("inf")] * len(fns), [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            results[i] = fn()
            times[i] = min(times[i], time.perf_counter() - t0)
    return times, results


def bench_beam(pair: Pair, prompts, ks, max_new: int, beta: float, repeats: int, check: bool) -> list[dict]:
    scorer = PairScorer(pair.policy, pair.reference, beta=beta, pad_token_id=pair.pad)
    rows = []
    for k in ks:
        def ours(score, k=k):
            return beam_search(scorer, prompts, num_beams=k, max_new_tokens=max_new, eos_token_id=pair.eos,
                               score=score)

        (t_ours, t_imp, t_hf), (r_ours, _, r_hf) = best_time(
            [lambda: ours("likelihood"), lambda: ours("implicit"),
             lambda k=k: hf_beam_with_rewards(pair, prompts, k, max_new, beta)], repeats)
        same = [d.token_ids for d in r_ours] == r_hf
        if check and not same:
            raise AssertionError(f"{pair.name} K={k}: our beam search and transformers' disagree")
        n_tok = sum(len(d.token_ids) for d in r_ours)
        rows.append(dict(model=pair.name, k=k, tokens=n_tok, ours=n_tok / t_ours, implicit=n_tok / t_imp,
                         hf=n_tok / t_hf, ratio=t_hf / t_ours, same=same,
                         fwd=sum(d.forward_tokens for d in r_ours)))
    return rows


def bench_mcts(pair: Pair, prompts, max_new: int, beta: float, sims: int, topk: int, rollout: int, repeats: int,
               check: bool) -> dict:
    scorer = PairScorer(pair.policy, pair.reference, beta=beta, pad_token_id=pair.pad)
    kw = dict(max_new_tokens=max_new, eos_token_id=pair.eos, simulations=sims, topk=topk, rollout_len=rollout)
    (t_c, t_r), (r_c, r_r) = best_time([lambda: mcts(scorer, prompts, reuse_cache=True, **kw),
                                        lambda: mcts(scorer, prompts, reuse_cache=False, **kw)], repeats)
    same = [d.token_ids for d in r_c] == [d.token_ids for d in r_r]
    if check and not same:
        raise AssertionError(f"{pair.name}: MCTS with cache reuse and with re-encoding disagree")
    return dict(model=pair.name, sims=sims, topk=topk, rollout=rollout, cached=t_c, reencoded=t_r,
                speedup=t_r / t_c, same=same, fwd_c=sum(d.forward_tokens for d in r_c),
                fwd_r=sum(d.forward_tokens for d in r_r))


def render(beam_rows: list[dict], mcts_rows: list[dict], header: str) -> str:
    lines = [header, "",
             ("| model | K | tokens | ours tok/s (likelihood) | HF beam + ref pass tok/s | speed ratio | same outputs "
              "| ours tok/s (implicit) | our forward tokens |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in beam_rows:
        lines.append(f"| {r['model']} | {r['k']} | {r['tokens']} | {r['ours']:.1f} | {r['hf']:.1f} | "
                     f"{r['ratio']:.2f}× | {'yes' if r['same'] else 'NO'} | {r['implicit']:.1f} | {r['fwd']} |")
    lines += ["", ("| model | simulations | top-k | rollout | cached + reuse (s) | re-encoding (s) | speed-up | "
                   "same outputs | forward tokens cached / re-encoded |"), "|---|---|---|---|---|---|---|---|---|"]
    for r in mcts_rows:
        lines.append(f"| {r['model']} | {r['sims']} | {r['topk']} | {r['rollout']} | {r['cached']:.2f} | "
                     f"{r['reencoded']:.2f} | {r['speedup']:.2f}× | {'yes' if r['same'] else 'NO'} | "
                     f"{r['fwd_c']} / {r['fwd_r']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_search", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="≤ 60 s: tiny-llama, K ∈ {1, 4}, small MCTS; asserts")
    ap.add_argument("--models", default="tiny-llama,small-llama",
                    help="comma-separated: tiny-llama, small-llama, smollm2-shape")
    ap.add_argument("--policy", help="policy checkpoint (overrides --models; needs --ref)")
    ap.add_argument("--ref", help="reference checkpoint for --policy")
    ap.add_argument("--beams", default="1,4,8")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--prompt_len", type=int, default=48, help="prompts have prompt_len/2..prompt_len tokens")
    ap.add_argument("--max_new_tokens", type=int, default=32)
    ap.add_argument("--mcts_tokens", type=int, default=12, help="max_new_tokens of the MCTS runs")
    ap.add_argument("--simulations", type=int, default=8)
    ap.add_argument("--topk", type=int, default=4)
    ap.add_argument("--rollout_len", type=int, default=4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steadier on a shared CPU)")
    ap.add_argument("--no_check", action="store_true", help="report disagreements instead of failing")
    ap.add_argument("--output", help="also write the markdown table here")
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.beams, args.prompts, args.max_new_tokens = "tiny-llama", "1,4", 3, 16
        args.mcts_tokens, args.simulations, args.repeats = 8, 4, 1
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ks = [int(k) for k in args.beams.split(",")]
    beam_rows, mcts_rows = [], []
    with tempfile.TemporaryDirectory() as workdir:
        if args.policy:
            if not args.ref:
                ap.error("--policy needs --ref")
            pairs = [lambda: load_pair(args.policy, args.ref)]
        else:
            pairs = [lambda n=n: build_pair(n, workdir) for n in args.models.split(",")]
        for make in pairs:
            pair = make()
            prompts = random_prompts(pair, args.prompts, args.prompt_len, seed=0)
            beam_rows += bench_beam(pair, prompts, ks, args.max_new_tokens, args.beta, args.repeats,
                                    check=not args.no_check)
            mcts_rows.append(bench_mcts(pair, prompts, args.mcts_tokens, args.beta, args.simulations, args.topk,
                                        args.rollout_len, args.repeats, check=not args.no_check))
            print(f"done: {pair.name}", file=sys.stderr)
    cmd = "python -m benchmarks.bench_search " + " ".join(sys.argv[1:] if argv is None else argv)
    header = (f"search benchmark — {date.today()} — {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} thread(s)\n\n"
              f"command: `{cmd.strip()}`; {args.prompts} prompts of {args.prompt_len // 2}-{args.prompt_len} "
              f"tokens; beam: max_new_tokens={args.max_new_tokens}; MCTS: max_new_tokens={args.mcts_tokens}, "
              f"min of {args.repeats} run(s)")
    table = render(beam_rows, mcts_rows, header)
    print(table)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
