"""RoPE inside attention (NoPE keys) against slow, obvious references."""

from __future__ import annotations

import math

import pytest
import torch

from flashinfer_ext.rope_reference import (
    AttentionGroups,
    RopeTable,
    apply_rope,
    attention_with_positions,
)

MAX_POS = 512


def _sglang_rope(head: int, rotary_dim: int, neox: bool, dtype: torch.dtype):  # type: ignore[no-untyped-def]
    from sglang.srt.layers.rotary_embedding.base import RotaryEmbedding

    return RotaryEmbedding(head, rotary_dim, MAX_POS, 10000, neox, dtype)


@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize(("head", "rotary_dim"), [(64, 64), (32, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_rope_is_bit_identical_to_sglang(
    neox: bool, head: int, rotary_dim: int, dtype: torch.dtype
) -> None:
    rope = _sglang_rope(head, rotary_dim, neox, dtype)
    g = torch.Generator().manual_seed(head + rotary_dim + int(neox))
    n, heads = 37, 3
    positions = torch.randint(0, MAX_POS, (n,), generator=g)
    q = torch.randn((n, heads * head), generator=g).to(dtype)
    k = torch.randn((n, heads * head), generator=g).to(dtype)
    _, k_sglang = rope.forward_native(positions, q.clone(), k.clone())
    ours = apply_rope(k.view(n, heads, head), positions, RopeTable.from_module(rope))
    assert torch.equal(ours.reshape(n, -1), k_sglang)


def ref_attention(q, k_nope, v, q_pos, k_pos, table, scale, groups=None):  # type: ignore[no-untyped-def]
    """One query, one head at a time: the definition, written out."""

    def sees(i: int, j: int) -> bool:
        if groups is None:
            return True
        q_group, k_group, k_context = groups
        return bool(k_context[j]) if q_group[i] == 0 else bool(k_group[j] == q_group[i])

    k = apply_rope(k_nope, k_pos, table)
    n_q, q_heads, _ = q.shape
    group = q_heads // k.shape[1]
    out = torch.zeros((n_q, q_heads, v.shape[2]), dtype=torch.float64)
    for i in range(n_q):
        for h in range(q_heads):
            allowed = [j for j in range(k.shape[0]) if k_pos[j] <= q_pos[i] and sees(i, j)]
            scores = [float(q[i, h] @ k[j, h // group]) * scale for j in allowed]
            top = max(scores)
            weights = [math.exp(s - top) for s in scores]
            total = sum(weights)
            for w, j in zip(weights, allowed, strict=True):
                out[i, h] += (w / total) * v[j, h // group].double()
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("q_heads", "kv_heads"), [(2, 2), (6, 2), (8, 1)])
@pytest.mark.parametrize("queries", ["subset", "all", "all-shuffled"])
def test_attention_with_positions_matches_definition(
    seed: int, q_heads: int, kv_heads: int, queries: str
) -> None:
    g = torch.Generator().manual_seed(seed)
    head, n_k = 32, int(torch.randint(8, 40, (1,), generator=g))
    table = RopeTable.from_module(_sglang_rope(head, head, seed % 2 == 0, torch.float32))
    k_pos = torch.arange(n_k)
    if queries == "subset":  # a non-contiguous extend: queries at some of the positions
        q_pos = torch.sort(torch.randperm(n_k, generator=g)[: max(1, n_k // 3)]).values
    elif queries == "all":  # a whole prefill (the fused is_causal path)
        q_pos = k_pos.clone()
    else:  # keys and queries at the same positions but out of order: must not use is_causal
        k_pos = torch.randperm(n_k, generator=g)
        q_pos = k_pos.clone()
    q = torch.randn((len(q_pos), q_heads, head), generator=g)
    k_nope = torch.randn((n_k, kv_heads, head), generator=g)
    v = torch.randn((n_k, kv_heads, 16), generator=g)
    scale = head**-0.5
    ours = attention_with_positions(q, k_nope, v, q_pos, k_pos, table, scale)
    torch.testing.assert_close(
        ours.double(), ref_attention(q, k_nope, v, q_pos, k_pos, table, scale), atol=1e-5, rtol=1e-5
    )


def test_suffix_extend_equals_stock_causal_attention() -> None:
    """With a contiguous suffix of queries it is SGLang torch_native's computation: keys rotated
    when stored, query padded to the full length, causal SDPA, suffix rows kept."""
    g = torch.Generator().manual_seed(7)
    head, heads, n, prefix = 64, 4, 50, 30
    table = RopeTable.from_module(_sglang_rope(head, head, True, torch.float32))
    positions = torch.arange(n)
    q_full = apply_rope(torch.randn((n, heads, head), generator=g), positions, table)
    k_nope = torch.randn((n, heads, head), generator=g)
    v = torch.randn((n, heads, head), generator=g)
    stock = torch.nn.functional.scaled_dot_product_attention(
        q_full.transpose(0, 1), apply_rope(k_nope, positions, table).transpose(0, 1),
        v.transpose(0, 1), is_causal=True, scale=head**-0.5,
    ).transpose(0, 1)[prefix:]  # fmt: skip
    ours = attention_with_positions(
        q_full[prefix:], k_nope, v, positions[prefix:], positions, table, head**-0.5
    )
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shift", [1, 17, 300])
def test_shifting_every_position_keeps_the_output(shift: int) -> None:
    """Why NoPE storage works: RoPE scores depend on position differences only, so the same
    stored keys serve a chunk at any offset (up to float rounding)."""
    g = torch.Generator().manual_seed(shift)
    head, n = 64, 24
    table = RopeTable.from_module(_sglang_rope(head, head, True, torch.float32))
    q_nope = torch.randn((n, 2, head), generator=g)
    k_nope = torch.randn((n, 2, head), generator=g)
    v = torch.randn((n, 2, head), generator=g)
    outs = []
    for offset in (0, shift):
        pos = torch.arange(n) + offset
        q = apply_rope(q_nope, pos, table)
        outs.append(attention_with_positions(q, k_nope, v, pos, pos, table, head**-0.5))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_attention_groups_match_definition(seed: int) -> None:
    """A cold chunk encoded on its own inside a request's extend (see mepic_sglang.chunks.plan):
    context [0,4), chunk head in context [4,8), chunk shared [8,16) (group 1), text [16,20),
    scratch copy of the chunk head at positions [4,8) (group 1, hidden from the context)."""
    g = torch.Generator().manual_seed(seed)
    head, q_heads, kv_heads = 16, 4, 2
    table = RopeTable.from_module(_sglang_rope(head, head, True, torch.float32))
    k_pos = torch.cat([torch.arange(20), torch.arange(4, 8)])
    k_group = torch.tensor([0] * 8 + [1] * 8 + [0] * 4 + [1] * 4)
    k_context = torch.tensor([True] * 20 + [False] * 4)
    q_pos = torch.cat([torch.arange(4, 8), torch.arange(20)])
    q_group = torch.tensor([1] * 4 + [0] * 8 + [1] * 8 + [0] * 4)
    q = torch.randn((len(q_pos), q_heads, head), generator=g)
    k_nope = torch.randn((len(k_pos), kv_heads, head), generator=g)
    v = torch.randn((len(k_pos), kv_heads, 8), generator=g)
    groups = AttentionGroups(q_group, k_group, k_context)
    ours = attention_with_positions(q, k_nope, v, q_pos, k_pos, table, 0.25, groups)
    ref = ref_attention(q, k_nope, v, q_pos, k_pos, table, 0.25, groups)
    torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=1e-5)
