"""Per-request MEPIC plan: which positions are served from shared chunk pages, which are computed.

Pure functions over the layout the tokenizer side sent (``custom_params``) and a store lookup;
:mod:`mepic_sglang.sglang.chunk_batch` applies a plan to SGLang's batch. Positions of one request::

    region             positions                 slots                     attention group
    -----------------  ------------------------  ------------------------  -------------------------
    leading text [0,m) served (radix prefix hit)  radix tree pages          0
    text               computed, in context      private (fresh)           0 (context)
    chunk head [s,s+h) computed, in context      private (fresh)           0
    warm chunk [s+h,e) served                    shared entry (read-only)  keys: 0
    cold chunk [s+h,e) computed ON ITS OWN       fresh, published after    g (queries and keys)
    cold scratch head  computed ON ITS OWN       scratch (freed at end)    g (keys hidden from 0)

A cold chunk (no entry yet) is encoded standalone inside the same forward: its tokens and a
scratch copy of its head attend only to group ``g`` (the chunk alone, as if it started the
prompt; RoPE is relative, so its offset does not matter), while context queries see its shared
pages but not the scratch head. The result is the same KV a later request will read, so cache
state never changes the answer. The last region is always computed in context (the model must
read the prompt's last token), and a chunk whose pages all fall in the head has nothing to share.
Text before the first chunk (``[0, lead)``, e.g. a system prompt) is an ordinary prompt prefix:
it is matched in and, when the request finishes, inserted into SGLang's radix tree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mepic_sglang.chunks.layout import LayoutError, Region
from mepic_sglang.chunks.recompute import RecomputePolicy


class PlanError(LayoutError):
    """The request's MEPIC layout does not fit the pool it is planned on."""


@dataclass(frozen=True)
class ChunkUse:
    """One chunk occurrence with something to share: shared span ``[shared_start, end)``."""

    key: str
    start: int  # first slot of the chunk region (page aligned)
    shared_start: int  # = start + recomputed head
    end: int
    warm: bool  # an entry exists: serve the span from it

    @property
    def head(self) -> int:
        return self.shared_start - self.start


@dataclass(frozen=True)
class Plan:
    total_len: int
    uses: tuple[ChunkUse, ...]
    lead: int = 0  # end of the leading text (before the first chunk), page aligned; 0: none
    prefix: int = 0  # leading tokens served from the radix tree (<= lead)
    copy_warm: bool = False  # --mepic-chunk-copies: read private copies of the warm spans
    in_context: int = 0  # cold chunks computed in context (not published): no room (fit_extra)

    @property
    def warm(self) -> tuple[ChunkUse, ...]:
        return tuple(u for u in self.uses if u.warm)

    @property
    def cold(self) -> tuple[ChunkUse, ...]:
        return tuple(u for u in self.uses if not u.warm)

    @property
    def shared_tokens(self) -> int:
        """Tokens served from existing chunk entries."""
        return sum(u.end - u.shared_start for u in self.warm)

    @property
    def cached_tokens(self) -> int:
        """Tokens not computed: radix prefix + shared chunk pages (SGLang's ``prefix_len``)."""
        return self.prefix + self.shared_tokens

    @property
    def scratch_tokens(self) -> int:
        return sum(u.head for u in self.cold)

    @property
    def copy_tokens(self) -> int:
        """Tokens of private warm-span copies this request allocates (--mepic-chunk-copies)."""
        return sum(u.end - u.shared_start for u in self.warm) if self.copy_warm else 0

    @property
    def extra_tokens(self) -> int:
        """KV this request holds beyond its row: scratch heads and private copies."""
        return self.scratch_tokens + self.copy_tokens

    @property
    def computed_tokens(self) -> int:
        """Tokens this request's extend computes, scratch heads included."""
        return self.total_len - self.cached_tokens + self.scratch_tokens

    def computed_positions(self) -> torch.Tensor:
        """Ascending positions not served from shared pages."""
        keep = torch.ones(self.total_len, dtype=torch.bool)
        keep[: self.prefix] = False
        for u in self.warm:
            keep[u.shared_start : u.end] = False
        return torch.nonzero(keep).flatten()


def fit_extra(plan: Plan, room: int) -> Plan:
    """``plan`` with :attr:`Plan.extra_tokens` <= ``room`` (``plan`` itself when it fits).

    Private copies go first (a baseline mode; the shared pages serve the same KV). Then cold
    chunks are kept for standalone encoding in prompt order while their scratch heads fit; the
    others are computed in context like text (exact KV for this request, nothing published), and
    counted in :attr:`Plan.in_context`. Served positions (``cached_tokens``) never change."""
    if plan.extra_tokens <= room:
        return plan
    if plan.copy_warm:
        plan = dataclasses.replace(plan, copy_warm=False)
        if plan.extra_tokens <= room:
            return plan
    kept: list[ChunkUse] = []
    scratch = dropped = 0
    for u in plan.uses:
        if not u.warm:
            if scratch + u.head > room:
                dropped += 1
                continue
            scratch += u.head
        kept.append(u)
    return dataclasses.replace(plan, uses=tuple(kept), in_context=plan.in_context + dropped)


