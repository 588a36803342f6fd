"""Scheduler-side MEPIC hooks: the non-contiguous extend and release (admission:
:mod:`mepic_sglang.sglang.chunk_admission`).

Life of a MEPIC request in the scheduler (hook targets are rows of
:mod:`mepic_sglang.sglang.seams`)::

    step                         SGLang does                       we do
    ---------------------------  --------------------------------  -------------------------------
    match_prefix (chunk_cache)   prefix_len := S (shared tokens)   plan; skip radix insert
    _select_prefill_admission    budget for L - S tokens           + scratch heads; never chunk (*)
    _commit_prefill_admission    lock last_node                    acquire warm chunk entries (*)
    prepare_for_extend           row = [S shared | L-S fresh]      row -> logical order, scratch,
                                 extend ids = fill[S:]             extend ids/slots, publish cold
    ForwardBatch.init_new        positions = S..L-1                real positions, attention groups
    release_kv_cache             free row[cpl:owned)               row -> [shared | private] first,
                                                                   free scratch, release entries

(*) in :mod:`mepic_sglang.sglang.chunk_admission`.

``cache_protected_len`` of a MEPIC request counts its shared tokens (warm + published), which the
store accounts for; SGLang's "uncached" count is then exactly its private pages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from flashinfer_ext.inputs import ColdChunkKeys, MepicAttention
from mepic_sglang.chunks.manager import ChunkHold, ChunkManager
from mepic_sglang.chunks.plan import ExtendLayout, Plan, extend_layout, logical_row
from mepic_sglang.sglang.state import batch_state, req_state

logger = logging.getLogger(__name__)

INFO_SHARED = "mepic_chunk_shared_tokens"  # Req.customized_info keys (request level)
INFO_COMPUTED = "mepic_computed_tokens"
INFO_PREFIX = "mepic_prefix_tokens"
INFO_IN_CONTEXT = "mepic_in_context_chunks"


@dataclass(frozen=True)
class ReqExtend:
    layout: ExtendLayout
    scratch_slots: torch.Tensor


def _chunks(tree_cache: Any) -> ChunkManager:
    chunks: ChunkManager = tree_cache.mepic_chunks
    return chunks


# ---- the extend --------------------------------------------------------------------------------
def _alloc_scratch(tree_cache: Any, n: int) -> torch.Tensor | None:
    allocator = tree_cache.token_to_kv_pool_allocator
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=allocator.device)
    allocator.evict_to_free_tokens(tree_cache, n)
    out = allocator.alloc(n)
    return None if out is None else out.to(torch.int64)


def after_prepare_for_extend(result: Any, batch: Any) -> None:
    """Lay out every MEPIC request of a new prefill batch (see the module table)."""
    states = [req_state(r).hold for r in batch.reqs]
    if not any(s is not None and not s.applied for s in states):
        return
    tree_cache = batch.tree_cache
    chunks = _chunks(tree_cache)
    row_table = batch.req_to_token_pool.req_to_token
    old_lens = list(batch.extend_lens)
    ids_parts = list(torch.split(batch.prefill_input_ids_cpu, old_lens))
    loc_parts = list(torch.split(batch.out_cache_loc, old_lens))
    meta: dict[int, ReqExtend] = {}
    for i, (req, state) in enumerate(zip(batch.reqs, states, strict=True)):
        if state is None or state.applied:
            continue
        assert (
            req.prefix_len == state.plan.cached_tokens
            and old_lens[i] == state.plan.total_len - req.prefix_len
        )
        scratch = _alloc_scratch(tree_cache, state.plan.scratch_tokens)
        if scratch is None:
            logger.warning(
                "rid %s: no room for scratch heads; cold chunks computed in context", req.rid
            )
        chunks.start_extend(state, scratch)
        plan, scratch = state.plan, state.scratch
        assert scratch is not None
        lay = extend_layout(plan)
        idx = req.kv.req_pool_idx
        old_row = row_table[idx, : plan.total_len].to(torch.int64).cpu()
        fresh = old_row[plan.cached_tokens :]
        row = logical_row(plan, old_row[: plan.prefix], chunks.warm_slots(plan), fresh)
        chunks.check_not_shared(fresh, scratch)
        if plan.copy_tokens:
            _copy_warm_spans(req, state, tree_cache, row)
        row_table[idx, : plan.total_len] = row.to(row_table.device, row_table.dtype)
        fill = torch.as_tensor(list(req.full_untruncated_fill_ids), dtype=torch.int64)
        ids_parts[i] = fill[lay.positions].to(ids_parts[i].dtype)
        computed_slots = row[lay.positions[lay.scratch_positions.numel() :]]
        loc_parts[i] = torch.cat([scratch.cpu(), computed_slots]).to(loc_parts[i])
        req.kv.cache_protected_len += chunks.publish(state, row)
        new_len = int(lay.positions.numel())
        if not req.retracted_stain:
            # Per-request numbers for meta_info["mepic"] (request-level keys, see
            # MepicOutputStreamer); like SGLang's cached_tokens, from the first admission only.
            req.customized_info = {
                **(req.customized_info or {}),
                INFO_SHARED: [plan.shared_tokens],
                INFO_PREFIX: [plan.prefix],
                INFO_COMPUTED: [new_len],
                INFO_IN_CONTEXT: [plan.in_context],
            }
        if batch.extend_logprob_start_lens[i] == old_lens[i]:
            batch.extend_logprob_start_lens[i] = new_len
        batch.extend_lens[i] = new_len
        meta[i] = ReqExtend(lay, scratch)
    batch.extend_num_tokens = sum(batch.extend_lens)
    batch.prefill_input_ids_cpu = torch.cat(ids_parts)
    batch.out_cache_loc = torch.cat(loc_parts)
    batch_state(batch).extends = meta


def _copy_warm_spans(req: Any, state: ChunkHold, tree_cache: Any, row: torch.Tensor) -> None:
    """--mepic-chunk-copies: give the request private copies of its warm spans (``row`` is
    updated in place) and stop holding the shared entries, as an EPIC-style system would."""
    plan = state.plan
    n = plan.copy_tokens
    dst = _alloc_scratch(tree_cache, n)
    if dst is None:
        logger.warning("rid %s: no room for private chunk copies; reading shared pages", req.rid)
        return
    pool = tree_cache.token_to_kv_pool_allocator.get_kvcache()
    src = torch.cat([row[u.shared_start : u.end] for u in plan.warm]).to(dst.device)
    # NOTE: one gather/scatter per layer buffer (the pool's own move_kv_cache needs a copy
    # kernel config CPU pools do not build).
    for buf in (*pool.k_buffer, *pool.v_buffer):
        buf[dst] = buf[src]
    off = 0
    for u in plan.warm:
        span = u.end - u.shared_start
        row[u.shared_start : u.end] = dst[off : off + span].cpu()
        off += span
    _chunks(tree_cache).drop_warm(state)
    req.kv.cache_protected_len -= n


def after_forward_batch_init(result: Any, *args: Any, **kwargs: Any) -> None:
    """Real positions and attention groups for the MEPIC requests of an extend."""
    if result.forward_mode.is_decode_or_idle():
        return
    batch = kwargs.get("batch") or next(a for a in args if hasattr(a, "reqs"))
    meta = batch_state(batch).extends
    if not meta:
        return
    starts = torch.cumsum(torch.tensor([0, *batch.extend_lens]), 0).tolist()
    positions = result.positions.clone()
    device = positions.device
    per_req: dict[int, ColdChunkKeys | None] = {}
    for i, ext in meta.items():
        lay = ext.layout
        positions[starts[i] : starts[i + 1]] = lay.positions.to(device, positions.dtype)
        # NOTE: every MEPIC request gets an entry (its queries are not a suffix: the backend's
        # dispatcher reads that); groups and scratch keys only when it encodes cold chunks.
        per_req[i] = None
        if lay.scratch_positions.numel() or bool(lay.k_group.any()):
            per_req[i] = ColdChunkKeys(
                q_group=lay.q_group,
                k_group=lay.k_group,
                k_context=lay.k_context,
                extra_slots=ext.scratch_slots,
                extra_positions=lay.scratch_positions,
            ).to(device)
    result.positions = positions
    MepicAttention(per_req).attach(result)


# ---- release -----------------------------------------------------------------------------------
def _insert_lead(req: Any, tree_cache: Any, plan: Plan) -> int:
    """Insert the finished request's leading text into the radix tree (as a stock request's
    prompt would be); returns the length the tree now owns. The row is still logical here."""
    held = req.kv.cache_protected_len
    req.kv.cache_protected_len = plan.prefix
    # NOTE: inserts [prefix, lead) of the row, frees our copies of pages the tree already has
    # and moves req.lock to the inserted node (released by release_kv_cache as usual).
    tree_cache.checkpoint_into_tree(req, up_to=plan.lead)
    done = int(req.kv.cache_protected_len)
    req.kv.cache_protected_len = held - plan.prefix + done
    return done


def before_release_kv_cache(req: Any, tree_cache: Any, *args: Any, **kwargs: Any) -> None:
    """Put the row back to ``[tree | shared | private]`` so SGLang frees exactly the private
    pages; a finished request first hands its leading text to the radix tree."""
    holder = req_state(req)
    state = holder.hold
    if state is None or not req.kv.holds_kv:
        return
    holder.hold = None
    chunks = _chunks(tree_cache)
    if state.applied:
        plan = state.plan
        checkpoint = bool(kwargs.get("checkpoint", args[0] if args else False))
        tree_owned = plan.prefix
        if checkpoint and req.finished() and plan.lead > plan.prefix:
            tree_owned = _insert_lead(req, tree_cache, plan)
        row_table = tree_cache.req_to_token_pool.req_to_token
        idx = req.kv.req_pool_idx
        allocated = int(req.kv.kv_allocated_len)
        row = row_table[idx, :allocated].to(torch.int64).cpu()
        private = torch.ones(plan.total_len, dtype=torch.bool)
        private[:tree_owned] = False
        shared_parts = [row[:tree_owned]]
        for s, e in chunks.shared_spans(state):
            shared_parts.append(row[s:e])
            private[s:e] = False
        shared = torch.cat(shared_parts)
        restored = torch.cat([shared, row[: plan.total_len][private], row[plan.total_len :]])
        assert restored.numel() == allocated and shared.numel() == req.kv.cache_protected_len
        row_table[idx, :allocated] = restored.to(row_table.device, row_table.dtype)
    chunks.release(state, tree_cache.token_to_kv_pool_allocator.free)


def after_output_streamer_class(result: Any, scheduler: Any, *args: Any, **kwargs: Any) -> Any:
    """AFTER ``Scheduler.get_output_streamer_class``: our ``customized_info`` keys are sent once
    per request (not sliced per token)."""
    base = result

    class MepicOutputStreamer(base):  # type: ignore[misc,valid-type]
        def is_request_level_customized_info_key(self, key: str) -> bool:
            return key.startswith("mepic_") or bool(
                super().is_request_level_customized_info_key(key)
            )

    return MepicOutputStreamer
