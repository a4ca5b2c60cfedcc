"""Generation: one token loop for every generator in the project, and its driver for one causal LM.

**The loop** (`token_loop`) knows nothing of models. It works over an explicit state holding the next-token
log-probs of R open rows, through three callbacks:

    choose(state, alive) -> (R,) ids     the next token of every open row (`Sampler.pick` within the support)
    step(state, ids) -> state            run the chosen tokens through the model(s): the next distributions
    select(state, rows) -> state         keep rows `rows` in that order (their KV-cache rows go with them)

Each step appends the chosen ids, ends a row at EOS (kept in its ids) or at `max_new_tokens`, and drops the
ended rows *before* the next forward, so no position is ever run for a finished row. `generate` drives the loop
over one Hugging Face causal LM with its own KV cache (`LMState`: left-padded prompts, an attention mask and
position ids counting real tokens only, so a padded row gives the log-probs of the prompt alone; n responses
per prompt share one prefill, its cache rows fanned out n ways);
`search.sampling` drives the same loop over a policy/reference pair (`search.scorer.PairScorer`).

**Support** (`candidate_mask`): the tokens a row may choose are those not banned (callers ban special tokens
other than EOS), inside the top-k and inside the top-p nucleus of softmax(log p / T) over the unbanned tokens —
transformers' warpers, in that order. top_k = 0 and top_p = 1 mean no restriction.

**Randomness** (`draw`). Either one `torch.Generator` for the whole batch (`torch.multinomial`: the search
decoders' convention), or per-row uniforms u ∈ [0, 1) and the inverse CDF: the token is the first id whose
cumulative probability exceeds u·(total mass). `row_uniforms` gives row i its own stream, seeded by
(seed, key_i), so with keys = prompt indices a response depends on the seed and its prompt only — not on the
batch size or on the other rows (up to float rounding of the model's forward across batch shapes).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache


# ---- support and draws -------------------------------------------------------------------------------------
def candidate_mask(proposal_logps: torch.Tensor, *, top_k: int = 0, top_p: float = 1.0,
                   banned: Sequence[int] = (), temperature: float = 1.0) -> torch.Tensor:
    """(R, V) bool, True where a token is a candidate: not banned, and inside the top-k and the top-p nucleus of
    softmax(proposal_logps / temperature) with the banned tokens removed.

    Top-k keeps the k largest (ties at the k-th value all kept, as transformers' TopKLogitsWarper); the nucleus
    is the smallest set of most likely tokens with mass ≥ top_p (the most likely token always stays).
    """
    logits = proposal_logps.float() / temperature  # (R, V)
    mask = torch.isfinite(logits)  # a proposal may already carry −inf (e.g. a repeated n-gram)
    if len(banned):
        mask[:, torch.as_tensor(list(banned), dtype=torch.long, device=logits.device)] = False
    logits = logits.masked_fill(~mask, float("-inf"))
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (R, 1)
        mask &= logits >= kth
        logits = logits.masked_fill(~mask, float("-inf"))
    if top_p < 1.0:
        probs = torch.softmax(logits, dim=-1)  # (R, V) renormalised over the candidates so far
        sorted_p, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_p.cumsum(-1) - sorted_p  # mass of the strictly more likely tokens
        keep_sorted = mass_before < top_p  # the token that crosses top_p is kept; the first always is
        keep_sorted[:, 0] = True
        keep = torch.zeros_like(mask).scatter(-1, order, keep_sorted)
        mask &= keep
    return mask


def restrict(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """scores with −inf outside the candidate mask (same shape)."""
    return scores.masked_fill(~mask, float("-inf"))


def draw(proposal_logps: torch.Tensor, mask: torch.Tensor | None, *, temperature: float = 1.0,
         greedy: bool = False, generator: torch.Generator | None = None,
         uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """(R, V) proposal log-probs → (R,) ids: the argmax, or a sample of softmax(logp / T) renormalised over the
    candidates (`mask` None: every finite entry is one).

    With `uniforms` (R,) in [0, 1): the inverse CDF, in float64 on the log-probs' device — the first id whose
    cumulative probability exceeds u·total. Without: `torch.multinomial` on the CPU `generator`, so results do
    not depend on the device.
    """
    logits = proposal_logps.float() if mask is None else restrict(proposal_logps.float(), mask)
    if greedy:
        return logits.argmax(-1)
    if uniforms is None:
        probs = torch.softmax(logits.cpu() / temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(proposal_logps.device)
    probs = torch.softmax(logits.double() / temperature, dim=-1)  # (R, V), 0 outside the support
    cdf = probs.cumsum(-1)  # (R, V)
    target = uniforms.to(cdf)[:, None] * cdf[:, -1:]  # (R, 1), strictly below the total mass
    tok = torch.searchsorted(cdf, target, right=True).squeeze(-1)  # first id with cdf > target: p(id) > 0
    # guard against rounding past the end: the last id with positive probability
    last = probs.shape[-1] - 1 - (probs > 0).flip(-1).int().argmax(-1)
    return torch.minimum(tok, last)


def row_uniforms(seed: int, keys: Sequence[int], steps: int) -> torch.Tensor:
    """(R, steps) float64 uniforms in [0, 1): row i's stream comes from a generator seeded by (seed, keys[i])."""
    out = torch.empty(len(keys), steps, dtype=torch.float64)
    for i, k in enumerate(keys):
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(k)) % (2 ** 63))
        out[i] = torch.rand(steps, dtype=torch.float64, generator=g)
    return out


