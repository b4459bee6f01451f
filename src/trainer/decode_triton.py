"""The Triton kernels behind trainer.decode_kernels (imported only where Triton is, on CUDA).

Each rounds to the model's dtype where the eager HF code does (after every bf16 operation), so the
decode step matches `transformers.generate` token for token in float32 and to rounding in bf16.
"""

import triton
import triton.language as tl


@triton.jit
def lora_term(y_row, bm, b_row, rows, c, r, RB: tl.constexpr):
    """For output rows `rows` of a group: (x A^T)[c:c+r] @ B[rows, c:c+r]^T in float32, where
    x A^T sits in `y_row` (the group GEMM's output row, after the base outputs) and B is the
    block-diagonal, pre-scaled B buffer. Rounded by the caller, as the LoRA GEMM's output was."""
    j = tl.arange(0, RB)
    mid = tl.load(y_row + c + j, mask=j < r, other=0.0).to(tl.float32)
    bt = tl.load(bm + rows[:, None] * b_row + (c + j)[None, :], mask=(j < r)[None, :], other=0.0).to(tl.float32)
    return tl.sum(bt * mid[None, :], 1)


# fmt: off
@triton.jit
def qkv(y, y_row, nb, bm, b_row, cq, rq, ck, rk, cv, rv, qw, kw, cos, sin, cs_row, q_out,
        cache, c_kv, c_b, c_h, slot_ptr, eps,
        H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, RB: tl.constexpr,
        HAS_LORA: tl.constexpr, HAS_NORM: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)  # q heads, then k heads, then v heads
    HALF: tl.constexpr = D // 2
    i = tl.arange(0, HALF)
    row = y + b * y_row
    x1 = tl.load(row + h * D + i)
    x2 = tl.load(row + h * D + HALF + i)
    dt = x1.dtype
    if HAS_LORA:
        if h < H:
            c, r = cq, rq
        elif h < H + HKV:
            c, r = ck, rk
        else:
            c, r = cv, rv
        x1 = (x1.to(tl.float32) + lora_term(row + nb, bm, b_row, h * D + i, c, r, RB).to(dt).to(tl.float32)).to(dt)
        x2 = (x2.to(tl.float32) + lora_term(row + nb, bm, b_row, h * D + HALF + i, c, r, RB).to(dt).to(tl.float32)).to(dt)
    slot = tl.load(slot_ptr)
    if h < H + HKV:
        f1, f2 = x1.to(tl.float32), x2.to(tl.float32)
        if HAS_NORM:
            rs = tl.rsqrt((tl.sum(f1 * f1, 0) + tl.sum(f2 * f2, 0)) / D + eps)
            if h < H:
                w = qw
            else:
                w = kw
            f1 = (tl.load(w + i).to(tl.float32) * (f1 * rs).to(dt).to(tl.float32)).to(dt).to(tl.float32)
            f2 = (tl.load(w + HALF + i).to(tl.float32) * (f2 * rs).to(dt).to(tl.float32)).to(dt).to(tl.float32)
        c1 = tl.load(cos + b * cs_row + i).to(tl.float32)
        c2 = tl.load(cos + b * cs_row + HALF + i).to(tl.float32)
        s1 = tl.load(sin + b * cs_row + i).to(tl.float32)
        s2 = tl.load(sin + b * cs_row + HALF + i).to(tl.float32)
        # x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1); each product rounded, as in eager
        o1 = ((f1 * c1).to(dt).to(tl.float32) + (-f2 * s1).to(dt).to(tl.float32)).to(dt)
        o2 = ((f2 * c2).to(dt).to(tl.float32) + (f1 * s2).to(dt).to(tl.float32)).to(dt)
        if h < H:
            dst = q_out + (b * H + h) * D
        else:
            dst = cache + b * c_b + (h - H) * c_h + slot * D
        tl.store(dst + i, o1)
        tl.store(dst + HALF + i, o2)
    else:
        dst = cache + c_kv + b * c_b + (h - H - HKV) * c_h + slot * D
        tl.store(dst + i, x1)
        tl.store(dst + HALF + i, x2)

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
        j = tl.arange(0, RB)
        mg = tl.load(src + 2 * inter + cg + j[None, :], mask=r_ok[:, None] & (j < rg)[None, :], other=0.0)
        mu = tl.load(src + 2 * inter + cu + j[None, :], mask=r_ok[:, None] & (j < ru)[None, :], other=0.0)
        bg = tl.load(bm + n[:, None] * b_row + (cg + j)[None, :], mask=n_ok[:, None] & (j < rg)[None, :], other=0.0)
        bu = tl.load(bm + (inter + n)[:, None] * b_row + (cu + j)[None, :], mask=n_ok[:, None] & (j < ru)[None, :],
                     other=0.0)
        lg = tl.dot(mg, tl.trans(bg), input_precision=PREC).to(dt)
        lu = tl.dot(mu, tl.trans(bu), input_precision=PREC).to(dt)
        g = (g.to(tl.float32) + lg.to(tl.float32)).to(dt)
        u = (u.to(tl.float32) + lu.to(tl.float32)).to(dt)
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
