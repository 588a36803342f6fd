"""The chunk manager: MEPIC's half of the hybrid KV cache, and the only writer of its accounting.

SGLang's radix cache owns the prefix half; :class:`ChunkManager` owns every chunk page and every
count about them (entry references, scratch heads, hit/miss statistics). The SGLang hooks
(``mepic_sglang/sglang/chunk_*.py``) call it at each step of a MEPIC request and never touch the
store directly::

    step (SGLang hook)                 manager call         what changes here
    ---------------------------------  -------------------  -----------------------------------
    match_prefix                       plan                 nothing (lookups only)
    _select_prefill_admission          reserve_tokens       nothing (the admission budget)
    _commit_prefill_admission          acquire -> hold      warm entries referenced; hits/misses
    prepare_for_extend                 start_extend         scratch heads held (or cold chunks
                                                            computed in context when none fit)
                                       publish              cold spans become shared entries
                                       (drop_warm)          --mepic-chunk-copies: warm released
    release_kv_cache                   release              scratch freed; references dropped
    pool eviction                      evict                LRU unreferenced entries freed

Page states and who frees them: :mod:`mepic_sglang.chunks.store`. Pages are allocated by SGLang's
allocator (the manager never allocates); ``free`` callbacks hand them back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from mepic_sglang.chunks.layout import Region, RegionTable
from mepic_sglang.chunks.plan import Plan, fit_extra, make_plan
from mepic_sglang.chunks.recompute import RecomputePolicy
from mepic_sglang.chunks.store import ChunkStore

Free = Callable[[torch.Tensor], None]


@dataclass
class ChunkHold:
    """The chunk pages one request holds, from :meth:`ChunkManager.acquire` to
    :meth:`ChunkManager.release`."""

    plan: Plan
    acquired: list[str] = field(default_factory=list)  # entry keys this request references
    published: list[tuple[int, int]] = field(default_factory=list)  # row spans it published
    scratch: torch.Tensor | None = None  # scratch-head slots (from start_extend)
    applied: bool = False  # its extend was laid out
    copied: bool = False  # --mepic-chunk-copies: warm spans hold private copies


class ChunkManager:
    """The chunk store of one KV pool, its recompute policy and its accounting."""

    def __init__(
        self,
        page_size: int,
        policy: RecomputePolicy,
        *,
        on_change: Callable[[ChunkStore], None] = lambda store: None,
    ) -> None:
        self.store = ChunkStore(page_size=page_size)
        self.policy = policy
        self._on_change = on_change  # NOTE: metrics mirror; called after every change

    @property
    def page_size(self) -> int:
        return self.store.page_size

    # ---- planning (no state changes) ----------------------------------------------------------
    def plan(self, table: RegionTable, total_len: int, key_of: Callable[[Region], str]) -> Plan:
        """Plan one request against the entries published now (raises PlanError)."""

        def lookup(key: str) -> int | None:
            entry = self.store.lookup(key)
            return None if entry is None else entry.tokens

        return make_plan(
            table.regions,
            total_len=total_len,
            page_size=self.page_size,
            policy=self.policy,
            lookup=lookup,
            key_of=key_of,
        )

    @staticmethod
    def fit(plan: Plan, room: int) -> Plan:
        """``plan`` shrunk so its extra pages fit ``room`` tokens (see ``plan.fit_extra``)."""
        return fit_extra(plan, max(room, 0))

    def reserve_tokens(self, plan: Plan) -> int:
        """Pool tokens admission must find for ``plan`` beyond its extend: scratch heads and
        private copies, plus warm spans that are still evictable until :meth:`acquire` pins
        them."""
        entries = self.store.entries
        unpinned = sum(u.end - u.shared_start for u in plan.warm if entries[u.key].refs == 0)
        return plan.extra_tokens + unpinned

    def warm_slots(self, plan: Plan) -> list[torch.Tensor]:
        """The shared slots of each warm use, in plan order."""
        return [self.store.entries[u.key].slots for u in plan.warm]

    def check_not_shared(self, *slot_sets: torch.Tensor) -> None:
        """A page is never written after it is published: assert none of ``slot_sets`` is."""
        ids = self.store.page_ids
        if not ids:
            return
        for slots in slot_sets:
            pages = (slots.cpu() // self.page_size).tolist()
            assert ids.isdisjoint(pages), "an extend would write a shared chunk page"

    # ---- a request's life ---------------------------------------------------------------------
    def acquire(self, plan: Plan) -> ChunkHold:
        """Admission committed: reference the warm entries and count the plan."""
        keys = [u.key for u in plan.warm]
        self.store.acquire(keys)
        stats = self.store.stats
        stats.hits += len(plan.warm)
        stats.misses += len(plan.cold) + plan.in_context
        stats.in_context += plan.in_context
        self._on_change(self.store)
        return ChunkHold(plan, acquired=keys)

    def start_extend(self, hold: ChunkHold, scratch: torch.Tensor | None) -> None:
        """The extend is laid out with ``scratch`` (the plan's scratch-head slots), or, when the
        pool had none (``None``), with its cold chunks computed in context (``hold.plan``
        changes)."""
        plan = hold.plan
        if scratch is None:
            self.store.stats.in_context += len(plan.cold)
            hold.plan = dataclasses.replace(
                plan, uses=plan.warm, in_context=plan.in_context + len(plan.cold)
            )
            scratch = torch.empty(0, dtype=torch.int64)
        assert int(scratch.numel()) == hold.plan.scratch_tokens, "scratch heads of the plan"
        hold.scratch = scratch
        self.store.scratch_tokens += int(scratch.numel())

    def publish(self, hold: ChunkHold, row: torch.Tensor) -> int:
        """Publish the cold spans of ``hold``'s laid-out ``row`` (logical order); the request
        references what it published. Returns the tokens that became shared."""
        shared = 0
        for u in hold.plan.cold:
            if self.store.publish(u.key, row[u.shared_start : u.end]):
                hold.published.append((u.shared_start, u.end))
                hold.acquired.append(u.key)
                shared += u.end - u.shared_start
        hold.applied = True
        self._on_change(self.store)
        return shared

    def drop_warm(self, hold: ChunkHold) -> None:
        """``hold`` now reads private copies of its warm spans: stop referencing the entries."""
        keys = [u.key for u in hold.plan.warm]
        self.store.release(keys)
        for key in keys:
            hold.acquired.remove(key)
        hold.copied = True

    def shared_spans(self, hold: ChunkHold) -> Sequence[tuple[int, int]]:
        """Row spans of ``hold`` that are shared pages (not the request's to free)."""
        warm = [] if hold.copied else [(u.shared_start, u.end) for u in hold.plan.warm]
        return [*warm, *hold.published]

    def release(self, hold: ChunkHold, free: Free) -> None:
        """The request is done with its chunk pages: free its scratch heads, drop references."""
        if hold.scratch is not None:
            if hold.scratch.numel():
                free(hold.scratch)
            self.store.scratch_tokens -= int(hold.scratch.numel())
            hold.scratch = None
        self.store.release(hold.acquired)
        hold.acquired = []
        self._on_change(self.store)

    # ---- the pool ------------------------------------------------------------------------------
    def evict(self, num_tokens: int, free: Free) -> int:
        """Free least-recently-used unreferenced entries; returns the tokens freed."""
        if num_tokens <= 0:
            return 0
        freed = self.store.evict(num_tokens, free)
        self._on_change(self.store)
        return freed

    def evictable_tokens(self) -> int:
        return self.store.evictable_tokens()

    def protected_tokens(self) -> int:
        return self.store.protected_tokens()

    def shared_pages(self) -> torch.Tensor:
        return self.store.shared_pages()

    def snapshot(self) -> dict[str, int]:
        return self.store.snapshot()

    def check_integrity(self) -> None:
        self.store.check_integrity()
