"""Triton selected-token log-probs (+ entropy, forward KL, log Σp², mean logit, is-top-1): fused forward and
backward kernels.

Forward (`_fwd_kernel`, one program per BLOCK_N tokens): walk the vocab in BLOCK_V tiles; each logits tile
z = h·Wᵀ + b is a `tl.dot` over H in BLOCK_H steps with fp32 accumulation, goes through the head's transform
y = β·g(α·z) (kernels.head; HEAD = 0 none, 1 linear, 2 soft-capped with g = tanh; α, β read from a small
tensor), then is folded into an online log-sum-exp (running max m, Σ e^(y−m); with LSQ also Σ e^(2(y−m)),
rescaled by e^(2Δm); with MEAN Σ y; with TOP1 the max left of the target), the target logit is picked out of
the tile, and the tile is dropped: it never leaves the chip. Writes logp [N] and lse [N] (+ the statistics,
+ KL and the reference's lse, the reference through its own head).

Backward recomputes each logits tile and forms, in registers,

    dy = p·(coef − g_ent·(log p + ent)) − g_kl·q + g_lp·onehot,   coef = g_kl − g_lp,   p = e^(y − lse)
    dz = dy · α·β·g'(α·z)                                          (g' = 1 − tanh² when soft-capped)

then `_bwd_dh_kernel` accumulates dh[n-block, h-block] += dz·W[v-block, h-block] over the vocab, and
`_bwd_dw_kernel` accumulates dW[v-block, h-block] += dzᵀ·h[n-block, h-block] over the tokens (and db).
Each output tile is owned by one program: no atomics, deterministic, no N×V buffer. The price: each
backward kernel recomputes the logits once per output h-block, so the work is (2·⌈H/BLOCK_HO⌉ + 3)
products of 2·N·V·H flops — 5 when H ≤ BLOCK_HO = 128. For larger H (`backward_strategy`) the backward
instead runs `_bwd_dz_kernel`, which writes dz for a chunk of tokens (C × V in the input dtype, C chosen
so the chunk is ≤ 256 MiB), and dh, dW are two GEMMs on it: 4 products at any H, O(C × V) memory.

Memory traffic per forward program: BLOCK_N·H of h once per vocab tile (cache-resident) and all of W once:
≈ (N/BLOCK_N)·V·H·bytes of W reads in total — the same as a tiled matmul with BLOCK_N rows.

dtypes: fp32, bf16, fp16 inputs with fp32 accumulation and math (fp64 inputs: fp64 throughout — the test
oracle). bf16/fp16 tiles go to tensor cores as they are (wgmma on Hopper); fp32 tiles use 3×TF32
("tf32x3", ≈ fp32 accuracy); the backward's dz tile is rounded to the input dtype before the gradient
products, as autograd would for a bf16 model. Under TRITON_INTERPRET=1 (CPU tests) low-precision tiles are
upcast before `tl.dot`, whose bf16 path is wrong in the interpreter; the products are exact in fp32 anyway.
"""

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from kernels.head import LogitHead, head_params
from kernels.logprobs_naive import compute_dtype


@triton.jit
def _logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, N, V, H, stride_h, stride_w,
                 HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                 UPCAST: tl.constexpr, PREC: tl.constexpr):
    """z = h[rows]·W[cols]ᵀ (+ b[cols]): (BLOCK_N, BLOCK_V), fp32 (fp64 for fp64 inputs)."""
    ACC: tl.constexpr = tl.float64 if h_ptr.dtype.element_ty == tl.float64 else tl.float32
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=ACC)
    for k0 in range(0, H, BLOCK_H):
        ks = k0 + tl.arange(0, BLOCK_H)
        a = tl.load(h_ptr + rows[:, None] * stride_h + ks[None, :],
                    mask=(rows[:, None] < N) & (ks[None, :] < H), other=0.0)  # (BLOCK_N, BLOCK_H)
        b = tl.load(w_ptr + cols[None, :] * stride_w + ks[:, None],
                    mask=(cols[None, :] < V) & (ks[:, None] < H), other=0.0)  # (BLOCK_H, BLOCK_V), K-major Wᵀ
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PREC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=cols < V, other=0.0).to(ACC)[None, :]
    return acc


