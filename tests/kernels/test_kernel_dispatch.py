"""CPU-checkable parts of the GPU attention path: the per-batch kernel choice, FlashInfer's KV
index layout, the q un-rotation it needs, and which models its in-kernel RoPE fits."""

from __future__ import annotations

import pytest
import torch

from flashinfer_ext.flashinfer_path import kv_token_indices, table_fits
from flashinfer_ext.kernel_backend import FLASHINFER, TRITON, choose_impl
from flashinfer_ext.rope_reference import apply_rope, unapply_rope
from tests.helpers.attention_cases import rope_table


@pytest.mark.parametrize(
    ("decode", "explicit", "ready", "want"),
    [
        (True, False, True, FLASHINFER),  # decode: q at kv_len - 1, FlashInfer's convention
        (False, False, True, FLASHINFER),  # plain extends: queries are each request's suffix
        (False, True, True, TRITON),  # a MEPIC request: explicit positions / scratch keys
        (True, False, False, TRITON),  # FlashInfer missing or failed its self-check
        (False, False, False, TRITON),
    ],
)
def test_choose_impl(decode: bool, explicit: bool, ready: bool, want: str) -> None:
    assert choose_impl(decode, explicit, ready) == want


def test_kv_token_indices_concatenate_each_row() -> None:
    g = torch.Generator().manual_seed(0)
    req_to_token = torch.randint(0, 10_000, (6, 50), generator=g, dtype=torch.int32)
    rows = torch.tensor([4, 0, 2])
    seq_lens = [7, 50, 1]
    indptr, indices = kv_token_indices(req_to_token, rows, seq_lens)
    want = torch.cat([req_to_token[r, :n] for r, n in zip(rows.tolist(), seq_lens, strict=True)])
    assert indptr.tolist() == [0, 7, 57, 58]
    assert torch.equal(indices, want) and indices.dtype == torch.int32


@pytest.mark.parametrize("neox", [True, False])
def test_unapply_rope_inverts_apply_rope(neox: bool) -> None:
    table = rope_table(64, neox, 4096)
    g = torch.Generator().manual_seed(1)
    x = torch.randn((33, 4, 64), generator=g, dtype=torch.float64)
    positions = torch.randint(0, 4096, (33,), generator=g)
    table64 = table._replace(cos_sin_cache=table.cos_sin_cache.double())
    back = unapply_rope(apply_rope(x, positions, table64), positions, table64)
    assert torch.allclose(back, x, atol=1e-12)


def test_flashinfer_rope_fit() -> None:
    assert table_fits(rope_table(64, True, 16), torch.bfloat16) is None
    assert "NeoX" in str(table_fits(rope_table(64, False, 16), torch.bfloat16))
    assert "head_dim % 64" in str(table_fits(rope_table(32, True, 16), torch.bfloat16))
    assert "2-byte" in str(table_fits(rope_table(128, True, 16), torch.float32))
    partial = rope_table(64, True, 16)._replace(rotary_dim=32)
    assert "partial" in str(table_fits(partial, torch.float16))


def test_triton_kernel_shape_limits() -> None:
    """Shapes the Triton kernel refuses (the backend serves those with the torch reference)."""
    from flashinfer_ext.triton_attention import unsupported

    assert unsupported(rope_table(64, True, 16), 64, 9, 3) is None
    assert "power-of-two" in str(unsupported(rope_table(48, True, 16), 48, 4, 2))
    assert "full rotary" in str(
        unsupported(rope_table(64, True, 16)._replace(rotary_dim=32), 64, 4, 2)
    )
    assert "multiple" in str(unsupported(rope_table(64, True, 16), 64, 9, 2))


def test_case_rope_table_is_sglangs() -> None:
    from sglang.srt.layers.rotary_embedding.base import RotaryEmbedding

    rope = RotaryEmbedding(64, 64, 300, 10000, True, torch.float32)
    assert torch.equal(rope_table(64, True, 300).cos_sin_cache, rope.cos_sin_cache)
