"""``--radix-cache-backend mepic``: SGLang's radix prefix cache + MEPIC chunk store in one pool.

A subclass of SGLang's ``UnifiedRadixCache``. Requests without chunk marks go through the radix
tree unchanged. For a MEPIC request, ``match_prefix`` plans it (:mod:`mepic_sglang.chunks.plan`) and
reports the shared-chunk tokens as its "cached prefix": SGLang then charges admission, allocates
fresh slots and counts ``cached_tokens`` for exactly the tokens the request computes, and
:mod:`mepic_sglang.sglang.chunk_batch` puts every slot at its real position.

Memory accounting: SGLang's pool invariant is ``available + evictable + protected + uncached ==
total``. Unreferenced chunk entries are evictable, referenced ones and scratch heads protected,
so the invariant (checked by SGLang when idle) covers chunk pages too. Eviction frees radix
leaves first, then least-recently-used unreferenced chunks.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from sglang.srt.mem_cache.base_prefix_cache import EvictParams, EvictResult, MatchPrefixParams
from sglang.srt.mem_cache.radix_cache import RadixKey
from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache

from mepic_sglang.chunks.layout import LayoutError, Region, RegionTable, chunk_key
from mepic_sglang.chunks.manager import ChunkManager
from mepic_sglang.chunks.plan import Plan, PlanError
from mepic_sglang.chunks.recompute import RecomputePolicy, make_policy
from mepic_sglang.chunks.store import page_census
from mepic_sglang.metrics import ChunkMetrics
from mepic_sglang.sglang.state import req_state

logger = logging.getLogger(__name__)


def req_layout(req: Any) -> RegionTable | None:
    """The request's chunk layout (parsed once, kept in its :class:`ReqState`), None for plain
    requests."""
    state = req_state(req)
    if not state.layout_read:
        state.layout_read = True
        custom = getattr(req.sampling_params, "custom_params", None)
        try:
            state.layout = RegionTable.from_wire(custom)
        except LayoutError as e:  # NOTE: the tokenizer side validates; this guards direct IPC
            logger.warning("rid %s: ignoring MEPIC layout: %s", req.rid, e)
        if state.layout is not None and getattr(req, "session", None) is not None:
            # NOTE: session turns prepend history to the prompt and keep rows across turns;
            # neither fits a permuted row (the tokenizer side refuses such requests).
            logger.warning("rid %s: MEPIC layout ignored in a session", req.rid)
            state.layout = None
    return state.layout


def req_plan(req: Any) -> Plan | None:
    """The chunk plan of a MEPIC request's current admission round (None: plain request)."""
    return req_state(req).plan if req_layout(req) is not None else None


def drop_layout(req: Any, why: str) -> None:
    """Serve ``req`` as a plain request from its next match on (its ids keep their padding)."""
    logger.warning("rid %s: served without chunk sharing: %s", req.rid, why)
    state = req_state(req)
    state.layout_read, state.layout, state.plan = True, None, None
    req.skip_radix_cache_insert = False


