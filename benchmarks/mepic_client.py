"""Client side of the MEPIC benchmark: one streamed request, a Poisson serving pass, a burst
memory pass, and the page lower bound. Every pass is bracketed by two ``/server_info`` reads, so
its KV numbers are the server's exact per-step window
(``mepic_sglang.sglang.observe.PoolUsage``)."""

from __future__ import annotations

import dataclasses
import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests

from benchmarks.common import quantile
from benchmarks.mepic_workload import Doc, Renderer, Request, contains, f1
from disagg import server_info

PAGE = 16


@dataclass
class Mode:
    name: str
    flags: list[str]
    chunked: bool  # send mepic_segments (else the plain prompt)


@dataclass
class Result:
    rid: int
    ttft: float
    e2e: float
    text: str
    output_ids: list[int]
    meta: dict[str, Any] = field(default_factory=dict)


def pool(url: str) -> dict[str, Any]:
    """``/server_info`` pool numbers (reading starts a new usage window, so nothing else may read
    it during a pass)."""
    time.sleep(0.5)  # NOTE: the last responses arrive a scheduler step before their release
    return server_info.pool(server_info.fetch(url, timeout_s=120))


def body(mode: Mode, req: Request, docs: list[Doc], renderer: Renderer, sp: dict[str, Any]) -> Any:
    out: dict[str, Any] = {"sampling_params": sp, "stream": True}
    if mode.chunked:
        out.update(text="", mepic_segments=renderer.segments(req, docs))
    else:
        out["text"] = renderer.plain(req, docs)
    return out


def run_one(url: str, payload: dict[str, Any], rid: int) -> Result:
    t0 = time.perf_counter()
    ttft, last = None, {}
    with requests.post(f"{url}/generate", json=payload, stream=True, timeout=3600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            if ttft is None:
                ttft = time.perf_counter() - t0
            last = json.loads(line[6:])
    e2e = time.perf_counter() - t0
    return Result(rid, ttft or e2e, e2e, last.get("text", ""), last.get("output_ids", []),
                  last.get("meta_info", {}))  # fmt: skip


def serve_pass(
    url: str, mode: Mode, reqs: list[Request], docs: list[Doc], renderer: Renderer,
    max_new_tokens: int, progress: Any = None,
) -> tuple[list[Result], dict[str, Any], float]:  # fmt: skip
    """Requests at their arrival times (threads); returns results, the pass's pool window and
    the wall time."""
    sp = {"temperature": 0, "max_new_tokens": max_new_tokens}
    results: list[Result | None] = [None] * len(reqs)
    errors: list[BaseException] = []
    pool(url)  # new window
    start = time.perf_counter()

    def worker(i: int, req: Request) -> None:
        time.sleep(max(0.0, req.arrival - (time.perf_counter() - start)))
        try:
            results[i] = run_one(url, body(mode, req, docs, renderer, sp), req.rid)
        except BaseException as e:  # noqa: BLE001 -- reported after the pass
            errors.append(e)
        if progress is not None:
            progress.update(1)

    threads = [threading.Thread(target=worker, args=(i, r)) for i, r in enumerate(reqs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return [r for r in results if r is not None], pool(url), wall


def burst_pass(
    url: str, mode: Mode, reqs: list[Request], docs: list[Doc], renderer: Renderer,
    new_tokens: int,
) -> dict[str, Any]:  # fmt: skip
    """All requests at once, each holding its KV for ``new_tokens`` (ignore_eos): the pass's
    exact peak of pages in use."""
    burst = [dataclasses.replace(r, arrival=0.0) for r in reqs]
    sp = {"temperature": 0, "max_new_tokens": new_tokens, "ignore_eos": True}
    results: list[Result] = []
    pool(url)
    threads = [
        threading.Thread(target=lambda r=r: results.append(
            run_one(url, body(mode, r, docs, renderer, sp), r.rid)))
        for r in burst
    ]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return pool(url)


def pages(tokens: int) -> int:
    return -(-tokens // PAGE)


def lower_bound_pages(
    reqs: list[Request], docs: list[Doc], renderer: Renderer, new_tokens: int
) -> int:
    """Pages any position-independent cache needs to hold ``reqs`` at once: each distinct
    chunk's pages after its first, one private (recomputed) page per chunk occurrence, the
    shared leading text once, and each request's question and generated tokens."""
    tok = renderer.tokenizer

    def n(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False))

    distinct = {i for r in reqs for i in r.docs}
    shared = sum(pages(n(renderer.doc_piece(docs[i]))) - 1 for i in distinct)
    occurrences = sum(len(r.docs) for r in reqs)
    plain = sum(pages(n(renderer.tail(r)) + new_tokens) for r in reqs)
    return shared + occurrences + pages(n(renderer.head)) + plain


def summarize(
    results: list[Result], reqs: list[Request], wall: float, reference: dict[int, list[int]] | None
) -> dict[str, Any]:
    by_rid = {r.rid: r for r in reqs}
    seen: set[int] = set()
    hit = set()
    for req in sorted(reqs, key=lambda x: x.arrival):
        if set(req.docs) <= seen:
            hit.add(req.rid)
        seen |= set(req.docs)

    ttft, e2e = [r.ttft for r in results], [r.e2e for r in results]
    out: dict[str, Any] = {
        "ttft_p50": quantile(ttft, 0.5), "ttft_p99": quantile(ttft, 0.99),
        "e2e_p50": quantile(e2e, 0.5), "e2e_p99": quantile(e2e, 0.99),
        "ttft_hit_p50": quantile([r.ttft for r in results if r.rid in hit], 0.5),
        "hit_requests": len(hit),
        "throughput_rps": len(results) / wall if wall else 0.0,
        "f1": 100 * statistics.fmean(f1(r.text, by_rid[r.rid].answer) for r in results),
        "contains": 100 * statistics.fmean(contains(r.text, by_rid[r.rid].answer)
                                           for r in results),
    }  # fmt: skip
    if reference is not None:
        agree = []
        for r in results:
            ref = reference.get(r.rid, [])
            length = max(len(ref), len(r.output_ids)) or 1
            agree.append(sum(a == b for a, b in zip(ref, r.output_ids, strict=False)) / length)
        out["token_agreement"] = 100 * statistics.fmean(agree)
    return out
