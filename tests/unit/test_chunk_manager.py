"""The chunk manager without SGLang: a request's life, and page accounting over random lives.

A toy page allocator stands in for SGLang's (pages ``1..N``; page 0 reserved, as in SGLang). The
reference is the census: every page is free, shared (an entry's), scratch (a live hold's) or
private (a live request's row), exactly once.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mepic_sglang.chunks.layout import build_layout
from mepic_sglang.chunks.manager import ChunkHold, ChunkManager
from mepic_sglang.chunks.plan import extend_layout, logical_row
from mepic_sglang.chunks.recompute import make_policy
from mepic_sglang.chunks.store import page_census

P = 4
N_PAGES = 64


class Pages:
    """Free pages of a toy pool, handed out as slot tensors."""

    def __init__(self) -> None:
        self.free_pages = list(range(N_PAGES - 1, 0, -1))

    def alloc(self, tokens: int) -> torch.Tensor | None:
        n = -(-tokens // P)
        if n > len(self.free_pages):
            return None
        ids = [self.free_pages.pop() for _ in range(n)]
        slots = torch.cat([torch.arange(i * P, (i + 1) * P) for i in ids]) if ids else None
        return slots[:tokens] if slots is not None else torch.empty(0, dtype=torch.int64)

    def free(self, slots: torch.Tensor) -> None:
        self.free_pages += sorted(set((slots // P).tolist()))


def _table(*chunks: int):  # type: ignore[no-untyped-def]
    """A prompt: text, chunks of the given token counts (distinct content per size), text."""
    segs = [("text", [1, 2, 3])]
    segs += [("chunk", [100 + n] * n) for n in chunks]
    segs += [("text", [7, 8])]
    layout = build_layout(segs, page_size=P, pad_id=0)
    return layout.table, len(layout.token_ids)


class Request:
    """One request's side of the life: its private row slots and its hold."""

    def __init__(self, mgr: ChunkManager, pool: Pages, *chunks: int) -> None:
        table, total = _table(*chunks)
        self.mgr, self.pool = mgr, pool
        self.plan = mgr.plan(table, total, key_of=lambda r: r.chunk_key or "")
        self.hold: ChunkHold | None = None
        self.private = torch.empty(0, dtype=torch.int64)

    def admit(self) -> bool:
        fresh = self.pool.alloc(self.plan.total_len - self.plan.cached_tokens)
        if fresh is None:
            return False
        self.hold = self.mgr.acquire(self.plan)
        scratch = self.pool.alloc(self.hold.plan.scratch_tokens)
        self.mgr.start_extend(self.hold, scratch)
        plan = self.hold.plan
        fresh = fresh[: plan.total_len - plan.cached_tokens]
        self.mgr.check_not_shared(fresh, self.hold.scratch)  # type: ignore[arg-type]
        row = logical_row(plan, fresh[:0], self.mgr.warm_slots(plan), fresh)
        assert extend_layout(plan).positions.numel() == plan.computed_tokens
        self.mgr.publish(self.hold, row)
        keep = torch.ones(plan.total_len, dtype=torch.bool)
        for s, e in self.mgr.shared_spans(self.hold):
            keep[s:e] = False
        self.private = row[keep]
        return True

    def finish(self) -> None:
        assert self.hold is not None
        self.pool.free(self.private)
        self.mgr.release(self.hold, self.pool.free)
        self.hold, self.private = None, torch.empty(0, dtype=torch.int64)