class MepicRadixCache(UnifiedRadixCache):
    """Radix prefix cache + chunk store over one KV page pool."""

    mepic_chunks: ChunkManager
    mepic_model: str

    def mepic_init(
        self,
        policy: RecomputePolicy,
        *,
        model: str = "",
        metrics: bool = False,
        copies: bool = False,
    ) -> None:
        self.mepic_model = model
        # --mepic-chunk-copies: requests read private copies of warm chunks (a baseline)
        self.mepic_copies = copies
        self.mepic_chunks = ChunkManager(
            int(self.page_size), policy, on_change=ChunkMetrics(metrics).sync
        )

    # ---- matching ----------------------------------------------------------------------------
    def match_prefix(self, params: MatchPrefixParams) -> Any:
        req = params.req
        layout = req_layout(req) if req is not None else None
        if layout is None:
            return super().match_prefix(params)
        # NOTE: the key carries the request's tokens (a cache-aware schedule policy matches
        # waiting requests before their fill ids are set).
        token_ids = params.key.token_ids
        try:
            plan = self.plan_request(req, layout, len(token_ids))
        except PlanError as e:
            drop_layout(req, str(e))
            return super().match_prefix(params)
        if self.mepic_copies:
            plan = dataclasses.replace(plan, copy_warm=True)
        base = self.tree_core.empty_match_result
        if plan.lead >= self.page_size:
            # The leading text (a system prompt) is an ordinary prefix: match it in the tree.
            key = RadixKey(
                token_ids,
                req.extra_key,
                limit=plan.lead,
                cache_salt=req.cache_salt,
            )
            base = super().match_prefix(MatchPrefixParams(key=key))
            plan = dataclasses.replace(plan, prefix=int(base.device_prefix_len))
        req_state(req).plan = plan
        # NOTE: the row is permuted (shared pages in the middle): it must never be inserted
        # into the radix tree as if it were a plain prefix (chunk_batch inserts the leading text).
        req.skip_radix_cache_insert = True
        cached = plan.cached_tokens
        return base._replace(device_prefix_len=cached, cache_protected_len=cached)

    def plan_request(self, req: Any, layout: RegionTable, total_len: int) -> Plan:
        state = req_state(req)
        if not state.keys_checked:
            self._check_keys(req, layout)
            state.keys_checked = True
        extra = req.extra_key

        def key_of(region: Region) -> str:
            # NOTE: like the radix tree, chunk pages are namespaced by extra_key (LoRA adapter
            # and user key): the same tokens under another adapter have other KV.
            key = region.chunk_key or ""
            return f"{extra}\0{key}" if extra else key

        return self.mepic_chunks.plan(layout, total_len, key_of)

    def _check_keys(self, req: Any, layout: RegionTable) -> None:
        """A chunk key must name the tokens it covers (salt, model, page size included): a forged
        or stale key would publish or read another chunk's pages."""
        ids = list(req.origin_input_ids)
        salt = getattr(req, "cache_salt", None) or ""
        for r in layout.chunk_regions:
            c_start, c_end = r.content_start, r.content_end
            want = chunk_key(ids[c_start:c_end], salt=salt, model=self.mepic_model,
                             page_size=int(self.page_size))  # fmt: skip
            if c_end > len(ids) or r.chunk_key != want:
                raise PlanError("a chunk key does not match the chunk's tokens")

    def prefix_device_indices(self, req: Any) -> torch.Tensor:
        plan = req_plan(req)
        if plan is None:
            return super().prefix_device_indices(req)
        parts = self.mepic_chunks.warm_slots(plan)
        if plan.prefix:
            root = self.root_node_handle(req.extra_key)
            path = self.tree_core.collect_full_device_indices(req.last_node, root)
            parts.insert(0, path[: plan.prefix].to(torch.int64).cpu())
        device = self.token_to_kv_pool_allocator.device
        if not parts:
            return torch.empty(0, dtype=torch.int64, device=device)
        return torch.cat(parts).to(device)

    # ---- accounting and eviction -------------------------------------------------------------
    def evictable_size(self) -> int:
        return int(super().evictable_size()) + self.mepic_chunks.evictable_tokens()

    def full_evictable_size(self) -> int:
        return int(super().full_evictable_size()) + self.mepic_chunks.evictable_tokens()

    def protected_size(self) -> int:
        return int(super().protected_size()) + self.mepic_chunks.protected_tokens()

    def full_protected_size(self) -> int:
        return int(super().full_protected_size()) + self.mepic_chunks.protected_tokens()

    def _evict_chunks(self, result: EvictResult, want: int) -> EvictResult:
        short = want - result.num_tokens_evicted
        if short > 0:
            free = self.token_to_kv_pool_allocator.free
            result.num_tokens_evicted += self.mepic_chunks.evict(short, free)
        return result

    def evict(self, params: EvictParams) -> EvictResult:
        return self._evict_chunks(super().evict(params), params.num_tokens)

    def evict_for_alloc(self, params: EvictParams, **kwargs: Any) -> EvictResult:
        # NOTE: params.num_tokens is a shortfall: the caller needs that many more free tokens
        # than the allocator had when it called.
        allocator = self.token_to_kv_pool_allocator
        target = allocator.available_size() + params.num_tokens
        result = super().evict_for_alloc(params, **kwargs)
        short = target - allocator.available_size()
        return self._evict_chunks(result, result.num_tokens_evicted + max(short, 0))

    # ---- integrity ---------------------------------------------------------------------------
    def check_integrity(self, live_reqs: Any = ()) -> dict[str, int]:
        """Prove every page of the pool is free, radix-owned, shared, scratch or private to
        exactly one live request, and nothing else; returns the page count of each state.

        ``live_reqs``: the requests that hold a KV row (empty when the scheduler is idle).
        Page 0 is the allocator's reserved padding page.
        """
        p = int(self.page_size)
        allocator = self.token_to_kv_pool_allocator
        n_pages = int(allocator.size) // p + 1  # page 0 is reserved
        self.mepic_chunks.check_integrity()

        def pages(slots: torch.Tensor) -> torch.Tensor:
            return torch.unique(slots.to(torch.int64).cpu() // p)

        radix_slots = self.all_values_flatten().to(torch.int64).cpu()
        assert radix_slots.unique().numel() == radix_slots.numel(), "a slot is in two tree nodes"
        free = allocator.get_all_free_pages().to(torch.int64).cpu()
        assert free.unique().numel() == free.numel(), "a free page is listed twice"
        held = {"radix": pages(radix_slots), "shared": self.mepic_chunks.shared_pages()}
        by_state: dict[str, list[torch.Tensor]] = {
            "free": [free],
            **{k: [v] for k, v in held.items()},
        }
        by_state.update(scratch=[], private=[])
        not_private = torch.zeros(n_pages, dtype=torch.bool)
        for v in held.values():
            not_private[v] = True
        rows = self.req_to_token_pool.req_to_token
        for req in live_reqs:
            if not req.kv.holds_kv:
                continue
            hold = req_state(req).hold
            if hold is not None and hold.scratch is not None:
                by_state["scratch"].append(pages(hold.scratch))
            row = pages(rows[req.kv.req_pool_idx, : int(req.kv.kv_allocated_len)])
            by_state["private"].append(row[~not_private[row]])
        return page_census(n_pages, by_state)


def create_mepic_cache(ctx: Any) -> Any:
    """Factory for SGLang's radix-cache registry (``--radix-cache-backend mepic``)."""
    from sglang.srt.mem_cache.registry import create_unified_radix_cache

    from mepic_sglang.flags import get_plugin_args

    cache = create_unified_radix_cache(ctx, cache_class=MepicRadixCache)
    args = get_plugin_args(ctx.server_args)
    cache.mepic_init(
        make_policy(args.mepic_recompute, args.mepic_recompute_k),
        model=str(ctx.server_args.model_path),
        metrics=bool(getattr(ctx.server_args, "enable_metrics", False)),
        copies=args.mepic_chunk_copies,
    )
    return cache
