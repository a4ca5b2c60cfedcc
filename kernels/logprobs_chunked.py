"""Chunked PyTorch selected-token log-probs (+ entropy, KL, log Σp², mean logit, is-top-1): the CPU path and the
fallback.

The logits are only ever held as one tile of `token_chunk × vocab_chunk`. Each raw tile z = h·Wᵀ + b goes
through the head's transform y = β·g(α·z) (kernels.head: g = tanh when soft-capped, else the identity), in
place. The forward pass walks vocab tiles (outer) × token chunks (inner) with an online log-sum-exp per row
(running max m and Σ e^(y−m), rescaled when m grows), picks the target logit out of the tile it falls in,
and saves only the per-row log-sum-exp. Alongside, from the same tile and behind flags:

    entropy   lse − E_π[y]                    (Σ e^(y−m)·(y−m), rescaled with m)
    lsq       log Σ_v π_v² = log Σ e^(2(y−m)) − 2·log Σ e^(y−m)     (the first sum rescaled by e^(2Δm))
    mean      (1/V)·Σ_v y_v
    top1      y_t ≥ max_v y_v and y_t > max_{v<t} y_v              (argmax's first-maximum rule)
    kl        E_q[y_ref − y] − lse_ref + lse                     (q = softmax(y_ref), the reference's head)

The backward pass recomputes each tile and forms dL/dz in place:

    dL/dy = g_lp·(onehot − p) + g_ent·(−p·(log p + ent)) + g_kl·(p − q),   p = e^(y − lse)
    dL/dz = dL/dy · α·β·g'(α·z)                                           (g' = 1 − tanh² when soft-capped)

then dh += dz·W_tile and dW_tile += dzᵀ·h_chunk (and db_tile += Σ_n dz). lsq, mean and top1 carry no gradient.
Four matrix products in all (forward, recompute, two gradient products): the floor is three, so 4/3 is this
design's bound. Peak extra memory is a few tiles plus the fp32 gradient buffers, never N×V.

Loop order: vocab outer keeps W_tile / dW_tile (the large operands) in cache across token chunks; the
[N, H] hidden states and dh, which are small, are what streams.
"""

import torch

from kernels.head import IDENTITY, SOFTCAP, LogitHead
from kernels.logprobs_naive import compute_dtype

# One tile of logits: token_chunk × vocab_chunk floats, 1024 × 4096 fp32 = 16 MiB (fits the 36 MiB L3).
# Few, large tiles: every torch op is an OpenMP parallel region, and on the shared 2-core box (load 6–9)
# each region waits for a descheduled thread. N=2048, V=32000, H=256 fwd+bwd, 2 threads, under load:
# 256×2048 tiles 6.1× the product floor, 2048×2048 2.5×, 512×8192 2.2×, 1024×4096 1.8×, 1024×8192 1.7×
# (naive 1.55×); with 1 thread 256×2048 ran at 1.48× (naive 1.50×). See benchmarks/RESULTS_kernels.md.
TOKEN_CHUNK = 1024
VOCAB_CHUNK = 4096


def _tile_logits(h_c, w_t, b_t, cdt, out):
    """z = h_c·w_tᵀ (+ b_t) into `out`: (C, Vt) in the compute dtype."""
    torch.mm(h_c.to(cdt), w_t.to(cdt).T, out=out)
    if b_t is not None:
        out.add_(b_t.to(cdt))
    return out


def _transform_(z, head: LogitHead):
    """y = β·g(α·z) in place (g = tanh when soft-capped, else the identity); returns y."""
    if head.mode == IDENTITY:
        return z
    alpha, beta = head.factors()
    if head.mode == SOFTCAP:
        return z.mul_(alpha).tanh_().mul_(beta)
    return z.mul_(alpha * beta)


def _targets_in_tile(targets_c, v0, v1):
    """(rows, columns) of the targets of this chunk that fall into vocab columns [v0, v1)."""
    rows = ((targets_c >= v0) & (targets_c < v1)).nonzero()[:, 0]
    return rows, targets_c[rows] - v0


