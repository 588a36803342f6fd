"""Triton kernels: paged attention over NoPE keys with RoPE applied in registers.

The general case that FlashInfer's position convention does not cover: queries at explicit
positions (any subset of the request, any order), keys read through SGLang's per-token slot table
(``req_to_token``) and rotated at their position in *this* request, causal by position (not by
row order), GQA, and MEPIC's attention groups (a cold chunk encoded on its own inside the same
forward, with scratch keys beyond the row). Semantics are exactly
:func:`flashinfer_ext.rope_reference.attention_with_positions`, the oracle in the tests.

Keys of request ``b`` (what one program loops over)::

    region      key index n        slot                              position   group
    ----------  -----------------  --------------------------------  ---------  ---------------
    row         0 .. seq_len-1     req_to_token[rows[b], n]          n          k_group[g0 + n]
    extra       0 .. n_extra-1     extra_slots[e_start[b] + n]       extra_pos  k_group[g0 +
                                                                                 seq_len + n]
    (g0 = kg_start[b]; a request without groups has kg_start[b] == kg_start[b+1]: all context)

Row keys past the largest query position of a block are skipped (they can never be visible).

RoPE in registers: a key's channels split into two halves ``x1, x2`` (neox: first/second half;
GPT-J: even/odd channels); ``rope(x) = (x1*cos - x2*sin, x2*cos + x1*sin)``, so
``q . rope(k) = q1 . r1 + q2 . r2`` needs no concatenation. cos/sin come from SGLang's
``cos_sin_cache`` row of the key's position (cos half, then sin half). Full rotary only
(``rotary_dim == head_size``); the dispatcher sends anything else to the torch reference.

Online softmax with ``-inf`` masking; a query that sees no key gets a zero row (the reference
gives NaN there; MEPIC never produces such a query).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _halves(HALF: tl.constexpr, IS_NEOX: tl.constexpr):
    """Channel offsets of a head's two RoPE halves: NeoX first/second half, GPT-J even/odd."""
    offs_d = tl.arange(0, HALF)
    if IS_NEOX:
        d1 = offs_d
        d2 = offs_d + HALF
    else:
        d1 = offs_d * 2
        d2 = offs_d * 2 + 1
    return offs_d, d1, d2


