"""Tokenizer-side MEPIC request handling: segments in, canonical page-aligned token ids out.

An AROUND hook on ``TokenizerManager.generate_request`` (launcher process) sees every generate
request (``/generate``, OpenAI ``/v1/completions`` and ``/v1/chat/completions``) with the raw HTTP
request. When the request marks chunks (``mepic_segments`` in the body, chat content parts with
``"mepic_chunk": true`` (:mod:`mepic_sglang.chunks.chat_parts`), or separator mode) and the
server runs with ``--enable-mepic``, it

1. parses and validates the segments (:mod:`mepic_sglang.chunks.segments`; errors: HTTP 400),
2. tokenises every segment on its own and lays them out on pages
   (:mod:`mepic_sglang.chunks.layout`),
3. replaces the request's text by those token ids and records the layout in
   ``sampling_params.custom_params`` for the scheduler (:meth:`RegionTable.to_wire`),
4. adds ``meta_info["mepic"]`` (chunks, pad tokens, page size, shared and recomputed tokens) to
   every output.

The same hook first checks the fields every generate request may carry
(:mod:`mepic_sglang.sglang.input_guard`), stamps SLOs (:mod:`mepic_sglang.sglang.slo_request`),
refuses new requests with HTTP 503 once a bounded shutdown began and tracks in-flight HTTP
requests for it (:mod:`mepic_sglang.sglang.shutdown`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from mepic_sglang.chunks import chat_parts
from mepic_sglang.chunks.layout import Layout, build_layout
from mepic_sglang.chunks.segments import Segment, SegmentError, parse_segments, split_by_separator
from mepic_sglang.flags import PluginArgs, get_plugin_args
from mepic_sglang.sglang import input_guard, shutdown, slo_request
from mepic_sglang.slo_flags import MULTI_SLO
from scheduler_patch.slo import Slo

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


def tokenise(
    tokenizer: Any, segments: list[Segment], add_special_tokens: bool = True
) -> list[tuple[str, list[int]]]:
    """Each segment on its own, without special tokens; with ``add_special_tokens`` the
    tokenizer's leading special tokens (e.g. BOS) become the head of the first text segment."""
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
    specials = tokenizer.encode("", add_special_tokens=True) if add_special_tokens else []
    if specials:
        if out[0][0] == "text":
            out[0] = ("text", [*specials, *out[0][1]])
        else:
            out.insert(0, ("text", list(specials)))
    return out


SCHEDULER_KEYS = {  # scheduler-side customized_info -> meta_info["mepic"] key
    "mepic_chunk_shared_tokens": "shared_tokens",
    "mepic_prefix_tokens": "prefix_tokens",
    "mepic_computed_tokens": "computed_tokens",
    "mepic_in_context_chunks": "in_context_chunks",
}


def strip_scheduler_keys(meta_info: dict[str, Any]) -> dict[str, Any]:
    """Remove the scheduler's ``mepic_*`` keys (SGLang pads them into every request of an output
    batch); returns them."""
    return {k: meta_info.pop(k) for k in list(meta_info) if k in SCHEDULER_KEYS}


def meta(layout: Layout, meta_info: dict[str, Any], seen: dict[str, int]) -> dict[str, Any]:
    """``meta_info["mepic"]``:

    - ``shared_tokens``: prompt tokens read from shared chunk pages;
    - ``prefix_tokens``: prompt tokens read from the radix prefix cache (text before the first
      chunk); ``shared + prefix`` is SGLang's ``cached_tokens``;
    - ``recomputed_tokens``: prompt tokens computed for this request;
    - ``computed_tokens``: rows the prefill computed (recomputed + scratch heads of chunks that
      were encoded on their own for the first time);
    - ``in_context_chunks``: cold chunks computed in the request's context and not published,
      because their scratch heads did not fit the pool next to the prompt and output.

    The scheduler sends its numbers once per request (``seen`` keeps them for later chunks of a
    stream); they replace SGLang's per-request ``mepic_*`` keys in ``meta_info``.
    """
    for key, value in strip_scheduler_keys(meta_info).items():
        if isinstance(value, list) and value:
            seen[SCHEDULER_KEYS[key]] = int(value[0])
    out: dict[str, Any] = {
        "chunks": len(layout.chunk_regions),
        "pad_tokens": layout.pad_tokens,
        "page_size": layout.page_size,
        **seen,
    }
    if "cached_tokens" in meta_info:
        out["recomputed_tokens"] = len(layout.token_ids) - int(meta_info["cached_tokens"])
    return out


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


