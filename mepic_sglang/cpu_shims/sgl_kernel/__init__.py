"""CPU stand-in for ``sgl_kernel`` (see ``mepic_sglang/cpu_shims/__init__.py``).

With ``SGLANG_USE_CPU_ENGINE=1`` SGLang imports two ``*_cpu`` helpers at module level
(``srt/mem_cache/allocation.py`` and ``kernels/ops/kvcache/cache_move.py``); both are written
here in torch. Every other name resolves to a placeholder that raises ``NotImplementedError`` when
called. No ``torch.ops.sgl_kernel`` op is registered, so SGLang's ``cpu_has_amx_support()`` is
False and fused ops take their ``forward_native`` torch paths.

The slow, obvious references for both helpers live in ``tests/unit/test_cpu_shims.py``.
"""

from __future__ import annotations

import ctypes
from typing import Any, NoReturn

import torch

__version__ = "0.0.0+mepic.cpu.shim"
MEPIC_CPU_SHIM = True


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """``req_to_token[req_pool_indices[i], start[i]:end[i]] = out_cache_loc[segment i]``.

    ``out_cache_loc`` holds the segments of all requests back to back, in request order.
    """
    lens = (end_offset - start_offset).to(torch.int64)
    if lens.numel() == 0:
        return
    if int(start_offset.min()) < 0 or int(lens.min()) < 0 or int(end_offset.max()) > pool_len:
        raise ValueError("assign_req_to_token_pool_cpu: offsets out of range")
    if int(lens.sum()) == 0:
        return
    rows = torch.repeat_interleave(req_pool_indices.to(torch.int64), lens)
    seg_start = torch.cumsum(lens, 0) - lens
    within = torch.arange(int(lens.sum()), device=lens.device) - torch.repeat_interleave(
        seg_start, lens
    )
    cols = torch.repeat_interleave(start_offset.to(torch.int64), lens) + within
    req_to_token[rows, cols] = out_cache_loc[: rows.numel()].to(req_to_token.dtype)


def copy_all_layer_kv_cache_cpu(
    data_ptrs: torch.Tensor,
    strides: torch.Tensor,
    tgt_loc: torch.Tensor,
    src_loc: torch.Tensor,
) -> None:
    """For every buffer ``b`` (base address ``data_ptrs[b]``, ``strides[b]`` bytes per slot),
    copy slot ``src_loc[j]`` to slot ``tgt_loc[j]``; all sources are read before any write."""
    if tgt_loc.numel() == 0:
        return
    src = src_loc.to(torch.int64)
    tgt = tgt_loc.to(torch.int64)
    n_slots = int(torch.maximum(src.max(), tgt.max())) + 1
    for base, stride in zip(data_ptrs.tolist(), strides.tolist(), strict=True):
        # NOTE: SGLang hands us raw addresses of its per-layer KV buffers; wrap the slots we touch
        # as a (n_slots, stride) byte tensor without copying. Advanced indexing gathers into a new
        # tensor first, so overlapping src/tgt sets are safe.
        raw = (ctypes.c_uint8 * (n_slots * stride)).from_address(base)
        view = torch.frombuffer(raw, dtype=torch.uint8).view(n_slots, stride)
        view[tgt] = view[src]


class _Missing:
    def __init__(self, name: str) -> None:
        self.__name__ = name

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError(
            f"sgl_kernel.{self.__name__} is not available: this is the mepic-sglang CPU shim"
        )


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    return _Missing(name)
