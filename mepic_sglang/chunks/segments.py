"""How users mark reusable chunks in a prompt (MEPIC request API), parsed and validated.

A prompt is a list of segments, each a reusable **chunk** (a document, a code file) or plain
**text** (system prompt, instructions, the question). Forms accepted:

* explicit list, in ``/generate`` and OpenAI ``/v1/completions`` (``extra_body``)::

      "mepic_segments": [{"text": "Answer from the documents.\\n"},
                         {"chunk": "<document A>"}, {"chunk_ids": [17, 4, ...]},
                         {"text": "Question: ..."}]

  Each item has exactly one of ``text``, ``chunk`` (strings) or ``text_ids``, ``chunk_ids``
  (token ids, used as given).
* separator mode (``--mepic-chunk-separator``, LMCache-compatible, e.g. ``" # # "``): a plain
  text prompt ``prefix SEP chunk1 SEP chunk2 SEP question`` — the first and last pieces are text,
  every piece in between is a chunk.

Malformed input raises :class:`SegmentError` (a ``ValueError``: SGLang answers HTTP 400 with the
message).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mepic_sglang.token_ids import token_id_problem

SegmentKind = Literal["chunk", "text"]
MAX_SEGMENTS = 4096
_FORMS: dict[str, tuple[SegmentKind, bool]] = {  # key -> (kind, is_token_ids)
    "text": ("text", False),
    "chunk": ("chunk", False),
    "text_ids": ("text", True),
    "chunk_ids": ("chunk", True),
}


class SegmentError(ValueError):
    """A malformed segment list; the message says which item and why."""


@dataclass(frozen=True)
class Segment:
    """One piece of a prompt: exactly one of ``text`` / ``token_ids`` is set."""

    kind: SegmentKind
    text: str | None = None
    token_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        assert (self.text is None) != (self.token_ids is None), "exactly one of text/token_ids"


def _parse_item(index: int, item: Any, vocab_size: int) -> Segment:
    where = f"mepic_segments[{index}]"
    if not isinstance(item, dict):
        raise SegmentError(f'{where}: expected an object like {{"chunk": "..."}}, got {item!r}')
    keys = [k for k in item if k in _FORMS]
    unknown = sorted(set(item) - set(_FORMS))
    if unknown or len(keys) != 1:
        raise SegmentError(
            f"{where}: needs exactly one of {sorted(_FORMS)}"
            + (f"; unknown key(s) {unknown}" if unknown else f"; got {sorted(item)}")
        )
    (key,) = keys
    kind, is_ids = _FORMS[key]
    value = item[key]
    if is_ids:
        if not isinstance(value, list) or not value:
            raise SegmentError(f"{where}.{key}: expected a non-empty list of token ids (ints >= 0)")
        problem = token_id_problem(value, vocab_size)
        if problem is not None:
            raise SegmentError(f"{where}.{key}: {problem}")
        return Segment(kind, token_ids=tuple(value))
    if not isinstance(value, str) or not value:
        raise SegmentError(f"{where}.{key}: expected a non-empty string")
    return Segment(kind, text=value)


def parse_segments(value: Any, vocab_size: int = 0) -> list[Segment]:
    """Validate an explicit ``mepic_segments`` list (token ids against ``vocab_size``; 0: only
    their sign and 64-bit range)."""
    if not isinstance(value, list) or not value:
        raise SegmentError("mepic_segments: expected a non-empty list of segments")
    if len(value) > MAX_SEGMENTS:
        raise SegmentError(f"mepic_segments: at most {MAX_SEGMENTS} segments, got {len(value)}")
    return [_parse_item(i, item, vocab_size) for i, item in enumerate(value)]


def split_by_separator(prompt: str, separator: str) -> list[Segment] | None:
    """Separator mode; ``None`` when ``prompt`` has no chunk (fewer than two separators)."""
    if not separator:
        raise SegmentError("--mepic-chunk-separator must not be empty")
    pieces = prompt.split(separator)
    if len(pieces) < 3:
        return None
    head, *chunks, tail = pieces
    if any(not c for c in chunks):
        raise SegmentError(f"empty chunk between two separators {separator!r}")
    out = [Segment("text", text=head)] if head else []
    out += [Segment("chunk", text=c) for c in chunks]
    if tail:
        out.append(Segment("text", text=tail))
    return out