def make_plan(
    regions: Sequence[Region],
    *,
    total_len: int,
    page_size: int,
    policy: RecomputePolicy,
    lookup: Callable[[str], int | None],
    key_of: Callable[[Region], str] = lambda r: r.chunk_key or "",
) -> Plan:
    """Plan one request. ``lookup(key)`` is the shared-token count of an existing entry;
    ``key_of(region)`` the store key of a chunk region (default: its chunk key)."""
    uses: list[ChunkUse] = []
    pos = 0
    for i, r in enumerate(regions):
        start, c_start, c_end, end = r.start, r.content_start, r.content_end, r.end
        if not start == pos <= c_start < c_end <= end:
            raise PlanError(f"region {i} is malformed: {(r.kind, start, c_start, c_end, end)}")
        if start % page_size or (i < len(regions) - 1 and end % page_size):
            raise PlanError(f"region {i} is not page aligned")
        pos = end
        if r.kind != "chunk":
            continue
        key = key_of(r)
        if i == len(regions) - 1:
            continue  # the prompt's last token must be computed in context
        head = policy.head_tokens(pad=c_start - start, content=c_end - c_start, page_size=page_size)
        if head % page_size or not 0 <= head <= end - start:
            raise PlanError(f"policy {policy.name} returned a bad head {head}")
        if start + head == end:
            continue  # nothing to share
        have = lookup(key)
        uses.append(ChunkUse(key, start, start + head, end, warm=have == end - start - head))
    if pos > total_len:
        raise PlanError(f"regions end at {pos}, after the request's {total_len} tokens")
    first = regions[0] if regions else None
    lead = first.end if first is not None and first.kind == "text" and len(regions) > 1 else 0
    return Plan(total_len, tuple(uses), lead=lead)


@dataclass(frozen=True)
class ExtendLayout:
    """How one request's extend is laid out (all CPU int64 tensors).

    The extend computes ``[scratch heads of cold chunks] + [computed positions, ascending]``; the
    prompt's last token is last, so SGLang's logits take the right row.
    """

    positions: torch.Tensor  # [n] position of every extend token
    q_group: torch.Tensor  # [n] attention group of every extend token
    k_group: torch.Tensor  # [total_len + scratch] group of row keys, then scratch keys
    k_context: torch.Tensor  # [total_len + scratch] bool: visible to group-0 queries
    scratch_positions: torch.Tensor  # [scratch]


def extend_layout(plan: Plan) -> ExtendLayout:
    computed = plan.computed_positions()
    cold = plan.cold
    row_group = torch.zeros(plan.total_len, dtype=torch.int64)
    for g, u in enumerate(cold, start=1):
        row_group[u.shared_start : u.end] = g
    scratch_pos = [torch.arange(u.start, u.shared_start) for u in cold]
    scratch_grp = [torch.full((u.head,), g, dtype=torch.int64) for g, u in enumerate(cold, 1)]
    scratch_positions = torch.cat(scratch_pos) if cold else torch.empty(0, dtype=torch.int64)
    scratch_groups = torch.cat(scratch_grp) if cold else torch.empty(0, dtype=torch.int64)
    return ExtendLayout(
        positions=torch.cat([scratch_positions, computed]),
        q_group=torch.cat([scratch_groups, row_group[computed]]),
        k_group=torch.cat([row_group, scratch_groups]),
        k_context=torch.cat(
            [
                torch.ones(plan.total_len, dtype=torch.bool),
                torch.zeros_like(scratch_groups, dtype=torch.bool),
            ]
        ),
        scratch_positions=scratch_positions,
    )


def logical_row(
    plan: Plan, prefix_slots: torch.Tensor, warm_slots: Sequence[torch.Tensor], fresh: torch.Tensor
) -> torch.Tensor:
    """The request's ``req_to_token`` row ``[0, total_len)`` in logical order: the radix prefix
    keeps its slots, warm spans read their entries' slots (``warm_slots`` in ``plan.warm``
    order), computed positions take the fresh slots in order (all are whole pages, so page
    offsets line up)."""
    row = torch.empty(plan.total_len, dtype=torch.int64)
    assert prefix_slots.numel() == plan.prefix
    row[: plan.prefix] = prefix_slots.to(torch.int64)
    for u, slots in zip(plan.warm, warm_slots, strict=True):
        row[u.shared_start : u.end] = slots
    computed = plan.computed_positions()
    assert fresh.numel() == computed.numel(), (fresh.numel(), computed.numel())
    row[computed] = fresh.to(torch.int64)
    return row
