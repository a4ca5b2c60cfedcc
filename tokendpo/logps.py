"""Per-token log-probs of response tokens from a causal LM, without running its LM-head product.

The model body gives final hidden states h (B, T, H); the response positions are gathered (N of them) and
`kernels.token_logprobs(h[N, H], W[V, H], targets[N], **head)` returns log softmax(y)[target] — fused, so the
(B, T, V) logits are never materialised. y is the model's own final logits: h·Wᵀ + b through the transform its
config asks for (Gemma-2's soft-cap, Cohere's / Granite's scales; `tokendpo.modeling.lm_head_spec`, which refuses,
by config field, a head the kernels cannot express). Position t predicts token t+1 (HF's shift):
labels[:, 1:] are the targets of hidden[:, :-1].
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

import kernels
from tokendpo.modeling import lm_head_spec


@dataclass
class SequenceLogps:
    """Log-prob view of a collated batch (rows = sequences)."""

    token_logps: torch.Tensor  # (rows, T-1) float32 in the batch's layout, 0.0 off the response
    mask: torch.Tensor  # (rows, T-1) bool, True on response targets
    logps: torch.Tensor  # (S,) per sequence, summed over response tokens (S = rows unless packed)
    lengths: torch.Tensor  # (S,) response tokens per sequence
    mean_logit: torch.Tensor  # (S,) mean over response positions of mean_v y_v, the final logits (detached)
    hidden: torch.Tensor | None = None  # (N, H) hidden states at response positions, when asked for
    kl: torch.Tensor | None = None  # (R,) Σ_t KL(π_ref(·|s_t) ‖ π(·|s_t)) over response positions, when asked for
    log_sum_sq: torch.Tensor | None = None  # (S,) Σ_t log Σ_v π_v(s_t)² over response positions (WPO), when asked for


def lm_head(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"{type(model).__name__}: output embeddings are {type(head).__name__}, not a Linear "
                         f"LM head; the fused log-prob kernels need h·Wᵀ + b")
    return head.weight, head.bias


def body(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer without its LM head (Llama-style `model.model`; PEFT-wrapped models unwrapped)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", None) or getattr(base, "transformer", None)
    if inner is None:
        raise ValueError(f"{type(base).__name__}: cannot find the model body (.model / .transformer) to take "
                         f"final hidden states from")
    return inner


def final_hidden(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, H) final hidden states (after the final norm), the LM head not run."""
    out = body(model)(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=False)  # attention_mask None + restarting position_ids = packed sequences
    return out.last_hidden_state


def shared_prompt_hidden(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """final_hidden of a `collate_pairs(..., share_prompt=True)` batch, running each prompt ONCE.

    Rows i and B+i hold the same prompt (B = len(prompt_lengths)) followed by the chosen / rejected response.
    The B prompts (right-padded to P) go through the body with a KV cache; the cache is repeated for the 2B rows
    and the responses (right-padded to R, position ids continuing from each prompt's true length, the prompt
    padding masked out) attend to it. Prompt positions are thus computed for B rows instead of 2B — the saving
    is the prompt's share of the tokens — and gradients flow through the cache into the prompt pass.
    Returns (2B, T, H) in the batch's own layout, so callers cannot tell it from `final_hidden` (it differs only
    by fp32 rounding).
    """
    ids, am, n_p = batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"]  # (2B, T), (2B, T), (B,)
    rows, t = ids.shape
    b, dev = n_p.shape[0], ids.device
    p = int(n_p.max())
    prompt_mask = torch.arange(p, device=dev)[None] < n_p[:, None]  # (B, P)
    prompt_ids = ids[:b, :p].masked_fill(~prompt_mask, 0)  # pads are masked out; any valid id will do
    inner = body(model)
    out = inner(input_ids=prompt_ids, attention_mask=prompt_mask.long(), use_cache=True)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)  # transformers 5.x / 4.x name
    if cache is None:
        raise ValueError("--share_prompt needs the model's KV cache, which this model did not return (gradient "
                         "checkpointing turns it off)")
    cache.reorder_cache(torch.arange(rows, device=dev) % b)  # (B, ...) -> (2B, ...): rows i and B+i share prompt i
    row_np = n_p.repeat(2)  # (2B,)
    resp_len = am.sum(1) - row_np  # (2B,)
    r = int(resp_len.max())
    cols = row_np[:, None] + torch.arange(r, device=dev)[None]  # (2B, R) columns of the responses in the layout
    resp_mask = cols < (row_np + resp_len)[:, None]
    resp_ids = ids.gather(1, cols.clamp(max=t - 1)).masked_fill(~resp_mask, 0)
    full_mask = torch.cat([prompt_mask.repeat(2, 1), resp_mask], 1).long()  # (2B, P + R): cache + new tokens
    cache_kw = "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"
    h_resp = inner(input_ids=resp_ids, attention_mask=full_mask, position_ids=cols, use_cache=True,
                   **{cache_kw: cache}).last_hidden_state  # (2B, R, H)
    h_prompt = out.last_hidden_state.repeat(2, 1, 1)  # (2B, P, H)
    hdim = h_resp.shape[-1]
    # back into the (2B, T) layout: prompt columns from the prompt pass, response columns from the second pass
    # (invalid response slots go to a scratch column T that is dropped)
    index = torch.where(resp_mask, cols, t)[..., None].expand(rows, r, hdim)
    resp_part = h_resp.new_zeros(rows, t + 1, hdim).scatter(1, index, h_resp)[:, :t]
    prompt_part = torch.nn.functional.pad(h_prompt, (0, 0, 0, t - p))
    in_prompt = torch.arange(t, device=dev)[None] < row_np[:, None]  # (2B, T)
    return torch.where(in_prompt[..., None], prompt_part, resp_part)


