"""Chunk marking (segments) and the canonical page-aligned layout."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mepic_sglang.chunks.layout import LayoutError, RegionTable, build_layout, chunk_key
from mepic_sglang.chunks.segments import Segment, SegmentError, parse_segments, split_by_separator

PAD = 0


def test_parse_all_forms() -> None:
    segs = parse_segments(
        [{"text": "sys"}, {"chunk": "doc"}, {"chunk_ids": [5, 6]}, {"text_ids": [7]}]
    )
    assert segs == [
        Segment("text", text="sys"),
        Segment("chunk", text="doc"),
        Segment("chunk", token_ids=(5, 6)),
        Segment("text", token_ids=(7,)),
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "non-empty list"),
        ("doc", "non-empty list"),
        ([{"chunk": "a", "text": "b"}], r"mepic_segments\[0\]: needs exactly one"),
        ([{"text": "a"}, {"document": "b"}], r"mepic_segments\[1\].*unknown key"),
        ([{"chunk": ""}], r"mepic_segments\[0\]\.chunk: expected a non-empty string"),
        ([{"chunk_ids": [1, -2]}], r"mepic_segments\[0\]\.chunk_ids: token id -2 at index 1"),
        ([{"chunk_ids": [True]}], r"chunk_ids: token id True at index 0"),
        ([{"chunk_ids": []}], r"chunk_ids: expected a non-empty list of token ids"),
        ([{"text_ids": [2**63]}], r"text_ids: token id 9223372036854775808 at index 0"),
        ([{"text_ids": [1.0]}], r"text_ids: token id 1\.0 at index 0"),
        ([["chunk", "a"]], "expected an object"),
    ],
)
def test_malformed_segments_name_the_item(value: object, message: str) -> None:
    with pytest.raises(SegmentError, match=message):
        parse_segments(value)


def test_segment_token_ids_are_checked_against_the_vocabulary() -> None:
    # the crash of issue 17: a chunk id equal to the vocabulary size reached the embedding
    with pytest.raises(SegmentError, match=r"mepic_segments\[0\]\.chunk_ids: token id 49152"):
        parse_segments([{"chunk_ids": [5, 49152]}, {"text": "Q?"}], vocab_size=49152)
    assert parse_segments([{"chunk_ids": [5, 49151]}], vocab_size=49152) == [
        Segment("chunk", token_ids=(5, 49151))
    ]


def test_separator_mode() -> None:
    assert split_by_separator("just a prompt", " # # ") is None
    assert split_by_separator("a # # b", " # # ") is None
    assert split_by_separator("sys # # d1 # # d2 # # q?", " # # ") == [
        Segment("text", text="sys"),
        Segment("chunk", text="d1"),
        Segment("chunk", text="d2"),
        Segment("text", text="q?"),
    ]
    assert split_by_separator(" # # d1 # # ", " # # ") == [Segment("chunk", text="d1")]
    with pytest.raises(SegmentError, match="empty chunk"):
        split_by_separator("a # #  # # b", " # # ")


def test_layout_matches_the_documented_picture() -> None:
    # text "Ab", chunk "cdefg", chunk "hij", text "Q?" with page size 4 (see layout.py)
    segs = [("text", [1, 2]), ("chunk", [3, 4, 5, 6, 7]), ("chunk", [8, 9, 10]), ("text", [11, 12])]
    layout = build_layout(segs, page_size=4, pad_id=PAD)
    P = PAD
    assert layout.token_ids == (1, 2, P, P, P, P, P, 3, 4, 5, 6, 7, P, 8, 9, 10, 11, 12)
    assert [(r.start, r.content_start, r.content_end, r.end) for r in layout.regions] == [
        (0, 0, 2, 4),
        (4, 7, 12, 12),
        (12, 13, 16, 16),
        (16, 16, 18, 18),
    ]
    assert layout.pad_tokens == 6


segments_strategy = st.lists(
    st.tuples(
        st.sampled_from(["chunk", "text"]),
        st.lists(st.integers(1, 50), min_size=1, max_size=40),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(segments_strategy, st.integers(1, 16), segments_strategy)
def test_a_chunk_has_one_layout_wherever_it_appears(segs, page_size, other_prefix) -> None:  # type: ignore[no-untyped-def]
    """The property MEPIC relies on: a chunk's pages hold the same tokens at the same offsets,
    whatever precedes it (so one copy of its KV pages serves every request)."""
    chunk = ("chunk", [7, 7, 3, 9, 1, 2, 5, 8, 8, 4, 6, 2, 1, 3, 5, 9, 9, 2])
    a = build_layout([*segs, chunk, ("text", [1])], page_size=page_size, pad_id=PAD)
    b = build_layout([*other_prefix, chunk, ("text", [2, 3])], page_size=page_size, pad_id=PAD)
    ra, rb = a.chunk_regions[-1], b.chunk_regions[-1]
    assert ra.chunk_key == rb.chunk_key
    assert ra.start % page_size == 0 and rb.start % page_size == 0
    assert a.token_ids[ra.start : ra.end] == b.token_ids[rb.start : rb.end]
    a.check_integrity()
    b.check_integrity()


def test_chunk_identity_depends_on_salt_model_page_and_tokens() -> None:
    base = chunk_key([1, 2, 3], salt="", model="m", page_size=16)
    assert base == chunk_key([1, 2, 3], salt="", model="m", page_size=16)
    assert base != chunk_key([1, 2, 3], salt="tenant-b", model="m", page_size=16)
    assert base != chunk_key([1, 2, 3], salt="", model="m2", page_size=16)
    assert base != chunk_key([1, 2, 3], salt="", model="m", page_size=32)
    assert base != chunk_key([1, 2, 4], salt="", model="m", page_size=16)
    assert chunk_key([1, 23], salt="", model="m", page_size=1) != chunk_key(
        [12, 3], salt="", model="m", page_size=1
    )


def test_empty_segments_and_bad_page_size_are_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        build_layout([("chunk", [])], page_size=4, pad_id=PAD)
    with pytest.raises(ValueError, match="page_size"):
        build_layout([("chunk", [1])], page_size=0, pad_id=PAD)


@settings(max_examples=100, deadline=None)
@given(segments_strategy, st.integers(1, 16))
def test_the_region_table_survives_its_wire_form(segs, page_size) -> None:  # type: ignore[no-untyped-def]
    """What the tokenizer sends is what the scheduler plans: ``from_wire(to_wire(t)) == t``, and
    the wire form is JSON scalars and lists only (``custom_params`` crosses processes as JSON)."""
    table = build_layout(segs, page_size=page_size, pad_id=PAD, salt="s").table
    wire = table.to_wire()
    assert json.loads(json.dumps(wire)) == wire
    assert RegionTable.from_wire(wire) == table


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ({"mepic_regions": [0, 0, 0, 1]}, "5-int groups"),
        ({"mepic_regions": [0, 0, 0, 1, True], "mepic_chunk_keys": []}, "5-int groups"),
        ({"mepic_regions": [1, 0, 0, 4, 4], "mepic_chunk_keys": ["k", 3]}, "list of strings"),
        ({"mepic_regions": [1, 0, 0, 4, 4], "mepic_chunk_keys": []}, "one chunk key per chunk"),
        ({"mepic_regions": [2, 0, 0, 4, 4], "mepic_chunk_keys": []}, "region kind"),
        ({"mepic_regions": [], "mepic_chunk_keys": [], "mepic_page_size": 0}, "positive int"),
    ],
)
def test_a_malformed_wire_form_is_refused(wire: dict[str, object], message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        RegionTable.from_wire(wire)
