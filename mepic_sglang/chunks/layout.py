"""Canonical page-aligned layout of a segmented prompt (MEPIC's chunk processor).

Every chunk must occupy the same page layout wherever it appears, so that one copy of its KV
pages can serve every request. Each segment is tokenised on its own and padded with a pad token:

    page size P = 4 in this picture; '.' is a pad token, letters are real tokens

    segment           slots                                  padding
    ----------------  -------------------------------------  -----------------------------
    text (not last)   [s, s+n) then pad to the next page      tail: pads after the content
    chunk             pad, then [e-n, e); e = page boundary   head: pads before the content
    text (last)       [s, s+n)                               none (generation follows it)

    text "Ab"   chunk "cdefg"      chunk "hij"   text "Q?"
    |A b . .|. . . c|d e f g|. h i j|Q ?
     page 0  page 1  page 2  page 3  page 4 ...

Every segment but the last ends on a page boundary, so every segment starts on one, and a chunk
of n tokens always spans ceil(n / P) pages with the same content at the same offsets. Head padding
(as in the MEPIC paper) puts the pads of a chunk in its FIRST page, the page that is recomputed
per request anyway; the shared pages hold only chunk tokens.

Chunk identity: SHA-256 of (cache salt, model, page size, the chunk's token ids).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mepic_sglang.chunks.segments import SegmentKind

KIND_CODE: dict[SegmentKind, int] = {"text": 0, "chunk": 1}  # the wire code of a region's kind
_KIND_OF_CODE: dict[int, SegmentKind] = {v: k for k, v in KIND_CODE.items()}
WIRE_REGIONS = "mepic_regions"  # custom_params keys of the wire form (reserved for the plugin)
WIRE_KEYS = "mepic_chunk_keys"
WIRE_PAGE_SIZE = "mepic_page_size"


class LayoutError(ValueError):
    """A layout received from another process is malformed."""


@dataclass(frozen=True)
class Region:
    """Where one segment lies in the laid-out prompt: ``[start, end)`` slots, real tokens in
    ``[content_start, content_end)``, pads elsewhere."""

    kind: SegmentKind
    start: int
    content_start: int
    content_end: int
    end: int
    chunk_key: str | None = None  # chunk identity (hex), chunks only

    @property
    def pad_tokens(self) -> int:
        return (self.end - self.start) - (self.content_end - self.content_start)


@dataclass(frozen=True)
class Layout:
    token_ids: tuple[int, ...]
    regions: tuple[Region, ...]
    page_size: int

    @property
    def pad_tokens(self) -> int:
        return sum(r.pad_tokens for r in self.regions)

    @property
    def table(self) -> RegionTable:
        return RegionTable(self.regions, self.page_size)

    @property
    def chunk_regions(self) -> tuple[Region, ...]:
        return tuple(r for r in self.regions if r.kind == "chunk")

    def check_integrity(self) -> None:
        """Assert the invariants of the table above."""
        p = self.page_size
        pos = 0
        for i, r in enumerate(self.regions):
            last = i == len(self.regions) - 1
            assert r.start == pos and r.start % p == 0, f"region {i} does not start on a page"
            assert r.start <= r.content_start < r.content_end <= r.end, f"region {i} bounds"
            if r.kind == "chunk":
                assert r.content_end == r.end and r.end % p == 0, f"chunk {i} not head-padded"
                assert r.end - r.start == -(-(r.content_end - r.content_start) // p) * p
                assert r.chunk_key is not None
            else:
                assert r.content_start == r.start, f"text {i} has head padding"
                assert last or r.end % p == 0, f"text {i} does not end on a page"
                assert r.end - r.content_end < p and (last is False or r.end == r.content_end)
            pos = r.end
        assert pos == len(self.token_ids)


@dataclass(frozen=True)
class RegionTable:
    """A laid-out prompt without its token ids: what the scheduler needs to plan it. It crosses
    from the tokenizer process in ``sampling_params.custom_params`` (which carries JSON scalars
    and lists only) through :meth:`to_wire` / :meth:`from_wire`, the one codec of that form::

        mepic_regions    [kind, start, content_start, content_end, end] * regions, flat ints
        mepic_chunk_keys [chunk_key] * chunk regions, in prompt order
        mepic_page_size  page size the layout was built for
    """

    regions: tuple[Region, ...]
    page_size: int

    @property
    def chunk_regions(self) -> tuple[Region, ...]:
        return tuple(r for r in self.regions if r.kind == "chunk")

    def to_wire(self) -> dict[str, Any]:
        flat = [
            v
            for r in self.regions
            for v in (KIND_CODE[r.kind], r.start, r.content_start, r.content_end, r.end)
        ]
        keys = [r.chunk_key for r in self.chunk_regions]
        return {WIRE_REGIONS: flat, WIRE_KEYS: keys, WIRE_PAGE_SIZE: self.page_size}

    @staticmethod
    def from_wire(custom: Mapping[str, object] | None) -> RegionTable | None:
        """The table in ``custom_params``; None if the request marks no chunks. Checks the form
        only (the planner checks bounds and alignment against the pool)."""
        if not custom or WIRE_REGIONS not in custom:
            return None
        flat = custom.get(WIRE_REGIONS)
        keys = custom.get(WIRE_KEYS)
        page_size = custom.get(WIRE_PAGE_SIZE, 1)
        if not isinstance(flat, list) or len(flat) % 5 or not all(type(v) is int for v in flat):
            raise LayoutError(f"{WIRE_REGIONS} must be a flat list of 5-int groups")
        if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
            raise LayoutError(f"{WIRE_KEYS} must be a list of strings")
        if type(page_size) is not int or page_size < 1:
            raise LayoutError(f"{WIRE_PAGE_SIZE} must be a positive int")
        groups = [flat[i : i + 5] for i in range(0, len(flat), 5)]
        if any(g[0] not in _KIND_OF_CODE for g in groups):
            raise LayoutError(f"{WIRE_REGIONS}: a region kind is not one of {sorted(KIND_CODE)}")
        if sum(1 for g in groups if g[0] == KIND_CODE["chunk"]) != len(keys):
            raise LayoutError("one chunk key per chunk region")
        key_iter = iter(keys)
        regions = tuple(
            Region(
                _KIND_OF_CODE[code],
                start,
                c_start,
                c_end,
                end,
                next(key_iter) if code == KIND_CODE["chunk"] else None,
            )
            for code, start, c_start, c_end, end in groups
        )
        return RegionTable(regions, page_size)


def chunk_key(token_ids: Sequence[int], *, salt: str, model: str, page_size: int) -> str:
    h = hashlib.sha256()
    for part in (salt, model, str(page_size)):
        h.update(part.encode())
        h.update(b"\0")
    h.update(b",".join(str(t).encode() for t in token_ids))
    return h.hexdigest()


def build_layout(
    segments: Sequence[tuple[SegmentKind, Sequence[int]]],
    *,
    page_size: int,
    pad_id: int,
    salt: str = "",
    model: str = "",
) -> Layout:
    """Lay out already-tokenised segments (see the module table). ``page_size >= 1``."""
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    ids: list[int] = []
    regions: list[Region] = []
    for i, (kind, tokens) in enumerate(segments):
        n = len(tokens)
        if n == 0:
            raise ValueError(f"segment {i} is empty")
        start = len(ids)
        last = i == len(segments) - 1
        if kind == "chunk":
            pad = -n % page_size
            ids += [pad_id] * pad
            ids += tokens
            key = chunk_key(tokens, salt=salt, model=model, page_size=page_size)
            regions.append(Region("chunk", start, start + pad, start + pad + n, len(ids), key))
        else:
            ids += tokens
            pad = 0 if last else -n % page_size
            ids += [pad_id] * pad
            regions.append(Region("text", start, start, start + n, len(ids)))
    layout = Layout(tuple(ids), tuple(regions), page_size)
    layout.check_integrity()
    return layout