@triton.jit
def _tanh(x):
    """tanh from tl.exp (libdevice is unavailable in the interpreter): 1 − 2/(e^(2x) + 1), exact at ±inf."""
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _head(z, hp_ptr, IDX: tl.constexpr, MODE: tl.constexpr):
    """The head's transform y = β·g(α·z) (kernels.head); α, β are hp[IDX], hp[IDX + 1] in z's dtype."""
    if MODE == 0:
        y = z
    elif MODE == 1:
        y = z * (tl.load(hp_ptr + IDX) * tl.load(hp_ptr + IDX + 1))
    else:
        y = tl.load(hp_ptr + IDX + 1) * _tanh(tl.load(hp_ptr + IDX) * z)
    return y


@triton.jit
def _fwd_kernel(h_ptr, w_ptr, b_ptr, t_ptr, rh_ptr, rw_ptr, rb_ptr, hp_ptr,
                logp_ptr, lse_ptr, ent_ptr, kl_ptr, lse_r_ptr, lsq_ptr, mean_ptr, top1_ptr,
                N, V, H, HR, stride_h, stride_w, stride_rh, stride_rw, ignore_index,
                HAS_BIAS: tl.constexpr, ENTROPY: tl.constexpr, KL: tl.constexpr, REF_HAS_BIAS: tl.constexpr,
                HEAD: tl.constexpr, REF_HEAD: tl.constexpr, LSQ: tl.constexpr, MEAN: tl.constexpr,
                TOP1: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                UPCAST: tl.constexpr, PREC: tl.constexpr):
    """One program: BLOCK_N rows, one pass over the vocabulary in BLOCK_V tiles with the online log-sum-exp, and
    every statistic its constexpr flags ask for updated beside it.

    Length: one Triton program whose running accumulators (one per optional statistic) stay in registers across
    the vocabulary loop; jit helpers would have to take and return all of them."""
    ACC: tl.constexpr = tl.float64 if h_ptr.dtype.element_ty == tl.float64 else tl.float32
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    tgt = tl.load(t_ptr + rows, mask=row_ok, other=ignore_index)
    m = tl.full((BLOCK_N,), float("-inf"), ACC)  # running max of y
    s = tl.zeros((BLOCK_N,), ACC)  # Σ e^(y − m)
    y_t = tl.zeros((BLOCK_N,), ACC)  # the target's logit
    u = tl.zeros((BLOCK_N,), ACC)  # Σ e^(y − m)·(y − m)            (ENTROPY)
    sq = tl.zeros((BLOCK_N,), ACC)  # Σ e^(2(y − m))               (LSQ)
    y_sum = tl.zeros((BLOCK_N,), ACC)  # Σ_v y                      (MEAN)
    m_left = tl.full((BLOCK_N,), float("-inf"), ACC)  # max of y left of the target (TOP1)
    m_r = tl.full((BLOCK_N,), float("-inf"), ACC)  # reference max      (KL)
    s_r = tl.zeros((BLOCK_N,), ACC)  # Σ e^(yr − m_r)
    u_r = tl.zeros((BLOCK_N,), ACC)  # Σ e^(yr − m_r)·(yr − y)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        z = _logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, N, V, H, stride_h, stride_w,
                         HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_H, UPCAST, PREC)
        z = _head(z, hp_ptr, 0, HEAD)  # y, in registers
        zm = tl.where(col_ok[None, :], z, float("-inf"))  # padded columns drop out of max and sums
        y_t += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), axis=1)
        if MEAN:
            y_sum += tl.sum(tl.where(col_ok[None, :], z, 0.0), axis=1)
        if TOP1:  # argmax's first-maximum rule: a tie with an earlier column is not a top-1 target
            m_left = tl.maximum(m_left, tl.max(tl.where(cols[None, :] < tgt[:, None], zm, float("-inf")), axis=1))
        m_new = tl.maximum(m, tl.max(zm, axis=1))
        scale = tl.exp(m - m_new)  # moves the old sums to the new max (0 on the first tile)
        e = tl.exp(zm - m_new[:, None])  # (BLOCK_N, BLOCK_V), 0 in padded columns
        if ENTROPY:
            zc = tl.where(col_ok[None, :], z - m_new[:, None], 0.0)
            shift = tl.where(s > 0, m - m_new, 0.0) * s  # Σe^(y−m_old)(y−m_new) = u + (m_old−m_new)·s
            u = (u + shift) * scale + tl.sum(e * zc, axis=1)
        if LSQ:
            sq = sq * scale * scale + tl.sum(e * e, axis=1)
        s = s * scale + tl.sum(e, axis=1)
        m = m_new
        if KL:
            zr = _logits_tile(rh_ptr, rw_ptr, rb_ptr, rows, cols, N, V, HR, stride_rh, stride_rw,
                              REF_HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_H, UPCAST, PREC)
            zr = _head(zr, hp_ptr, 2, REF_HEAD)
            zrm = tl.where(col_ok[None, :], zr, float("-inf"))
            mr_new = tl.maximum(m_r, tl.max(zrm, axis=1))
            scale_r = tl.exp(m_r - mr_new)
            er = tl.exp(zrm - mr_new[:, None])
            u_r = u_r * scale_r + tl.sum(er * tl.where(col_ok[None, :], zr - z, 0.0), axis=1)
            s_r = s_r * scale_r + tl.sum(er, axis=1)
            m_r = mr_new
    lse = m + tl.log(s)
    keep = row_ok & (tgt != ignore_index)
    tl.store(logp_ptr + rows, tl.where(keep, y_t - lse, 0.0), mask=row_ok)
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    if ENTROPY:  # H(π) = lse − E_π[y] = lse − (m + u/s)
        tl.store(ent_ptr + rows, tl.where(keep, lse - m - u / s, 0.0), mask=row_ok)
    if KL:  # KL(π_ref‖π) = E_q[yr − y] − lse_r + lse
        lse_r = m_r + tl.log(s_r)
        tl.store(kl_ptr + rows, tl.where(keep, u_r / s_r - lse_r + lse, 0.0), mask=row_ok)
        tl.store(lse_r_ptr + rows, lse_r, mask=row_ok)
    if LSQ:  # log Σ π² = log Σ e^(2(y−m)) − 2·log Σ e^(y−m)
        tl.store(lsq_ptr + rows, tl.where(keep, tl.log(sq) - 2.0 * tl.log(s), 0.0), mask=row_ok)
    if MEAN:
        tl.store(mean_ptr + rows, tl.where(keep, y_sum / V, 0.0), mask=row_ok)
    if TOP1:
        top1 = keep & (y_t >= m) & (y_t > m_left)
        tl.store(top1_ptr + rows, top1.to(tl.int8), mask=row_ok)


