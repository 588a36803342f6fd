"""The chunk store: shared, read-only chunk pages that live in SGLang's KV page pool.

The store owns pages it was handed by a request that computed a chunk (``publish``); it never
allocates. A page in the pool is in exactly one of these states (``check_integrity`` in
:mod:`mepic_sglang.sglang.chunk_cache` proves it for the whole pool)::

    state      owner                     counted by SGLang as   freed when
    ---------  ------------------------  ---------------------  -------------------------------
    free       allocator                 available              -
    radix      radix tree node           evictable/protected    radix eviction
    shared     ChunkEntry (this store)   evictable (refs == 0)  LRU eviction here (refs == 0)
                                         protected (refs > 0)
    scratch    a running MEPIC request   protected              the request is released
    private    a running request's row   (uncached)             the request is released

``refs`` counts the running requests that read an entry's pages (consumers and the producer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch


@dataclass
class ChunkEntry:
    key: str
    slots: torch.Tensor  # int64 slot ids of the shared pages, in chunk order
    refs: int = 0
    last_used: int = 0

    @property
    def tokens(self) -> int:
        return int(self.slots.numel())


@dataclass
class StoreStats:
    hits: int = 0  # chunk occurrences served from shared pages
    misses: int = 0  # chunk occurrences computed because no entry existed
    published: int = 0
    duplicates: int = 0  # computed by a request but already published by another
    evictions: int = 0
    evicted_tokens: int = 0
    in_context: int = 0  # cold chunks computed in context, not published (no room for scratch)


@dataclass
class ChunkStore:
    page_size: int
    entries: dict[str, ChunkEntry] = field(default_factory=dict)
    stats: StoreStats = field(default_factory=StoreStats)
    scratch_tokens: int = 0  # scratch pages held by running requests (see chunk_batch)
    _tick: int = 0
    # NOTE: SGLang asks for evictable/protected sizes on every admission check; running totals
    # keep those O(1) (check_integrity recomputes them). page_ids serves the write guard.
    _evictable: int = 0
    _referenced: int = 0
    page_ids: set[int] = field(default_factory=set)

    # ---- lookups and references -------------------------------------------------------------
    def lookup(self, key: str) -> ChunkEntry | None:
        return self.entries.get(key)

    def acquire(self, keys: Iterable[str]) -> None:
        """A request starts reading these entries' pages."""
        for key in keys:
            entry = self.entries[key]
            if entry.refs == 0:
                self._evictable -= entry.tokens
                self._referenced += entry.tokens
            entry.refs += 1
            entry.last_used = self._next_tick()

    def release(self, keys: Iterable[str]) -> None:
        for key in keys:
            entry = self.entries[key]
            assert entry.refs > 0, f"chunk {key[:12]} released more often than acquired"
            entry.refs -= 1
            if entry.refs == 0:
                self._referenced -= entry.tokens
                self._evictable += entry.tokens
            entry.last_used = self._next_tick()

    def publish(self, key: str, slots: torch.Tensor) -> bool:
        """Adopt ``slots`` (full pages) as the shared pages of ``key``; the caller holds one
        reference. False (and nothing adopted) if ``key`` is already published."""
        if key in self.entries:
            self.stats.duplicates += 1
            return False
        assert slots.numel() > 0 and slots.numel() % self.page_size == 0, "not whole pages"
        assert int(slots[0]) % self.page_size == 0, "shared pages must start on a page"
        entry = ChunkEntry(key, slots.clone(), refs=1, last_used=self._next_tick())
        self.entries[key] = entry
        self._referenced += entry.tokens
        self.page_ids.update((entry.slots[:: self.page_size] // self.page_size).tolist())
        self.stats.published += 1
        return True

    # ---- memory accounting -------------------------------------------------------------------
    def evictable_tokens(self) -> int:
        return self._evictable

    def protected_tokens(self) -> int:
        return self._referenced + self.scratch_tokens

    def shared_tokens(self) -> int:
        return self._evictable + self._referenced

    def evict(self, num_tokens: int, free: Callable[[torch.Tensor], None]) -> int:
        """Free least-recently-used unreferenced entries until ``num_tokens`` are freed or none
        is left; returns the number of tokens freed."""
        freed = 0
        victims = sorted(
            (e for e in self.entries.values() if e.refs == 0), key=lambda e: e.last_used
        )
        for entry in victims:
            if freed >= num_tokens:
                break
            del self.entries[entry.key]
            self._evictable -= entry.tokens
            self.page_ids.difference_update(
                (entry.slots[:: self.page_size] // self.page_size).tolist()
            )
            free(entry.slots)
            freed += entry.tokens
            self.stats.evictions += 1
            self.stats.evicted_tokens += entry.tokens
        return freed

    # ---- integrity ---------------------------------------------------------------------------
    def shared_pages(self) -> torch.Tensor:
        return torch.tensor(sorted(self.page_ids), dtype=torch.int64)

    def check_integrity(self) -> None:
        """Each entry holds whole, distinct pages; no page is in two entries; refs >= 0."""
        p = self.page_size
        seen: set[int] = set()
        for entry in self.entries.values():
            assert entry.refs >= 0, f"chunk {entry.key[:12]} has refs {entry.refs}"
            s = entry.slots
            assert s.numel() > 0 and s.numel() % p == 0, f"chunk {entry.key[:12]} not whole pages"
            pages = s.view(-1, p)
            expect = pages[:, :1] + torch.arange(p, dtype=s.dtype)
            assert torch.equal(pages, expect), f"chunk {entry.key[:12]} pages are not contiguous"
            ids = (pages[:, 0] // p).tolist()
            dup = seen.intersection(ids)
            assert not dup, f"pages {sorted(dup)[:4]} are in two chunk entries"
            assert len(set(ids)) == len(ids), f"chunk {entry.key[:12]} repeats a page"
            seen.update(ids)
        assert self.scratch_tokens >= 0
        entries = self.entries.values()
        assert self._evictable == sum(e.tokens for e in entries if e.refs == 0), "evictable total"
        assert self._referenced == sum(e.tokens for e in entries if e.refs > 0), "referenced total"
        assert self.page_ids == seen, "page index out of step with the entries"

    def snapshot(self) -> dict[str, int]:
        s = self.stats
        return {
            "chunks": len(self.entries),
            "shared_pages": self.shared_tokens() // self.page_size,
            "referenced_chunks": sum(1 for e in self.entries.values() if e.refs > 0),
            "scratch_pages": self.scratch_tokens // self.page_size,
            "hits": s.hits,
            "misses": s.misses,
            "published": s.published,
            "duplicates": s.duplicates,
            "evictions": s.evictions,
            "evicted_pages": s.evicted_tokens // self.page_size,
            "in_context": s.in_context,
        }

    def _next_tick(self) -> int:
        self._tick += 1
        return self._tick


def page_census(n_pages: int, by_state: dict[str, list[torch.Tensor]]) -> dict[str, int]:
    """Count pages per state and prove that pages ``1 .. n_pages-1`` are each claimed exactly
    once over all states and all owners (page 0 is the allocator's reserved page).

    ``by_state``: state name -> one tensor of distinct page ids per owner (per request for
    private/scratch pages, one tensor for the pool-wide states). Raises AssertionError naming
    the first offending pages.
    """
    claims = torch.zeros(n_pages, dtype=torch.int64)
    counts = {}
    for name, parts in by_state.items():
        ids = torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)
        if ids.numel():
            lo, hi = int(ids.min()), int(ids.max())
            assert lo >= 0 and hi < n_pages, f"{name} pages outside the pool: {lo}..{hi}"
        claims += torch.bincount(ids, minlength=n_pages)
        counts[name] = int(ids.numel())
    twice = torch.nonzero(claims[1:] > 1).flatten() + 1
    assert twice.numel() == 0, f"pages in two states or owners: {twice[:8].tolist()}"
    leaked = torch.nonzero(claims[1:] == 0).flatten() + 1
    assert leaked.numel() == 0, (
        f"{leaked.numel()} pages in no state (leaked): {leaked[:8].tolist()}"
    )
    return counts
