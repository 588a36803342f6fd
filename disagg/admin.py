"""The dispatcher's admin API: its state, instances in and out, role switches.

| method | path                    | body / query                              | answer            |
|--------|-------------------------|-------------------------------------------|-------------------|
| GET    | /dispatcher/state       | -                                         | instances, loads  |
| POST   | /dispatcher/instances   | {url, role, bootstrap_port?}              | 200 / 400         |
| DELETE | /dispatcher/instances   | ?url=URL (stops routing; in flight ends)  | 200 / 404         |
| POST   | /dispatcher/switch      | {url, new_role, bootstrap_port?}          | 200 / 409 report  |
| POST   | /dispatcher/retire      | {url} (drain, then out of the pool)       | 200 / 409 report  |
"""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web

from disagg.instances import ROLES, Instance, Pool
from disagg.roles import retire, switch_role

POOL: web.AppKey[Pool] = web.AppKey("pool", Pool)
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "code": status}}, status=status)


async def _body(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def state(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    rows = [
        {
            "url": i.url,
            "role": i.role,
            "bootstrap_port": i.bootstrap_port,
            "in_flight": pool.in_flight[i.url],
            "served": pool.served.get(i.url, 0),
            "predicted_s": pool.stats[i.url].predicted_s(i.role),
            "model": pool.stats[i.url].model is not None,
        }
        for i in pool.instances
    ]
    return web.json_response({"policy": pool.policy.name, "instances": rows})


async def add_instance(request: web.Request) -> web.Response:
    body = await _body(request)
    if body is None:
        return error_response(400, "body must be a JSON object {url, role, bootstrap_port?}")
    try:
        port = body.get("bootstrap_port")
        role = body.get("role")
        if role not in ROLES:
            return error_response(400, f"role must be one of {ROLES}, got {role!r}")
        instance = Instance(str(body.get("url", "")).rstrip("/"), role, port)
        request.app[POOL].add(instance)
    except (ValueError, TypeError) as e:
        return error_response(400, str(e))
    return web.json_response({"added": instance.url, "role": instance.role})


async def remove_instance(request: web.Request) -> web.Response:
    try:
        gone = request.app[POOL].remove(request.query.get("url", "").rstrip("/"))
    except LookupError as e:
        return error_response(404, str(e))
    return web.json_response({"removed": gone.url})


async def switch(request: web.Request) -> web.Response:
    body = await _body(request)
    if body is None or "url" not in body or "new_role" not in body:
        return error_response(400, "body must be a JSON object {url, new_role, bootstrap_port?}")
    pool = request.app[POOL]
    url = str(body["url"]).rstrip("/")
    if all(i.url != url for i in pool.instances):
        return error_response(404, f"{url} is not in the pool")
    report = await switch_role(
        request.app[SESSION], pool, url, body["new_role"], body.get("bootstrap_port")
    )
    return web.json_response(report, status=200 if report["success"] else 409)


async def retire_instance(request: web.Request) -> web.Response:
    body = await _body(request)
    if body is None or "url" not in body:
        return error_response(400, "body must be a JSON object {url}")
    pool = request.app[POOL]
    url = str(body["url"]).rstrip("/")
    if all(i.url != url for i in pool.instances):
        return error_response(404, f"{url} is not in the pool")
    report = await retire(request.app[SESSION], pool, url)
    return web.json_response(report, status=200 if report["success"] else 409)


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get("/dispatcher/state", state)
    app.router.add_post("/dispatcher/instances", add_instance)
    app.router.add_delete("/dispatcher/instances", remove_instance)
    app.router.add_post("/dispatcher/switch", switch)
    app.router.add_post("/dispatcher/retire", retire_instance)
