"""The Triton kernels behind trainer.rollout.decode_kernels (imported only where Triton is, on CUDA).

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


@triton.jit
def _row_stats(part, b, NC, NCB: tl.constexpr):
    """A row's max and sum of exp(z - max) over its chunks' partial (max, sum) pairs."""
    k = tl.arange(0, NCB)
    pm = tl.load(part + (b * NC + k) * 2, mask=k < NC, other=float("-inf"))
    ps = tl.load(part + (b * NC + k) * 2 + 1, mask=k < NC, other=0.0)
    m = tl.max(pm, 0)
    return m, tl.sum(ps * tl.exp(pm - m), 0)


@triton.jit
def sample_stats(logits, l_row, temp, part, V, NC, CH: tl.constexpr):
    """Per (row, chunk of the vocabulary): max and sum of exp(z - max) of z = logits / temperature."""
    b = tl.program_id(0)
    c = tl.program_id(1)
    idx = c * CH + tl.arange(0, CH)
    z = tl.load(logits + b * l_row + idx, mask=idx < V, other=float("-inf")).to(tl.float32) / temp
    m = tl.max(z, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    tl.store(part + (b * NC + c) * 2, m)
    tl.store(part + (b * NC + c) * 2 + 1, tl.sum(tl.exp(z - m_safe), 0))


@triton.jit
def sample_race(logits, l_row, temp, log_min_p, part, best_r, best_i, seed_ptr, t_ptr, V, NC,
                CH: tl.constexpr, NCB: tl.constexpr):
    """Per (row, chunk): the exponential race (argmax of p / E, E ~ Exp(1), drawn here with Philox
    from the rollout's seed and the step) among the tokens min_p keeps (p >= min_p * max p)."""
    b = tl.program_id(0)
    c = tl.program_id(1)
    m, _ = _row_stats(part, b, NC, NCB)
    idx = c * CH + tl.arange(0, CH)
    ok = idx < V
    z = tl.load(logits + b * l_row + idx, mask=ok, other=float("-inf")).to(tl.float32) / temp
    keep = ok & (z - m >= log_min_p)
    u = tl.rand(tl.load(seed_ptr) + tl.load(t_ptr), b * V + idx)
    e = tl.maximum(-tl.log(1.0 - u), 1e-20)
    r = tl.where(keep, z - m - tl.log(e), float("-inf"))
    tl.store(best_r + b * NC + c, tl.max(r, 0))
    tl.store(best_i + b * NC + c, c * CH + tl.argmax(r, 0))


@triton.jit
def sample_pick(logits, l_row, temp, part, best_r, best_i, token, logp, NC, NCB: tl.constexpr):
    """Per row: the race's winner over the chunks, and its log-probability under softmax(z)."""
    b = tl.program_id(0)
    m, s = _row_stats(part, b, NC, NCB)
    k = tl.arange(0, NCB)
    r = tl.load(best_r + b * NC + k, mask=k < NC, other=float("-inf"))
    i = tl.load(best_i + b * NC + k, mask=k < NC, other=0)
    tok = tl.sum(tl.where(k == tl.argmax(r, 0), i, 0), 0)
    z = tl.load(logits + b * l_row + tok).to(tl.float32) / temp
    tl.store(token + b, tok.to(tl.int64))
    tl.store(logp + b, z - m - tl.log(s))
# fmt: on