@triton.jit
def _grad_logits_tile(h_ptr, w_ptr, b_ptr, rh_ptr, rw_ptr, rb_ptr, hp_ptr, t_ptr, lse_ptr, glp_ptr,
                      ent_ptr, gent_ptr, lse_r_ptr, gkl_ptr, rows, cols,
                      N, V, H, HR, stride_h, stride_w, stride_rh, stride_rw, ignore_index,
                      HAS_BIAS: tl.constexpr, ENTROPY: tl.constexpr, KL: tl.constexpr, REF_HAS_BIAS: tl.constexpr,
                      HEAD: tl.constexpr, REF_HEAD: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                      UPCAST: tl.constexpr, PREC: tl.constexpr):
    """dL/dz for one (BLOCK_N, BLOCK_V) tile of raw logits z, recomputed from h, W and the saved per-row lse;
    0 outside. dL/dy first, then the head's chain rule dy/dz = α·β·g'(α·z)."""
    row_ok = rows < N
    col_ok = cols < V
    tgt = tl.load(t_ptr + rows, mask=row_ok, other=ignore_index)
    keep = row_ok & (tgt != ignore_index)  # ignored rows send no gradient
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    g_lp = tl.where(keep, tl.load(glp_ptr + rows, mask=row_ok, other=0.0), 0.0)
    z = _logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, N, V, H, stride_h, stride_w,
                     HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_H, UPCAST, PREC)
    if HEAD == 2:  # y = β·t, t = tanh(α·z), dy/dz = α·β·(1 − t²)
        alpha = tl.load(hp_ptr)
        beta = tl.load(hp_ptr + 1)
        t = _tanh(alpha * z)
        y = beta * t
        dydz = (alpha * beta) * (1.0 - t * t)
    else:
        y = _head(z, hp_ptr, 0, HEAD)
    logp = y - lse[:, None]
    p = tl.exp(logp)
    coef = -g_lp
    if KL:
        g_kl = tl.where(keep, tl.load(gkl_ptr + rows, mask=row_ok, other=0.0), 0.0)
        coef += g_kl
    if ENTROPY:  # d ent / dy = −p·(log p + ent)
        ent = tl.load(ent_ptr + rows, mask=row_ok, other=0.0)
        g_ent = tl.where(keep, tl.load(gent_ptr + rows, mask=row_ok, other=0.0), 0.0)
        dz = p * (coef[:, None] - g_ent[:, None] * (logp + ent[:, None]))
    else:
        dz = p * coef[:, None]
    if KL:  # d kl / dy = p − q
        lse_r = tl.load(lse_r_ptr + rows, mask=row_ok, other=0.0)
        zr = _logits_tile(rh_ptr, rw_ptr, rb_ptr, rows, cols, N, V, HR, stride_rh, stride_rw,
                          REF_HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_H, UPCAST, PREC)
        zr = _head(zr, hp_ptr, 2, REF_HEAD)
        dz -= g_kl[:, None] * tl.exp(zr - lse_r[:, None])
    dz += tl.where(cols[None, :] == tgt[:, None], g_lp[:, None], 0.0)  # d logp / dy = onehot − p
    if HEAD == 2:
        dz = dz * dydz
    elif HEAD == 1:
        dz = dz * (tl.load(hp_ptr) * tl.load(hp_ptr + 1))
    return tl.where(col_ok[None, :] & row_ok[:, None], dz, 0.0)