@triton.jit
def _attend_block(
    acc, m_i, l_i, q1, q2, qpos, qgrp,
    K, V, CosSin, KGroup, KCtx,
    slots, kpos, n_mask, gidx, g_hi,
    stride_kn, stride_kh, stride_vn, stride_vh, stride_cs,
    kvh, scale,
    HALF: tl.constexpr, BLOCK_DV: tl.constexpr, DV: tl.constexpr,
    IS_NEOX: tl.constexpr, HAS_GROUPS: tl.constexpr, DOT_F32: tl.constexpr, ROPE: tl.constexpr,
):  # fmt: skip
    """One block of keys into the running (acc, max, sum) of a block of queries.

    ``ROPE=False`` reads keys as already rotated (benchmarks: the same kernel without fusion)."""
    offs_d, d1, d2 = _halves(HALF, IS_NEOX)
    k_base = K + slots[:, None].to(tl.int64) * stride_kn + kvh * stride_kh
    k1 = tl.load(k_base + d1[None, :], mask=n_mask[:, None], other=0.0).to(tl.float32)
    k2 = tl.load(k_base + d2[None, :], mask=n_mask[:, None], other=0.0).to(tl.float32)
    if ROPE:
        cs_base = CosSin + kpos[:, None].to(tl.int64) * stride_cs
        cos = tl.load(cs_base + offs_d[None, :], mask=n_mask[:, None], other=1.0).to(tl.float32)
        sin = tl.load(cs_base + HALF + offs_d[None, :], mask=n_mask[:, None], other=0.0)
        sin = sin.to(tl.float32)
        r1 = k1 * cos - k2 * sin
        r2 = k2 * cos + k1 * sin
    else:
        r1 = k1
        r2 = k2
    if DOT_F32:
        qk = tl.dot(q1.to(tl.float32), tl.trans(r1), input_precision="ieee")
        qk += tl.dot(q2.to(tl.float32), tl.trans(r2), input_precision="ieee")
    else:
        qk = tl.dot(q1, tl.trans(r1.to(q1.dtype)))
        qk += tl.dot(q2, tl.trans(r2.to(q2.dtype)))
    qk = qk * scale
    vis = n_mask[None, :] & (kpos[None, :] <= qpos[:, None])
    if HAS_GROUPS:
        g_mask = n_mask & (gidx < g_hi)  # a request without groups has an empty range
        kg = tl.load(KGroup + gidx, mask=g_mask, other=0)
        kc = tl.load(KCtx + gidx, mask=g_mask, other=1)
        same = kg[None, :] == qgrp[:, None]
        vis = vis & tl.where(qgrp[:, None] == 0, kc[None, :] != 0, same)
    qk = tl.where(vis, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_use)
    p = tl.exp(qk - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    offs_dv = tl.arange(0, BLOCK_DV)
    v_ptr = V + slots[:, None].to(tl.int64) * stride_vn + kvh * stride_vh + offs_dv[None, :]
    v = tl.load(v_ptr, mask=n_mask[:, None] & (offs_dv[None, :] < DV), other=0.0)
    if DOT_F32:
        pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
    else:
        pv = tl.dot(p.to(v.dtype), v)
    acc = acc * alpha[:, None] + pv
    return acc, m_new, l_i


@triton.jit
def extend_kernel(
    Q, K, V, Out, CosSin, ReqToTok, Rows, SeqLens, QStart, QPos, QGroup,
    EStart, ESlots, EPos, KGStart, KGroup, KCtx,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_on, stride_oh,
    stride_rt, stride_cs, scale,
    GQA: tl.constexpr, HALF: tl.constexpr, DV: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_NEOX: tl.constexpr, HAS_GROUPS: tl.constexpr, HAS_EXTRA: tl.constexpr,
    DOT_F32: tl.constexpr, ROPE: tl.constexpr,
):  # fmt: skip
    """Grid ``(batch, q_heads, cdiv(max_q_len, BLOCK_M))``: one block of one request's queries."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    mb = tl.program_id(2)
    q_lo = tl.load(QStart + b)
    q_hi = tl.load(QStart + b + 1)
    if mb * BLOCK_M >= q_hi - q_lo:
        return
    kvh = h // GQA
    offs_m = q_lo + mb * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < q_hi
    offs_d, d1, d2 = _halves(HALF, IS_NEOX)
    q_base = Q + offs_m[:, None].to(tl.int64) * stride_qn + h * stride_qh
    q1 = tl.load(q_base + d1[None, :], mask=m_mask[:, None], other=0.0)
    q2 = tl.load(q_base + d2[None, :], mask=m_mask[:, None], other=0.0)
    qpos = tl.load(QPos + offs_m, mask=m_mask, other=-1)
    qgrp = tl.zeros([BLOCK_M], dtype=tl.int32)
    if HAS_GROUPS:
        qgrp = tl.load(QGroup + offs_m, mask=m_mask, other=0).to(tl.int32)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)

    row = tl.load(Rows + b).to(tl.int64)
    seq_len = tl.load(SeqLens + b)
    g0 = tl.load(KGStart + b)
    g_hi = tl.load(KGStart + b + 1)
    kv_end = tl.minimum(seq_len, tl.max(qpos) + 1)
    for n0 in range(0, kv_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < kv_end
        slots = tl.load(ReqToTok + row * stride_rt + offs_n, mask=n_mask, other=0)
        acc, m_i, l_i = _attend_block(
            acc, m_i, l_i, q1, q2, qpos, qgrp, K, V, CosSin, KGroup, KCtx,
            slots, offs_n, n_mask, g0 + offs_n, g_hi,
            stride_kn, stride_kh, stride_vn, stride_vh, stride_cs, kvh, scale,
            HALF, BLOCK_DV, DV, IS_NEOX, HAS_GROUPS, DOT_F32, ROPE,
        )  # fmt: skip
    if HAS_EXTRA:
        e_lo = tl.load(EStart + b)
        e_hi = tl.load(EStart + b + 1)
        for n0 in range(e_lo, e_hi, BLOCK_N):
            offs_e = n0 + tl.arange(0, BLOCK_N)
            e_mask = offs_e < e_hi
            slots = tl.load(ESlots + offs_e, mask=e_mask, other=0)
            kpos = tl.load(EPos + offs_e, mask=e_mask, other=0)
            acc, m_i, l_i = _attend_block(
                acc, m_i, l_i, q1, q2, qpos, qgrp, K, V, CosSin, KGroup, KCtx,
                slots, kpos, e_mask, g0 + seq_len + (offs_e - e_lo), g_hi,
                stride_kn, stride_kh, stride_vn, stride_vh, stride_cs, kvh, scale,
                HALF, BLOCK_DV, DV, IS_NEOX, HAS_GROUPS, DOT_F32, ROPE,
            )  # fmt: skip

    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    offs_dv = tl.arange(0, BLOCK_DV)
    o_ptr = Out + offs_m[:, None].to(tl.int64) * stride_on + h * stride_oh + offs_dv[None, :]
    tl.store(o_ptr, out.to(Out.dtype.element_ty), mask=m_mask[:, None] & (offs_dv[None, :] < DV))


@triton.jit
def decode_split_kernel(
    Q, K, V, CosSin, ReqToTok, Rows, SeqLens, QPos, MidO, MidML,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_rt, stride_cs,
    stride_mb, stride_mh, stride_ms, stride_lb, stride_lh, stride_ls,
    scale, split_len,
    GQA: tl.constexpr, BLOCK_H: tl.constexpr, HALF: tl.constexpr, DV: tl.constexpr,
    BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr, IS_NEOX: tl.constexpr, DOT_F32: tl.constexpr,
    ROPE: tl.constexpr,
):  # fmt: skip
    """Grid ``(batch, kv_heads, splits)``: the GQA group of one KV head over one split of keys.

    Writes the split's un-normalised output and its (max, sum) for :func:`decode_merge_kernel`.
    """
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    s = tl.program_id(2)
    seq_len = tl.load(SeqLens + b)
    qpos_b = tl.load(QPos + b)
    kv_end = tl.minimum(seq_len, qpos_b + 1)
    n_lo = s * split_len
    n_hi = tl.minimum(n_lo + split_len, kv_end)
    offs_h = tl.arange(0, BLOCK_H)
    h_mask = offs_h < GQA
    heads = kvh * GQA + offs_h
    offs_d, d1, d2 = _halves(HALF, IS_NEOX)
    q_base = Q + b.to(tl.int64) * stride_qn + heads[:, None] * stride_qh
    q1 = tl.load(q_base + d1[None, :], mask=h_mask[:, None], other=0.0)
    q2 = tl.load(q_base + d2[None, :], mask=h_mask[:, None], other=0.0)
    qpos = tl.zeros([BLOCK_H], dtype=tl.int64) + qpos_b
    qgrp = tl.zeros([BLOCK_H], dtype=tl.int32)

    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_DV], dtype=tl.float32)
    row = tl.load(Rows + b).to(tl.int64)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < n_hi
        slots = tl.load(ReqToTok + row * stride_rt + offs_n, mask=n_mask, other=0)
        acc, m_i, l_i = _attend_block(
            acc, m_i, l_i, q1, q2, qpos, qgrp, K, V, CosSin, K, K,
            slots, offs_n, n_mask, offs_n, 0,
            stride_kn, stride_kh, stride_vn, stride_vh, stride_cs, kvh, scale,
            HALF, BLOCK_DV, DV, IS_NEOX, False, DOT_F32, ROPE,
        )  # fmt: skip
    offs_dv = tl.arange(0, BLOCK_DV)
    mid = MidO + b.to(tl.int64) * stride_mb + heads[:, None] * stride_mh + s * stride_ms
    tl.store(mid + offs_dv[None, :], acc, mask=h_mask[:, None] & (offs_dv[None, :] < DV))
    ml = MidML + b.to(tl.int64) * stride_lb + heads * stride_lh + s * stride_ls
    tl.store(ml, m_i, mask=h_mask)
    tl.store(ml + 1, l_i, mask=h_mask)


@triton.jit
def decode_merge_kernel(
    MidO, MidML, Out,
    stride_mb, stride_mh, stride_ms, stride_lb, stride_lh, stride_ls, stride_on, stride_oh,
    SPLITS: tl.constexpr, DV: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """Grid ``(batch, q_heads)``: combine the splits' partial softmaxes into the output row."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    s_mask = offs_s < SPLITS
    ml = MidML + b.to(tl.int64) * stride_lb + h * stride_lh + offs_s * stride_ls
    m_s = tl.load(ml, mask=s_mask, other=float("-inf"))
    l_s = tl.load(ml + 1, mask=s_mask, other=0.0)
    m = tl.max(m_s, 0)
    m_use = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp(m_s - m_use)
    total = tl.sum(l_s * w, 0)
    offs_dv = tl.arange(0, BLOCK_DV)
    mid = MidO + b.to(tl.int64) * stride_mb + h * stride_mh + offs_s[:, None] * stride_ms
    o_s = tl.load(mid + offs_dv[None, :], mask=s_mask[:, None] & (offs_dv[None, :] < DV), other=0.0)
    out = tl.sum(o_s * w[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    o_ptr = Out + b.to(tl.int64) * stride_on + h * stride_oh + offs_dv
    tl.store(o_ptr, out.to(Out.dtype.element_ty), mask=offs_dv < DV)
