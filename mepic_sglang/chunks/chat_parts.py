"""OpenAI chat: content parts flagged ``"mepic_chunk": true`` become MEPIC chunks.

An unmodified OpenAI client can send them (content parts are plain dicts)::

    messages=[{"role": "user", "content": [
        {"type": "text", "text": "<document 1>", "mepic_chunk": True},
        {"type": "text", "text": "<document 2>", "mepic_chunk": True},
        {"type": "text", "text": "What is the capital of Zorblat?"}]}]

SGLang's chat models drop unknown part keys, so the plugin reads them from the raw body, renders
the conversation with the tokenizer's chat template with a sentinel in place of every flagged
part (list contents are flattened as SGLang does for string templates: parts joined by a space),
and splits the rendered prompt at the sentinels: template text around them becomes text
segments, the flagged parts become chunks.
"""

from __future__ import annotations

import re
from typing import Any

from mepic_sglang.chunks.segments import Segment, SegmentError

PART_FLAG = "mepic_chunk"
_SENTINEL = "\u2063MEPIC{}\u2063"  # invisible separator: never produced by a template itself
_SPLIT = re.compile("\u2063MEPIC(\\d+)\u2063")
_TEXT_TYPES = ("text", "input_text")


def _flatten(messages: list[Any], chunks: list[str]) -> list[dict[str, Any]]:
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise SegmentError(f"messages[{i}]: expected an object")
        content = msg.get("content")
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                flagged = isinstance(part, dict) and part.get(PART_FLAG)
                if not isinstance(part, dict) or part.get("type") not in _TEXT_TYPES:
                    raise SegmentError(
                        f"messages[{i}].content[{j}]: with {PART_FLAG} parts, every part must be "
                        "text (images and audio are not supported with MEPIC chunks)"
                    )
                text = part.get("text")
                if not isinstance(text, str) or (flagged and not text):
                    raise SegmentError(f"messages[{i}].content[{j}].text: expected a string")
                if flagged:
                    texts.append(_SENTINEL.format(len(chunks)))
                    chunks.append(text)
                else:
                    texts.append(text)
            msg = {**msg, "content": " ".join(texts)}
        out.append(msg)
    return out


def has_flagged_parts(body: Any) -> bool:
    messages = body.get("messages") if isinstance(body, dict) else None
    return isinstance(messages, list) and any(
        isinstance(m, dict)
        and isinstance(m.get("content"), list)
        and any(isinstance(p, dict) and p.get(PART_FLAG) for p in m["content"])
        for m in messages
    )


def chat_segments(tokenizer: Any, body: dict[str, Any]) -> list[Segment]:
    """Segments of a chat request with flagged parts (see the module docstring)."""
    chunks: list[str] = []
    messages = _flatten(body["messages"], chunks)
    continue_final = bool(body.get("continue_final_message", False))
    rendered = tokenizer.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=not continue_final,
        continue_final_message=continue_final,
        **(body.get("chat_template_kwargs") or {}),
    )
    pieces = _SPLIT.split(rendered)
    found = [int(x) for x in pieces[1::2]]
    if found != list(range(len(chunks))):
        raise SegmentError(
            "the chat template did not keep every mepic_chunk part exactly once, in order; "
            "mark chunks with mepic_segments on /generate or /v1/completions instead"
        )
    out: list[Segment] = []
    for k, piece in enumerate(pieces):
        if k % 2:
            out.append(Segment("chunk", text=chunks[int(piece)]))
        elif piece:
            # NOTE: kept even when it is only the space joining two flagged parts (a padded
            # page): the model then reads exactly the rendered conversation, plus pads.
            out.append(Segment("text", text=piece))
    return out