@dataclass(frozen=True)
class Sampler:
    """How a row chooses its next token: greedy, or a sample at `temperature`, within the support (module doc)."""

    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    banned: tuple[int, ...] = ()

    def __post_init__(self):
        if not self.greedy and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 for sampling (use greedy=True), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = no restriction), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):  # also rejects NaN
            raise ValueError(f"top_p must be in (0, 1] (1 = no restriction), got {self.top_p}")

    @property
    def restricted(self) -> bool:
        return bool(self.top_k or self.top_p < 1.0 or self.banned)

    def pick(self, logps: torch.Tensor, *, generator: torch.Generator | None = None,
             uniforms: torch.Tensor | None = None) -> torch.Tensor:
        """(R, V) log-probs → (R,) chosen ids (temperature 1 when greedy: the argmax ignores it)."""
        t = 1.0 if self.greedy else self.temperature
        mask = (candidate_mask(logps, top_k=self.top_k, top_p=self.top_p, banned=self.banned, temperature=t)
                if self.restricted else None)
        return draw(logps, mask, temperature=t, greedy=self.greedy, generator=generator, uniforms=uniforms)


# ---- the loop ------------------------------------------------------------------------------------------------
def token_loop(state, tokens: list[list[int]], *, steps: int, max_new_tokens: int, eos_token_id: int,
               choose: Callable, step: Callable, select: Callable) -> tuple[object | None, list[int]]:
    """Add up to `steps` tokens to each row of `state`; row i continues `tokens[i]` (appended to in place).

    `choose(state, alive)` gets the indices into `tokens` of the state's rows (in row order) and returns their
    next ids (R,). A row ends at EOS or when it holds `max_new_tokens` tokens; ended rows leave the state
    (`select`) before the next `step`. Returns the state of the rows still open after `steps` tokens (their
    next-token distributions computed) and their indices into `tokens`; (None, []) when every row ended.
    """
    alive = list(range(len(tokens)))
    for _ in range(steps):
        tok = choose(state, alive)  # (R,)
        keep = []
        for r, (i, t) in enumerate(zip(alive, tok.tolist())):
            tokens[i].append(t)
            if t != eos_token_id and len(tokens[i]) < max_new_tokens:
                keep.append(r)
        if not keep:
            return None, []
        if len(keep) < len(alive):  # drop ended rows before running the next position
            idx = torch.tensor(keep)
            state, tok, alive = select(state, idx), tok[idx.to(tok.device)], [alive[r] for r in keep]
        state = step(state, tok)
    return state, alive


# ---- one causal LM with its own KV cache --------------------------------------------------------------------
def cache_keyword(model: torch.nn.Module) -> str:
    """The forward's cache argument: `cache` in transformers 5, `past_key_values` in 4.x."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def new_cache(model: torch.nn.Module) -> DynamicCache:
    """An empty DynamicCache laid out for `model` (config-driven when the model has a transformers config)."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        return DynamicCache(config=config)
    return DynamicCache()


@dataclass
class LMState:
    """R rows of one model: its KV cache, the attention mask and the next-token log-probs. Mutated by steps."""

    cache: object  # transformers DynamicCache, (R, H, T, D) per layer
    attention_mask: torch.Tensor  # (R, T) long: 1 = real position, 0 = left padding
    logps: torch.Tensor  # (R, V) float32: log p(· | prefix)


