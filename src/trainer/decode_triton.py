"""The Triton kernels behind trainer.decode_kernels (imported only where Triton is, on CUDA).

Each rounds to the model's dtype where the eager HF code does (after every bf16 operation), so the
decode step matches `transformers.generate` token for token in float32 and to rounding in bf16.
"""

import triton
import triton.language as tl


@triton.jit
def lora_tile(y, rows_ok, bm, b_row, outs, c, r, RB: tl.constexpr, PREC: tl.constexpr):
    """LoRA terms for a tile of rows x output features of a group: (x A^T)[rows, c:c+r] @
    B[outs, c:c+r]^T as one tensor-core product, float32. y: the rows' group GEMM outputs from
    where x A^T starts ([rows, 1] pointers); B: the block-diagonal, pre-scaled B buffer."""
    j = tl.arange(0, RB)
    mid = tl.load(y + c + j[None, :], mask=rows_ok[:, None] & (j < r)[None, :], other=0.0)
    bt = tl.load(bm + outs[:, None] * b_row + (c + j)[None, :], mask=(j < r)[None, :], other=0.0)
    return tl.dot(mid, tl.trans(bt), input_precision=PREC)


# fmt: off
@triton.jit
def qkv(y, y_row, nb, bm, b_row, cq, rq, ck, rk, cv, rv, qw, kw, cos, sin, cs_row, q_out,
        cache, c_kv, c_b, c_h, slot_ptr, eps, B,
        H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, BB: tl.constexpr, RB: tl.constexpr,
        HAS_LORA: tl.constexpr, HAS_NORM: tl.constexpr, PREC: tl.constexpr):
    """One head (q heads, then k, then v) for BB rows: LoRA add, q/k RMSNorm and rotary, then q
    to q_out [B, H, D] and k, v into the cache at `slot`."""
    rows = tl.program_id(0) * BB + tl.arange(0, BB)
    h = tl.program_id(1)
    ok = rows < B
    HALF: tl.constexpr = D // 2
    i = tl.arange(0, HALF)
    row = y + rows[:, None] * y_row
    x1 = tl.load(row + h * D + i[None, :], mask=ok[:, None], other=0.0)
    x2 = tl.load(row + h * D + HALF + i[None, :], mask=ok[:, None], other=0.0)
    dt = x1.dtype
    if HAS_LORA:
        if h < H:
            c, r = cq, rq
        elif h < H + HKV:
            c, r = ck, rk
        else:
            c, r = cv, rv
        l1 = lora_tile(row + nb, ok, bm, b_row, h * D + i, c, r, RB, PREC)
        l2 = lora_tile(row + nb, ok, bm, b_row, h * D + HALF + i, c, r, RB, PREC)
        x1 = (x1.to(tl.float32) + l1.to(dt).to(tl.float32)).to(dt)
        x2 = (x2.to(tl.float32) + l2.to(dt).to(tl.float32)).to(dt)
    slot = tl.load(slot_ptr)
    if h < H + HKV:
        f1, f2 = x1.to(tl.float32), x2.to(tl.float32)
        if HAS_NORM:
            rs = tl.rsqrt((tl.sum(f1 * f1, 1) + tl.sum(f2 * f2, 1)) / D + eps)[:, None]
            if h < H:
                w = qw
            else:
                w = kw
            w1 = tl.load(w + i).to(tl.float32)[None, :]
            w2 = tl.load(w + HALF + i).to(tl.float32)[None, :]
            f1 = (w1 * (f1 * rs).to(dt).to(tl.float32)).to(dt).to(tl.float32)
            f2 = (w2 * (f2 * rs).to(dt).to(tl.float32)).to(dt).to(tl.float32)
        cs = rows[:, None] * cs_row + i[None, :]
        c1 = tl.load(cos + cs, mask=ok[:, None], other=0.0).to(tl.float32)
        c2 = tl.load(cos + cs + HALF, mask=ok[:, None], other=0.0).to(tl.float32)
        s1 = tl.load(sin + cs, mask=ok[:, None], other=0.0).to(tl.float32)
        s2 = tl.load(sin + cs + HALF, mask=ok[:, None], other=0.0).to(tl.float32)
        # x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1); each product rounded, as in eager
        o1 = ((f1 * c1).to(dt).to(tl.float32) + (-f2 * s1).to(dt).to(tl.float32)).to(dt)
        o2 = ((f2 * c2).to(dt).to(tl.float32) + (f1 * s2).to(dt).to(tl.float32)).to(dt)
        if h < H:
            dst = q_out + (rows[:, None] * H + h) * D
        else:
            dst = cache + rows[:, None] * c_b + (h - H) * c_h + slot * D
        tl.store(dst + i[None, :], o1, mask=ok[:, None])
        tl.store(dst + HALF + i[None, :], o2, mask=ok[:, None])
    else:
        dst = cache + c_kv + rows[:, None] * c_b + (h - H - HKV) * c_h + slot * D
        tl.store(dst + i[None, :], x1, mask=ok[:, None])
        tl.store(dst + HALF + i[None, :], x2, mask=ok[:, None])


