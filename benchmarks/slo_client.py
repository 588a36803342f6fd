"""Client side of the SLO benchmark: replay a workload against a real server, score each request.

Requests are token ids (seeded, distinct from the first token: no prefix-cache hits) with
``ignore_eos`` and ``max_new_tokens`` = the workload's output length, the class's SLO in
``custom_params`` and its priority in SGLang's ``priority`` field, sent at their arrival times.
The score comes from the server's own ``meta_info["slo"]`` (TTFT/TPOT from SGLang's time stats);
a 429 counts as rejected (missed).
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from tqdm import tqdm

from benchmarks.common import quantile
from scheduler_patch.sim_workload import SimRequest, WorkloadClass

VOCAB = (100, 2_000)  # token ids sent as prompts (inside every model here, tiny ones too)

# NOTE: sized for SmolLM2-135M float32 on 2 CPU cores (~300 prompt tokens/s, decode steps of
# 40-150 ms). Priorities 0/10/20 so that SGLang's priority preemption (threshold 10) can fire too.
CPU_CLASSES = (
    WorkloadClass("interactive", 0.3, 2.0, 0.4, 20, (32, 128), (8, 16)),
    WorkloadClass("standard", 0.4, 8.0, 0.6, 10, (128, 384), (16, 32)),
    WorkloadClass("batch", 0.3, 30.0, None, 0, (384, 768), (16, 32)),
)


def class_flags(classes: tuple[WorkloadClass, ...]) -> str:
    """``--slo-classes`` for ``classes``."""
    parts = []
    for c in classes:
        keys = [f"ttft={c.ttft_s * 1e3:.0f}"] if c.ttft_s else []
        keys += [f"tpot={c.tpot_s * 1e3:.0f}"] if c.tpot_s else []
        parts.append(f"{c.name}:" + ",".join([*keys, f"priority={c.priority}"]))
    return ";".join(parts)


def body(req: SimRequest, seed: int) -> dict[str, Any]:
    rng = random.Random(f"{seed}-{req.rid}")
    return {
        "input_ids": [rng.randrange(*VOCAB) for _ in range(req.prompt_tokens)],
        "priority": req.slo.priority,
        "sampling_params": {
            "max_new_tokens": req.output_tokens,
            "ignore_eos": True,
            "temperature": 0,
            "custom_params": {"slo_class": req.slo.slo_class},
        },
    }


def score(req: SimRequest, status: int, out: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"rid": req.rid, "class": req.slo.slo_class, "status": status}
    if status == 429:
        return {**row, "met": False, "rejected": True}
    if status != 200:
        return {**row, "met": False, "rejected": False, "error": str(out)[:200]}
    slo = out["meta_info"].get("slo") or {}
    return {
        **row,
        "met": slo.get("met") is True,
        "rejected": False,
        "ttft": (slo.get("ttft_ms") or 0) / 1e3,
        "tpot": None if slo.get("tpot_ms") is None else slo["tpot_ms"] / 1e3,
        "retractions": out["meta_info"].get("num_retractions", 0),
    }


def replay(
    url: str, workload: list[SimRequest], seed: int, timeout_s: float
) -> list[dict[str, Any]]:
    """Send every request at its arrival time (relative to now); wait for all (a request still
    running ``timeout_s`` after the last arrival counts as missed)."""
    rows: list[dict[str, Any]] = []
    lock = threading.Lock()
    bar = tqdm(total=len(workload), desc="requests", leave=False)
    start = time.monotonic()
    deadline = start + (workload[-1].arrival if workload else 0) + timeout_s

    def one(req: SimRequest) -> None:
        time.sleep(max(0.0, start + req.arrival - time.monotonic()))
        try:
            left = max(deadline - time.monotonic(), 1.0)
            r = requests.post(f"{url}/generate", json=body(req, seed), timeout=left)
            row = score(req, r.status_code, r.json() if r.content else {})
        except requests.RequestException as e:
            row = {"rid": req.rid, "class": req.slo.slo_class, "met": False, "rejected": False,
                   "error": type(e).__name__}  # fmt: skip
        with lock:
            rows.append(row)
            bar.update()

    with ThreadPoolExecutor(max_workers=min(len(workload), 256) or 1) as pool:
        list(pool.map(one, workload))
    bar.close()
    return sorted(rows, key=lambda r: r["rid"])


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Attainment overall and per class, TTFT percentiles, rejections and retractions."""
    per: dict[str, list[bool]] = {}
    for r in rows:
        per.setdefault(r["class"], []).append(bool(r["met"]))
    ttfts = [r["ttft"] for r in rows if r.get("ttft")]
    return {
        "requests": len(rows),
        "attainment": sum(r["met"] for r in rows) / max(len(rows), 1),
        "per_class": {c: sum(v) / len(v) for c, v in sorted(per.items())},
        "rejected": sum(bool(r.get("rejected")) for r in rows),
        "errors": sum("error" in r for r in rows),
        "retractions": sum(r.get("retractions", 0) for r in rows),
        "ttft_p50": quantile(ttfts, 0.5) if ttfts else None,
        "ttft_p99": quantile(ttfts, 0.99) if ttfts else None,
    }