def _lm_forward(model, ids, mask, pos, cache):
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                **{cache_keyword(model): cache})
    returned = getattr(out, "cache", None)
    if returned is None:
        returned = getattr(out, "past_key_values", None)
    return torch.log_softmax(out.logits[:, -1].float(), dim=-1), (cache if returned is None else returned)


def left_pad(prompts: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask), each (R, T) long: the prompts right-aligned, pad / 0 before them."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("a prompt has no tokens; give an empty prompt a BOS/EOS token first")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids, mask


def lm_prefill(model, prompts: list[list[int]], pad_token_id: int) -> LMState:
    """Left-pad the prompts (R rows) and run them through `model` once: the state before the first token."""
    device = next(model.parameters()).device
    ids, mask = (t.to(device) for t in left_pad(prompts, pad_token_id))  # (R, T)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # real tokens at 0..n-1 whatever the padding
    logps, cache = _lm_forward(model, ids, mask, pos, new_cache(model))
    return LMState(cache, mask, logps)


def lm_step(model, state: LMState, tokens: torch.Tensor) -> LMState:
    """Append tokens (R,) to every row: one position through the model over the cache."""
    pos = state.attention_mask.sum(-1, keepdim=True)  # (R, 1) = real positions so far
    mask = torch.cat([state.attention_mask, state.attention_mask.new_ones(len(tokens), 1)], dim=1)
    logps, cache = _lm_forward(model, tokens.view(-1, 1).to(mask.device), mask, pos, state.cache)
    return LMState(cache, mask, logps)


def lm_select(state: LMState, rows: torch.Tensor) -> LMState:
    """Rows `rows` of the state, in that order (the cache is reindexed in place: the old state is spent)."""
    rows = rows.to(state.logps.device)
    state.cache.batch_select_indices(rows)
    return LMState(state.cache, state.attention_mask[rows], state.logps[rows])


@dataclass
class Generation:
    """Generated ids per prompt (EOS included when generated) and the model's log-probs of them (temperature 1)."""

    tokens: list[list[int]]
    logps: list[list[float]]


@torch.no_grad()
def generate(model, prompts: list[list[int]], *, max_new_tokens: int, eos_token_id: int, pad_token_id: int,
             sampler: Sampler = Sampler(), seed: int = 0, keys: Sequence[int] | None = None,
             n: int = 1) -> Generation:
    """`n` responses per prompt from `model` (rows grouped by prompt: prompt i's j-th response is row i·n + j):
    `token_loop` over the model's own KV cache. Each prompt is prefilled once and its cache fanned out n ways.

    Sampling draws the t-th token of row (i, j) from `row_uniforms(seed, [keys[i]·n + j])[t]` (keys default
    0..P−1), so a prompt with the same key gets the same responses in any batch. Greedy ignores the seed. The
    returned log-probs are log p(a_t | prompt, a_<t) from the unrestricted distribution at temperature 1.
    """
    if n < 1:
        raise ValueError(f"n (responses per prompt) must be >= 1, got {n}")
    rows = len(prompts) * n
    tokens: list[list[int]] = [[] for _ in range(rows)]
    logps: list[list[float]] = [[] for _ in range(rows)]
    if max_new_tokens <= 0 or rows == 0:
        return Generation(tokens, logps)
    keys = range(len(prompts)) if keys is None else keys
    row_keys = [int(k) * n + j for k in keys for j in range(n)]
    uniforms = None if sampler.greedy else row_uniforms(seed, row_keys, max_new_tokens)  # (R, max_new_tokens)

    def choose(state: LMState, alive: list[int]) -> torch.Tensor:
        u = None
        if uniforms is not None:
            u = uniforms[alive, len(tokens[alive[0]])]  # every open row holds the same number of tokens
        tok = sampler.pick(state.logps, uniforms=u)  # (R,)
        for i, lp in zip(alive, state.logps.gather(1, tok[:, None]).squeeze(1).tolist()):
            logps[i].append(lp)
        return tok

    model.eval()
    state = lm_prefill(model, prompts, pad_token_id)  # (P, ·)
    if n > 1:
        state = lm_select(state, torch.arange(len(prompts)).repeat_interleave(n))  # (P·n, ·): one prefill each
    token_loop(state, tokens, steps=max_new_tokens, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
               choose=choose, step=lambda s, t: lm_step(model, s, t), select=lm_select)
    return Generation(tokens, logps)