def census(mgr: ChunkManager, pool: Pages, live: list[Request]) -> dict[str, int]:
    mgr.check_integrity()

    def ids(slots: torch.Tensor) -> torch.Tensor:
        return torch.unique(slots.to(torch.int64) // P)

    holds = [r.hold for r in live if r.hold is not None]
    return page_census(
        N_PAGES,
        {
            "free": [torch.tensor(pool.free_pages, dtype=torch.int64)],
            "shared": [mgr.shared_pages()],
            "scratch": [ids(h.scratch) for h in holds if h.scratch is not None],
            "private": [ids(r.private) for r in live],
        },
    )


def test_cold_then_warm_then_evicted() -> None:
    pool, mgr = Pages(), ChunkManager(P, make_policy("first-page"))
    a = Request(mgr, pool, 9, 6)  # two cold chunks with a shared part each
    assert [u.warm for u in a.plan.uses] == [False, False]
    assert mgr.reserve_tokens(a.plan) == a.plan.scratch_tokens == 8
    assert a.admit()
    counts = census(mgr, pool, [a])
    assert counts["scratch"] == 2 and counts["shared"] == 3  # heads; 2 + 1 shared pages
    assert mgr.protected_tokens() == 3 * P + 2 * P and mgr.evictable_tokens() == 0

    b = Request(mgr, pool, 9, 6)  # the same chunks: warm now
    assert [u.warm for u in b.plan.uses] == [True, True]
    assert mgr.reserve_tokens(b.plan) == 0  # pinned by a
    a.finish()
    assert mgr.evictable_tokens() == 3 * P
    assert mgr.reserve_tokens(b.plan) == 3 * P  # evictable until b acquires them
    assert b.admit()
    census(mgr, pool, [b])
    assert mgr.snapshot()["hits"] == 2 and mgr.snapshot()["misses"] == 2
    assert mgr.evict(100, pool.free) == 0  # referenced entries are never evicted
    b.finish()
    assert mgr.evict(100, pool.free) == 3 * P
    assert census(mgr, pool, []) == {"free": N_PAGES - 1, "shared": 0, "scratch": 0, "private": 0}


def test_no_scratch_room_computes_cold_chunks_in_context() -> None:
    pool, mgr = Pages(), ChunkManager(P, make_policy("first-page"))
    a = Request(mgr, pool, 9)
    hold = mgr.acquire(a.plan)
    mgr.start_extend(hold, None)
    assert hold.plan.cold == () and hold.plan.in_context == 1
    assert mgr.snapshot()["in_context"] == 1
    assert mgr.publish(hold, torch.arange(hold.plan.total_len)) == 0
    mgr.release(hold, pool.free)
    assert mgr.snapshot()["chunks"] == 0


def test_private_copies_drop_the_warm_references() -> None:
    pool, mgr = Pages(), ChunkManager(P, make_policy("first-page"))
    a = Request(mgr, pool, 9)
    assert a.admit()
    a.finish()
    b = Request(mgr, pool, 9)
    hold = mgr.acquire(b.plan)
    assert mgr.store.entries[hold.acquired[0]].refs == 1
    mgr.drop_warm(hold)
    assert hold.copied and hold.acquired == [] and mgr.shared_spans(hold) == []
    assert mgr.evictable_tokens() == 2 * P
    mgr.release(hold, pool.free)
    mgr.check_integrity()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["start", "finish", "evict"]), st.integers(0, 7)),
        max_size=40,
    )
)
def test_random_lives_keep_every_page_in_one_state(ops: list[tuple[str, int]]) -> None:
    pool, mgr = Pages(), ChunkManager(P, make_policy("first-page"))
    sizes = [(9,), (6, 9), (13,), (5, 5, 9), (9, 13)]
    live: list[Request] = []
    for op, n in ops:
        if op == "start":
            req = Request(mgr, pool, *sizes[n % len(sizes)])
            if req.admit():
                live.append(req)
        elif op == "finish" and live:
            live.pop(n % len(live)).finish()
        elif op == "evict":
            mgr.evict(n * P, pool.free)
        census(mgr, pool, live)
    for req in live:
        req.finish()
    mgr.evict(N_PAGES * P, pool.free)
    assert census(mgr, pool, []) == {"free": N_PAGES - 1, "shared": 0, "scratch": 0, "private": 0}
