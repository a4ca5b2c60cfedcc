"""tokendpo.generation: the token loop and its KV-cached driver for one causal LM.

Oracles are independent of the code under test: transformers' `generate` (greedy), a naive sampler that re-runs
the whole prefix through the model without cache or padding at every step and inverts the CDF with a plain
`nonzero` search (sampling, same uniforms), a full forward's log-softmax (returned log-probs), and a per-row
Python reimplementation of the support (top-k, top-p, banned ids).
"""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tokendpo.generation import Sampler, draw, generate, row_uniforms, token_loop

V, EOS, PAD, BOS = 53, 2, 0, 1


def tiny_llama(seed: int, dtype=torch.float32, eos_boost: float = 3.0) -> LlamaForCausalLM:
    """A random 2-layer llama (GQA: 4 query / 2 KV heads) whose EOS row is scaled so responses end early."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)  # a peaked, varied next-token distribution
        model.lm_head.weight[EOS] *= eos_boost
    return model


def random_prompts(n: int, seed: int, lo: int = 1, hi: int = 11) -> list[list[int]]:
    """BOS + random non-special ids, lengths drawn in [lo, hi]: left padding differs across rows."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return [[BOS] + torch.randint(3, V, (k - 1,), generator=g).tolist() for k in lengths]


def hf_greedy(model, prompt: list[int], max_new: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         do_sample=False, max_new_tokens=max_new, eos_token_id=EOS, pad_token_id=PAD)
    ids = out[0, len(prompt):].tolist()
    return ids[: ids.index(EOS) + 1] if EOS in ids else ids


