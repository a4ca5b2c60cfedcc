"""Per-token log-probs of response tokens from a causal LM, without running its LM-head product.

The model body gives final hidden states h (B, T, H); the response positions are gathered (N of them) and
`kernels.token_logprobs(h[N, H], W[V, H], targets[N])` returns log softmax(h·Wᵀ + b)[target] — fused, so the
(B, T, V) logits are never materialised. Position t predicts token t+1 (HF's shift): labels[:, 1:] are the
targets of hidden[:, :-1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import kernels


@dataclass
class SequenceLogps:
    """Log-prob view of a collated batch (rows = sequences)."""

    token_logps: torch.Tensor  # (rows, T-1) float32 in the batch's layout, 0.0 off the response
    mask: torch.Tensor  # (rows, T-1) bool, True on response targets
    logps: torch.Tensor  # (S,) per sequence, summed over response tokens (S = rows unless packed)
    lengths: torch.Tensor  # (S,) response tokens per sequence
    mean_logit: torch.Tensor  # (S,) mean over response positions of mean_v logits (detached)
    hidden: torch.Tensor | None = None  # (N, H) hidden states at response positions, when asked for
    kl: torch.Tensor | None = None  # (R,) Σ_t KL(π_ref(·|s_t) ‖ π(·|s_t)) over response positions, when asked for


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


def sequence_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor], *, kernel: str = "auto",
                   keep_hidden: bool = False, reference=None) -> SequenceLogps:
    """Per-token and per-sequence log-probs of the labelled (response) tokens of `batch`.

    batch: input_ids (R, T), attention_mask (R, T), labels (R, T) with -100 off the response (positions aligned
    with input_ids; the shift happens here) — or a packed batch (`collate_packed`: one row, position_ids and
    seq_ids, attention_mask None), whose per-sequence outputs come out in the same order as the padded layout.
    reference: optional callable mask -> (ref_hidden (N, H_ref), ref_weight, ref_bias); when given, the same
    fused pass also returns TDPO's sequential KL Σ_t KL(π_ref ‖ π) per sequence.
    """
    hidden = final_hidden(model, batch["input_ids"], batch["attention_mask"], batch.get("position_ids"))
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
    kl = None
    if reference is None:
        logp = kernels.token_logprobs(h, weight, targets[mask], bias=bias, impl=kernel)  # (N,) fp32
    else:
        ref_h, ref_w, ref_b = reference(mask)
        stats = kernels.token_stats(h, weight, targets[mask], bias=bias, ref_hidden=ref_h, ref_weight=ref_w,
                                    ref_bias=ref_b, impl=kernel)
        logp, kl = stats.logps, per_seq(stats.kl)
    token_logps = torch.zeros(mask.shape, dtype=logp.dtype, device=logp.device).masked_scatter(mask, logp)
    lengths = per_seq(torch.ones_like(owner))
    with torch.no_grad():  # mean_v(h·W_v + b_v) = h·mean_v(W) + mean(b): the mean logit without the logits
        per_pos = h.float() @ weight.float().mean(0) + (bias.float().mean() if bias is not None else 0.0)
        mean_logit = per_seq(per_pos) / lengths.clamp(min=1)
    return SequenceLogps(token_logps, mask, per_seq(logp), lengths, mean_logit, h if keep_hidden else None, kl)


class PolicyLogps(torch.nn.Module):
    """`sequence_logps` as a module, so DDP / FSDP2 wrap it and their forward hooks (gradient sync, unsharding of
    the embedding and LM head) run although the model's own LM-head product never does."""

    def __init__(self, model: torch.nn.Module, kernel: str = "auto"):
        super().__init__()
        self.model = model
        self.kernel = kernel

    def forward(self, batch: dict[str, torch.Tensor], reference=None) -> SequenceLogps:
        return sequence_logps(self.model, batch, kernel=self.kernel, reference=reference)
