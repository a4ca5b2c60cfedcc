"""Many-response sampling: our KV-cached token loop (`tokendpo.tasks.sampling.sample` → `tokendpo.generation`)
against transformers' `model.generate`, on the workloads where the project samples many responses.

Each workload samples K responses per prompt at temperature 1 (no top-k / top-p, EOS allowed), text in and
text out, in batches of about `batch` responses. Arms:

    ours           `tokendpo.tasks.sampling.sample(n=K)`: each prompt prefilled once and its cache fanned out
                   K ways; `tokendpo.generation.generate` drops finished rows before the next forward.
    ours_unshared  the same sampler over the prompt list written out K times (a prefill per response): the loop's
                   own gain, without the shared prefill.
    hf_generate    the same text wrapper around `model.generate(do_sample=True, top_k=0)` over left-padded batches
                   of the written-out list (the project's sampler before `tokendpo.generation`).
    search         `search.sampling.sample` with the model as policy and reference over the written-out list: the
                   path of `search.decode.run --sample`, how `benchmarks/real_sentiment` samples its pairs.

Workloads:

    sentiment      the sentiment task's pair generation: its SFT model (`--sft`, default the default run's
                   `outputs/default/sft`), the recipe's `pair_prompts` train prompts × K at its `max_new_tokens`,
                   batch 256. Without a trained SFT model: a random model of the task's shape (the row says so).
    smollm2        the real SmolLM2-135M-Instruct (`python -m tokendpo.fetch smollm2`, converted once to
                   safetensors in --workdir) on chat-templated first human turns of the HH-RLHF test file, K = 4,
                   40 new tokens, batch 16: `benchmarks/real_sentiment`'s pair sampling. `--skip_smollm2` skips it.

The arms draw different tokens from the same distribution, so responses end at different lengths; each row
reports the tokens each arm generated. Timing: `--runs` interleaved rounds (every arm once per round, one seed
per round), each arm's median; speedup = hf_generate_s / ours_s (> 1: ours is faster), with the range of the
per-round paired ratios. One torch thread (`--threads`).

    python -m benchmarks.bench_sampler               # writes benchmarks/results/bench_sampler.json
    python -m benchmarks.bench_sampler --quick       # tiny random model, a few prompts, writes nothing

Rows: {"model", "batch", "prompts", "samples_per_prompt", "new_tokens", "ours_s", "hf_generate_s", "speedup",
"speedup_range", "runs", "ours_unshared_s", "search_s", "ours_tokens", "hf_tokens", "ours_times", "hf_times",
"threads"}.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from benchmarks.results_file import command_line, write_results
from search import sampling as search_sampling
from search.scorer import PairScorer
from tokendpo.data.encode import encode_prompts
from tokendpo.modeling import load_model, load_tokenizer
from tokendpo.tasks import get_task
from tokendpo.tasks.pipeline import PipelineSettings
from tokendpo.tasks.sampling import sample

REPO = Path(__file__).resolve().parents[1]
HH_TEST = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"


@torch.no_grad()
def hf_sample(model, tokenizer, prompts: list[str], *, max_new_tokens: int, seed: int, batch_size: int,
              chat_template: bool = False) -> tuple[list[str], list[list[int]]]:
    """The baseline arm: `model.generate` at temperature 1 over left-padded batches, cut after EOS, decoded."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    cfg = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=None, max_new_tokens=max_new_tokens,
                           eos_token_id=eos, pad_token_id=pad)
    texts, ids_out = [], []
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        enc = encode_prompts(tokenizer, prompts[start:start + batch_size], chat_template=chat_template,
                             nonempty=True)
        width = max(map(len, enc))
        input_ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc])  # (B, P) left-padded
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
        torch.manual_seed(seed * 100_003 + b)
        out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=cfg)
        for row in out[:, width:].tolist():  # (B, ≤ max_new_tokens), padded after EOS
            gen = row[: row.index(eos) + 1] if eos in row else row
            ids_out.append(gen)
            texts.append(tokenizer.decode(gen, skip_special_tokens=True).strip())
    return texts, ids_out


def ours_sample(model, tokenizer, prompts, *, max_new_tokens, seed, batch_size, chat_template=False, n=1):
    return sample(model, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size,
                  chat_template=chat_template, progress=False, n=n)


def search_sample(model, tokenizer, prompts, *, max_new_tokens, seed, batch_size, chat_template=False):
    """The third arm: `search.sampling.sample` with the model as both policy and reference, the path
    `search.decode.run --sample` takes (and `benchmarks/real_sentiment` samples its pairs through)."""
    scorer = PairScorer(model, model, beta=0.1, pad_token_id=tokenizer.pad_token_id)
    ids_out = []
    for start in range(0, len(prompts), batch_size):
        enc = encode_prompts(tokenizer, prompts[start:start + batch_size], chat_template=chat_template,
                             nonempty=True)
        out = search_sampling.sample(scorer, enc, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                     generator=torch.Generator().manual_seed(seed * 1_000_003 + start))
        ids_out += [d.token_ids for d in out]
    return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in ids_out], ids_out