def full_logps(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    """log p(response_t | prompt, response_<t) from one unpadded, uncached forward (float64 softmax)."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    return torch.log_softmax(logits[:-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)[len(prompt) - 1:]


def naive_sample(model, prompt: list[int], max_new: int, uniforms: torch.Tensor, temperature: float) -> list[int]:
    """No cache, no padding: the whole prefix through the model at every step; the t-th token is the first id
    whose cumulative probability exceeds uniforms[t] · total."""
    seq = list(prompt)
    for t in range(max_new):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([seq])).logits[0, -1].double()
        cdf = torch.softmax(torch.log_softmax(logits, -1) / temperature, -1).cumsum(0)
        tok = int((cdf > uniforms[t] * cdf[-1]).nonzero()[0])
        seq.append(tok)
        if tok == EOS:
            break
    return seq[len(prompt):]


@pytest.fixture(scope="module")
def model32():
    return tiny_llama(0)


@pytest.fixture(scope="module")
def model64():
    return tiny_llama(1, torch.float64)


def test_greedy_equals_transformers_generate(model32):
    """Batched, left-padded greedy == `generate(do_sample=False)` on each prompt alone, token for token."""
    prompts = random_prompts(12, seed=int(torch.randint(0, 10_000, ()).item()))
    ours = generate(model32, prompts, max_new_tokens=10, eos_token_id=EOS, pad_token_id=PAD,
                    sampler=Sampler(greedy=True))
    want = [hf_greedy(model32, p, 10) for p in prompts]
    assert ours.tokens == want
    lengths = [len(t) for t in ours.tokens]
    assert min(lengths) < 10 and max(lengths) == 10, lengths  # some rows end at EOS, some run the budget


def test_logps_equal_a_full_forward(model32):
    prompts = random_prompts(9, seed=7)
    out = generate(model32, prompts, max_new_tokens=8, eos_token_id=EOS, pad_token_id=PAD,
                   sampler=Sampler(temperature=1.3), seed=int(torch.randint(0, 10_000, ()).item()))
    for p, toks, lps in zip(prompts, out.tokens, out.logps):
        assert len(lps) == len(toks) >= 1
        assert EOS not in toks[:-1] and (toks[-1] == EOS or len(toks) == 8)
        torch.testing.assert_close(torch.tensor(lps, dtype=torch.float64), full_logps(model32, p, toks),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_equals_naive_sampler_with_the_same_draws(model64, temperature):
    """Float64 model: the cached, padded, row-dropping loop draws exactly what the naive re-encoding sampler draws
    from the same per-row uniforms."""
    seed = int(torch.randint(0, 10_000, ()).item())
    prompts = random_prompts(10, seed=seed)
    out = generate(model64, prompts, max_new_tokens=9, eos_token_id=EOS, pad_token_id=PAD,
                   sampler=Sampler(temperature=temperature), seed=seed)
    u = row_uniforms(seed, range(len(prompts)), 9)
    assert out.tokens == [naive_sample(model64, p, 9, u[i], temperature) for i, p in enumerate(prompts)]


def test_a_row_draws_the_same_in_any_batch(model64):
    """Keys tie a row to its stream: each prompt alone (key i) gets what it got inside the batch."""
    prompts = random_prompts(8, seed=3)
    kw = dict(max_new_tokens=7, eos_token_id=EOS, pad_token_id=PAD, sampler=Sampler(), seed=11)
    batch = generate(model64, prompts, **kw).tokens
    alone = [generate(model64, [p], keys=[i], **kw).tokens[0] for i, p in enumerate(prompts)]
    assert batch == alone
    other = generate(model64, prompts, **{**kw, "seed": 12}).tokens
    assert other != batch


def test_n_responses_share_one_prefill_and_keep_their_streams(model64):
    """n = 3 from one prefill per prompt == each prompt written out 3 times (row keys k·3 + j): the fanned-out
    cache continues exactly as a fresh prefill would; also == the naive sampler with those rows' uniforms."""
    seed = int(torch.randint(0, 10_000, ()).item())
    prompts = random_prompts(4, seed=seed)
    kw = dict(max_new_tokens=6, eos_token_id=EOS, pad_token_id=PAD, seed=seed)
    fanned = generate(model64, prompts, n=3, keys=[5, 6, 7, 8], **kw)
    written = generate(model64, [p for p in prompts for _ in range(3)], keys=range(15, 27), **kw)
    assert fanned.tokens == written.tokens
    torch.testing.assert_close(torch.tensor(sum(fanned.logps, [])), torch.tensor(sum(written.logps, [])),
                               atol=1e-9, rtol=0)
    u = row_uniforms(seed, range(15, 27), 6)
    assert fanned.tokens == [naive_sample(model64, p, 6, u[3 * i + j], 1.0) for i, p in enumerate(prompts)
                             for j in range(3)]
    with pytest.raises(ValueError, match="n .* must be >= 1"):
        generate(model64, prompts, n=0, **kw)


def naive_support(logits: torch.Tensor, top_k: int, top_p: float, banned: list[int]) -> set[int]:
    """One row's candidates, written out: drop banned, keep the k largest (ties at the k-th kept), then the
    most likely tokens until their mass reaches top_p."""
    ids = [i for i in range(len(logits)) if i not in banned]
    vals = {i: float(logits[i]) for i in ids}
    if top_k:
        kth = sorted(vals.values(), reverse=True)[min(top_k, len(vals)) - 1]
        vals = {i: v for i, v in vals.items() if v >= kth}
    z = torch.tensor(list(vals.values()), dtype=torch.float64).exp().sum().item()
    keep, mass = set(), 0.0
    for i in sorted(vals, key=lambda i: -vals[i]):
        if mass >= top_p:
            break
        keep.add(i)
        mass += torch.tensor(vals[i], dtype=torch.float64).exp().item() / z
    return keep


@pytest.mark.parametrize("top_k,top_p,temperature", [(5, 1.0, 1.0), (0, 0.6, 1.0), (7, 0.8, 1.5), (0, 1.0, 0.5)])
def test_sampler_respects_the_support(top_k, top_p, temperature):
    g = torch.Generator().manual_seed(1000 + top_k)
    logps = torch.log_softmax(torch.randn(40, 31, generator=g) * 2, -1)  # (R, V)
    banned = torch.randperm(31, generator=g)[:4].tolist()
    sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p, banned=tuple(banned))
    for _ in range(20):
        tok = sampler.pick(logps, uniforms=torch.rand(40, generator=g, dtype=torch.float64))
        for r, t in enumerate(tok.tolist()):
            assert t in naive_support(logps[r] / temperature, top_k, top_p, banned), (r, t)
    greedy = Sampler(greedy=True, banned=tuple(banned)).pick(logps)
    want = logps.clone()
    want[:, banned] = float("-inf")
    assert greedy.tolist() == want.argmax(-1).tolist()


