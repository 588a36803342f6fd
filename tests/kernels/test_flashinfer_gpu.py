"""FlashInfer's in-kernel RoPE path (GPU only) against the float64 oracle and the Triton kernel.

Runs where CUDA and the ``flashinfer`` package exist; elsewhere every test skips. The q given to
FlashInfer is the model's rotated q (as in serving); the path un-rotates it and FlashInfer rotates
q and k again at its own positions (decode: last; extend: the request's suffix).
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch

from tests.helpers.attention_cases import make_case

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        importlib.util.find_spec("flashinfer") is None, reason="flashinfer is not installed"
    ),
]
TOL = {torch.bfloat16: 6e-2, torch.float16: 2e-2}
THETA = 10000.0  # tests.helpers.attention_cases.rope_table's base


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("q_heads", "kv_heads", "head"), [(32, 8, 128), (8, 8, 64)])
@pytest.mark.parametrize("decode", [True, False])
def test_flashinfer_rope_matches_oracle(
    dtype: torch.dtype, q_heads: int, kv_heads: int, head: int, decode: bool
) -> None:
    from flashinfer_ext.flashinfer_path import FlashInferRope
    from flashinfer_ext.rope_reference import apply_rope

    case = make_case(
        700, batch=8, q_heads=q_heads, kv_heads=kv_heads, head=head, dtype=dtype, max_len=3000,
        decode=decode, suffix=not decode,
    ).to("cuda")  # fmt: skip
    # serving hands the backend a rotated q; the oracle takes the same rotated q
    case.q = apply_rope(case.q, case.positions, case.table)
    fi = FlashInferRope(torch.device("cuda"), q_heads, kv_heads, head)
    fi.prepare(decode, case.req_to_token, case.rows, case.seq_lens, case.q_counts)
    out = fi.run(case.q, case.positions, case.k_buf, case.v_buf, case.table, THETA, case.scale)
    err = (out.double().cpu() - case.reference()).abs().max().item()
    assert err <= TOL[dtype], err


def test_backend_self_check_passes() -> None:
    from flashinfer_ext.flashinfer_path import FlashInferRope
    from flashinfer_ext.kernel_backend import SELF_CHECK_TOLERANCE, self_check
    from tests.helpers.attention_cases import rope_table

    table = rope_table(128, True, 4096)
    table = table._replace(cos_sin_cache=table.cos_sin_cache.cuda())
    layer = SimpleNamespace(
        tp_q_head_num=32, tp_k_head_num=8, qk_head_dim=128, v_head_dim=128,
        scaling=128**-0.5, mepic_rope=SimpleNamespace(base=THETA),
    )  # fmt: skip
    fi = FlashInferRope(torch.device("cuda"), 32, 8, 128)
    assert self_check(fi, layer, table, torch.bfloat16) <= SELF_CHECK_TOLERANCE[torch.bfloat16]
