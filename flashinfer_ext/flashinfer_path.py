"""FlashInfer with in-kernel RoPE (``pos_encoding_mode="ROPE_LLAMA"``) where its convention fits.

FlashInfer 0.7.2 (the version SGLang 0.5.23 pins) rotates *both* q and k inside its fa2 kernels:
k at its index in the request's KV sequence (``0..kv_len-1``) and q at ``kv_len - qo_len + i``
(decode: ``kv_len - 1``). No per-token offset is exposed by the batch wrappers. That matches MEPIC
exactly when

* the batch is a decode (one query at the last position), or
* an extend whose new tokens are the contiguous suffix ``[prefix_len, seq_len)`` of every request
  and that has no MEPIC scratch keys or groups (plain requests, radix-cache hits),

and when the rotation is NeoX-style over the full head (FlashInfer has no GPT-J or partial rotary in
attention) with default RoPE (``rope_theta``, ``rope_scale=1``). Everything else goes to the Triton
kernel (:mod:`flashinfer_ext.dispatch`).

The model rotates q (``mepic_sglang.sglang.nope.QueryOnlyRope``), so this path rotates it back first
(:func:`flashinfer_ext.rope_reference.unapply_rope`, one elementwise pass over q).

Facts from reading the 0.7.2 wheel (``decode.py``/``prefill.py``/``utils.py``; not run here):
``auto`` never picks fa3 with RoPE on (fa3 would silently drop it), ROPE_LLAMA kernels are
JIT-compiled (nvcc needed on first use), prefill RoPE needs 2-byte KV, and in-kernel sin/cos use
fast intrinsics (less exact past ~48k positions). :class:`FlashInferRope` is therefore checked
against the Triton kernel once when the backend starts (:func:`self_check`).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from flashinfer_ext.rope_reference import RopeTable, unapply_rope
from flashinfer_ext.triton_attention import host_to_device

WORKSPACE_BYTES = 128 * 1024 * 1024  # FlashInfer's recommendation


def available() -> bool:
    """FlashInfer importable and a CUDA device present."""
    return torch.cuda.is_available() and importlib.util.find_spec("flashinfer") is not None


def table_fits(table: RopeTable, kv_dtype: torch.dtype) -> str | None:
    """Why this layer's RoPE/KV cannot use FlashInfer's ROPE_LLAMA, or None when it can."""
    if not table.is_neox_style:
        return "FlashInfer's in-kernel RoPE is NeoX-style only (this model is GPT-J style)"
    if table.rotary_dim != table.head_size:
        return "FlashInfer's in-kernel RoPE rotates the whole head (this model: partial rotary)"
    if table.head_size % 64:
        return f"FlashInfer prefill RoPE needs head_dim % 64 == 0 (got {table.head_size})"
    if kv_dtype.itemsize != 2:
        return f"FlashInfer prefill RoPE needs a 2-byte KV cache (got {kv_dtype})"
    return None


def kv_token_indices(
    req_to_token: torch.Tensor, rows: torch.Tensor, seq_lens: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kv_indptr [B+1] int32, kv_indices [sum seq_lens] int32)``: every request's row slots,
    concatenated (FlashInfer with page_size 1, as SGLang's own FlashInfer backend uses it).
    Sizes come from the CPU list, so nothing waits for the GPU."""
    device = rows.device
    total = sum(seq_lens)
    lens = host_to_device(seq_lens, device).to(torch.int64)
    indptr = torch.zeros(len(seq_lens) + 1, dtype=torch.int64, device=device)
    indptr[1:] = torch.cumsum(lens, 0)
    owner = torch.repeat_interleave(rows.to(torch.int64), lens, output_size=total)
    start = torch.repeat_interleave(indptr[:-1], lens, output_size=total)
    offset = torch.arange(total, device=device) - start
    indices = req_to_token[owner, offset].to(torch.int32)
    return indptr.to(torch.int32), indices


class FlashInferRope:
    """Paged decode/prefill wrappers planned once per forward, run per layer."""

    def __init__(self, device: torch.device, q_heads: int, kv_heads: int, head_dim: int) -> None:
        import flashinfer

        self.q_heads, self.kv_heads, self.head_dim = q_heads, kv_heads, head_dim
        self.workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        # NOTE: tensor cores pay off for decode once a KV head serves several query heads.
        self.decode = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self.workspace, "NHD", use_tensor_cores=q_heads // kv_heads >= 4
        )
        self.prefill = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self.workspace, "NHD")
        self._decode_mode = True
        self._planned: tuple[Any, ...] | None = None
        self._pending: dict[str, Any] = {}

    def prepare(
        self,
        decode: bool,
        req_to_token: torch.Tensor,
        rows: torch.Tensor,
        seq_lens: list[int],
        q_counts: list[int],
    ) -> None:
        """Remember this forward's layout; planned lazily at the first layer (which brings the
        dtypes, softmax scale and RoPE base that plan() needs)."""
        indptr, indices = kv_token_indices(req_to_token, rows, seq_lens)
        qo = [0]
        for n in q_counts:
            qo.append(qo[-1] + n)
        self._decode_mode = decode
        self._pending = {
            "kv_indptr": indptr,
            "kv_indices": indices,
            "qo_indptr": host_to_device(qo, rows.device),
            "last_page_len": torch.ones(len(seq_lens), dtype=torch.int32, device=rows.device),
        }
        self._planned = None

    def _plan(
        self, q_dtype: torch.dtype, kv_dtype: torch.dtype, scale: float, theta: float
    ) -> None:
        key = (q_dtype, kv_dtype, scale, theta)
        if self._planned == key:
            return
        p = self._pending
        common = {
            "pos_encoding_mode": "ROPE_LLAMA",
            "sm_scale": scale,
            "rope_scale": 1.0,
            "rope_theta": theta,
            "q_data_type": q_dtype,
            "kv_data_type": kv_dtype,
        }
        if self._decode_mode:
            self.decode.plan(
                p["kv_indptr"], p["kv_indices"], p["last_page_len"], self.q_heads,
                self.kv_heads, self.head_dim, 1, **common,
            )  # fmt: skip
        else:
            self.prefill.plan(
                p["qo_indptr"], p["kv_indptr"], p["kv_indices"], p["last_page_len"],
                self.q_heads, self.kv_heads, self.head_dim, 1, causal=True, **common,
            )  # fmt: skip
        self._planned = key

    def run(
        self,
        q: torch.Tensor,
        positions: torch.Tensor,
        k_buf: torch.Tensor,
        v_buf: torch.Tensor,
        table: RopeTable,
        theta: float,
        scale: float,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``q [n, q_heads, D]`` rotated by the model at ``positions``; pool buffers are
        ``[slots, kv_heads, D]`` (FlashInfer reads 3-D caches as page_size 1)."""
        self._plan(q.dtype, k_buf.dtype, scale, theta)
        q_nope = unapply_rope(q, positions, table)
        wrapper = self.decode if self._decode_mode else self.prefill
        result: torch.Tensor = wrapper.run(q_nope, (k_buf, v_buf), out=out)
        return result


def rope_theta(rope: Any) -> float:
    """The RoPE base of an SGLang ``RotaryEmbedding`` (default RoPE: ``theta^(-2i/d)``)."""
    return float(rope.base)
