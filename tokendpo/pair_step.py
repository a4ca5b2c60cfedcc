"""One micro-batch of preference pairs through policy and reference: the loss and TRL's metrics.

`pair_forward` runs chosen and rejected in one concatenated forward per model and hands summed (or per-token)
log-probs to the loss registry; `evaluate` averages it over the eval pairs; `sync_reference` is TR-DPO's
reference update.
"""

from __future__ import annotations

import torch

from tokendpo import distributed
from tokendpo.config import Config
from tokendpo.data import collate_packed, collate_pairs
from tokendpo.losses import combine, loss_needs, preference_loss_terms, sft_loss
from tokendpo.reference import Reference, response_token_matrix


def pair_forward(policy: torch.nn.Module, ref: Reference, pairs, indices, tokenizer, cfg: Config,
                 device) -> dict[str, torch.Tensor]:
    """Loss and metrics of one micro-batch: chosen and rejected in one concatenated forward per model.

    policy: a PolicyLogps module (possibly DDP/FSDP-wrapped) returning SequenceLogps for a batch. What the loss
    needs besides the summed log-probs — the reference, TDPO's sequential KLs, LD-DPO's per-token log-probs,
    WPO's log Σ_v π² (from the fused kernel) — comes from the loss registry (`loss_needs`), never from loss
    names. A mixture (`--loss_type a,b`) also returns each component's mean as `loss/<name>`."""
    collated = collate_packed(pairs) if cfg.data.packing else \
        collate_pairs(pairs, tokenizer.pad_token_id, share_prompt=cfg.data.share_prompt)
    batch = {k: v.to(device) if v is not None else None for k, v in collated.items()}
    b = len(pairs)
    lc = cfg.loss
    needs = loss_needs(lc.loss_type, ld_alpha=lc.ld_alpha, use_weighting=lc.use_weighting)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.model.bf16 and device.type == "cuda")
    with autocast:
        # TDPO: the reference's hidden states and LM head enter the same fused pass for the sequential KL
        ref_side = (lambda _mask: (ref.response_hidden(batch, indices), *ref.lm_head())) if needs.kl else None
        pol = policy(batch, reference=ref_side, log_sum_sq=needs.log_sum_sq)  # log Σ_v π²: WPO, from the kernel
        # LD-DPO weighs tokens by position: per-token reference log-probs (their row sums are the usual sums)
        ref_tokens = ref.token_logps(batch, indices) if needs.reference and needs.token_logps else None  # (2B, L)
        ref_logps = (ref_tokens.sum(1) if ref_tokens is not None
                     else ref.sequence_logps(batch, indices) if needs.reference else None)  # (2B,)
    lengths = pol.lengths.to(pol.logps.dtype)
    halves = lambda t: (None, None) if t is None else (t[:b], t[b:])  # noqa: E731 - rows: B chosen, B rejected
    extra = {}
    if needs.token_logps:
        pol_tokens = response_token_matrix(pol.token_logps, pol.mask, batch.get("seq_ids"))  # (2B, L)
        extra.update(zip(("policy_chosen_token_logps", "policy_rejected_token_logps"), halves(pol_tokens)))
        extra.update(zip(("reference_chosen_token_logps", "reference_rejected_token_logps"), halves(ref_tokens)))
    if needs.log_sum_sq:
        extra.update(zip(("chosen_log_sum_sq", "rejected_log_sum_sq"), halves(pol.log_sum_sq)))
    terms, chosen_r, rejected_r, weights = preference_loss_terms(
        pol.logps[:b], pol.logps[b:], *halves(ref_logps),
        beta=lc.beta, loss_type=lc.loss_type, label_smoothing=lc.label_smoothing,
        chosen_lengths=lengths[:b], rejected_lengths=lengths[b:], chosen_kl=halves(pol.kl)[0],
        rejected_kl=halves(pol.kl)[1], alpha=lc.alpha, gamma=lc.gamma, loss_weights=lc.loss_weights,
        f_divergence=lc.f_divergence, f_alpha=lc.f_alpha, discopop_tau=lc.discopop_tau, ld_alpha=lc.ld_alpha,
        use_weighting=lc.use_weighting, **extra,
    )
    loss = combine(terms, weights).mean()
    if lc.rpo_alpha > 0:  # RPO: + α · token-mean NLL of the chosen responses
        loss = loss + lc.rpo_alpha * sft_loss(pol.logps[:b], lengths[:b])
    chosen_r, rejected_r = chosen_r.detach(), rejected_r.detach()
    components = {f"loss/{name}": t.detach().mean() for name, t in terms.items()} if len(terms) > 1 else {}
    return {
        "loss": loss, **components,
        "rewards/chosen": chosen_r.mean(), "rewards/rejected": rejected_r.mean(),
        "rewards/accuracies": (chosen_r > rejected_r).float().mean(),
        "rewards/margins": (chosen_r - rejected_r).mean(),
        "logps/chosen": pol.logps[:b].detach().mean(), "logps/rejected": pol.logps[b:].detach().mean(),
        "logits/chosen": pol.mean_logit[:b].mean(), "logits/rejected": pol.mean_logit[b:].mean(),
    }


def sync_reference(model: torch.nn.Module, ref: Reference, cfg: Config, step: int) -> None:
    """TR-DPO (`--sync_ref_model`): after optimizer step `step` (1-based), every `--ref_model_sync_steps` steps,
    π_ref ← α·π + (1 − α)·π_ref (`Reference.mix_in`; a collective under FSDP, so every rank calls this)."""
    if cfg.loss.sync_ref_model and step % cfg.loss.ref_model_sync_steps == 0:
        ref.mix_in(distributed.unwrap(model), cfg.loss.ref_model_mixup_alpha)


@torch.no_grad()
def evaluate(policy, ref: Reference, pairs, tokenizer, cfg: Config, device, offset: int = 0) -> dict[str, float]:
    """Eval metrics (TRL's `eval_` prefix) over all eval pairs, weighted by batch size. Under torchrun every
    rank evaluates every pair (identical results; FSDP needs all ranks in each forward)."""
    was_training = policy.training
    policy.eval()
    totals: dict[str, float] = {}
    bs = cfg.train.per_device_eval_batch_size
    for i in range(0, len(pairs), bs):
        chunk = pairs[i:i + bs]
        out = pair_forward(policy, ref, chunk, list(range(offset + i, offset + i + len(chunk))), tokenizer, cfg,
                           device)
        for k, v in out.items():
            totals[k] = totals.get(k, 0.0) + float(v) * len(chunk)
    policy.train(was_training)
    return {f"eval_{k}": v / len(pairs) for k, v in totals.items()}