def test_uniform_draws_follow_the_renormalised_distribution():
    """First-token frequencies over 4000 inverse-CDF draws within 4 standard errors of softmax(logp / T) over the
    candidates; an id of probability 0 at the end of the vocabulary is never drawn, even for u → 1."""
    g = torch.Generator().manual_seed(5)
    logps = torch.log_softmax(torch.randn(6, generator=g), -1)
    mask = torch.tensor([True, True, False, True, True, False])
    n, temperature = 4000, 1.7
    tok = draw(logps.expand(n, 6), mask.expand(n, 6), temperature=temperature,
               uniforms=torch.rand(n, generator=g, dtype=torch.float64))
    freq = torch.bincount(tok, minlength=6).double() / n
    target = torch.softmax((logps.double() / temperature).masked_fill(~mask, float("-inf")), -1)
    se = (target * (1 - target) / n).sqrt()
    assert ((freq - target).abs() <= 4 * se + 1e-12).all(), (freq, target)
    edge = draw(logps[None], mask[None], uniforms=torch.tensor([1 - 2 ** -53], dtype=torch.float64))
    assert edge.item() == 4


def test_token_loop_drops_ended_rows_before_the_next_step():
    """A fake model: the state is the list of open row ids; row i emits EOS at its (i + 1)-th token. `step` must
    never see an ended row, and every row keeps exactly its tokens."""
    seen = []

    def choose(state, alive):
        assert state == alive
        return torch.tensor([EOS if len(toks[i]) == i else 10 + i for i in alive])

    def step(state, tok):
        seen.append(list(state))
        assert len(tok) == len(state)
        return state

    toks = [[] for _ in range(5)]
    state, alive = token_loop(list(range(5)), toks, steps=3, max_new_tokens=4, eos_token_id=EOS, choose=choose,
                              step=step, select=lambda s, idx: [s[j] for j in idx.tolist()])
    assert toks[0] == [EOS] and toks[1] == [11, EOS] and toks[2] == [12, 12, EOS]
    assert toks[3] == [13, 13, 13] and toks[4] == [14, 14, 14]  # open after 3 steps
    assert seen == [[1, 2, 3, 4], [2, 3, 4], [3, 4]] and alive == [3, 4] and state == [3, 4]
    toks = [[] for _ in range(5)]
    state, alive = token_loop(list(range(5)), toks, steps=9, max_new_tokens=2, eos_token_id=EOS, choose=choose,
                              step=lambda s, t: s, select=lambda s, idx: [s[j] for j in idx.tolist()])
    assert state is None and alive == [] and [len(t) for t in toks] == [1, 2, 2, 2, 2]


def test_bad_settings_and_edges(model32):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        Sampler(temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        Sampler(top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        Sampler(top_k=-1)
    with pytest.raises(ValueError, match="no tokens"):
        generate(model32, [[BOS, 5], []], max_new_tokens=3, eos_token_id=EOS, pad_token_id=PAD)
    empty = generate(model32, [[BOS, 5]], max_new_tokens=0, eos_token_id=EOS, pad_token_id=PAD)
    assert empty.tokens == [[]] and empty.logps == [[]]
