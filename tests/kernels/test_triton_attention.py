"""The RoPE-fused Triton kernels against the torch reference.

On CPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set per test); with CUDA
the ``gpu`` tests run the compiled kernels at real sizes. Every case has fresh random inputs, an
output buffer poisoned with NaN and guarded by sentinel rows, ragged requests made of scattered
pages, and is compared with the float64 oracle within the per-dtype bound in
``tests/attention_cases.TOLERANCE``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from flashinfer_ext.triton_attention import (
    decode_attention,
    decode_splits,
    extend_attention,
    interpreting,
)
from tests.helpers.attention_cases import TOLERANCE, Case, make_case
from tests.helpers.server_utils import run_cli

SENTINEL = 7.0


@pytest.fixture
def interpret() -> None:
    """CPU: the kernels run in Triton's interpreter (tests/conftest.py sets it up)."""
    if not torch.cuda.is_available() and not interpreting():
        pytest.skip("no CUDA and TRITON_INTERPRET is not set (run through tests/conftest.py)")


def _poisoned(case: Case, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An output view of ``rows`` NaN rows between sentinel rows (writes outside are caught)."""
    q_heads, dv = case.q.shape[1], case.v_buf.shape[2]
    buf = torch.full((rows + 2, q_heads, dv), SENTINEL, dtype=case.q.dtype, device=case.q.device)
    buf[1:-1] = float("nan")
    return buf, buf[1:-1]


def _check(case: Case, buf: torch.Tensor, out: torch.Tensor) -> None:
    assert torch.all(buf[0] == SENTINEL) and torch.all(buf[-1] == SENTINEL)
    assert not torch.isnan(out).any(), "some output row was never written"
    err = (out.double().cpu() - case.reference()).abs().max().item()
    assert err <= TOLERANCE[case.q.dtype], f"max |err| {err:.2e} > {TOLERANCE[case.q.dtype]:.0e}"


def _run_extend(case: Case, block: int) -> None:
    buf, out = _poisoned(case, case.q.shape[0])
    extend_attention(
        case.q, case.k_buf, case.v_buf, case.batch(), case.table, case.scale, out=out,
        block_m=block, block_n=block,
    )  # fmt: skip
    _check(case, buf, out)


def _run_decode(case: Case, block: int, splits: tuple[int, int] | None) -> None:
    buf, out = _poisoned(case, case.q.shape[0])
    decode_attention(
        case.q, case.k_buf, case.v_buf, case.batch(), case.table, case.scale, out=out,
        block_n=block, splits=splits,
    )  # fmt: skip
    _check(case, buf, out)


SHAPES = [(4, 4, 64), (6, 2, 64), (8, 1, 128)]  # (q_heads, kv_heads, head): GQA 1, 3, 8


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize(("q_heads", "kv_heads", "head"), SHAPES)
@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.usefixtures("interpret")
def test_extend_matches_reference(
    seed: int, q_heads: int, kv_heads: int, head: int, neox: bool
) -> None:
    case = make_case(
        seed * 7 + q_heads + int(neox), batch=3, q_heads=q_heads, kv_heads=kv_heads, head=head,
        dtype=torch.float32, neox=neox,
    )  # fmt: skip
    _run_extend(case, block=16)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("q_heads", "kv_heads", "head"), SHAPES)
@pytest.mark.usefixtures("interpret")
def test_extend_with_groups_and_scratch_keys(
    seed: int, q_heads: int, kv_heads: int, head: int
) -> None:
    """MEPIC cold chunks: extra keys beyond the row and per-query visibility groups, in a batch
    that mixes grouped and plain requests."""
    case = make_case(
        100 + seed, batch=3, q_heads=q_heads, kv_heads=kv_heads, head=head,
        dtype=torch.float32, groups=True,
    )  # fmt: skip
    assert case.extras, "the case must exercise groups"
    _run_extend(case, block=16)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.usefixtures("interpret")
def test_extend_half_precision(dtype: torch.dtype) -> None:
    case = make_case(200, batch=2, q_heads=6, kv_heads=2, head=64, dtype=dtype, groups=True)
    _run_extend(case, block=32)


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize(("q_heads", "kv_heads", "head"), SHAPES)
@pytest.mark.parametrize("splits", ["auto", "many"])
@pytest.mark.usefixtures("interpret")
def test_decode_matches_reference(
    seed: int, q_heads: int, kv_heads: int, head: int, splits: str
) -> None:
    case = make_case(
        300 + seed + q_heads, batch=4, q_heads=q_heads, kv_heads=kv_heads, head=head,
        dtype=torch.float32, neox=seed % 2 == 0, decode=True,
    )  # fmt: skip
    # "many": more splits than some requests have keys (empty splits must merge to nothing)
    chosen = (6, 16) if splits == "many" else None
    _run_decode(case, block=16, splits=chosen)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.usefixtures("interpret")
def test_decode_half_precision(dtype: torch.dtype) -> None:
    case = make_case(400, batch=3, q_heads=8, kv_heads=1, head=128, dtype=dtype, decode=True)
    _run_decode(case, block=32, splits=(2, 64))


def test_decode_splits_cover_every_key() -> None:
    for max_len in (1, 15, 16, 17, 1000, 4097, 32768):
        for batch in (1, 8, 64):
            n, length = decode_splits(max_len, batch, 8, 64)
            assert length % 64 == 0 and n * length >= max_len and (n - 1) * length < max_len


def test_unsupported_shapes_are_refused() -> None:
    case = make_case(1, batch=1, q_heads=2, kv_heads=2, head=64, dtype=torch.float32)
    partial = case.table._replace(rotary_dim=32)
    with pytest.raises(ValueError, match="full rotary"):
        extend_attention(case.q, case.k_buf, case.v_buf, case.batch(), partial, case.scale)
    odd = make_case(1, batch=1, q_heads=3, kv_heads=2, head=64, dtype=torch.float32)
    with pytest.raises(ValueError, match="multiple"):
        extend_attention(odd.q, odd.k_buf, odd.v_buf, odd.batch(), odd.table, odd.scale)


# ---- GPU: compiled kernels at real sizes ------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(("q_heads", "kv_heads", "head"), [(32, 8, 128), (9, 3, 64), (8, 8, 128)])
@pytest.mark.parametrize("groups", [False, True])
def test_gpu_extend(
    dtype: torch.dtype, q_heads: int, kv_heads: int, head: int, groups: bool
) -> None:
    case = make_case(
        500, batch=8, q_heads=q_heads, kv_heads=kv_heads, head=head, dtype=dtype, max_len=2000,
        groups=groups,
    ).to("cuda")  # fmt: skip
    _run_extend(case, block=64)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("q_heads", "kv_heads", "head"), [(32, 8, 128), (9, 3, 64)])
def test_gpu_decode(dtype: torch.dtype, q_heads: int, kv_heads: int, head: int) -> None:
    case = make_case(
        600, batch=32, q_heads=q_heads, kv_heads=kv_heads, head=head, dtype=dtype, max_len=4000,
        decode=True,
    ).to("cuda")  # fmt: skip
    _run_decode(case, block=64, splits=None)


@pytest.mark.parametrize("decode", [False, True])
@pytest.mark.usefixtures("interpret")
def test_without_rope_reads_prerotated_keys(decode: bool) -> None:
    """``rope=False`` (the benchmark's no-fusion baseline) on keys rotated beforehand equals the
    fused kernel on NoPE keys."""
    from flashinfer_ext.rope_reference import apply_rope

    case = make_case(
        800 + int(decode), batch=3, q_heads=6, kv_heads=2, head=64, dtype=torch.float32,
        decode=decode,
    )  # fmt: skip
    k_rot = case.k_buf.clone()
    for b, seq_len in enumerate(case.seq_lens):
        slots = case.req_to_token[case.rows[b], :seq_len].long()
        k_rot[slots] = apply_rope(case.k_buf[slots], torch.arange(seq_len), case.table)
    run = decode_attention if decode else extend_attention
    fused = run(case.q, case.k_buf, case.v_buf, case.batch(), case.table, case.scale, block_n=16)
    plain = run(
        case.q, k_rot, case.v_buf, case.batch(), case.table, case.scale, block_n=16, rope=False
    )
    assert (fused - plain).abs().max().item() <= 1e-5


def test_attention_benchmark_script_runs(tmp_path: Path) -> None:
    """``benchmarks/attention.py --smoke``: the GPU benchmark's own code, on a tiny shape."""
    env = {**os.environ, "TRITON_INTERPRET": "1"} if not torch.cuda.is_available() else None
    out = run_cli(
        [
            sys.executable,
            "-m",
            "benchmarks.attention",
            "--smoke",
            "--dtype",
            "float32",
            "--out",
            str(tmp_path),
        ],
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads((tmp_path / "attention_gpu.json").read_text())
    assert {r["mode"] for r in data["results"]} == {"decode", "prefill"}
    for r in data["results"]:
        assert max(r["max_abs_diff_vs_triton_rope"].values()) < 1e-4
    assert (tmp_path / "attention_gpu.png").stat().st_size > 0


def test_kernels_compile_for_hopper() -> None:
    """Compiled mode, no GPU needed: every kernel variant lowers to an sm_90 cubin (Triton ships
    LLVM and ptxas) within the H100's shared memory (catches what the interpreter accepts but the
    compiler does not: types, shapes of dots, control flow)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    script = Path(__file__).parents[1] / "helpers" / "kernel_compile.py"
    out = run_cli([sys.executable, str(script), "--dtypes", "bf16"], env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 7
    assert all(r["cubin_bytes"] > 0 and r["shared_bytes"] <= 227 * 1024 for r in rows), rows