@triton.jit
def _bwd_dh_kernel(h_ptr, w_ptr, b_ptr, rh_ptr, rw_ptr, rb_ptr, hp_ptr, t_ptr, lse_ptr, glp_ptr,
                   ent_ptr, gent_ptr, lse_r_ptr, gkl_ptr, dh_ptr,
                   N, V, H, HR, stride_h, stride_w, stride_rh, stride_rw, ignore_index,
                   HAS_BIAS: tl.constexpr, ENTROPY: tl.constexpr, KL: tl.constexpr, REF_HAS_BIAS: tl.constexpr,
                   HEAD: tl.constexpr, REF_HEAD: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HO: tl.constexpr,
                   UPCAST: tl.constexpr, PREC: tl.constexpr):
    """dh[rows, hs] = Σ_v dz[rows, v]·W[v, hs]: one (BLOCK_N, BLOCK_HO) output tile per program."""
    ACC: tl.constexpr = tl.float64 if h_ptr.dtype.element_ty == tl.float64 else tl.float32
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    hs = tl.program_id(1) * BLOCK_HO + tl.arange(0, BLOCK_HO)
    acc = tl.zeros((BLOCK_N, BLOCK_HO), dtype=ACC)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        dz = _grad_logits_tile(h_ptr, w_ptr, b_ptr, rh_ptr, rw_ptr, rb_ptr, hp_ptr, t_ptr, lse_ptr, glp_ptr,
                               ent_ptr, gent_ptr, lse_r_ptr, gkl_ptr, rows, cols,
                               N, V, H, HR, stride_h, stride_w, stride_rh, stride_rw, ignore_index,
                               HAS_BIAS, ENTROPY, KL, REF_HAS_BIAS, HEAD, REF_HEAD,
                               BLOCK_N, BLOCK_V, BLOCK_H, UPCAST, PREC)
        w = tl.load(w_ptr + cols[:, None] * stride_w + hs[None, :],
                    mask=(cols[:, None] < V) & (hs[None, :] < H), other=0.0)  # (BLOCK_V, BLOCK_HO)
        dz = dz.to(w_ptr.dtype.element_ty)  # the tensor-core operand dtype
        if UPCAST:
            dz = dz.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(dz, w, acc, input_precision=PREC)
    tl.store(dh_ptr + rows[:, None] * H + hs[None, :], acc, mask=(rows[:, None] < N) & (hs[None, :] < H))


