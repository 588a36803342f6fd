"""Launchers for the RoPE-fused Triton kernels, and the per-forward batch description they read.

:class:`RaggedBatch` is built once per forward (:func:`pack_batch`) and shared by every layer. The
kernels themselves live in :mod:`flashinfer_ext.triton_kernel`; their semantics are
:func:`flashinfer_ext.rope_reference.attention_with_positions` applied to each request.

On CPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``), which is how the tests
check them against the torch reference without a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import triton

from flashinfer_ext.inputs import ColdChunkKeys
from flashinfer_ext.rope_reference import RopeTable
from flashinfer_ext.triton_kernel import decode_merge_kernel, decode_split_kernel, extend_kernel


def interpreting() -> bool:
    """True when Triton kernels run in the interpreter (CPU tensors allowed).

    NOTE: Triton decides at import time (``triton.language`` itself is built differently), so
    ``TRITON_INTERPRET=1`` must be in the environment before anything imports triton: the test
    suite sets it in ``tests/conftest.py`` on machines without CUDA.
    """
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class RaggedBatch:
    """Where every request's queries and keys are (device tensors, ``B`` = batch size).

    Row keys of request ``b`` are ``req_to_token[rows[b], :seq_lens[b]]`` at positions
    ``0..seq_lens[b]-1``; its queries are ``q[q_start[b]:q_start[b+1]]`` at ``q_positions``;
    optional extra keys (MEPIC scratch heads) are ``extra_slots[e_start[b]:e_start[b+1]]`` at
    ``extra_positions``; optional groups cover row then extra keys at
    ``k_group[kg_start[b]:kg_start[b+1]]`` (empty = every key is context).
    """

    req_to_token: torch.Tensor  # [pool rows, max_context] int32 slot ids
    rows: torch.Tensor  # [B]
    seq_lens: torch.Tensor  # [B] int32
    q_start: torch.Tensor  # [B + 1] int32
    q_positions: torch.Tensor  # [n_q] int64
    q_group: torch.Tensor  # [n_q] int32 (all 0 without groups)
    e_start: torch.Tensor  # [B + 1] int32
    extra_slots: torch.Tensor  # [n_extra]
    extra_positions: torch.Tensor  # [n_extra]
    kg_start: torch.Tensor  # [B + 1] int32
    k_group: torch.Tensor  # [sum of grouped keys] int32
    k_context: torch.Tensor  # [sum of grouped keys] int8
    max_q_len: int
    max_seq_len: int

    @property
    def batch_size(self) -> int:
        return int(self.rows.shape[0])

    @property
    def has_extra(self) -> bool:
        return int(self.extra_slots.shape[0]) > 0

    @property
    def has_groups(self) -> bool:
        return int(self.k_group.shape[0]) > 0


def host_to_device(values: list[int], device: torch.device) -> torch.Tensor:
    """An int32 tensor on ``device`` without stalling the host: pinned memory and a non-blocking
    copy on CUDA (a pageable copy would wait for the GPU to finish the previous forward)."""
    t = torch.tensor(values, dtype=torch.int32)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _offsets(counts: list[int], device: torch.device) -> torch.Tensor:
    out = [0]
    for c in counts:
        out.append(out[-1] + c)
    return host_to_device(out, device)


def pack_batch(
    req_to_token: torch.Tensor,
    rows: torch.Tensor,
    seq_lens: list[int],
    q_counts: list[int],
    q_positions: torch.Tensor,
    extras: Mapping[int, ColdChunkKeys | None] | None = None,
) -> RaggedBatch:
    """Describe one forward. ``extras[b]``: request ``b``'s MEPIC cold-chunk keys and groups
    (None or absent: none).

    Sizes come from the CPU lists, so packing never waits for the GPU.
    """
    device = q_positions.device
    cold: dict[int, ColdChunkKeys] = {b: e for b, e in (extras or {}).items() if e is not None}
    batch = len(seq_lens)
    n_extra = [int(cold[b].extra_slots.shape[0]) if b in cold else 0 for b in range(batch)]
    n_grouped = [seq_lens[b] + n_extra[b] if b in cold else 0 for b in range(batch)]
    empty_i32 = torch.empty(0, dtype=torch.int32, device=device)
    if cold:
        q_group = torch.cat(
            [
                cold[b].q_group.to(device, torch.int32)
                if b in cold
                else torch.zeros(q_counts[b], dtype=torch.int32, device=device)
                for b in range(batch)
            ]
        )
        parts = [cold[b] for b in range(batch) if b in cold]
        k_group = torch.cat([p.k_group.to(device, torch.int32) for p in parts])
        k_context = torch.cat([p.k_context.to(device, torch.int8) for p in parts])
        extra_slots = torch.cat([p.extra_slots.to(device, torch.int64) for p in parts])
        extra_positions = torch.cat([p.extra_positions.to(device, torch.int64) for p in parts])
    else:
        q_group = empty_i32
        k_group, k_context = empty_i32, empty_i32.to(torch.int8)
        extra_slots = extra_positions = empty_i32.to(torch.int64)
    return RaggedBatch(
        req_to_token=req_to_token,
        rows=rows.to(device),
        seq_lens=host_to_device(seq_lens, device),
        q_start=_offsets(q_counts, device),
        q_positions=q_positions,
        q_group=q_group,
        e_start=_offsets(n_extra, device),
        extra_slots=extra_slots,
        extra_positions=extra_positions,
        kg_start=_offsets(n_grouped, device),
        k_group=k_group,
        k_context=k_context,
        max_q_len=max(q_counts, default=0),
        max_seq_len=max(seq_lens, default=0),
    )


def unsupported(table: RopeTable, head_size: int, q_heads: int, kv_heads: int) -> str | None:
    """Why the Triton kernel cannot serve this layer, or None."""
    if table.rotary_dim != table.head_size or head_size != table.head_size:
        return "the Triton kernel supports full rotary (rotary_dim == head_size) only"
    if head_size < 32 or head_size & (head_size - 1):
        return f"the Triton kernel needs a power-of-two head size >= 32, got {head_size}"
    if q_heads % kv_heads:
        return f"{q_heads} query heads are not a multiple of {kv_heads}"
    return None


def _check(q: torch.Tensor, k_buf: torch.Tensor, table: RopeTable) -> tuple[int, int]:
    problem = unsupported(table, q.shape[-1], q.shape[1], k_buf.shape[1])
    if problem:
        raise ValueError(problem)
    return q.shape[-1] // 2, q.shape[1] // k_buf.shape[1]


def _dot_f32(dtype: torch.dtype) -> bool:
    # NOTE: fp32 uses IEEE dots (no TF32) so it matches the reference; the interpreter's bf16 dot
    # is wrong (numpy has no bfloat16), so the interpreter upcasts bf16 tiles.
    return dtype == torch.float32 or (dtype == torch.bfloat16 and interpreting())


def extend_attention(
    q: torch.Tensor,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    batch: RaggedBatch,
    table: RopeTable,
    scale: float,
    out: torch.Tensor | None = None,
    block_m: int = 64,
    block_n: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
    rope: bool = True,
) -> torch.Tensor:
    """Queries ``q [n_q, q_heads, D]`` (rotated) over NoPE keys of the pool buffers
    ``k_buf [slots, kv_heads, D]`` / ``v_buf [slots, kv_heads, Dv]``.

    Returns ``[n_q, q_heads, Dv]``. ``rope=False`` treats the keys as already rotated (only for
    benchmarks: the same kernel without the fused rotation).
    """
    half, gqa = _check(q, k_buf, table)
    dv = v_buf.shape[-1]
    if out is None:
        out = q.new_empty((q.shape[0], q.shape[1], dv))
    if q.shape[0] == 0:
        return out
    grid = (batch.batch_size, q.shape[1], triton.cdiv(batch.max_q_len, block_m))
    dummy = batch.seq_lens
    cs = table.cos_sin_cache
    extend_kernel[grid](
        q, k_buf, v_buf, out, cs, batch.req_to_token, batch.rows, batch.seq_lens,
        batch.q_start, batch.q_positions, batch.q_group if batch.has_groups else dummy,
        batch.e_start, batch.extra_slots if batch.has_extra else dummy,
        batch.extra_positions if batch.has_extra else dummy,
        batch.kg_start, batch.k_group if batch.has_groups else dummy,
        batch.k_context if batch.has_groups else dummy,
        q.stride(0), q.stride(1), k_buf.stride(0), k_buf.stride(1), v_buf.stride(0),
        v_buf.stride(1), out.stride(0), out.stride(1), batch.req_to_token.stride(0),
        cs.stride(0), scale,
        GQA=gqa, HALF=half, DV=dv, BLOCK_DV=triton.next_power_of_2(dv),
        BLOCK_M=block_m, BLOCK_N=block_n, IS_NEOX=table.is_neox_style,
        HAS_GROUPS=batch.has_groups, HAS_EXTRA=batch.has_extra, DOT_F32=_dot_f32(q.dtype),
        ROPE=rope, num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out


def decode_splits(max_seq_len: int, batch: int, kv_heads: int, block_n: int) -> tuple[int, int]:
    """(splits, keys per split): enough programs to fill a GPU at small batch, none idle."""
    # NOTE: ~2 programs per SM on an H100 (132 SMs); long contexts split more, short ones less.
    want = max(1, -(-264 // max(1, batch * kv_heads)))
    splits = max(1, min(want, -(-max_seq_len // (4 * block_n)), 64))
    split_len = -(-max(1, max_seq_len) // splits)
    split_len = -(-split_len // block_n) * block_n
    return -(-max(1, max_seq_len) // split_len), split_len


def decode_attention(
    q: torch.Tensor,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    batch: RaggedBatch,
    table: RopeTable,
    scale: float,
    out: torch.Tensor | None = None,
    block_n: int = 64,
    splits: tuple[int, int] | None = None,
    num_warps: int = 4,
    rope: bool = True,
) -> torch.Tensor:
    """One query per request (at ``batch.q_positions[b]``) over its row keys; split-K + merge.
    ``rope`` as in :func:`extend_attention`."""
    half, gqa = _check(q, k_buf, table)
    dv = v_buf.shape[-1]
    bsz, q_heads = q.shape[0], q.shape[1]
    if out is None:
        out = q.new_empty((bsz, q_heads, dv))
    if bsz == 0:
        return out
    n_splits, split_len = splits or decode_splits(batch.max_seq_len, bsz, k_buf.shape[1], block_n)
    mid = torch.empty((bsz, q_heads, n_splits, dv), dtype=torch.float32, device=q.device)
    ml = torch.empty((bsz, q_heads, n_splits, 2), dtype=torch.float32, device=q.device)
    cs = table.cos_sin_cache
    decode_split_kernel[(bsz, k_buf.shape[1], n_splits)](
        q, k_buf, v_buf, cs, batch.req_to_token, batch.rows, batch.seq_lens, batch.q_positions,
        mid, ml, q.stride(0), q.stride(1), k_buf.stride(0), k_buf.stride(1), v_buf.stride(0),
        v_buf.stride(1), batch.req_to_token.stride(0), cs.stride(0),
        mid.stride(0), mid.stride(1), mid.stride(2), ml.stride(0), ml.stride(1), ml.stride(2),
        scale, split_len,
        GQA=gqa, BLOCK_H=max(16, triton.next_power_of_2(gqa)), HALF=half, DV=dv,
        BLOCK_DV=triton.next_power_of_2(dv), BLOCK_N=block_n, IS_NEOX=table.is_neox_style,
        DOT_F32=_dot_f32(q.dtype), ROPE=rope, num_warps=num_warps,
    )  # fmt: skip
    decode_merge_kernel[(bsz, q_heads)](
        mid, ml, out, mid.stride(0), mid.stride(1), mid.stride(2), ml.stride(0), ml.stride(1),
        ml.stride(2), out.stride(0), out.stride(1),
        SPLITS=n_splits, DV=dv, BLOCK_DV=triton.next_power_of_2(dv),
        BLOCK_S=max(2, triton.next_power_of_2(n_splits)),
    )  # fmt: skip
    return out
