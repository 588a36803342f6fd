"""The dispatcher: one OpenAI-compatible endpoint in front of SGLang instances (P/D or collocated).

    python -m disagg.dispatcher --prefill http://127.0.0.1:31301,31398 \\
        --decode http://127.0.0.1:31302 --port 31300

Clients talk to it exactly as to one SGLang server (``/generate``, ``/v1/completions``,
``/v1/chat/completions``, streaming or not). For P/D it does what SGLang's P/D protocol asks of a
router: it picks a (prefill, decode) pair, adds ``bootstrap_host`` / ``bootstrap_port`` /
``bootstrap_room`` to the body, sends the SAME body to both, and answers with the decode
instance's response (the prefill instance computes the prompt's KV and first token and pushes the
KV to the decode instance). A failed leg aborts the other (``/abort_request``), so no KV is held
for a request that cannot finish. Collocated instances get the body unchanged.

Why not sglang-router: its policies are a closed Rust enum (no Python extension point), it
does not track role switches, and the SLO-aware choice needs the plugin's latency model
(``docs/architecture.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiohttp import web

from disagg.admin import POOL, SESSION, add_admin_routes
from disagg.instances import POLICIES, Instance, Pool
from disagg.poller import poll_forever, prompt_tokens

logger = logging.getLogger(__name__)

PROXIED = ("/generate", "/v1/completions", "/v1/chat/completions")
ABORT_RETRIES_S = (0.2, 1.0, 3.0, 10.0)  # waits between aborts of a leg that has not returned
FORWARD_HEADERS = ("authorization", "x-slo-ttft-ms", "x-slo-tpot-ms", "x-slo-class")


def batch_size(path: str, body: dict[str, Any]) -> int | None:
    """Prompts in a batched ``/generate`` body (None: a single request)."""
    if path != "/generate":
        return None
    text, ids = body.get("text"), body.get("input_ids")
    if isinstance(text, list):
        return len(text)
    if isinstance(ids, list) and ids and isinstance(ids[0], list):
        return len(ids)
    return None


def pd_body(body: dict[str, Any], prefill: Instance, n: int | None) -> dict[str, Any]:
    """``body`` with the bootstrap fields that pair a prefill and a decode instance."""
    out = dict(body)
    rooms = [random.getrandbits(63) for _ in range(n or 1)]
    if n is None:
        out["bootstrap_host"], out["bootstrap_port"] = prefill.host, prefill.bootstrap_port
        out["bootstrap_room"] = rooms[0]
        out.setdefault("rid", uuid.uuid4().hex)  # NOTE: lets a failed leg abort the other
    else:
        out["bootstrap_host"] = [prefill.host] * n
        out["bootstrap_port"] = [prefill.bootstrap_port] * n
        out["bootstrap_room"] = rooms
        out.setdefault("rid", [uuid.uuid4().hex for _ in range(n)])
    return out


async def _post(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[int, bytes, str]:
    async with session.post(url, json=body, headers=headers) as r:
        return r.status, await r.read(), r.content_type


async def _abort(session: aiohttp.ClientSession, target: Instance, rid: Any) -> None:
    rids = [rid] if isinstance(rid, str) else rid if isinstance(rid, list) else []
    for one in rids:
        if not isinstance(one, str):
            continue
        try:
            async with session.post(f"{target.url}/abort_request", json={"rid": one}) as r:
                await r.read()
        except aiohttp.ClientError as e:  # NOTE: best effort; the instance may be gone
            logger.warning("dispatcher: abort of %s on %s failed: %s", one, target.url, e)


async def _abort_until_done(
    session: aiohttp.ClientSession, target: Instance, rid: Any, leg: asyncio.Future[Any]
) -> None:
    """Abort ``rid`` on ``target`` until its ``leg`` returns: an abort that arrives before the
    instance registered the request is dropped by SGLang."""
    for delay in ABORT_RETRIES_S:
        await _abort(session, target, rid)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(leg), delay)
        if leg.done():
            return


def _error(status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "dispatcher_error", "code": status}}
    return web.json_response(body, status=status)


async def proxy(request: web.Request) -> web.StreamResponse:
    """One client request: route, fan out (P/D) or forward (collocated), answer."""
    pool, session = request.app[POOL], request.app[SESSION]
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "request body must be JSON")
    if not isinstance(body, dict):
        return _error(400, "request body must be a JSON object")
    headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARD_HEADERS}
    path = request.path
    try:
        targets = pool.route(prompt_tokens(body))
    except LookupError as e:
        return _error(503, str(e))
    pool.begin(targets)
    try:
        if len(targets) == 1:
            return await _forward(request, session, targets[0], path, body, headers)
        prefill, decode = targets
        body = pd_body(body, prefill, batch_size(path, body))
        return await _fan_out(request, session, prefill, decode, path, body, headers)
    except aiohttp.ClientError as e:
        return _error(502, f"instance unreachable: {e}")
    finally:
        pool.end(targets)


async def _forward(
    request: web.Request,
    session: aiohttp.ClientSession,
    target: Instance,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
) -> web.StreamResponse:
    if body.get("stream"):
        async with session.post(target.url + path, json=body, headers=headers) as r:
            return await _relay(request, r)
    status, data, ctype = await _post(session, target.url + path, body, headers)
    return web.Response(status=status, body=data, content_type=ctype)


async def _fan_out(
    request: web.Request,
    session: aiohttp.ClientSession,
    prefill: Instance,
    decode: Instance,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
) -> web.StreamResponse:
    """Send ``body`` to both legs; answer with the decode leg (streamed when asked).

    NOTE: each leg waits for the other (decode for the KV, prefill for decode's destination
    pages) until SGLang's bootstrap timeout; so a leg that fails aborts the other at once, and
    again until it returns. A prefill error is the one the client sees (the root cause)."""
    rid = body.get("rid")
    p_task = asyncio.ensure_future(_post(session, prefill.url + path, body, headers))
    d_task = asyncio.ensure_future(session.post(decode.url + path, json=body, headers=headers))
    try:
        await asyncio.wait({p_task, d_task}, return_when=asyncio.FIRST_COMPLETED)
        if p_task.done() and (p_task.exception() or p_task.result()[0] != 200):
            await _abort_until_done(session, decode, rid, d_task)
            if d_task.done() and d_task.exception() is None:
                d_task.result().release()
            if p_task.exception() is None:
                p_status, p_data, p_ctype = p_task.result()
                return web.Response(status=p_status, body=p_data, content_type=p_ctype)
            raise p_task.exception()  # type: ignore[misc]
        async with await d_task as r:
            if r.status != 200:
                await _abort_until_done(session, prefill, rid, p_task)
                return web.Response(
                    status=r.status, body=await r.read(), content_type=r.content_type
                )
            # NOTE: no token can come before the prefill finished: waiting for its status
            # costs nothing, and a prefill error is then still a proper HTTP error
            p_status, p_data, p_ctype = await p_task
            if p_status != 200:
                await _abort(session, decode, rid)
                return web.Response(status=p_status, body=p_data, content_type=p_ctype)
            if body.get("stream"):
                return await _relay(request, r)
            return web.Response(status=200, body=await r.read(), content_type=r.content_type)
    except BaseException:
        p_task.cancel()
        d_task.cancel()
        await asyncio.shield(_abort_both(session, prefill, decode, rid))
        raise


async def _abort_both(
    session: aiohttp.ClientSession, prefill: Instance, decode: Instance, rid: Any
) -> None:
    await asyncio.gather(_abort(session, decode, rid), _abort(session, prefill, rid))


async def _relay(request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    """Stream an upstream response (SSE) to the client chunk by chunk."""
    out = web.StreamResponse(status=upstream.status)
    out.content_type = upstream.content_type
    await out.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            await out.write(chunk)
        await out.write_eof()
    except (aiohttp.ClientError, ConnectionError) as e:
        # NOTE: headers are out: no error response can follow; end the connection instead
        logger.warning("dispatcher: stream from upstream broke: %s", e)
        if request.transport is not None:
            request.transport.close()
    return out


async def models(request: web.Request) -> web.Response:
    """``/v1/models`` etc.: answered by the first decode (or collocated) instance."""
    pool, session = request.app[POOL], request.app[SESSION]
    target = (pool.of("decode") or pool.of("collocated"))[0]
    async with session.get(target.url + request.path) as r:
        return web.Response(status=r.status, body=await r.read(), content_type=r.content_type)


async def health(request: web.Request) -> web.Response:
    """200 when every instance answers its ``/health``; else 503 naming the ones that do not."""
    pool, session = request.app[POOL], request.app[SESSION]

    async def ok(i: Instance) -> bool:
        try:
            async with session.get(f"{i.url}/health", timeout=aiohttp.ClientTimeout(5)) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    results = await asyncio.gather(*(ok(i) for i in pool.instances))
    down = [i.url for i, good in zip(pool.instances, results, strict=True) if not good]
    return web.json_response({"down": down}, status=503 if down else 200)


def make_app(
    instances: Sequence[Instance],
    policy: str = "least-loaded",
    poll_interval: float = 0.5,
    poll: bool | None = None,
) -> web.Application:
    """The dispatcher's aiohttp app. ``poll``: read each instance's load and latency model
    (default: only for the ``slo`` policy; the scaling controller needs it too)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown dispatch policy {policy!r}; choose from {sorted(POLICIES)}")
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[POOL] = Pool(list(instances), POLICIES[policy]())

    async def session_ctx(app: web.Application) -> Any:
        # NOTE: no total timeout: a long generation is not an error; connect fails fast
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            app[SESSION] = session
            # NOTE: by default only the slo policy reads the instances' loads (no extra traffic)
            poller = None
            if poll if poll is not None else policy == "slo":
                poller = asyncio.ensure_future(poll_forever(session, app[POOL], poll_interval))
            yield
            if poller is not None:
                poller.cancel()

    app.cleanup_ctx.append(session_ctx)
    for path in PROXIED:
        app.router.add_post(path, proxy)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/get_model_info", models)
    app.router.add_get("/health", health)
    add_admin_routes(app)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prefill", action="append", default=[], help="URL,BOOTSTRAP_PORT")
    parser.add_argument("--decode", action="append", default=[], help="URL of a decode instance")
    parser.add_argument("--collocated", action="append", default=[], help="URL of a server")
    parser.add_argument(
        "--policy",
        default="least-loaded",
        choices=sorted(POLICIES),
        help="slo: least predicted wait / decode step from each instance's latency model",
    )
    parser.add_argument("--poll-interval", type=float, default=0.5, help="seconds")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    args = parser.parse_args(argv)
    try:
        instances = [
            *(Instance.parse(s, "prefill") for s in args.prefill),
            *(Instance.parse(s, "decode") for s in args.decode),
            *(Instance.parse(s, "collocated") for s in args.collocated),
        ]
        app = make_app(instances, args.policy, args.poll_interval)
    except ValueError as e:
        parser.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