@triton.jit
def _bwd_dw_kernel(h_ptr, w_ptr, b_ptr, rh_ptr, rw_ptr, rb_ptr, hp_ptr, t_ptr, lse_ptr, glp_ptr,
                   ent_ptr, gent_ptr, lse_r_ptr, gkl_ptr, dw_ptr, db_ptr,
                   N, V, H, HR, stride_h, stride_w, stride_rh, stride_rw, ignore_index,
                   HAS_BIAS: tl.constexpr, ENTROPY: tl.constexpr, KL: tl.constexpr, REF_HAS_BIAS: tl.constexpr,
                   HEAD: tl.constexpr, REF_HEAD: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HO: tl.constexpr,
                   UPCAST: tl.constexpr, PREC: tl.constexpr):
    """dW[cols, hs] = Σ_n dz[n, cols]·h[n, hs] (and db[cols] = Σ_n dz[n, cols]): one tile per program."""
    ACC: tl.constexpr = tl.float64 if h_ptr.dtype.element_ty == tl.float64 else tl.float32
    cols = tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)
    hs = tl.program_id(1) * BLOCK_HO + tl.arange(0, BLOCK_HO)
    acc = tl.zeros((BLOCK_V, BLOCK_HO), dtype=ACC)
    db = tl.zeros((BLOCK_V,), dtype=ACC)
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        dz = _grad_logits_tile(h_ptr, w_ptr, b_ptr, rh_ptr, rw_ptr, rb_ptr, hp_ptr, t_ptr, lse_ptr, glp_ptr,
                               ent_ptr, gent_ptr, lse_r_ptr, gkl_ptr, rows, cols,
                               N, V, H, HR, stride_h, stride_w, stride_rh, stride_rw, ignore_index,
                               HAS_BIAS, ENTROPY, KL, REF_HAS_BIAS, HEAD, REF_HEAD,
                               BLOCK_N, BLOCK_V, BLOCK_H, UPCAST, PREC)
        if HAS_BIAS:
            db += tl.sum(dz, axis=0)
        h = tl.load(h_ptr + rows[:, None] * stride_h + hs[None, :],
                    mask=(rows[:, None] < N) & (hs[None, :] < H), other=0.0)  # (BLOCK_N, BLOCK_HO)
        dz_t = tl.trans(dz.to(h_ptr.dtype.element_ty))  # (BLOCK_V, BLOCK_N)
        if UPCAST:
            dz_t = dz_t.to(tl.float32)
            h = h.to(tl.float32)
        acc = tl.dot(dz_t, h, acc, input_precision=PREC)
    tl.store(dw_ptr + cols[:, None] * H + hs[None, :], acc, mask=(cols[:, None] < V) & (hs[None, :] < H))
    if HAS_BIAS:
        if tl.program_id(1) == 0:  # every h-block program has the same db; one writes it
            tl.store(db_ptr + cols, db, mask=cols < V)


@triton.jit
def _bwd_dz_kernel(h_ptr, w_ptr, b_ptr, rh_ptr, rw_ptr, rb_ptr, hp_ptr, t_ptr, lse_ptr, glp_ptr,
                   ent_ptr, gent_ptr, lse_r_ptr, gkl_ptr, dz_ptr, row0, rows_in_chunk,
                   N, V, H, HR, stride_h, stride_w, stride_rh, stride_rw, ignore_index,
                   HAS_BIAS: tl.constexpr, ENTROPY: tl.constexpr, KL: tl.constexpr, REF_HAS_BIAS: tl.constexpr,
                   HEAD: tl.constexpr, REF_HEAD: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                   UPCAST: tl.constexpr, PREC: tl.constexpr):
    """dz[rows − row0, cols] for one (BLOCK_N, BLOCK_V) tile of a token chunk, stored in dz's dtype (the input
    dtype: the operand of the two gradient GEMMs that follow). Writes C×V, read twice: the large-H path."""
    rows = row0 + tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    dz = _grad_logits_tile(h_ptr, w_ptr, b_ptr, rh_ptr, rw_ptr, rb_ptr, hp_ptr, t_ptr, lse_ptr, glp_ptr,
                           ent_ptr, gent_ptr, lse_r_ptr, gkl_ptr, rows, cols,
                           N, V, H, HR, stride_h, stride_w, stride_rh, stride_rw, ignore_index,
                           HAS_BIAS, ENTROPY, KL, REF_HAS_BIAS, HEAD, REF_HEAD,
                           BLOCK_N, BLOCK_V, BLOCK_H, UPCAST, PREC)
    local = rows - row0
    tl.store(dz_ptr + local[:, None] * V + cols[None, :], dz,
             mask=(local[:, None] < rows_in_chunk) & (rows[:, None] < N) & (cols[None, :] < V))

