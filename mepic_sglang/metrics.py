"""Prometheus metrics of the chunk store (``/metrics`` with ``--enable-metrics``).

SGLang runs ``prometheus_client`` in multiprocess mode and serves every process's samples on
``/metrics``; metrics created in the scheduler process appear there next to SGLang's own
``sglang:*`` series. Counters advance by the store's deltas since the last sync; gauges use
``multiprocess_mode="mostrecent"`` like SGLang's.
"""

from __future__ import annotations

from typing import Any

from mepic_sglang.chunks.store import ChunkStore

PREFIX = "sglang:mepic_"
COUNTERS = {
    "hits": "Chunk occurrences served from shared pages",
    "misses": "Chunk occurrences encoded because no shared copy existed",
    "published": "Chunks whose pages became shared",
    "evictions": "Chunk entries evicted (LRU, unreferenced)",
    "evicted_pages": "Shared pages freed by eviction",
    "in_context": "Cold chunks computed in context and not published (no room for their scratch)",
}
GAUGES = {
    "chunks": "Chunk entries in the store",
    "shared_pages": "Pages held by the chunk store (one copy per chunk)",
    "referenced_chunks": "Chunk entries read by running requests",
    "scratch_pages": "Scratch pages held while cold chunks are encoded",
}


class ChunkMetrics:
    """Mirrors :meth:`ChunkStore.snapshot` into Prometheus (no-op unless enabled)."""

    def __init__(self, enabled: bool) -> None:
        self._last: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._counters: dict[str, Any] = {}
        self._gauges: dict[str, Any] = {}
        if not enabled:
            return
        from prometheus_client import Counter, Gauge

        for name, doc in COUNTERS.items():
            self._counters[name] = Counter(PREFIX + name, doc)
        for name, doc in GAUGES.items():
            self._gauges[name] = Gauge(PREFIX + name, doc, multiprocess_mode="mostrecent")

    def sync(self, store: ChunkStore) -> None:
        if not self._counters:
            return
        snap = store.snapshot()
        for name, counter in self._counters.items():
            delta = snap[name] - self._last[name]
            if delta > 0:
                counter.inc(delta)
            self._last[name] = snap[name]
        for name, gauge in self._gauges.items():
            gauge.set(snap[name])
