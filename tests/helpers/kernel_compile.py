"""Compile the Triton kernels ahead of time for a CUDA target, without a GPU (Triton ships
LLVM and ptxas). Run as a script by ``tests/kernels/test_triton_attention.py``; prints one JSON
line per kernel variant with its shared-memory and cubin size.

    python tests/helpers/kernel_compile.py [--arch 90]
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "compiling needs compiled-mode Triton"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from flashinfer_ext import triton_kernel as tk  # noqa: E402

INDEX_PTRS = {
    "CosSin": "*fp32", "ReqToTok": "*i32", "Rows": "*i64", "SeqLens": "*i32", "QStart": "*i32",
    "QPos": "*i64", "QGroup": "*i32", "EStart": "*i32", "ESlots": "*i64", "EPos": "*i64",
    "KGStart": "*i32", "KGroup": "*i32", "KCtx": "*i8", "MidO": "*fp32", "MidML": "*fp32",
}  # fmt: skip


def compile_one(fn: Any, dtype: str, consts: dict[str, Any], arch: int) -> dict[str, Any]:
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in INDEX_PTRS:
            sig[name] = INDEX_PTRS[name]
        elif name in ("Q", "K", "V", "Out"):
            sig[name] = "*" + dtype
        elif name == "scale":
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    constexprs = {(fn.arg_names.index(k),): v for k, v in consts.items()}
    kernel = triton.compile(
        ASTSource(fn, sig, constexprs=constexprs),
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": 4, "num_stages": 2},
    )
    return {"shared_bytes": kernel.metadata.shared, "cubin_bytes": len(kernel.asm["cubin"])}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--dtypes", default="bf16,fp32")
    a = p.parse_args()
    for dtype in a.dtypes.split(","):
        for head in (64, 128):
            for groups in (False, True):
                common = {"HALF": head // 2, "DV": head, "BLOCK_DV": head, "IS_NEOX": True,
                          "DOT_F32": dtype == "fp32", "ROPE": True}  # fmt: skip
                extend = {**common, "GQA": 4, "BLOCK_M": 64, "BLOCK_N": 64,
                          "HAS_GROUPS": groups, "HAS_EXTRA": groups}  # fmt: skip
                out = compile_one(tk.extend_kernel, dtype, extend, a.arch)
                print(json.dumps({"kernel": "extend", "dtype": dtype, "head": head,
                                  "groups": groups, **out}), flush=True)  # fmt: skip
            decode = {**common, "GQA": 4, "BLOCK_H": 16, "BLOCK_N": 64}
            out = compile_one(tk.decode_split_kernel, dtype, decode, a.arch)
            print(json.dumps({"kernel": "decode", "dtype": dtype, "head": head, **out}))
    merge = {"SPLITS": 8, "DV": 128, "BLOCK_DV": 128, "BLOCK_S": 8}
    out = compile_one(tk.decode_merge_kernel, "bf16", merge, a.arch)
    print(json.dumps({"kernel": "merge", **out}))


if __name__ == "__main__":
    main()