@triton.jit
def silu_mul(y, y_row, bm, b_row, cg, rg, cu, ru, a, inter, B,
             BN: tl.constexpr, BB: tl.constexpr, RB: tl.constexpr, HAS_LORA: tl.constexpr, PREC: tl.constexpr):
    """a = silu(gate + LoRA) * (up + LoRA) for a tile of BB rows x BN features; the LoRA terms as
    one small tensor-core product per tile, (x A^T)[rows] @ B[features]^T."""
    n = tl.program_id(0) * BN + tl.arange(0, BN)
    rows = tl.program_id(1) * BB + tl.arange(0, BB)
    n_ok, r_ok = n < inter, rows < B
    ok = r_ok[:, None] & n_ok[None, :]
    src = y + rows[:, None] * y_row
    g = tl.load(src + n[None, :], mask=ok, other=0.0)
    u = tl.load(src + inter + n[None, :], mask=ok, other=0.0)
    dt = a.dtype.element_ty
    if HAS_LORA:
        lg = lora_tile(src + 2 * inter, r_ok, bm, b_row, n, cg, rg, RB, PREC)
        lu = lora_tile(src + 2 * inter, r_ok, bm, b_row, inter + n, cu, ru, RB, PREC)
        g = (g.to(tl.float32) + lg.to(dt).to(tl.float32)).to(dt)
        u = (u.to(tl.float32) + lu.to(dt).to(tl.float32)).to(dt)
    gf = g.to(tl.float32)
    act = (gf / (1.0 + tl.exp(-gf))).to(dt)  # F.silu: float32 inside, rounded
    tl.store(a + rows[:, None] * inter + n[None, :], (act.to(tl.float32) * u.to(tl.float32)).to(dt), mask=ok)


@triton.jit
def attn(q, cache, c_kv, c_b, c_h, start_ptr, slot_ptr, o, scale,
         H: tl.constexpr, G: tl.constexpr, D: tl.constexpr, BJ: tl.constexpr, PREC: tl.constexpr):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    g = tl.arange(0, 16)
    d = tl.arange(0, D)
    rows = (b * H + kvh * G + g)[:, None] * D + d[None, :]
    qv = tl.load(q + rows, mask=(g < G)[:, None], other=0.0)
    start = tl.load(start_ptr + b)
    last = tl.load(slot_ptr)
    kbase = cache + b * c_b + kvh * c_h
    m = tl.full([16], float("-inf"), tl.float32)
    den = tl.zeros([16], tl.float32)
    acc = tl.zeros([16, D], tl.float32)
    # The first block holds `start` (<= last), so every row's running max is finite from the start.
    for j0 in range((start // BJ) * BJ, last + 1, BJ):
        j = j0 + tl.arange(0, BJ)
        live = (j >= start) & (j <= last)
        k = tl.load(kbase + j[:, None] * D + d[None, :], mask=live[:, None], other=0.0)
        s = tl.dot(qv, tl.trans(k), input_precision=PREC) * scale
        s = tl.where(live[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m - m_new)
        v = tl.load(kbase + c_kv + j[:, None] * D + d[None, :], mask=live[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        den = den * alpha + tl.sum(p, 1)
        m = m_new
    tl.store(o + rows, (acc / den[:, None]).to(o.dtype.element_ty), mask=(g < G)[:, None])

@triton.jit
def mm(x, w, y, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    rm = tl.arange(0, BM)
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    xp = x + rm[:, None] * K + rk[None, :]
    wp = w + rn[:, None] * K + rk[None, :]
    m_ok, n_ok = rm[:, None] < M, rn[:, None] < N
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for _ in range(0, K, BK):
        acc = tl.dot(tl.load(xp, mask=m_ok, other=0.0), tl.trans(tl.load(wp, mask=n_ok, other=0.0)), acc,
                     input_precision=PREC)
        xp += BK
        wp += BK
    tl.store(y + rm[:, None] * N + rn[None, :], acc.to(y.dtype.element_ty), mask=m_ok & (rn[None, :] < N))
# fmt: on
