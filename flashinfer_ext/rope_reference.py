"""Torch reference: RoPE applied inside attention, with explicit query and key positions.

MEPIC stores keys WITHOUT rotary embedding (NoPE), so one copy of a chunk's pages can be read at
any position. Attention then rotates each key at the position it has in the *current* request and
masks by position, not by row order, so the queries of an extend need not be a contiguous suffix:

    out[i] = softmax_j( q[i] . rope(k[j], kpos[j]) * scale,  over j with kpos[j] <= qpos[i] ) v[j]

``q`` arrives already rotated at ``qpos`` (the model's own rotary embedding does that). This file is
the CPU path and the oracle for the GPU kernels; the obvious per-query loop that checks it lives in
``tests/kernels/test_rope_attention.py``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch.nn.functional import scaled_dot_product_attention


class RopeTable(NamedTuple):
    """The rotary embedding of one attention layer (default RoPE only)."""

    cos_sin_cache: torch.Tensor  # [max_position, rotary_dim]: cos half, then sin half
    head_size: int
    rotary_dim: int
    is_neox_style: bool

    @classmethod
    def default(
        cls, head: int, max_pos: int, theta: float = 10000.0, neox: bool = True
    ) -> RopeTable:
        """Default RoPE's cos/sin cache, built as SGLang's ``RotaryEmbedding`` builds it (a test
        checks equality), for benchmarks and tests that run without SGLang."""
        inv_freq = 1.0 / (theta ** (torch.arange(0, head, 2, dtype=torch.float) / head))
        freqs = torch.einsum("i,j -> ij", torch.arange(max_pos, dtype=torch.float), inv_freq)
        return cls(torch.cat((freqs.cos(), freqs.sin()), dim=-1), head, head, neox)

    @classmethod
    def from_module(cls, rope: Any) -> RopeTable:
        """Read the table off an SGLang ``RotaryEmbedding`` (checked by the caller)."""
        return cls(rope.cos_sin_cache, rope.head_size, rope.rotary_dim, rope.is_neox_style)


def apply_rope(
    x: torch.Tensor, positions: torch.Tensor, table: RopeTable, inverse: bool = False
) -> torch.Tensor:
    """Rotate ``x`` ``[n, heads, head_size]`` at ``positions`` ``[n]``; returns a new tensor.

    NOTE: the operation order follows SGLang's native rotary path (gather cos/sin, cast to the
    input dtype, rotate the first ``rotary_dim`` channels), so on CPU a key rotated here is
    bit-identical to the key stock SGLang would have stored.
    """
    cos, sin = table.cos_sin_cache.index_select(0, positions.flatten()).chunk(2, dim=-1)
    cos = cos.unsqueeze(-2).to(x.dtype)
    sin = sin.unsqueeze(-2).to(x.dtype)
    if inverse:
        sin = -sin
    rot, rest = x[..., : table.rotary_dim], x[..., table.rotary_dim :]
    if table.is_neox_style:
        x1, x2 = torch.chunk(rot, 2, dim=-1)
    else:
        x1, x2 = rot[..., ::2], rot[..., 1::2]
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    if table.is_neox_style:
        rotated = torch.cat((o1, o2), dim=-1)
    else:
        rotated = torch.stack((o1, o2), dim=-1).flatten(-2)
    return torch.cat((rotated, rest), dim=-1)


def unapply_rope(x: torch.Tensor, positions: torch.Tensor, table: RopeTable) -> torch.Tensor:
    """Inverse of :func:`apply_rope` (rotate by ``-position``): turns the model's rotated q back
    into the NoPE q that kernels with their own in-kernel RoPE (FlashInfer ``ROPE_LLAMA``) want."""
    return apply_rope(x, positions, table, inverse=True)


class AttentionGroups(NamedTuple):
    """Who may attend to whom besides the position rule (``key position <= query position``).

    Group 0 is the request's context; group ``g > 0`` is one chunk encoded on its own. A query of
    group 0 sees the keys with ``k_context``; a query of group ``g`` sees only keys of group ``g``.
    """

    q_group: torch.Tensor  # [n_q] int
    k_group: torch.Tensor  # [n_k] int
    k_context: torch.Tensor  # [n_k] bool

    def visible(self) -> torch.Tensor:
        """``[n_q, n_k]`` bool."""
        same = self.k_group.unsqueeze(0) == self.q_group.unsqueeze(1)
        ctx = self.q_group.unsqueeze(1) == 0
        return torch.where(ctx, self.k_context.unsqueeze(0), same)


def attention_with_positions(
    q: torch.Tensor,
    k_nope: torch.Tensor,
    v: torch.Tensor,
    q_positions: torch.Tensor,
    k_positions: torch.Tensor,
    table: RopeTable,
    scale: float,
    groups: AttentionGroups | None = None,
) -> torch.Tensor:
    """One request's attention.

    Args:
        q: ``[n_q, q_heads, head_size]``, already rotated at ``q_positions``.
        k_nope: ``[n_k, kv_heads, head_size]`` keys without RoPE.
        v: ``[n_k, kv_heads, v_head_size]``.
        q_positions: ``[n_q]`` positions of the queries in the request (any order, any gaps).
        k_positions: ``[n_k]`` positions of the keys in the request.
        scale: softmax scale.
        groups: optional visibility groups (MEPIC cold chunks encoded on their own inside the
            same forward, see :class:`AttentionGroups`); None means every key is context.

    Returns:
        ``[n_q, q_heads, v_head_size]``. Every query must see at least one key
        (``min(k_positions) <= min(q_positions)``), or its row is NaN.
    """
    k = apply_rope(k_nope, k_positions, table).to(q.dtype)
    v = v.to(q.dtype)
    # NOTE: a prefill of the whole sequence in order (q and k at the same strictly ascending
    # positions) is plain causal attention; is_causal lets SDPA use its fused kernel instead of
    # materialising an [n_q, n_k] mask and score matrix (see docs/benchmarks.md).
    full_causal = (
        q.shape[0] == k.shape[0]
        and torch.equal(q_positions, k_positions)
        and bool((k_positions[1:] > k_positions[:-1]).all())
    )
    full_causal = full_causal and groups is None
    mask = None if full_causal else k_positions.unsqueeze(0) <= q_positions.unsqueeze(1)
    if mask is not None and groups is not None:
        mask = mask & groups.visible()
    out = scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0),
        k.transpose(0, 1).unsqueeze(0),
        v.transpose(0, 1).unsqueeze(0),
        attn_mask=mask,
        is_causal=full_causal,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return out.squeeze(0).transpose(0, 1)
