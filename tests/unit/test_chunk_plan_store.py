"""Chunk store, recompute policies, per-request plans and attention groups (no server)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flashinfer_ext.rope_reference import AttentionGroups
from mepic_sglang.chunks.layout import LayoutError, Region, RegionTable, build_layout
from mepic_sglang.chunks.plan import (
    PlanError,
    extend_layout,
    logical_row,
    make_plan,
)
from mepic_sglang.chunks.recompute import POLICIES, make_policy
from mepic_sglang.chunks.store import ChunkStore, page_census

P = 4


def pages(*ids: int) -> torch.Tensor:
    return torch.cat([torch.arange(i * P, (i + 1) * P) for i in ids])


# ---- store -------------------------------------------------------------------------------------
def test_store_refcounts_and_lru_eviction() -> None:
    store = ChunkStore(page_size=P)
    assert store.publish("a", pages(1, 2)) and store.publish("b", pages(3))
    assert not store.publish("a", pages(5)) and store.stats.duplicates == 1
    assert store.protected_tokens() == 3 * P and store.evictable_tokens() == 0
    store.release(["a", "b"])
    store.acquire(["b"])
    store.release(["b"])  # b used after a: a is the LRU victim
    freed: list[torch.Tensor] = []
    assert store.evict(1, freed.append) == 2 * P
    assert list(store.entries) == ["b"] and torch.equal(freed[0], pages(1, 2))
    store.acquire(["b"])
    assert store.evict(100, freed.append) == 0, "a referenced entry is never evicted"
    store.check_integrity()
    with pytest.raises(AssertionError):
        store.release(["b", "b"])


def test_store_integrity_catches_shared_page_twice() -> None:
    store = ChunkStore(page_size=P)
    store.publish("a", pages(1))
    store.publish("b", pages(1))
    with pytest.raises(AssertionError, match="two chunk entries"):
        store.check_integrity()


def test_page_census_proves_each_page_has_one_owner() -> None:
    t = torch.tensor
    ok = {"free": [t([1, 2])], "shared": [t([3])], "private": [t([4]), t([5, 6])]}
    assert page_census(7, ok) == {"free": 2, "shared": 1, "private": 3}
    with pytest.raises(AssertionError, match=r"two states or owners: \[5\]"):
        page_census(7, {**ok, "private": [t([4, 5]), t([5, 6])]})  # two requests, one page
    with pytest.raises(AssertionError, match=r"leaked\): \[6\]"):
        page_census(7, {**ok, "private": [t([4]), t([5])]})
    with pytest.raises(AssertionError, match="outside the pool"):
        page_census(7, {**ok, "scratch": [t([9])]})


# ---- policies ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "pad", "content", "head"),
    [
        ("first-page", 3, 9, 4),
        ("first-page", 2, 2, 4),
        ("first-k-tokens", 3, 9, 8),  # first 4 real tokens end at slot 7: two pages
        ("first-k-tokens", 0, 12, 4),
        ("none", 3, 9, 0),
    ],
)
def test_recompute_heads(name: str, pad: int, content: int, head: int) -> None:
    assert make_policy(name, k=4).head_tokens(pad=pad, content=content, page_size=P) == head


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="first-page"):
        make_policy("top-ratio")
    assert set(POLICIES) == {"first-page", "first-k-tokens", "none"}


# ---- plans -------------------------------------------------------------------------------------
def _layout(*segs: tuple[str, int]) -> tuple[tuple[Region, ...], list[str], int]:
    lay = build_layout(
        [(kind, list(range(100 + 10 * i, 100 + 10 * i + n))) for i, (kind, n) in enumerate(segs)],
        page_size=P,
        pad_id=0,
    )
    regions = lay.regions
    keys = [r.chunk_key or "" for r in lay.chunk_regions]
    return regions, keys, len(lay.token_ids)


def test_plan_warm_cold_and_the_extend_layout() -> None:
    regions, keys, total = _layout(("text", 3), ("chunk", 9), ("chunk", 6), ("text", 2))
    # text [0,4) | chunk A [4,16): head [4,8) | chunk B [16,24): head [16,20) | text [24,26)
    have = {keys[0]: 8}
    plan = make_plan(regions, total_len=total, page_size=P,
                     policy=make_policy("first-page"), lookup=have.get)  # fmt: skip
    assert [(u.start, u.shared_start, u.end, u.warm) for u in plan.uses] == [
        (4, 8, 16, True),
        (16, 20, 24, False),
    ]
    assert plan.shared_tokens == 8 and plan.scratch_tokens == 4 and plan.lead == 4
    assert plan.computed_tokens == total - 8 + 4
    hit = dataclasses.replace(plan, prefix=4)  # the leading text served by the radix tree
    assert hit.cached_tokens == 12 and 0 not in hit.computed_positions().tolist()
    lay = extend_layout(plan)
    assert lay.positions.tolist() == [16, 17, 18, 19, *range(0, 8), *range(16, 26)]
    assert lay.q_group.tolist() == [1] * 4 + [0] * 8 + [0] * 4 + [1] * 4 + [0] * 2
    assert lay.k_group.tolist() == [0] * 20 + [1] * 4 + [0] * 2 + [1] * 4
    assert lay.k_context.tolist() == [True] * 26 + [False] * 4
    warm_slots = [pages(7, 8)]
    fresh = pages(1, 2, 3, 4, 5)[: total - 8]
    row = logical_row(plan, torch.empty(0, dtype=torch.int64), warm_slots, fresh)
    assert row[8:16].tolist() == pages(7, 8).tolist()
    assert (row % P == torch.arange(total) % P).all(), "slots keep their page offsets"


def test_last_chunk_and_one_page_chunks_are_not_shared() -> None:
    regions, keys, total = _layout(("text", 3), ("chunk", 4), ("chunk", 9))
    plan = make_plan(regions, total_len=total, page_size=P,
                     policy=make_policy("first-page"), lookup=lambda k: None)  # fmt: skip
    assert plan.uses == ()  # a one-page chunk is all head; the last region is always computed


def test_malformed_layouts_are_refused() -> None:
    with pytest.raises(LayoutError):
        RegionTable.from_wire({"mepic_regions": [0, 0, 0, 1], "mepic_chunk_keys": []})
    with pytest.raises(LayoutError):
        RegionTable.from_wire({"mepic_regions": [1, 0, 0, 4, 4], "mepic_chunk_keys": []})
    regions, keys, total = _layout(("text", 3), ("chunk", 9), ("text", 2))
    bad = [regions[0], Region("chunk", 5, 6, 16, 16, keys[0]), regions[2]]
    with pytest.raises(PlanError, match="region 1"):
        make_plan(bad, total_len=total, page_size=P,
                  policy=make_policy("first-page"), lookup=lambda k: None)  # fmt: skip
    assert RegionTable.from_wire({"other": 1}) is None


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.sampled_from(["text", "chunk"]), st.integers(1, 13)), min_size=1,
                   max_size=6),
    warm_mask=st.integers(0, 63),
    policy=st.sampled_from(sorted(POLICIES)),
)  # fmt: skip
def test_plan_properties(sizes: list[tuple[str, int]], warm_mask: int, policy: str) -> None:
    regions, keys, total = _layout(*sizes)
    pol = make_policy(policy, k=3)
    have = {k: 1 for i, k in enumerate(keys) if warm_mask >> i & 1}

    def lookup(key: str) -> int | None:
        if key not in have:
            return None
        region = [r for r in regions if r.kind == "chunk"][keys.index(key)]
        start, c0, c1, end = region.start, region.content_start, region.content_end, region.end
        return end - start - pol.head_tokens(pad=c0 - start, content=c1 - c0, page_size=P)

    plan = make_plan(regions, total_len=total, page_size=P, policy=pol, lookup=lookup)
    lay = extend_layout(plan)
    # every position is either served from a warm span or computed exactly once in context
    served = torch.zeros(total, dtype=torch.int64)
    for u in plan.warm:
        served[u.shared_start : u.end] += 1
    ctx = lay.positions[lay.q_group == 0]
    own = lay.positions[(lay.q_group > 0)]
    computed = torch.bincount(lay.positions[len(lay.scratch_positions) :], minlength=total)
    assert torch.equal(served + computed, torch.ones(total, dtype=torch.int64))
    assert lay.positions[-1].item() == total - 1, "the prompt's last token is computed last"
    assert all(u.shared_start % P == 0 and u.end % P == 0 for u in plan.uses)
    assert len(ctx) + len(own) == plan.computed_tokens


# ---- attention groups: the obvious loop --------------------------------------------------------
def test_attention_groups_match_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    q_group = torch.randint(0, 3, (7,), generator=g)
    k_group = torch.randint(0, 3, (11,), generator=g)
    k_context = torch.rand(11, generator=g) > 0.3
    got = AttentionGroups(q_group, k_group, k_context).visible()
    for i in range(7):
        for j in range(11):
            want = bool(k_context[j]) if q_group[i] == 0 else bool(k_group[j] == q_group[i])
            assert bool(got[i, j]) == want
