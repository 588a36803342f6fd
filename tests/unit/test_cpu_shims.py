"""The CPU shims against slow, obvious references, and the shim activation rules."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import sysconfig

import pytest
import torch

from mepic_sglang import cpu_setup
from mepic_sglang.cpu_shims.sgl_kernel import (
    assign_req_to_token_pool_cpu,
    copy_all_layer_kv_cache_cpu,
)


def ref_assign(req_pool_indices, req_to_token, start, end, out_cache_loc) -> None:  # type: ignore[no-untyped-def]
    off = 0
    for row, s, e in zip(req_pool_indices.tolist(), start.tolist(), end.tolist(), strict=True):
        for col in range(s, e):
            req_to_token[row, col] = int(out_cache_loc[off])
            off += 1


@pytest.mark.parametrize("seed", range(20))
def test_assign_req_to_token_pool_matches_reference(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    rows, cols = 8, 64
    batch = int(torch.randint(1, rows + 1, (1,), generator=g))
    req_pool_indices = torch.randperm(rows, generator=g)[:batch]
    start = torch.randint(0, cols, (batch,), generator=g)
    end = torch.minimum(start + torch.randint(0, 20, (batch,), generator=g), torch.tensor(cols))
    total = int((end - start).sum())
    out_cache_loc = torch.randint(0, 10_000, (total + 3,), generator=g)  # trailing junk ignored
    want = torch.full((rows, cols), -1, dtype=torch.int32)
    got = want.clone()
    ref_assign(req_pool_indices, want, start, end, out_cache_loc)
    assign_req_to_token_pool_cpu(req_pool_indices, got, start, end, out_cache_loc, cols)
    assert torch.equal(got, want)


def test_assign_rejects_out_of_range_offsets() -> None:
    table = torch.zeros((2, 4), dtype=torch.int32)
    with pytest.raises(ValueError):
        assign_req_to_token_pool_cpu(
            torch.tensor([0]), table, torch.tensor([2]), torch.tensor([6]), torch.arange(4), 4
        )


@pytest.mark.parametrize("seed", range(20))
def test_copy_all_layer_kv_cache_matches_reference(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    slots = 32
    buffers = [
        torch.randn((slots, 2, 8), generator=g),
        torch.randn((slots, 3), generator=g).to(torch.bfloat16),
    ]
    n = int(torch.randint(1, 12, (1,), generator=g))
    src = torch.randint(0, slots, (n,), generator=g)
    tgt = torch.randperm(slots, generator=g)[:n]  # distinct targets; may overlap sources
    want = [b.clone() for b in buffers]
    for b in want:
        snapshot = b.clone()  # all reads happen before writes
        for s, t in zip(src.tolist(), tgt.tolist(), strict=True):
            b[t] = snapshot[s]
    data_ptrs = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.int64)
    strides = torch.tensor([b[0].numel() * b.element_size() for b in buffers], dtype=torch.int64)
    copy_all_layer_kv_cache_cpu(data_ptrs, strides, tgt, src)
    for got, ref in zip(buffers, want, strict=True):
        assert torch.equal(got, ref)


def test_placeholders_fail_loudly() -> None:
    import mepic_sglang.cpu_shims.sgl_kernel as shim

    with pytest.raises(NotImplementedError, match="CPU shim"):
        shim.some_cuda_only_op(1)


def test_torchvision_shim_imports_anything_and_raises_on_use() -> None:
    code = (
        "import torchvision, torchvision.transforms.v2.functional as F\n"
        "from torchvision.transforms import InterpolationMode\n"
        "assert torchvision.MEPIC_CPU_SHIM\n"
        "try:\n    F.resize(None)\nexcept RuntimeError as e:\n    print('raised', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "raised torchvision.transforms.v2.functional.resize is not available" in out.stdout


def test_pth_activates_shims_after_site_packages() -> None:
    lines = cpu_setup.pth_text().splitlines()
    assert str(cpu_setup.SHIM_DIR) in lines
    assert "setdefault('SGLANG_USE_CPU_ENGINE', '1')" in cpu_setup.pth_text()
    spec = importlib.util.find_spec("sgl_kernel")
    assert spec is not None and spec.origin is not None
    if "mepic_sglang" in spec.origin:  # this venv has no real sgl_kernel: the shim is active
        purelib = sysconfig.get_paths()["purelib"]
        shim_index = sys.path.index(str(cpu_setup.SHIM_DIR))
        assert shim_index > sys.path.index(purelib), "a real sgl_kernel in site-packages must win"