def compare(name: str, model, tokenizer, prompts: list[str], *, k: int, new_tokens: int, batch: int, runs: int,
            threads: int, chat_template: bool = False) -> dict:
    """`runs` interleaved rounds of the four arms (one seed per round); medians and paired ratios."""
    written = [p for p in prompts for _ in range(k)]  # each prompt K times in a row, as the callers wrote it
    kw = dict(max_new_tokens=new_tokens, batch_size=batch, chat_template=chat_template)
    arms = {"ours": lambda seed: ours_sample(model, tokenizer, prompts, seed=seed, n=k, **kw),
            "ours_unshared": lambda seed: ours_sample(model, tokenizer, written, seed=seed, **kw),
            "hf": lambda seed: hf_sample(model, tokenizer, written, seed=seed, **kw),
            "search": lambda seed: search_sample(model, tokenizer, written, seed=seed, **kw)}
    times = {arm: [] for arm in arms}
    tokens = {arm: [] for arm in arms}
    for r in range(runs):
        for arm, fn in arms.items():
            t0 = time.perf_counter()
            _, ids = fn(r)
            times[arm].append(time.perf_counter() - t0)
            tokens[arm].append(sum(map(len, ids)))
    med = {arm: statistics.median(t) for arm, t in times.items()}
    paired = [h / o for o, h in zip(times["ours"], times["hf"])]
    return dict(model=name, batch=batch, prompts=len(prompts), samples_per_prompt=k, new_tokens=new_tokens,
                ours_s=round(med["ours"], 3), hf_generate_s=round(med["hf"], 3),
                speedup=round(med["hf"] / med["ours"], 3),
                speedup_range=[round(min(paired), 3), round(max(paired), 3)], runs=runs,
                ours_unshared_s=round(med["ours_unshared"], 3), search_s=round(med["search"], 3),
                ours_tokens=round(statistics.mean(tokens["ours"]), 1), hf_tokens=round(statistics.mean(tokens["hf"]), 1),
                ours_times=[round(t, 6) for t in times["ours"]], hf_times=[round(t, 6) for t in times["hf"]],
                threads=threads)


def sentiment_workload(sft: str | None, quick: bool):
    """(name, model, tokenizer, prompts, K, new_tokens): the sentiment recipe's pair generation."""
    task = get_task("sentiment")
    s = PipelineSettings.resolve(task, quick=quick)
    n = 8 if quick else s.pair_prompts
    prompts = task.prompts("train", n, seed=s.seed)
    if sft and (Path(sft) / "config.json").exists():
        return "sentiment-sft", load_model(sft).eval(), load_tokenizer(sft), prompts, s.k, s.max_new_tokens
    tok = task.tokenizer(task.corpus(2000 if not quick else 200, seed=0))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(task.model_config(tok)).eval()
    return "sentiment-shape (random)", model, tok, prompts, s.k, s.max_new_tokens


def smollm2_workload(workdir: str, n: int):
    from benchmarks.bench_models import prepare_smollm2
    from benchmarks.real_sentiment import first_human_turns

    path = prepare_smollm2(workdir)["reference"]
    if not HH_TEST.exists():
        raise SystemExit(f"error: {HH_TEST} not found (the chat prompts of the smollm2 row); use --skip_smollm2")
    turns = first_human_turns(HH_TEST, 200)[:n]
    return "smollm2-135m", load_model(path).eval(), load_tokenizer(path), turns


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny random model, few prompts; writes nothing")
    ap.add_argument("--sft", default=str(REPO / "outputs" / "default" / "sft"),
                    help="the sentiment SFT model dir (read only); missing: a random model of the task's shape")
    ap.add_argument("--batch", type=int, default=256, help="sentiment batch (the pipeline's sampling batch)")
    ap.add_argument("--runs", type=int, default=3, help="interleaved rounds per arm (median reported)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip_smollm2", action="store_true")
    ap.add_argument("--workdir", default="/tmp/bench_sampler_smollm2", help="SmolLM2 converted once here")
    ap.add_argument("--smollm2_prompts", type=int, default=8)
    ap.add_argument("--smollm2_k", type=int, default=4, help="real_sentiment's --samples default")
    ap.add_argument("--smollm2_batch", type=int, default=16, help="real_sentiment's --decode_batch default")
    ap.add_argument("--smollm2_new_tokens", type=int, default=40, help="real_sentiment's default")
    a = ap.parse_args(argv)
    for flag in ("batch", "runs", "threads", "smollm2_prompts", "smollm2_k", "smollm2_batch",
                 "smollm2_new_tokens"):
        if getattr(a, flag) < 1:
            print(f"error: --{flag} must be >= 1, got {getattr(a, flag)}", file=sys.stderr)
            return 2
    torch.set_num_threads(a.threads)
    name, model, tok, prompts, k, new_tokens = sentiment_workload(None if a.quick else a.sft, a.quick)
    rows = [compare(name, model, tok, prompts, k=2 if a.quick else k, new_tokens=new_tokens, batch=8 if a.quick else a.batch,
                    runs=2 if a.quick else a.runs, threads=a.threads)]
    if not (a.quick or a.skip_smollm2):
        name, model, tok, turns = smollm2_workload(a.workdir, a.smollm2_prompts)
        rows.append(compare(name, model, tok, turns, k=a.smollm2_k, new_tokens=a.smollm2_new_tokens,
                            batch=a.smollm2_batch, runs=a.runs, threads=a.threads, chat_template=True))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{a.threads}")
    print("| model | batch | prompts × K | new tokens | ours s | generate s | speedup (range) | ours unshared s "
          "| search.sampling s | tokens ours / hf |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['prompts']} × {r['samples_per_prompt']} | {r['new_tokens']} | "
              f"{r['ours_s']:.3f} | {r['hf_generate_s']:.3f} | {r['speedup']:.2f}× ({r['speedup_range'][0]:.2f}–"
              f"{r['speedup_range'][1]:.2f}) | {r['ours_unshared_s']:.3f} | {r['search_s']:.3f} | "
              f"{r['ours_tokens']:.0f} / {r['hf_tokens']:.0f} |")
    cmd = command_line("benchmarks.bench_sampler", argv)
    print(cmd)
    if not a.quick:
        print("wrote", write_results("bench_sampler", rows, cmd))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
