"""GPU attention kernels: what RoPE fusion costs, and the Triton kernel against FlashInfer.

    python -m benchmarks.attention [--models llama3-8b,smollm2] [--batches 1,8,64]
                                   [--contexts 1024,4096,16384,32768] [--out benchmarks/results]

Per model shape (one layer: q heads / KV heads / head dim), batch size and context length, the
median time (``triton.testing.do_bench``) of one attention call over a paged KV pool (page size
16, pages scattered) for

* ``fi-nope``: FlashInfer, keys stored already rotated, ``pos_encoding_mode="NONE"`` (stock);
* ``fi-rope``: FlashInfer ``ROPE_LLAMA`` on NoPE keys, with the backend's q un-rotation;
* ``triton-nope``: our Triton kernel reading pre-rotated keys (``rope=False``);
* ``triton-rope``: our Triton kernel, RoPE fused (what MEPIC serves with).

``decode``: one query per request at its last position; ``prefill``: the last
``min(context, 1024)`` positions of every request as queries (an extend after a cached prefix).
Prints a table (with ``fi-rope / fi-nope``, ``triton-rope / triton-nope`` and
``triton-rope / fi-rope``) and writes ``attention_gpu.json`` and ``attention_gpu.png``.

Needs CUDA (FlashInfer columns also need ``flashinfer``). ``--smoke`` runs one tiny shape with
the Triton kernels only (on CPU under ``TRITON_INTERPRET=1``) so the script itself is tested in CI;
its timings mean nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from flashinfer_ext.rope_reference import RopeTable, apply_rope
from flashinfer_ext.triton_attention import decode_attention, extend_attention, pack_batch

MODELS = {  # (q heads, kv heads, head dim, rope theta)
    "llama3-8b": (32, 8, 128, 500000.0),
    "smollm2": (9, 3, 64, 100000.0),
    "tiny": (4, 2, 64, 10000.0),  # --smoke only
}
PAGE = 16
PREFILL_Q = 1024


def _time(fn: Callable[[], Any], smoke: bool) -> float:
    """Median milliseconds of ``fn``."""
    if smoke:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def run_case(
    model: str, batch: int, context: int, mode: str, dtype: torch.dtype, device: str, smoke: bool
) -> dict[str, Any]:
    hq, hk, d, theta = MODELS[model]
    g = torch.Generator(device="cpu").manual_seed(batch * 7919 + context)
    pages = batch * (-(-context // PAGE))
    order = torch.randperm(pages, generator=g) + 1
    slots = (order.unsqueeze(1) * PAGE + torch.arange(PAGE)).flatten().view(batch, -1)
    req_to_token = slots[:, :context].to(torch.int32).contiguous().to(device)
    rows = torch.arange(batch, device=device)
    n_slots = (pages + 1) * PAGE
    k_nope = torch.randn((n_slots, hk, d), dtype=dtype, device=device)
    v = torch.randn((n_slots, hk, d), dtype=dtype, device=device)
    table = RopeTable.default(d, context + 1, theta)
    table = table._replace(cos_sin_cache=table.cos_sin_cache.to(device))
    pos_in_row = torch.zeros(n_slots, dtype=torch.int64, device=device)
    pos_in_row[req_to_token.long().flatten()] = torch.arange(context, device=device).repeat(batch)
    k_rot = apply_rope(k_nope, pos_in_row, table).to(dtype)
    n_q = 1 if mode == "decode" else min(context, PREFILL_Q)
    positions = torch.arange(context - n_q, context, device=device).repeat(batch)
    q = torch.randn((batch * n_q, hq, d), dtype=dtype, device=device)
    meta = pack_batch(req_to_token, rows, [context] * batch, [n_q] * batch, positions)
    scale = d**-0.5
    kernel = decode_attention if mode == "decode" else extend_attention
    times: dict[str, float] = {
        "triton-rope": _time(lambda: kernel(q, k_nope, v, meta, table, scale), smoke),
        "triton-nope": _time(lambda: kernel(q, k_rot, v, meta, table, scale, rope=False), smoke),
    }
    fused = kernel(q, k_nope, v, meta, table, scale).float()
    # NOTE: every timed variant must compute the same attention; the table reports how close.
    diff = {"triton-nope": (kernel(q, k_rot, v, meta, table, scale, rope=False) - fused)}
    if device == "cuda" and importlib.util.find_spec("flashinfer") is not None:
        fi_times, fi_out = _flashinfer_times(q, positions, k_nope, k_rot, v, table, theta, scale,
                                             req_to_token, rows, [context] * batch,
                                             [n_q] * batch, mode == "decode", smoke)  # fmt: skip
        times.update(fi_times)
        diff.update({name: out.float() - fused for name, out in fi_out.items()})
    max_diff = {name: float(d.abs().max()) for name, d in diff.items()}
    return {
        "model": model, "mode": mode, "batch": batch, "context": context, "ms": times,
        "max_abs_diff_vs_triton_rope": max_diff,
    }  # fmt: skip


def _flashinfer_times(
    q: torch.Tensor, positions: torch.Tensor, k_nope: torch.Tensor, k_rot: torch.Tensor,
    v: torch.Tensor, table: RopeTable, theta: float, scale: float, req_to_token: torch.Tensor,
    rows: torch.Tensor, seq_lens: list[int], q_counts: list[int], decode: bool, smoke: bool,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:  # fmt: skip
    import flashinfer

    from flashinfer_ext.flashinfer_path import FlashInferRope, kv_token_indices

    hq, hk, d = q.shape[1], k_nope.shape[1], q.shape[2]
    fi = FlashInferRope(q.device, hq, hk, d)
    fi.prepare(decode, req_to_token, rows, seq_lens, q_counts)
    out = {"fi-rope": _time(lambda: fi.run(q, positions, k_nope, v, table, theta, scale), smoke)}
    indptr, indices = kv_token_indices(req_to_token, rows, seq_lens)
    last = torch.ones(len(seq_lens), dtype=torch.int32, device=q.device)
    ws = torch.empty(128 * 1024 * 1024, dtype=torch.uint8, device=q.device)
    common = {"sm_scale": scale, "q_data_type": q.dtype, "kv_data_type": k_rot.dtype}
    if decode:
        w: Any = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            ws, "NHD", use_tensor_cores=hq // hk >= 4
        )
        w.plan(indptr, indices, last, hq, hk, d, 1, **common)
    else:
        qo = torch.tensor([0, *torch.tensor(q_counts).cumsum(0).tolist()], dtype=torch.int32)
        w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD")
        w.plan(qo.to(q.device), indptr, indices, last, hq, hk, d, 1, causal=True, **common)
    out["fi-nope"] = _time(lambda: w.run(q, (k_rot, v)), smoke)
    w_rope = fi.run(q, positions, k_nope, v, table, theta, scale)
    return out, {"fi-rope": w_rope, "fi-nope": w.run(q, (k_rot, v))}


def _ratio(ms: dict[str, float], a: str, b: str) -> str:
    return f"{ms[a] / ms[b]:.2f}" if a in ms and b in ms else "-"


def print_table(results: list[dict[str, Any]]) -> None:
    cols = ["fi-nope", "fi-rope", "triton-nope", "triton-rope"]
    head = ["model", "mode", "batch", "context", *cols, "fi rope/nope", "tri rope/nope",
            "tri/fi rope"]  # fmt: skip
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for r in results:
        ms = r["ms"]
        cells = [r["model"], r["mode"], str(r["batch"]), str(r["context"])]
        cells += [f"{ms[c]:.3f}" if c in ms else "-" for c in cols]
        cells += [
            _ratio(ms, "fi-rope", "fi-nope"),
            _ratio(ms, "triton-rope", "triton-nope"),
            _ratio(ms, "triton-rope", "fi-rope"),
        ]
        print(" | ".join(cells))


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["model"], r["mode"]) for r in results})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (model, mode) in zip(axes[0], panels, strict=True):
        rows = [r for r in results if r["model"] == model and r["mode"] == mode]
        batch = max(r["batch"] for r in rows)
        rows = sorted((r for r in rows if r["batch"] == batch), key=lambda r: r["context"])
        for col in ("fi-nope", "fi-rope", "triton-nope", "triton-rope"):
            pts = [(r["context"], r["ms"][col]) for r in rows if col in r["ms"]]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=col)
        ax.set(title=f"{model} {mode}, batch {batch}", xlabel="context", ylabel="ms", xscale="log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="llama3-8b,smollm2")
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--contexts", default="1024,4096,16384,32768")
    p.add_argument("--modes", default="decode,prefill")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--max-tokens", type=int, default=1 << 20, help="skip batch x context above")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--smoke", action="store_true", help="tiny CPU/interpreter run of the script")
    a = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.smoke:
        a.models, a.batches, a.contexts = "tiny", "2", "40"
    elif device != "cuda":
        raise SystemExit("benchmarks.attention needs a CUDA GPU (GPU numbers: not measured)")
    dtype = getattr(torch, a.dtype)
    results = []
    for model in a.models.split(","):
        for mode in a.modes.split(","):
            for batch in map(int, a.batches.split(",")):
                for context in map(int, a.contexts.split(",")):
                    if batch * context > a.max_tokens:
                        continue
                    r = run_case(model, batch, context, mode, dtype, device, a.smoke)
                    results.append(r)
                    print(json.dumps(r), flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)",
        "torch": torch.__version__,
        "dtype": a.dtype,
        "smoke": a.smoke,
        "date": time.strftime("%Y-%m-%d"),
    }
    if importlib.util.find_spec("flashinfer") is not None:
        import flashinfer

        meta["flashinfer"] = flashinfer.__version__
    (a.out / "attention_gpu.json").write_text(json.dumps({"meta": meta, "results": results}))
    print_table(results)
    if results and not a.smoke:
        ratios = [r["ms"]["triton-rope"] / r["ms"]["triton-nope"] for r in results]
        print(f"triton rope/nope median {statistics.median(ratios):.3f}")
    plot(results, a.out / "attention_gpu.png")


if __name__ == "__main__":
    main()