async def _requested_segments(
    manager: Any, obj: Any, request: Any
) -> tuple[list[Segment], bool] | None:
    """``(segments, add_special_tokens)`` when the request marks chunks, else None."""
    args = get_plugin_args(manager.server_args)
    if not args.enable_mepic:
        # NOTE: without --enable-mepic the server behaves as stock SGLang, which ignores unknown
        # body keys; no body is read on this hot path.
        return None
    body = await _json_body(request)
    if chat_parts.has_flagged_parts(body):
        # NOTE: the rendered template already holds the model's special tokens (BOS, ...).
        return chat_parts.chat_segments(manager.tokenizer, body), False
    raw = body.get(BODY_KEY) if isinstance(body, dict) else None
    if raw is not None and "messages" in body:
        raise SegmentError(
            f"chat requests mark chunks on content parts ({{'type': 'text', 'text': ..., "
            f"'{chat_parts.PART_FLAG}': true}}), not with {BODY_KEY}"
        )
    if raw is not None:
        if not isinstance(obj.text, str | None) or obj.input_ids is not None:
            raise SegmentError(f"{BODY_KEY} takes one prompt: send no input_ids and no batch")
        segments = parse_segments(raw, input_guard.vocab_size_of(manager))
        # NOTE: the prompt may repeat the segments' text, so that the same request also works
        # (unsegmented) on a server without MEPIC; OpenAI completions need a non-empty prompt.
        if obj.text and obj.text != "".join(s.text or "\0" for s in segments):
            raise SegmentError(
                f"the prompt must be empty or exactly the concatenation of the {BODY_KEY} texts"
            )
        return segments, True
    sep = args.mepic_chunk_separator
    if args.enable_mepic and sep and isinstance(obj.text, str) and obj.input_ids is None:
        pieces = split_by_separator(obj.text, sep)
        return None if pieces is None else (pieces, True)
    return None


def check_request(obj: Any) -> None:
    """What a chunked request cannot ask for (HTTP 400 via SegmentError). Its length against
    the prefill step is checked by the scheduler, which knows its own ``chunked_prefill_size``
    (:mod:`mepic_sglang.sglang.chunk_admission`)."""
    if getattr(obj, "session_params", None):
        raise SegmentError("requests with chunks cannot be part of a session (session_params)")
    start = getattr(obj, "logprob_start_len", None)
    if getattr(obj, "return_logprob", False) and start not in (None, -1):
        raise SegmentError(
            "input-token logprobs (logprob_start_len >= 0) are not available for requests with "
            "chunks: chunk tokens are read from shared pages, not computed"
        )


def layout_segments(
    tokenizer: Any,
    segments: list[Segment],
    *,
    page_size: int,
    salt: str = "",
    model: str = "",
    add_special_tokens: bool = True,
) -> Layout:
    """The canonical layout of ``segments`` as the server builds it (also for tests/benchmarks)."""
    return build_layout(
        tokenise(tokenizer, segments, add_special_tokens),  # type: ignore[arg-type]
        page_size=page_size,
        pad_id=pad_token_id(tokenizer),
        salt=salt,
        model=model,
    )