def batch_hidden(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(rows, T, H) final hidden states of a collated batch: the shared-prompt pass when the batch asks for it."""
    if batch.get("prompt_lengths") is not None:
        return shared_prompt_hidden(model, batch)
    return final_hidden(model, batch["input_ids"], batch["attention_mask"], batch.get("position_ids"))


def sequence_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor], *, kernel: str = "auto",
                   keep_hidden: bool = False, reference=None, log_sum_sq: bool = False) -> SequenceLogps:
    """Per-token and per-sequence log-probs of the labelled (response) tokens of `batch`.

    batch: input_ids (R, T), attention_mask (R, T), labels (R, T) with -100 off the response (positions aligned
    with input_ids; the shift happens here) — or a packed batch (`collate_packed`: one row, position_ids and
    seq_ids, attention_mask None), whose per-sequence outputs come out in the same order as the padded layout.
    reference: optional callable mask -> (ref_hidden (N, H_ref), ref_weight, ref_bias[, ref_head]); when given,
    the same fused pass also returns TDPO's sequential KL Σ_t KL(π_ref ‖ π) per sequence. ref_head is the
    reference's `kernels.LogitHead`; without it the reference is taken to share the policy's head transform (a
    reference is a copy or an earlier checkpoint of the same architecture).
    The model's final-logit transform (`lm_head_spec`) applies to every log-prob and to the mean logit.
    log_sum_sq: also return Σ_t log Σ_v π_v² per sequence (WPO's weight), from the same fused pass, no gradient.
    """
    hidden = batch_hidden(model, batch)
    targets = batch["labels"][:, 1:]  # (R, T-1)
    mask = targets != -100
    h = hidden[:, :-1][mask]  # (N, H): only response positions reach the LM head
    if "seq_ids" in batch:  # packed: the sequence a target belongs to
        owner = batch["seq_ids"][:, 1:][mask]
        n_seq = int(batch["seq_ids"].max()) + 1
    else:
        owner = torch.arange(mask.shape[0], device=mask.device).unsqueeze(1).expand_as(mask)[mask]
        n_seq = mask.shape[0]
    per_seq = lambda x: torch.zeros(n_seq, dtype=x.dtype, device=x.device).index_add(0, owner, x)  # noqa: E731
    weight, bias = lm_head(model)
    head = lm_head_spec(model)
    plain = head.mode == kernels.head.IDENTITY  # y = h·Wᵀ + b: the mean logit has a closed form below
    ref_kw = {}
    if reference is not None:
        ref_h, ref_w, ref_b, *ref_head = reference(mask)
        ref_kw = dict(ref_hidden=ref_h, ref_weight=ref_w, ref_bias=ref_b, ref_head=ref_head[0] if ref_head else head)
    stats = kernels.token_stats(h, weight, targets[mask], bias=bias, impl=kernel, mean_logit=not plain,
                                log_sum_sq=log_sum_sq, **head.kwargs(), **ref_kw)
    logp = stats.logps  # (N,) fp32
    kl = per_seq(stats.kl) if reference is not None else None
    token_logps = torch.zeros(mask.shape, dtype=logp.dtype, device=logp.device).masked_scatter(mask, logp)
    lengths = per_seq(torch.ones_like(owner))
    with torch.no_grad():  # plain head: mean_v(h·W_v + b_v) = h·mean_v(W) + mean(b), without the logits
        per_pos = (h.float() @ weight.float().mean(0) + (bias.float().mean() if bias is not None else 0.0)
                   if plain else stats.mean_logit)
        mean_logit = per_seq(per_pos) / lengths.clamp(min=1)
    return SequenceLogps(token_logps, mask, per_seq(logp), lengths, mean_logit, h if keep_hidden else None, kl,
                         per_seq(stats.log_sum_sq) if log_sum_sq else None)


class PolicyLogps(torch.nn.Module):
    """`sequence_logps` as a module, so DDP / FSDP2 wrap it and their forward hooks (gradient sync, unsharding of
    the embedding and LM head) run although the model's own LM-head product never does."""

    def __init__(self, model: torch.nn.Module, kernel: str = "auto"):
        super().__init__()
        self.model = model
        self.kernel = kernel

    def forward(self, batch: dict[str, torch.Tensor], reference=None, log_sum_sq: bool = False) -> SequenceLogps:
        return sequence_logps(self.model, batch, kernel=self.kernel, reference=reference, log_sum_sq=log_sum_sq)