# ----------------------------------------------------------------------------------------------- launchers

# Tile shapes (tokens × vocab × H-step, and the backward's output width over H). 128×128 logits tiles with
# 64-wide K steps are the usual Hopper GEMM tile; the backward keeps a (64 or 128, BLOCK_HO) fp32
# accumulator beside a 64×128 dz tile. `benchmarks/bench_logprobs.py --resources` prints registers/shared/spills.
# Chosen by the sm_90 AOT resource report (fewest spills among the tile shapes tried; GPU speed unmeasured).
FWD_BLOCKS = dict(BLOCK_N=128, BLOCK_V=128, BLOCK_H=64, num_warps=8, num_stages=2)
BWD_BLOCKS = dict(BLOCK_N=64, BLOCK_V=128, BLOCK_H=64, num_warps=8, num_stages=2)
MAX_BLOCK_HO = 128


def block_ho(H: int) -> int:
    """Output width over H of a backward program: all of H when it fits, else MAX_BLOCK_HO."""
    return min(MAX_BLOCK_HO, max(16, triton.next_power_of_2(H)))


# The dz-chunk backward holds one chunk × V tile of dz: at most this many bytes (rounded to whole blocks).
DZ_CHUNK_BYTES = 2**28


def backward_strategy(H: int) -> str:
    """'fused': the dh / dW kernels, one output tile per program, recomputing the logits once per output
    h-block — 5 products when H fits one block, no extra memory. 'dz_chunks' for larger H: a kernel writes
    dz for a chunk of tokens and dh, dW are two GEMMs on it — 4 products at any H, O(chunk × V) memory."""
    return "fused" if H <= MAX_BLOCK_HO else "dz_chunks"


def dot_precision(dtype: torch.dtype) -> str:
    """`tl.dot` input precision: 3×TF32 for fp32 (≈ fp32 accuracy on tensor cores), IEEE for fp64."""
    return {torch.float64: "ieee", torch.float32: "tf32x3"}.get(dtype, "tf32")  # ignored for bf16/fp16


