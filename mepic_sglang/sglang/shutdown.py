"""Bounded graceful shutdown: ``--mepic-shutdown-timeout S``.

Stock SGLang 0.5.23 on SIGTERM drains with no time limit (it polls every 5 s until no request is
left) and keeps admitting new requests meanwhile, so under load it may never stop. With
``--mepic-shutdown-timeout S`` (S > 0) the launcher process, on SIGTERM:

1. **stops admitting**: a new generate request (``/generate``, OpenAI, ``Engine``) gets HTTP 503
   (a streaming ``/generate``: HTTP 200 and an error event with code 503, as SGLang answers every
   refused stream; ``/health_generate`` already answers 503 during shutdown);
2. **drains** for up to S seconds: in-flight requests finish normally; every 0.25 s, requests
   whose HTTP client has gone are aborted (nothing is generated for nobody);
3. **aborts the rest** with finish reason ``abort``, HTTP status 503 and the message
   ":data:`ABORT_MESSAGE`"; a non-streaming client gets HTTP 503, a streaming one a final event
   with that finish reason;
4. hands over to SGLang's own exit sequence (schedulers released, processes stopped). If aborted
   requests are still registered :data:`ABORT_GRACE_S` seconds later, SGLang's force exit is used.

Without the flag (0, the default) shutdown is SGLang's own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from fastapi import HTTPException

from mepic_sglang.sglang import liveness
from mepic_sglang.sglang.state import manager_state

logger = logging.getLogger(__name__)
ABORT_MESSAGE = "server shutting down: request aborted after the shutdown grace period"
ABORT_GRACE_S = 10.0
POLL_S = 0.25


class ShuttingDown(HTTPException, ValueError):
    """HTTP 503 for a request that arrives after SIGTERM.

    NOTE: both bases on purpose: SGLang's OpenAI handlers answer an ``HTTPException`` with its
    status, ``/generate`` answers a ``ValueError`` with its ``status_code`` (a streaming one as
    an error event)."""

    def __init__(self) -> None:
        super().__init__(
            status_code=HTTPStatus.SERVICE_UNAVAILABLE,
            detail="server shutting down: not accepting new requests",
        )

    def __str__(self) -> str:
        return str(self.detail)


@dataclass
class Drain:
    """The launcher's in-flight HTTP requests and the shutdown state."""

    timeout_s: float
    inflight: dict[int, tuple[Any, Any]] = field(default_factory=dict)  # id(obj) -> (obj, request)
    started_at: float | None = None

    def track(self, obj: Any, request: Any) -> int | None:
        if request is None or not hasattr(request, "is_disconnected"):
            return None  # Engine requests have no client that could go away
        self.inflight[id(obj)] = (obj, request)
        return id(obj)

    def untrack(self, token: int | None) -> None:
        if token is not None:
            self.inflight.pop(token, None)


def drain_of(manager: Any, timeout_s: float) -> Drain:
    state = manager_state(manager)
    if state.drain is None:
        state.drain = Drain(timeout_s)
    return state.drain


def refusing(manager: Any, timeout_s: float) -> bool:
    """True once SIGTERM arrived on a server with a bounded shutdown."""
    return timeout_s > 0 and bool(getattr(manager, "gracefully_exit", False))


def _rids(obj: Any) -> list[str]:
    rid = getattr(obj, "rid", None)
    if isinstance(rid, list):
        return [r for r in rid if isinstance(r, str)]
    return [rid] if isinstance(rid, str) else []


async def _abort_disconnected(manager: Any, drain: Drain) -> None:
    for obj, request in list(drain.inflight.values()):
        if getattr(obj, "background", False):
            continue  # NOTE: as in SGLang: a background request outlives its client
        try:
            gone = await request.is_disconnected()
        except Exception:  # NOTE: a broken transport counts as gone
            gone = True
        if gone:
            for rid in _rids(obj):
                if rid in manager.rid_to_state:
                    logger.info("mepic-sglang: shutdown: client of %s is gone; aborting it", rid)
                    manager.abort_request(rid)


def _abort_all(manager: Any) -> None:
    from sglang.srt.managers.io_struct import AbortReq

    reason = {
        "type": "abort",
        "message": ABORT_MESSAGE,
        "status_code": int(HTTPStatus.SERVICE_UNAVAILABLE),
    }
    manager._dispatch_to_scheduler(
        AbortReq(abort_all=True, finished_reason=reason, abort_message=ABORT_MESSAGE)
    )


async def _wait_until_empty(manager: Any, drain: Drain, deadline: float) -> None:
    while manager.rid_to_state and time.monotonic() < deadline:
        await _abort_disconnected(manager, drain)
        await asyncio.sleep(POLL_S)


async def drain_then_exit(
    original: Callable[[Any], Coroutine[Any, Any, Any]], manager: Any, timeout_s: float
) -> Any:
    """Steps 2-4 of the module doc, then SGLang's own watchdog (which now finds nothing left)."""
    while not manager.gracefully_exit:
        await asyncio.sleep(POLL_S)
    if getattr(getattr(manager, "server_status", None), "name", "") == "UnHealthy":
        return await original(manager)  # NOTE: SGLang exits at once when its probe failed
    drain = drain_of(manager, timeout_s)
    drain.started_at = time.monotonic()
    left = len(manager.rid_to_state)
    logger.warning(
        "mepic-sglang: SIGTERM: refusing new requests, draining %d in flight for up to %g s",
        left,
        timeout_s,
    )
    await _wait_until_empty(manager, drain, drain.started_at + timeout_s)
    if manager.rid_to_state:
        logger.warning(
            "mepic-sglang: shutdown grace period over: aborting %d request(s)",
            len(manager.rid_to_state),
        )
        _abort_all(manager)
        await _wait_until_empty(manager, drain, time.monotonic() + ABORT_GRACE_S)
    if manager.rid_to_state:
        logger.error(
            "mepic-sglang: %d request(s) still registered %g s after the abort; forcing exit",
            len(manager.rid_to_state),
            ABORT_GRACE_S,
        )
        os.environ["SGL_FORCE_SHUTDOWN"] = "1"  # NOTE: read by SGLang's watchdog on each poll
    logger.info(
        "mepic-sglang: drained in %.1f s; handing over to SGLang's exit",
        time.monotonic() - drain.started_at,
    )
    return await original(manager)


def around_sigterm_watchdog(
    original: Callable[[Any], Coroutine[Any, Any, Any]], manager: Any
) -> Coroutine[Any, Any, Any]:
    """AROUND ``TokenizerManager.sigterm_watchdog`` (a coroutine SGLang runs for the server's
    life): with ``--mepic-shutdown-timeout`` the drain of the module doc comes first. The same
    coroutine runs the launcher side of the liveness watch (:func:`liveness.watch_signals`)."""
    from mepic_sglang.flags import get_plugin_args

    args = get_plugin_args(manager.server_args)

    async def run() -> Any:
        watch = asyncio.create_task(
            _logged(liveness.watch_signals(manager, args.mepic_stall_timeout))
        )
        try:
            if args.mepic_shutdown_timeout > 0:
                return await drain_then_exit(original, manager, args.mepic_shutdown_timeout)
            return await original(manager)
        finally:
            watch.cancel()

    return run()


async def _logged(coro: Coroutine[Any, Any, None]) -> None:
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:  # NOTE: the watch is an extra; it must never take the server down
        logger.exception("mepic-sglang: the launcher's liveness watch stopped")
