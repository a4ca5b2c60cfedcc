"""The scorer: step a policy π and a reference π_ref together over KV caches and score every candidate token.

For a row (a prompt plus the tokens generated so far, the prefix s_t) the scorer keeps both models' caches and
their next-token distributions, log π(· | s_t) and log π_ref(· | s_t) in float32 (log_softmax of the last
position's logits). Every candidate token a then has the implicit reward

    r(s_t, a) = β · (log π(a | s_t) − log π_ref(a | s_t))          (kernels.rewards.implicit_reward)

with no further forward pass: one step of both models scores the whole vocabulary. Rows are batched: prompts
are left-padded, with an attention mask and position ids counting only real tokens, so a padded row gives the
same log-probs as the prompt alone.

A state may carry no reference (`with_reference=False`): searches whose ranking needs only π (greedy,
sampling, likelihood beam search) skip π_ref while searching and rescore the winners once at the end
(`sequence_logps`), which is exactly the information "generate, then one reference pass" yields. That pass
takes the final hidden states and `kernels.token_logprobs`, never the (R, T, V) logits, unless the model's head
is one the kernels cannot express (`fused_head`).

Forward tokens (the `forward_tokens` field of the decode output): positions run through the policy plus
positions run through the reference — a position run through both models counts twice. The prompt prefill is
counted once per model, cached positions are never counted again, padding positions that are run are counted,
and the left padding used to stack caches of different lengths (never run) is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import kernels
from kernels.rewards import implicit_reward
from search import cache as kv
from tokendpo.generation import cache_keyword, left_pad, new_cache
from tokendpo.logps import body, final_hidden, lm_head
from tokendpo.modeling import lm_head_spec


class ForwardCounter:
    """Positions run through the models, per prompt (rows are attributed to prompts by `owner`)."""

    def __init__(self, num_prompts: int):
        self.per_prompt = [0] * num_prompts

    def add(self, owner: torch.Tensor, positions_per_row: int | torch.Tensor, models: int) -> None:
        counts = torch.zeros(len(self.per_prompt), dtype=torch.long)
        per_row = torch.as_tensor(positions_per_row, dtype=torch.long).expand(owner.shape[0]).cpu()
        counts.index_add_(0, owner.cpu(), per_row * models)
        for i, c in enumerate(counts.tolist()):
            self.per_prompt[i] += c


@dataclass
class PairState:
    """R rows of prefixes: both models' caches and next-token log-probs. Treated as immutable."""

    policy_cache: object | None  # transformers Cache with (R, H, T, D) layers; None for a re-encoded state
    reference_cache: object | None  # None when the reference is skipped or the state was re-encoded
    attention_mask: torch.Tensor  # (R, T) long: 1 = real position, 0 = left padding
    policy_logps: torch.Tensor  # (R, V) float32: log π(· | prefix)
    reference_logps: torch.Tensor | None  # (R, V) float32: log π_ref(· | prefix), None without reference
    owner: torch.Tensor  # (R,) long: prompt index of each row

    @property
    def rows(self) -> int:
        return self.attention_mask.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        """(R,) real positions per row = position id of the next token."""
        return self.attention_mask.sum(-1)

    @property
    def has_reference(self) -> bool:
        return self.reference_logps is not None


@dataclass
class Decoded:
    """One decoded response: generated ids (EOS included when generated) and both models' log-probs of them."""

    token_ids: list[int]
    policy_logps: list[float]
    reference_logps: list[float]
    token_rewards: list[float]  # β·(log π − log π_ref) per generated token
    forward_tokens: int = 0

    @property
    def reward(self) -> float:
        return float(sum(self.token_rewards))


def fused_head(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, kernels.LogitHead] | None:
    """(LM-head weight, bias, head transform) when `kernels.token_logprobs` can compute the model's log-probs
    from its final hidden states; None for a head it cannot express (not a Linear, no separable body, or a
    config transform `lm_head_spec` refuses), whose log-probs then come from the model's own logits."""
    if not hasattr(model, "get_output_embeddings"):
        return None
    try:
        weight, bias = lm_head(model)
        spec = lm_head_spec(model)
        body(model)
    except ValueError:
        return None
    return weight, bias, spec


def _last_logps(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits[:, -1, :].float(), dim=-1)  # (R, V)


