"""Tokenizer-side MEPIC request handling: segments in, canonical page-aligned token ids out.

An AROUND hook on ``TokenizerManager.generate_request`` (launcher process) sees every generate
request (``/generate``, OpenAI ``/v1/completions``; chat follows with per-part markers) with the
raw HTTP request. When the request marks chunks (``mepic_segments`` in the body, or separator
mode) and the server runs with ``--enable-mepic``, it

1. parses and validates the segments (:mod:`mepic_sglang.segments`; errors become HTTP 400),
2. tokenises every segment on its own and lays them out on pages (:mod:`mepic_sglang.layout`),
3. replaces the request's text by those token ids and records the layout in
   ``sampling_params.custom_params`` (``mepic_regions``, ``mepic_chunk_keys``) for the scheduler,
4. adds ``meta_info["mepic"]`` (chunks, pad tokens, page size) to every output.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from mepic_sglang.flags import get_plugin_args
from mepic_sglang.layout import KIND_CODE, Layout, build_layout
from mepic_sglang.segments import Segment, SegmentError, parse_segments, split_by_separator

BODY_KEY = "mepic_segments"
META_KEY = "mepic"


def pad_token_id(tokenizer: Any) -> int:
    """A newline if it is one token (pads then read as blank lines), else the EOS token."""
    ids = tokenizer.encode("\n", add_special_tokens=False)
    if len(ids) == 1:
        return int(ids[0])
    if tokenizer.eos_token_id is None:
        raise SegmentError("MEPIC needs a pad token: the tokenizer has no single-token newline/EOS")
    return int(tokenizer.eos_token_id)


def tokenise(tokenizer: Any, segments: list[Segment]) -> list[tuple[str, list[int]]]:
    """Each segment on its own, without special tokens; the tokenizer's leading special tokens
    (e.g. BOS) become the head of the first text segment."""
    out: list[tuple[str, list[int]]] = []
    for seg in segments:
        ids = (
            list(seg.token_ids)
            if seg.token_ids is not None
            else tokenizer.encode(seg.text, add_special_tokens=False)
        )
        if not ids:
            raise SegmentError(f"a {seg.kind} segment tokenises to nothing: {seg.text!r}")
        out.append((seg.kind, ids))
    specials = tokenizer.encode("", add_special_tokens=True)
    if specials:
        if out[0][0] == "text":
            out[0] = ("text", [*specials, *out[0][1]])
        else:
            out.insert(0, ("text", list(specials)))
    return out


def custom_params(layout: Layout) -> dict[str, Any]:
    """The layout as flat scalar lists (what SGLang's ``custom_params`` may carry)."""
    regions = [
        v
        for r in layout.regions
        for v in (KIND_CODE[r.kind], r.start, r.content_start, r.content_end, r.end)
    ]
    return {
        "mepic_regions": regions,
        "mepic_chunk_keys": [r.chunk_key for r in layout.chunk_regions],
        "mepic_page_size": layout.page_size,
    }


def meta(layout: Layout) -> dict[str, Any]:
    return {
        "chunks": len(layout.chunk_regions),
        "pad_tokens": layout.pad_tokens,
        "page_size": layout.page_size,
    }


async def _json_body(request: Any) -> Any:
    """The request's JSON body, or None (no request, GET, not JSON, unparsable).

    NOTE: internal callers pass other requests: ``/health_generate`` hands its GET request to
    ``generate_request``; an exception here would silently fail the health probe and mark the
    server unhealthy. Starlette caches the parsed body, so a route that already read it costs
    nothing here.
    """
    if request is None or getattr(request, "method", "POST") != "POST":
        return None
    content_type = request.headers.get("content-type", "") if hasattr(request, "headers") else ""
    if "json" not in content_type:
        return None
    try:
        return await request.json()
    except ValueError:
        return None


async def _requested_segments(manager: Any, obj: Any, request: Any) -> list[Segment] | None:
    args = get_plugin_args(manager.server_args)
    if not args.enable_mepic:
        # NOTE: without --enable-mepic the server behaves as stock SGLang, which ignores unknown
        # body keys; no body is read on this hot path.
        return None
    body = await _json_body(request)
    raw = body.get(BODY_KEY) if isinstance(body, dict) else None
    if raw is not None:
        if not isinstance(obj.text, str | None) or obj.input_ids is not None:
            raise SegmentError(f"{BODY_KEY} takes one prompt: send no input_ids and no batch")
        segments = parse_segments(raw)
        # NOTE: the prompt may repeat the segments' text, so that the same request also works
        # (unsegmented) on a server without MEPIC; OpenAI completions need a non-empty prompt.
        if obj.text and obj.text != "".join(s.text or "\0" for s in segments):
            raise SegmentError(
                f"the prompt must be empty or exactly the concatenation of the {BODY_KEY} texts"
            )
        return segments
    sep = args.mepic_chunk_separator
    if args.enable_mepic and sep and isinstance(obj.text, str) and obj.input_ids is None:
        return split_by_separator(obj.text, sep)
    return None


def plan(manager: Any, obj: Any, segments: list[Segment]) -> Layout:
    server_args = manager.server_args
    tokenizer = manager.tokenizer
    return build_layout(
        tokenise(tokenizer, segments),  # type: ignore[arg-type]
        page_size=int(server_args.page_size or 1),
        pad_id=pad_token_id(tokenizer),
        salt=getattr(obj, "cache_salt", None) or "",
        model=str(server_args.model_path),
    )


def around_generate_request(
    original: Callable[..., AsyncIterator[Any]], manager: Any, obj: Any, request: Any = None
) -> AsyncIterator[Any]:
    """AROUND ``TokenizerManager.generate_request`` (an async generator)."""

    async def run() -> AsyncIterator[Any]:
        layout = None
        if type(obj).__name__ == "GenerateReqInput":
            segments = await _requested_segments(manager, obj, request)
            if segments is not None:
                layout = plan(manager, obj, segments)
                obj.text = None
                obj.input_ids = list(layout.token_ids)
                sampling = dict(obj.sampling_params or {})
                sampling["custom_params"] = {
                    **(sampling.get("custom_params") or {}),
                    **custom_params(layout),
                }
                obj.sampling_params = sampling
        async for out in original(manager, obj, request):
            if layout is not None and isinstance(out, dict) and "meta_info" in out:
                out["meta_info"][META_KEY] = meta(layout)
            yield out

    return run()