class ChunkedTokenStats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ignore_index, entropy, ref_hidden, ref_weight, ref_bias,
                head, ref_head, extras, token_chunk, vocab_chunk):
        """One pass over (vocabulary tile × token chunk) tiles of the logits with the online log-sum-exp; each
        optional statistic (entropy, KL to the reference head, log Σp², mean logit, is-top-1) updates beside the
        running max it is rescaled by.

        Length: the running sums of every optional statistic share each tile's buffers and its running max, so
        they are updated in one loop body; as helpers, each would take and return a dozen running tensors."""
        N, V = hidden.shape[0], weight.shape[0]
        cdt = compute_dtype(hidden.dtype)
        kl = ref_hidden is not None
        want_lsq, want_mean, want_top1 = extras
        vec = lambda fill: torch.full((N,), fill, dtype=cdt, device=hidden.device)  # noqa: E731
        m, s, y_t = vec(-float("inf")), vec(0.0), vec(0.0)  # running max, Σ e^(y−m), target logit
        u = vec(0.0) if entropy else None  # Σ e^(y−m)·(y−m)
        sq = vec(0.0) if want_lsq else None  # Σ e^(2(y−m))
        y_sum = vec(0.0) if want_mean else None  # Σ_v y
        m_before = vec(-float("inf")) if want_top1 else None  # max of y over columns left of the target
        if kl:
            m_r, s_r, u_r = vec(-float("inf")), vec(0.0), vec(0.0)  # ref max, Σ e^(yr−mr), Σ e^(yr−mr)·(yr−y)
        buf = torch.empty(min(token_chunk, N) * min(vocab_chunk, V), dtype=cdt, device=hidden.device)
        buf2 = torch.empty_like(buf) if (entropy or kl or want_lsq) else None
        buf3 = torch.empty_like(buf) if kl else None
        for v0 in range(0, V, vocab_chunk):
            v1 = min(v0 + vocab_chunk, V)
            w_t, b_t = weight[v0:v1], None if bias is None else bias[v0:v1]
            for n0 in range(0, N, token_chunk):
                n1 = min(n0 + token_chunk, N)
                shape = (n1 - n0, v1 - v0)
                y = _transform_(_tile_logits(hidden[n0:n1], w_t, b_t, cdt, buf[: shape[0] * shape[1]].view(shape)),
                                head)  # (C, Vt)
                rows, cols = _targets_in_tile(targets[n0:n1], v0, v1)
                y_t[n0 + rows] = y[rows, cols]
                if want_mean:
                    y_sum[n0:n1] += y.sum(1)
                if want_top1:
                    left = torch.arange(v0, v1, device=y.device)[None, :] < targets[n0:n1, None]  # (C, Vt)
                    m_before[n0:n1] = torch.maximum(m_before[n0:n1], y.masked_fill(~left, -float("inf")).amax(1))
                if kl:  # yr − y is needed before y is overwritten
                    yr = _transform_(_tile_logits(ref_hidden[n0:n1], ref_weight[v0:v1],
                                                  None if ref_bias is None else ref_bias[v0:v1], cdt,
                                                  buf2[: y.numel()].view(shape)), ref_head)
                    diff = torch.sub(yr, y, out=buf3[: y.numel()].view(shape))  # (C, Vt) yr − y
                    mr_new = torch.maximum(m_r[n0:n1], yr.amax(1))
                    er = yr.sub_(mr_new[:, None]).exp_()  # e^(yr − mr_new)
                    scale = torch.exp(m_r[n0:n1] - mr_new)
                    s_r[n0:n1] = s_r[n0:n1] * scale + er.sum(1)
                    u_r[n0:n1] = u_r[n0:n1] * scale + er.mul_(diff).sum(1)
                    m_r[n0:n1] = mr_new
                m_new = torch.maximum(m[n0:n1], y.amax(1))
                scale = torch.exp(m[n0:n1] - m_new)  # rescales the old sums to the new max
                y.sub_(m_new[:, None])  # y − m_new
                if entropy or want_lsq:
                    e = torch.exp(y, out=buf2[: y.numel()].view(shape))  # e^(y − m_new)
                    if want_lsq:  # Σ e^(2(y−m)): the old sum moves to the new max by e^(2(m_old−m_new))
                        sq[n0:n1] = sq[n0:n1] * scale * scale + e.pow(2).sum(1)
                    s_tile = e.sum(1)
                    if entropy:
                        # Σ e^(y−m_new)·(y−m_new); moving the old sum to the new max shifts it by (m_old−m_new)·s_old
                        shift = torch.nan_to_num(m[n0:n1] - m_new, neginf=0.0)  # first tile: s_old = 0, m_old = −inf
                        u[n0:n1] = (u[n0:n1] + shift * s[n0:n1]) * scale + e.mul_(y).sum(1)
                    s[n0:n1] = s[n0:n1] * scale + s_tile
                else:
                    s[n0:n1] = s[n0:n1] * scale + y.exp_().sum(1)
                m[n0:n1] = m_new
        lse = m + torch.log(s)  # (N,)
        keep = targets != ignore_index
        zero = torch.zeros((), dtype=cdt, device=hidden.device)
        logps = torch.where(keep, y_t - lse, zero)
        # entropy = lse − E_π[y] = lse − (m + u/s) ;  kl = E_q[yr − y] − lse_r + lse
        ent = torch.where(keep, lse - m - u / s, zero) if entropy else None
        lse_r = m_r + torch.log(s_r) if kl else None
        kl_out = torch.where(keep, u_r / s_r - lse_r + lse, zero) if kl else None
        lsq = torch.where(keep, torch.log(sq) - 2 * torch.log(s), zero) if want_lsq else None
        mean = torch.where(keep, y_sum / V, zero) if want_mean else None
        top1 = keep & (y_t >= m) & (y_t > m_before) if want_top1 else None
        ctx.save_for_backward(hidden, weight, bias, targets, lse, ent, ref_hidden, ref_weight, ref_bias, lse_r)
        ctx.ignore_index, ctx.chunks, ctx.heads = ignore_index, (token_chunk, vocab_chunk), (head, ref_head)
        ctx.mark_non_differentiable(*(x for x in (lsq, mean, top1) if x is not None))
        ctx.set_materialize_grads(False)
        return logps, ent, kl_out, lsq, mean, top1

    @staticmethod
    def backward(ctx, g_lp, g_ent, g_kl, *_):
        """dL/dz tile by tile, recomputed from the saved lse (never stored at N×V), then dh, dW, db by matmul.

        Length: the tile's dL/dy is formed in place in one buffer (log-prob, entropy, KL and one-hot terms, then
        the head's chain rule), which keeps the extra memory of the chunked path at a few tile-sized buffers."""
        hidden, weight, bias, targets, lse, ent, ref_hidden, ref_weight, ref_bias, lse_r = ctx.saved_tensors
        token_chunk, vocab_chunk = ctx.chunks
        head, ref_head = ctx.heads
        alpha, beta = head.factors()
        N, V = hidden.shape[0], weight.shape[0]
        cdt = lse.dtype
        keep = (targets != ctx.ignore_index).to(cdt)  # ignored rows send no gradient
        g_lp = keep * (g_lp.to(cdt) if g_lp is not None else 0.0)
        g_ent = None if g_ent is None else keep * g_ent.to(cdt)
        g_kl = None if g_kl is None else keep * g_kl.to(cdt)
        coef = g_lp.neg() if g_kl is None else g_kl - g_lp  # per-row multiplier of p
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        dh = torch.zeros(hidden.shape, dtype=cdt, device=hidden.device) if need_h else None
        dw = torch.zeros(weight.shape, dtype=cdt, device=hidden.device) if need_w else None
        db = torch.zeros(V, dtype=cdt, device=hidden.device) if need_b else None
        buf = torch.empty(min(token_chunk, N) * min(vocab_chunk, V), dtype=cdt, device=hidden.device)
        buf2 = torch.empty_like(buf) if (g_ent is not None or g_kl is not None) else None
        buf3 = torch.empty_like(buf) if head.mode == SOFTCAP else None
        for v0 in range(0, V, vocab_chunk):
            v1 = min(v0 + vocab_chunk, V)
            w_t, b_t = weight[v0:v1], None if bias is None else bias[v0:v1]
            w_c = w_t.to(cdt)
            for n0 in range(0, N, token_chunk):
                n1 = min(n0 + token_chunk, N)
                shape = (n1 - n0, v1 - v0)
                h_c = hidden[n0:n1].to(cdt)
                lp = _tile_logits(h_c, w_c, b_t, cdt, buf[: shape[0] * shape[1]].view(shape))  # raw z
                if head.mode == SOFTCAP:  # dy/dz = α·β·(1 − t²), t = tanh(α·z); y = β·t
                    t = lp.mul_(alpha).tanh_()
                    dydz = torch.mul(t, t, out=buf3[: lp.numel()].view(shape)).neg_().add_(1).mul_(alpha * beta)
                    lp = t.mul_(beta)
                else:
                    lp = _transform_(lp, head)
                lp.sub_(lse[n0:n1, None])  # log p, (C, Vt)
                if g_ent is not None:  # dy = p·(coef − g_ent·(log p + ent))
                    p = torch.exp(lp, out=buf2[: lp.numel()].view(shape))
                    lp.add_(ent[n0:n1, None]).mul_(-g_ent[n0:n1, None]).add_(coef[n0:n1, None])
                    dz = lp.mul_(p)
                else:  # dy = p·coef, formed in place: no copy of the tile
                    dz = lp.exp_().mul_(coef[n0:n1, None])
                if g_kl is not None:  # − g_kl·q with q = e^(yr − lse_r)
                    q = _transform_(_tile_logits(ref_hidden[n0:n1], ref_weight[v0:v1],
                                                 None if ref_bias is None else ref_bias[v0:v1], cdt,
                                                 buf2[: dz.numel()].view(shape)), ref_head)
                    dz.sub_(q.sub_(lse_r[n0:n1, None]).exp_().mul_(g_kl[n0:n1, None]))
                rows, cols = _targets_in_tile(targets[n0:n1], v0, v1)
                dz[rows, cols] += g_lp[n0 + rows]  # the one-hot term; dz holds dL/dy so far
                if head.mode == SOFTCAP:
                    dz.mul_(dydz)
                elif head.mode != IDENTITY:
                    dz.mul_(alpha * beta)
                if need_h:
                    dh[n0:n1].addmm_(dz, w_c)
                if need_w:
                    dw[v0:v1].addmm_(dz.T, h_c)
                if need_b:
                    db[v0:v1] += dz.sum(0)
        cast = lambda g, like: None if g is None else g.to(like.dtype)  # noqa: E731
        return (cast(dh, hidden), cast(dw, weight), None if db is None else db.to(bias.dtype),
                *([None] * 11))


def chunked_token_stats(hidden, weight, targets, *, bias=None, ignore_index=-100, entropy=False,
                        ref_hidden=None, ref_weight=None, ref_bias=None, softcap=None, logit_scale=1.0,
                        temperature=1.0, ref_head=None, log_sum_sq=False, mean_logit=False, is_top1=False,
                        token_chunk=TOKEN_CHUNK, vocab_chunk=VOCAB_CHUNK):
    """(logps, entropy, kl, log_sum_sq, mean_logit, is_top1) like `naive_token_stats`, without N×V tensors."""
    if ref_hidden is not None:  # the reference is a constant: no gradient flows to it
        ref_hidden, ref_weight = ref_hidden.detach(), ref_weight.detach()
        ref_bias = None if ref_bias is None else ref_bias.detach()
    head = LogitHead(softcap, logit_scale, temperature)
    return ChunkedTokenStats.apply(hidden, weight, bias, targets, ignore_index, entropy, ref_hidden, ref_weight,
                                   ref_bias, head, ref_head or LogitHead(), (log_sum_sq, mean_logit, is_top1),
                                   token_chunk, vocab_chunk)