class PairScorer:
    """Steps `policy` and `reference` together; all methods are functions of explicit `PairState`s."""

    def __init__(self, policy: torch.nn.Module, reference: torch.nn.Module, *, beta: float, pad_token_id: int):
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.policy, self.reference = policy.eval(), reference.eval()
        self.beta = beta
        self.pad_token_id = pad_token_id
        self.device = next(policy.parameters()).device
        self._cache_kw = {id(m): cache_keyword(m) for m in (self.policy, self.reference)}

    # ---- forward passes -------------------------------------------------------------------------------
    def _forward(self, model, input_ids, attention_mask, position_ids, cache):
        kw = {self._cache_kw[id(model)]: cache} if cache is not None else {}
        with torch.no_grad():
            out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        use_cache=cache is not None, logits_to_keep=1, **kw)
        if cache is None:
            return _last_logps(out.logits), None
        returned = getattr(out, "cache", None)  # transformers 5
        if returned is None:
            returned = getattr(out, "past_key_values", None)  # transformers 4.x
        return _last_logps(out.logits), (returned if returned is not None else cache)

    def pool_step(self, pool, index: torch.Tensor, attention_mask: torch.Tensor, tokens: torch.Tensor,
                  counter: ForwardCounter, owner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One token per row through both models over a `search.kvpool.KVPool`: (log π, log π_ref), (R, V) each.

        index (R, T + 1): each row's past slots (left-padded with the pool's zero slot) and, last, the slot
        that receives the new token's K/V; attention_mask (R, T + 1) marks the real columns; tokens (R,).
        """
        past = index.shape[1] - 1
        ids = tokens.to(self.device).view(-1, 1)
        pos = (attention_mask.sum(-1, keepdim=True) - 1)  # (R, 1): real positions before the new token
        lp, _ = self._forward(self.policy, ids, attention_mask, pos, pool.cache(0, index, past))
        lr, _ = self._forward(self.reference, ids, attention_mask, pos, pool.cache(1, index, past))
        counter.add(owner, 1, 2)
        return lp, lr

    def _pad_left(self, prefixes: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, attention_mask), (R, T) each on the models' device: `tokendpo.generation.left_pad`."""
        ids, mask = left_pad(prefixes, self.pad_token_id)
        return ids.to(self.device), mask.to(self.device)

    def prefill(self, prefixes: list[list[int]], counter: ForwardCounter, *, owner: torch.Tensor | None = None,
                with_reference: bool = True, keep_cache: bool = True) -> PairState:
        """Encode left-padded prefixes (R rows) through the policy (and reference); padding is counted.

        keep_cache=False returns only the next-token log-probs (the re-encoding baseline of MCTS).
        """
        owner = torch.arange(len(prefixes)) if owner is None else owner
        ids, mask = self._pad_left(prefixes)  # (R, T)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # real tokens at 0..n-1 whatever the padding
        caches = [new_cache(self.policy), new_cache(self.reference)] if keep_cache else [None, None]
        lp, pc = self._forward(self.policy, ids, mask, pos, caches[0])
        lr, rc = self._forward(self.reference, ids, mask, pos, caches[1]) if with_reference else (None, None)
        counter.add(owner, ids.shape[1], 2 if with_reference else 1)
        return PairState(pc, rc, mask, lp, lr, owner)

    def step(self, state: PairState, tokens: torch.Tensor, counter: ForwardCounter) -> PairState:
        """Append tokens (R,) to every row and return the new state; `state` stays valid (caches are forked)."""
        if state.policy_cache is None:
            raise ValueError("step() needs a cached state; a re-encoded state has no KV cache")
        mask = torch.cat([state.attention_mask, state.attention_mask.new_ones(state.rows, 1)], dim=1)
        pos = state.lengths[:, None]  # (R, 1)
        ids = tokens.to(self.device).view(-1, 1)
        lp, pc = self._forward(self.policy, ids, mask, pos, kv.fork(state.policy_cache))
        lr, rc = None, None
        if state.has_reference:
            lr, rc = self._forward(self.reference, ids, mask, pos, kv.fork(state.reference_cache))
        counter.add(state.owner, 1, 2 if state.has_reference else 1)
        return PairState(pc, rc, mask, lp, lr, state.owner)

    # ---- row bookkeeping (no forward passes) -------------------------------------------------------------
    @staticmethod
    def select(state: PairState, index: torch.Tensor) -> PairState:
        """Rows `index` of `state` in that order (beam reordering, sample fan-out, dropping finished rows)."""
        dev = state.policy_logps.device
        index = index.to(dev)
        return PairState(
            kv.select_rows(state.policy_cache, index) if state.policy_cache is not None else None,
            kv.select_rows(state.reference_cache, index) if state.reference_cache is not None else None,
            state.attention_mask[index], state.policy_logps[index],
            state.reference_logps[index] if state.has_reference else None, state.owner[index.cpu()],
        )

    @staticmethod
    def split(state: PairState) -> list[PairState]:
        """One unpadded single-row state per row (views into the batched caches)."""
        out = []
        starts = (state.attention_mask.shape[1] - state.lengths).tolist()
        for i, s in enumerate(starts):
            out.append(PairState(
                kv.row(state.policy_cache, i, s) if state.policy_cache is not None else None,
                kv.row(state.reference_cache, i, s) if state.reference_cache is not None else None,
                state.attention_mask[i:i + 1, s:], state.policy_logps[i:i + 1],
                state.reference_logps[i:i + 1] if state.has_reference else None, state.owner[i:i + 1],
            ))
        return out

    @staticmethod
    def stack(states: list[PairState]) -> PairState:
        """Rows of several states as one batch, caches left-padded to a common length."""
        width = max(s.attention_mask.shape[1] for s in states)
        pads = [width - s.attention_mask.shape[1] for s in states]
        first = states[0]
        cat = torch.cat
        mask = cat([torch.nn.functional.pad(s.attention_mask, (p, 0)) for s, p in zip(states, pads)])
        return PairState(
            kv.stack_rows([s.policy_cache for s in states], pads) if first.policy_cache is not None else None,
            kv.stack_rows([s.reference_cache for s in states], pads) if first.reference_cache is not None else None,
            mask, cat([s.policy_logps for s in states]),
            cat([s.reference_logps for s in states]) if first.has_reference else None,
            cat([s.owner for s in states]),
        )

    # ---- scores -----------------------------------------------------------------------------------------
    def candidates(self, state: PairState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For every row and candidate token: (log π, log π_ref, implicit reward), each (R, V) float32."""
        if not state.has_reference:
            raise ValueError("this state was built without the reference; prefill with with_reference=True")
        lp, lr = state.policy_logps, state.reference_logps
        return lp, lr, implicit_reward(lp, lr, self.beta)

    def sequence_logps(self, model: torch.nn.Module, prompts: list[list[int]], responses: list[list[int]],
                       counter: ForwardCounter, owner: torch.Tensor) -> list[torch.Tensor]:
        """log model(response_t | prompt, response_<t) per response token: one left-padded forward, no cache.

        Used to rescore finished responses with the reference when the search did not need it. The response
        positions' final hidden states go through `kernels.token_logprobs` with the model's own head transform
        (`fused_head`), so the (R, T, V) logits are never built; a head the kernels cannot express falls back to
        log_softmax of the model's logits.
        """
        keep = [i for i, r in enumerate(responses) if len(r) > 0]
        out = [torch.zeros(0) for _ in responses]
        if not keep:
            return out
        seqs = [prompts[i] + responses[i] for i in keep]
        ids, mask = self._pad_left(seqs)  # (R, T)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        n_resp = torch.tensor([len(responses[i]) for i in keep], device=ids.device)  # (R,)
        targets = ids[:, 1:]  # (R, T-1): position t predicts ids[:, t + 1]
        cols = torch.arange(targets.shape[1], device=ids.device)
        is_resp = cols[None] >= targets.shape[1] - n_resp[:, None]  # (R, T-1): the last n_resp targets of a row
        head = fused_head(model)
        with torch.no_grad():
            if head is not None:
                weight, bias, spec = head
                hidden = final_hidden(model, ids, mask, pos)  # (R, T, H)
                tok = kernels.token_logprobs(hidden[:, :-1][is_resp], weight, targets[is_resp], bias=bias,
                                             **spec.kwargs())  # (N,) float32, N = Σ n_resp
            else:
                logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
                logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (R, T-1, V)
                tok = logps.gather(-1, targets[..., None]).squeeze(-1)[is_resp]  # (N,)
        for i, row in zip(keep, tok.float().cpu().split(n_resp.tolist())):  # row-major: each row's tokens in order
            out[i] = row
        counter.add(owner[keep], ids.shape[1], 1)
        return out

    def finish(self, prompts: list[list[int]], responses: list[list[int]], policy_logps: list[list[float]],
               reference_logps: list[list[float]] | None, counter: ForwardCounter) -> list[Decoded]:
        """Package responses; when the search skipped the reference, rescore them with it in one pass."""
        if reference_logps is None:
            ref = self.sequence_logps(self.reference, prompts, responses, counter, torch.arange(len(prompts)))
            reference_logps = [r.tolist() for r in ref]
        out = []
        for i, (ids, lp, lr) in enumerate(zip(responses, policy_logps, reference_logps)):
            rewards = implicit_reward(torch.tensor(lp, dtype=torch.float32), torch.tensor(lr, dtype=torch.float32),
                                      self.beta) if ids else torch.zeros(0)
            out.append(Decoded(list(ids), list(lp), list(lr), rewards.tolist(), counter.per_prompt[i]))
        return out