def plan(
    manager: Any, obj: Any, segments: list[Segment], add_special_tokens: bool = True
) -> Layout:
    server_args = manager.server_args
    return layout_segments(
        manager.tokenizer,
        segments,
        page_size=int(server_args.page_size or 1),
        salt=getattr(obj, "cache_salt", None) or "",
        model=str(server_args.model_path),
        add_special_tokens=add_special_tokens,
    )


def _ready_for_error(obj: Any) -> None:
    """A request refused before SGLang normalised it still gets a clean 4xx/503.

    NOTE: SGLang's streaming ``/generate`` schedules a background abort that reads
    ``obj.is_single``, which only normalisation sets; without it every refused streaming request
    logged an ``AttributeError`` traceback. Nothing was registered for the request, so any value
    that lets the task iterate the rids (a no-op abort) is right."""
    if getattr(obj, "is_single", None) is None:
        obj.is_single = not isinstance(getattr(obj, "rid", None), list)


async def _prepare(
    manager: Any, args: PluginArgs, obj: Any, request: Any
) -> tuple[Slo | None, Layout | None]:
    """Check a generate request's fields and rewrite a chunked prompt into its page layout;
    returns its SLO and layout (None when it has none). Raises ``ValueError`` (HTTP 400)."""
    if args.mepic_require_cache_salt and not input_guard.internal_request(manager, obj):
        input_guard.check_cache_salt(obj, required=True, single=False)
    input_guard.check_reserved_keys(
        obj,
        mepic=args.enable_mepic,
        slo_scheduling=getattr(manager.server_args, "schedule_policy", None) == MULTI_SLO,
    )
    slo = slo_request.prepare(manager, obj, request)
    if not args.enable_mepic:
        return slo, None
    found = await _requested_segments(manager, obj, request)
    if found is None:
        return slo, None
    input_guard.check_cache_salt(obj, required=False, single=True)
    check_request(obj)
    layout = plan(manager, obj, *found)
    obj.text = None
    obj.input_ids = list(layout.token_ids)
    sampling = dict(obj.sampling_params or {})
    sampling["custom_params"] = {**(sampling.get("custom_params") or {}), **layout.table.to_wire()}
    obj.sampling_params = sampling
    return slo, layout


def around_generate_request(
    original: Callable[..., AsyncIterator[Any]], manager: Any, obj: Any, request: Any = None
) -> AsyncIterator[Any]:
    """AROUND ``TokenizerManager.generate_request`` (an async generator)."""

    async def run() -> AsyncIterator[Any]:
        args = get_plugin_args(manager.server_args)
        slo: Slo | None = None
        layout: Layout | None = None
        try:
            if shutdown.refusing(manager, args.mepic_shutdown_timeout):
                raise shutdown.ShuttingDown()
            if type(obj).__name__ == "GenerateReqInput":
                slo, layout = await _prepare(manager, args, obj, request)
        except ValueError:
            _ready_for_error(obj)
            raise
        drain = (
            shutdown.drain_of(manager, args.mepic_shutdown_timeout)
            if args.mepic_shutdown_timeout > 0
            else None
        )
        token = drain.track(obj, request) if drain is not None else None
        seen: dict[str, int] = {}
        try:
            async for out in original(manager, obj, request):
                meta_info = out.get("meta_info") if isinstance(out, dict) else None
                if isinstance(meta_info, dict):
                    if args.enable_mepic:
                        if layout is not None:
                            meta_info[META_KEY] = meta(layout, meta_info, seen)
                        else:
                            strip_scheduler_keys(meta_info)
                    if slo is not None and meta_info.get("finish_reason") is not None:
                        slo_request.finish(manager, slo, meta_info)
                yield out
        except Exception as e:
            # NOTE: SGLang raises (HTTP 429) for a non-streaming request the scheduler refused.
            if slo is not None and getattr(e, "status_code", None) == slo_request.REJECT_STATUS:
                slo_request.finish(manager, slo, {"finish_reason": {"status_code": 429}})
            raise
        finally:
            if drain is not None:
                drain.untrack(token)

    return run()
