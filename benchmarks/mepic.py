"""MEPIC against its baselines on one machine: KV pages, latency and answers.

    python -m benchmarks.mepic                     # CPU, SmolLM2-135M (~40 min on 2 cores)
    python -m benchmarks.mepic --smoke             # tiny random model, seconds per mode (CI)

Every mode is the same stock ``python -m sglang.launch_server`` with the plugin loaded and these
flags (one server per mode, started and stopped in turn):

    mode             flags                                                      prompt
    ---------------  ---------------------------------------------------------  -----------
    stock            (none): SGLang's radix prefix cache                        plain text
    full-recompute   --disable-radix-cache                                      plain text
    naive-pic        --enable-mepic --mepic-recompute none                      chunks
    epic             --enable-mepic --mepic-recompute first-k-tokens            chunks
                     --mepic-recompute-k K --mepic-chunk-copies (private copies)
    mepic            --enable-mepic (first page recomputed, pages shared)       chunks

Passes per mode (workload: :mod:`benchmarks.mepic_workload`, same seed for every mode):

1. serving, per ``--qps``: Poisson arrivals, greedy answers; TTFT / end-to-end p50 and p99,
   throughput, F1 and contains-match of the answer, token agreement with full-recompute, and the
   pass's peak / mean KV pages in use;
2. memory, per ``--burst-chunks`` c: ``--burst`` requests of c documents sent at once, each
   holding its KV for ``--burst-tokens`` tokens; the exact peak of pages in use, and the page
   lower bound of a position-independent cache for the same requests.

Prints tables; writes ``mepic.json`` and ``mepic_{pages_vs_qps,pages_vs_chunks,f1}.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks.common import add_common_args, resolve_common_args, start_server, stop_tree
from benchmarks.mepic_client import (
    Mode,
    burst_pass,
    lower_bound_pages,
    pages,
    serve_pass,
    summarize,
)
from benchmarks.mepic_plots import plot_all, print_tables
from benchmarks.mepic_workload import Renderer, WorkloadConfig, make_docs, make_requests


def modes(recompute_k: int) -> dict[str, Mode]:
    mepic = ["--enable-mepic"]
    return {
        "stock": Mode("stock", [], False),
        "full-recompute": Mode("full-recompute", ["--disable-radix-cache"], False),
        "naive-pic": Mode("naive-pic", [*mepic, "--mepic-recompute", "none"], True),
        "epic": Mode(
            "epic",
            [
                *mepic,
                "--mepic-recompute",
                "first-k-tokens",
                "--mepic-recompute-k",
                str(recompute_k),
                "--mepic-chunk-copies",
            ],
            True,
        ),  # fmt: skip
        "mepic": Mode("mepic", mepic, True),
    }


def _range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    return int(lo), int(hi or lo)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_common_args(p, port=31900)
    p.add_argument("--modes", default="full-recompute,stock,naive-pic,epic,mepic")
    p.add_argument("--qps", default="0.05,0.2", help="serving passes (requests per second)")
    p.add_argument("--requests", type=int, default=12, help="requests per serving pass")
    p.add_argument("--docs", type=int, default=16, help="document pool size")
    p.add_argument("--chunks", default="8", help="documents per request, N or LO-HI")
    p.add_argument("--chunk-tokens", default="384-640", help="tokens per document, N or LO-HI")
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--no-system-prompt", action="store_true")
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--burst", type=int, default=8, help="requests per memory pass")
    p.add_argument("--burst-chunks", default="2,4,8")
    p.add_argument("--burst-tokens", type=int, default=16)
    p.add_argument("--recompute-k", type=int, default=48, help="K of the epic mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="mepic.json of an earlier run whose full-recompute outputs are the "
        "token-agreement reference (when this run has no full-recompute mode)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny model and workload (CI)")
    a = p.parse_args()
    if a.smoke:
        from mepic_sglang.models import ensure_tiny

        a.model = a.model or str(ensure_tiny("llama"))
        a.qps, a.requests, a.docs, a.chunks, a.chunk_tokens = "4", 6, 6, "3", "40-70"
        a.burst, a.burst_chunks, a.max_new_tokens = 4, "3", 4
    resolve_common_args(a)
    return a


def capacity(a: argparse.Namespace, prompt_tokens: int) -> int:
    """Pool size that holds the largest burst of the stock modes (no sharing) with room."""
    return max(16384, 2 * a.burst * (prompt_tokens + a.burst_tokens) + 4096)


def main() -> None:
    a = parse()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(a.model)
    system = "" if a.no_system_prompt else WorkloadConfig.system_prompt
    cfg = WorkloadConfig(n_docs=a.docs, n_requests=a.requests, chunks=_range(a.chunks),
                         chunk_tokens=_range(a.chunk_tokens), zipf=a.zipf, system_prompt=system,
                         qps=1.0, seed=a.seed)  # fmt: skip
    renderer = Renderer(tokenizer, system)
    docs = make_docs(cfg, lambda t: len(tokenizer.encode(t, add_special_tokens=False)))
    base = make_requests(cfg, docs)
    bursts = {
        c: make_requests(dataclasses.replace(cfg, n_requests=a.burst, chunks=(c, c),
                                             seed=a.seed + 100 + c), docs)
        for c in (int(x) for x in a.burst_chunks.split(",") if x)
    }  # fmt: skip
    longest = max(
        len(tokenizer.encode(renderer.plain(r, docs)))
        for rs in [base, *bursts.values()]
        for r in rs
    )
    # NOTE: a MEPIC extend is never split across prefill steps, so one step must hold the longest
    # prompt; SGLang's CPU memory heuristic then needs an explicit static fraction.
    prefill = str(max(4096, -(-(longest + 1024) // 256) * 256))  # a multiple of the page size
    common = ["--chunked-prefill-size", prefill, "--max-prefill-tokens", prefill,
              "--mem-fraction-static", "0.6"]  # fmt: skip
    all_modes = modes(a.recompute_k)
    out: dict[str, Any] = {"serving": [], "memory": [], "requests": [], "meta": {
        "model": a.model, "machine": platform.platform(), "date": time.strftime("%Y-%m-%d"),
        "args": {k: str(v) for k, v in vars(a).items()},
    }}  # fmt: skip
    reference: dict[float, dict[int, list[int]]] = {}
    if a.reference is not None:
        for r in json.loads(a.reference.read_text())["requests"]:
            if r["mode"] == "full-recompute":
                reference.setdefault(float(r["qps"]), {})[r["rid"]] = r["output_ids"]
    for name in a.modes.split(","):
        mode = all_modes[name]
        log = a.out / f"mepic_server_{name}.log"
        proc, root, url = start_server(a.model, a.port, [*common, *mode.flags], log,
                                       max_total_tokens=capacity(a, longest))  # fmt: skip
        try:
            for qps in map(float, a.qps.split(",")):
                reqs = [dataclasses.replace(r, arrival=r.arrival / qps) for r in base]
                with tqdm(total=len(reqs), desc=f"{name} qps={qps}", leave=False) as bar:
                    results, window, wall = serve_pass(url, mode, reqs, docs, renderer,
                                                       a.max_new_tokens, bar)  # fmt: skip
                if name == "full-recompute":
                    reference[qps] = {r.rid: r.output_ids for r in results}
                row = {"mode": name, "qps": qps, **summarize(results, reqs, wall,
                                                             reference.get(qps))}  # fmt: skip
                row["peak_pages"] = pages(int(window["window_peak_used_tokens"]))
                row["mean_pages"] = window["window_mean_used_tokens"] / 16
                out["serving"].append(row)
                out["requests"] += [{"mode": name, "qps": qps, "rid": r.rid, "ttft": r.ttft,
                                     "e2e": r.e2e, "text": r.text, "output_ids": r.output_ids,
                                     "mepic": r.meta.get("mepic"),
                                     "cached_tokens": r.meta.get("cached_tokens")}
                                    for r in results]  # fmt: skip
                print(json.dumps(row), flush=True)
            for c, reqs in tqdm(bursts.items(), desc=f"{name} bursts", leave=False):
                window = burst_pass(url, mode, reqs, docs, renderer, a.burst_tokens)
                row = {"mode": name, "chunks": c, "requests": len(reqs),
                       "peak_pages": pages(int(window["window_peak_used_tokens"])),
                       "lower_bound_pages": lower_bound_pages(reqs, docs, renderer,
                                                              a.burst_tokens)}  # fmt: skip
                out["memory"].append(row)
                print(json.dumps(row), flush=True)
        finally:
            stop_tree(proc, root)
        (a.out / "mepic.json").write_text(json.dumps(out, indent=1))  # after every mode
    print_tables(out)
    plot_all(out, a.out)


if __name__ == "__main__":
    main()