def interpreted() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1 was set before import)."""
    return isinstance(_fwd_kernel, InterpretedFunction)


def _flags(hidden, bias, entropy, ref_hidden, ref_bias, head, ref_head):
    upcast = interpreted() and hidden.dtype in (torch.bfloat16, torch.float16)
    kl = ref_hidden is not None
    return dict(HAS_BIAS=bias is not None, ENTROPY=bool(entropy), KL=kl, REF_HAS_BIAS=kl and ref_bias is not None,
                HEAD=head.mode, REF_HEAD=ref_head.mode if kl else 0, UPCAST=upcast, PREC=dot_precision(hidden.dtype))


class TritonTokenStats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ignore_index, entropy, ref_hidden, ref_weight, ref_bias,
                head, ref_head, extras, backward, dz_chunk_tokens):
        N, H = hidden.shape
        V = weight.shape[0]
        cdt = compute_dtype(hidden.dtype)
        kl = ref_hidden is not None
        want_lsq, want_mean, want_top1 = extras
        logp, lse = (torch.empty(N, dtype=cdt, device=hidden.device) for _ in range(2))
        ent = torch.empty_like(logp) if entropy else None
        kl_out, lse_r = (torch.empty_like(logp), torch.empty_like(logp)) if kl else (None, None)
        lsq = torch.empty_like(logp) if want_lsq else None
        mean = torch.empty_like(logp) if want_mean else None
        top1 = torch.empty(N, dtype=torch.int8, device=hidden.device) if want_top1 else None
        hp = head_params(head, ref_head, cdt, hidden.device)  # [α, β, α_ref, β_ref]
        rh, rw = (ref_hidden, ref_weight) if kl else (hidden, weight)  # unused pointers when KL is off
        flags = _flags(hidden, bias, entropy, ref_hidden, ref_bias, head, ref_head)
        or_logp = lambda t: logp if t is None else t  # noqa: E731  (unused output pointers)
        if N:
            grid = (triton.cdiv(N, FWD_BLOCKS["BLOCK_N"]),)
            _fwd_kernel[grid](hidden, weight, hidden if bias is None else bias, targets,
                              rh, rw, rh if ref_bias is None else ref_bias, hp,
                              logp, lse, or_logp(ent), or_logp(kl_out), lse if lse_r is None else lse_r,
                              or_logp(lsq), or_logp(mean), targets if top1 is None else top1,
                              N, V, H, rh.shape[1], hidden.stride(0), weight.stride(0), rh.stride(0), rw.stride(0),
                              ignore_index, **flags, LSQ=want_lsq, MEAN=want_mean, TOP1=want_top1, **FWD_BLOCKS)
        top1 = None if top1 is None else top1.bool()
        ctx.save_for_backward(hidden, weight, bias, targets, lse, ent, ref_hidden, ref_weight, ref_bias, lse_r)
        ctx.ignore_index, ctx.backward, ctx.dz_chunk_tokens = ignore_index, backward, dz_chunk_tokens
        ctx.heads = (head, ref_head)
        ctx.mark_non_differentiable(*(x for x in (lsq, mean, top1) if x is not None))
        ctx.set_materialize_grads(False)
        return logp, ent, kl_out, lsq, mean, top1

    @staticmethod
    def backward(ctx, g_lp, g_ent, g_kl, *_):
        hidden, weight, bias, targets, lse, ent, ref_hidden, ref_weight, ref_bias, lse_r = ctx.saved_tensors
        head, ref_head = ctx.heads
        N, H = hidden.shape
        V = weight.shape[0]
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        nones = (None,) * 11
        as_vec = lambda g: torch.zeros_like(lse) if g is None else g.to(lse.dtype).contiguous()  # noqa: E731
        g_lp = as_vec(g_lp)
        # Only the outputs that received a gradient enter dz: the entropy / KL terms drop out otherwise.
        use_ent, use_kl = g_ent is not None, g_kl is not None
        g_ent, g_kl = as_vec(g_ent), as_vec(g_kl)
        rh, rw = (ref_hidden, ref_weight) if ref_hidden is not None else (hidden, weight)
        flags = _flags(hidden, bias, use_ent, ref_hidden if use_kl else None, ref_bias, head, ref_head)
        hp = head_params(head, ref_head, lse.dtype, hidden.device)
        args = (hidden, weight, hidden if bias is None else bias, rh, rw, rh if ref_bias is None else ref_bias, hp,
                targets, lse, g_lp, lse if ent is None else ent, g_ent, lse if lse_r is None else lse_r, g_kl)
        sizes = (N, V, H, rh.shape[1], hidden.stride(0), weight.stride(0), rh.stride(0), rw.stride(0),
                 ctx.ignore_index)
        if ctx.backward == "dz_chunks" or (ctx.backward == "auto" and backward_strategy(H) == "dz_chunks"):
            dh, dw, db = _backward_dz_chunks(hidden, weight, bias, args, sizes, flags, need_h, need_w, need_b,
                                             ctx.dz_chunk_tokens)
            return (dh, dw, db, *nones)
        bho = block_ho(H)
        dh = dw = db = None
        if need_h:
            dh = torch.empty(N, H, dtype=lse.dtype, device=hidden.device)
            grid = (triton.cdiv(N, BWD_BLOCKS["BLOCK_N"]), triton.cdiv(H, bho))
            if N:
                _bwd_dh_kernel[grid](*args, dh, *sizes, **flags, **BWD_BLOCKS, BLOCK_HO=bho)
            dh = dh.to(hidden.dtype)
        if need_w or need_b:
            dw = torch.empty(V, H, dtype=lse.dtype, device=hidden.device)
            db = torch.empty(V, dtype=lse.dtype, device=hidden.device) if bias is not None else dw
            grid = (triton.cdiv(V, BWD_BLOCKS["BLOCK_V"]), triton.cdiv(H, bho))
            if N:
                _bwd_dw_kernel[grid](*args, dw, db, *sizes, **flags, **BWD_BLOCKS, BLOCK_HO=bho)
            else:
                dw.zero_()
                db.zero_()
            dw = dw.to(weight.dtype) if need_w else None
            db = db.to(bias.dtype) if need_b else None
        return (dh, dw, db, *nones)


def _backward_dz_chunks(hidden, weight, bias, args, sizes, flags, need_h, need_w, need_b, chunk=None):
    """Per token chunk: dz (C, V) from `_bwd_dz_kernel`, then dh_c = dz·W and dW += dzᵀ·h_c as GEMMs in the
    input dtype with fp32 accumulation (cuBLAS on a GPU), db += Σ_n dz in fp32."""
    N, H = hidden.shape
    V = weight.shape[0]
    cdt = compute_dtype(hidden.dtype)
    bn, bv = BWD_BLOCKS["BLOCK_N"], BWD_BLOCKS["BLOCK_V"]
    if chunk is None:  # whole blocks of tokens, ≤ DZ_CHUNK_BYTES of dz
        chunk = max(bn, min(triton.cdiv(N, bn) * bn, DZ_CHUNK_BYTES // (V * hidden.element_size()) // bn * bn))
    dz = torch.empty(min(chunk, N), V, dtype=hidden.dtype, device=hidden.device)  # (C, V)
    dh = torch.empty(N, H, dtype=hidden.dtype, device=hidden.device) if need_h else None
    dw = torch.zeros(V, H, dtype=cdt, device=hidden.device) if need_w else None
    db = torch.zeros(V, dtype=cdt, device=hidden.device) if need_b else None
    for n0 in range(0, N, chunk):
        n1 = min(n0 + chunk, N)
        dz_c = dz[: n1 - n0]
        grid = (triton.cdiv(n1 - n0, bn), triton.cdiv(V, bv))
        _bwd_dz_kernel[grid](*args, dz_c, n0, n1 - n0, *sizes, **flags, **BWD_BLOCKS)
        if need_h:
            torch.mm(dz_c, weight, out=dh[n0:n1])
        if need_w:
            dw += torch.mm(dz_c.T, hidden[n0:n1])  # bf16 GEMM per chunk, summed over chunks in fp32
        if need_b:
            db += dz_c.sum(0, dtype=cdt)
    return (dh, None if dw is None else dw.to(weight.dtype), None if db is None else db.to(bias.dtype))


def triton_token_stats(hidden, weight, targets, *, bias=None, ignore_index=-100, entropy=False,
                       ref_hidden=None, ref_weight=None, ref_bias=None, softcap=None, logit_scale=1.0,
                       temperature=1.0, ref_head=None, log_sum_sq=False, mean_logit=False, is_top1=False,
                       backward="auto", dz_chunk_tokens=None):
    """(logps, entropy, kl, log_sum_sq, mean_logit, is_top1) like `naive_token_stats`, through the Triton kernels.
    backward: "auto" (= `backward_strategy(H)`), "fused" or "dz_chunks"; dz_chunk_tokens: the dz-chunk
    path's tokens per chunk (default: ≤ DZ_CHUNK_BYTES of dz). Tests pin both."""
    if backward not in ("auto", "fused", "dz_chunks"):
        raise ValueError(f"backward must be 'auto', 'fused' or 'dz_chunks', got {backward!r}")
    if not hidden.is_cuda and not interpreted():
        raise ValueError("impl='triton' needs CUDA tensors (on CPU use impl='chunked'; tests run the kernels "
                         "in Triton's interpreter by setting TRITON_INTERPRET=1 before triton is imported)")
    for name, t in (("hidden", hidden), ("weight", weight), ("ref_hidden", ref_hidden), ("ref_weight", ref_weight)):
        if t is not None and t.numel() >= 2**31:  # the kernels' pointer offsets are int32
            raise ValueError(f"impl='triton' supports tensors of < 2**31 elements; {name} has {t.numel()} "
                             "(use impl='chunked')")
    contiguous = lambda t: None if t is None else t.contiguous()  # noqa: E731
    if ref_hidden is not None:  # the reference is a constant: no gradient flows to it
        ref_hidden, ref_weight = ref_hidden.detach(), ref_weight.detach()
        ref_bias = None if ref_bias is None else ref_bias.detach()
    head = LogitHead(softcap, logit_scale, temperature)
    return TritonTokenStats.apply(contiguous(hidden), contiguous(weight), contiguous(bias), targets.contiguous(),
                                  ignore_index, entropy, contiguous(ref_hidden), contiguous(ref_weight),
                                  contiguous(ref_bias), head, ref_head or LogitHead(),
                                  (log_sum_sq, mean_logit, is_top1), backward, dz_chunk_tokens)
