"""Chat content parts flagged as chunks -> segments (real SmolLM2 tokenizer and chat template)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mepic_sglang.chunks.chat_parts import chat_segments, has_flagged_parts
from mepic_sglang.chunks.segments import SegmentError


@pytest.fixture(scope="module")
def tokenizer(smollm2_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


def part(text: str, chunk: bool = False) -> dict[str, Any]:
    return {"type": "text", "text": text, **({"mepic_chunk": True} if chunk else {})}


def test_flagged_parts_become_chunks_inside_the_rendered_template(tokenizer: Any) -> None:
    body = {
        "messages": [
            {"role": "system", "content": "Use the documents."},
            {
                "role": "user",
                "content": [part("Doc one.", True), part("Doc two.", True), part("Question?")],
            },  # fmt: skip
        ]
    }
    assert has_flagged_parts(body)
    segs = chat_segments(tokenizer, body)
    assert [s.kind for s in segs] == ["text", "chunk", "text", "chunk", "text"]
    assert [s.text for s in segs if s.kind == "chunk"] == ["Doc one.", "Doc two."]
    plain = [body["messages"][0], {"role": "user", "content": "Doc one. Doc two. Question?"}]
    rendered = tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True)
    assert "".join(s.text or "" for s in segs) == rendered


def test_unflagged_chats_and_bad_parts(tokenizer: Any) -> None:
    assert not has_flagged_parts({"messages": [{"role": "user", "content": [part("hi")]}]})
    assert not has_flagged_parts({"messages": "nope"})
    image = {"type": "image_url", "image_url": {"url": "x"}, "mepic_chunk": True}
    with pytest.raises(SegmentError, match="must be text"):
        chat_segments(tokenizer, {"messages": [{"role": "user", "content": [image]}]})
    with pytest.raises(SegmentError, match="expected a string"):
        chat_segments(tokenizer, {"messages": [{"role": "user", "content": [part("", True)]}]})
