"""``--attention-backend mepic`` (CPU): NoPE keys in the pool; RoPE and position mask in attention.

Contract with the model side (``mepic_sglang/sglang/nope.py``): every attention layer's model module
rotates only q, and the layer object (``RadixAttention``) carries the real rotary embedding as
``layer.mepic_rope``. The KV pool therefore holds keys without RoPE.

Per request ``r`` of a batch (``row = req_to_token[req_pool_indices[r]]``)::

    row[0 : seq_len]          slot ids of the request's tokens, in logical order:
                              row index == position of that token in this request
    queries                   this forward's tokens of r, at forward_batch.positions
                              (extend: any subset of [0, seq_len), decode: seq_len - 1)

Keys are gathered from ``row[:seq_len]``, rotated at their row index, and each query attends to
the keys whose position is <= its own. An extend that encodes a MEPIC chunk on its own (a cold
chunk) adds scratch keys after the row (``extra_slots`` at ``extra_positions``) and visibility
groups (:class:`flashinfer_ext.rope_reference.AttentionGroups`). Unlike SGLang's
``torch_native`` (which pads the query to the whole sequence), only the query rows of this forward
are computed.
"""

from __future__ import annotations

from typing import Any

import torch
from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend
from sglang.srt.layers.radix_attention import AttentionType
from sglang.srt.mem_cache.memory_pool import KVWriteLoc

from flashinfer_ext.inputs import MepicAttention
from flashinfer_ext.rope_reference import AttentionGroups, RopeTable, attention_with_positions

BACKEND_NAME = "mepic"


class MissingRopeError(RuntimeError):
    """An attention layer reached the MEPIC backend without ``layer.mepic_rope``."""


def layer_rope(layer: Any) -> RopeTable:
    rope = getattr(layer, "mepic_rope", None)
    if rope is None:
        raise MissingRopeError(
            f"attention layer {getattr(layer, 'layer_id', '?')} has no mepic_rope: this model "
            "class is not supported by --attention-backend mepic (Llama, Qwen2 and Qwen3 are)"
        )
    return RopeTable.from_module(rope)


class MepicTorchAttnBackend(TorchNativeAttnBackend):
    """Torch reference backend (CPU path and test oracle for the GPU kernels)."""

    def _check_layer(self, layer: Any) -> None:
        if layer.is_cross_attention or layer.attn_type == AttentionType.ENCODER_ONLY:
            raise NotImplementedError("MEPIC attention supports causal decoder layers only")
        if layer.sliding_window_size is not None and layer.sliding_window_size > -1:
            raise NotImplementedError("MEPIC attention does not support sliding windows")

    def _save_kv(
        self, k: torch.Tensor | None, v: torch.Tensor | None, layer: Any, forward_batch: Any,
        save_kv_cache: bool,
    ) -> None:  # fmt: skip
        """Store this forward's keys (NoPE) and values in the pool."""
        if save_kv_cache and k is not None and v is not None:
            loc = KVWriteLoc(forward_batch.out_cache_loc, self.swa_out_cache_loc)
            self.token_to_kv_pool.set_kv_buffer(layer, loc, k, v)

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor | None,
        v: torch.Tensor | None,
        layer: Any,
        forward_batch: Any,
        save_kv_cache: bool,
        q_counts: list[int],
    ) -> torch.Tensor:
        self._check_layer(layer)
        self._save_kv(k, v, layer, forward_batch, save_kv_cache)
        table = layer_rope(layer)
        q_ = q.reshape(-1, layer.tp_q_head_num, layer.qk_head_dim)
        out = q_.new_empty((q_.shape[0], layer.tp_q_head_num, layer.v_head_dim))
        k_buf = self.token_to_kv_pool.get_key_buffer(layer.layer_id)
        v_buf = self.token_to_kv_pool.get_value_buffer(layer.layer_id)
        req_to_token = self.req_to_token_pool.req_to_token
        positions = forward_batch.positions
        seq_lens = forward_batch.seq_lens_cpu.tolist()
        rows = forward_batch.req_pool_indices.tolist()
        mepic = MepicAttention.of(forward_batch)
        cold = mepic.cold if mepic is not None else {}
        start = 0
        for r, (row, seq_len, n_q) in enumerate(zip(rows, seq_lens, q_counts, strict=True)):
            end = start + n_q
            slots = req_to_token[row, :seq_len]
            k_pos = torch.arange(seq_len, device=positions.device)
            extra = cold.get(r)
            groups = None
            if extra is not None:  # MEPIC cold chunks: scratch keys and visibility groups
                slots = torch.cat([slots.to(extra.extra_slots.dtype), extra.extra_slots])
                k_pos = torch.cat([k_pos, extra.extra_positions.to(k_pos.dtype)])
                groups = AttentionGroups(extra.q_group, extra.k_group, extra.k_context)
            out[start:end] = attention_with_positions(
                q_[start:end],
                k_buf[slots],
                v_buf[slots],
                positions[start:end],
                k_pos,
                table,
                layer.scaling,
                groups,
            )
            start = end
        return out.reshape(-1, layer.tp_q_head_num * layer.v_head_dim)

    def forward_extend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: Any, forward_batch: Any,
        save_kv_cache: bool = True,
    ) -> torch.Tensor:  # fmt: skip
        counts = forward_batch.extend_seq_lens_cpu
        q_counts = counts.tolist() if isinstance(counts, torch.Tensor) else list(counts)
        return self._attend(q, k, v, layer, forward_batch, save_kv_cache, q_counts)

    def forward_decode(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: Any, forward_batch: Any,
        save_kv_cache: bool = True,
    ) -> torch.Tensor:  # fmt: skip
        q_counts = [1] * forward_batch.batch_size
        return self._attend(q, k, v, layer, forward_batch, save_kv_cache, q_counts)
