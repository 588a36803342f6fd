"""Taking an instance out of service without losing a request: P<->D role switch, scale-in.

SGLang 0.5.23's ``POST /pd_role_switch`` flips a P/D instance's role in place (KV pool and
weights stay; ~0.2-0.5 s on CPU), but only when the instance is fully idle, and it does not
drain. So the switch is an orchestration (all instances need ``--enable-pd-role-switch``, which
also gives each its own bootstrap server on ``--disaggregation-bootstrap-port``):

| step | what                                                 | on failure                  |
|------|------------------------------------------------------|-----------------------------|
| 1    | stop routing to it (dispatcher pool)                 | -                           |
| 2    | wait until the dispatcher's requests there finished  | timeout: back, old role     |
|      | and its /v1/loads shows nothing queued or running    |                             |
| 3    | /pd_role_switch (retried while "not idle")           | back in the pool, old role  |
| 4    | route to it again, in its new role                   | -                           |

No accepted request is dropped: routing stops before the switch, and SGLang refuses to switch
while anything is queued there. Scale-in (:func:`retire`) is steps 1-2: the instance is out of
the pool once drained, and its launcher stops it (SGLang itself would still accept requests
during a SIGTERM drain).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import aiohttp

from disagg.instances import Pool, Role

DRAIN_TIMEOUT_S = 120.0
POLL_S = 0.2


CALL_TIMEOUT = aiohttp.ClientTimeout(total=10)  # NOTE: a silent instance must not block a drain


async def _idle(session: aiohttp.ClientSession, url: str) -> bool:
    async with session.get(f"{url}/v1/loads?include=core,disagg", timeout=CALL_TIMEOUT) as r:
        loads = (await r.json())["loads"]
    busy = 0
    for x in loads:
        busy += int(x.get("num_running_reqs") or 0) + int(x.get("num_waiting_reqs") or 0)
        disagg = x.get("disaggregation") or {}
        busy += sum(int(v or 0) for k, v in disagg.items() if k.endswith("_queue_reqs"))
    return busy == 0


async def drain(
    session: aiohttp.ClientSession, pool: Pool, url: str, timeout_s: float = DRAIN_TIMEOUT_S
) -> float | None:
    """Wait until the dispatcher's requests at ``url`` finished and SGLang reports it idle
    (the caller stopped routing to it first). Seconds it took, or None on timeout."""
    t0 = time.monotonic()
    while pool.in_flight.get(url, 0) > 0 or not await _idle(session, url):
        if time.monotonic() - t0 > timeout_s:
            return None
        await asyncio.sleep(POLL_S)
    return time.monotonic() - t0


async def retire(
    session: aiohttp.ClientSession, pool: Pool, url: str, timeout_s: float = DRAIN_TIMEOUT_S
) -> dict[str, Any]:
    """Scale-in: stop routing to ``url`` and wait until it drained; then whoever launched it
    may stop it. On timeout it is routed to again (nothing is dropped either way)."""
    if _last_of_its_role(pool, url):
        return {"success": False, "message": f"{url} is the last instance of its role"}
    old = pool.remove(url)
    try:
        took = await drain(session, pool, url, timeout_s)
    except Exception as e:  # NOTE: any failure: routed to again, nothing dropped
        pool.add(old)
        return {"success": False, "message": f"drain failed: {e}"}
    if took is None:
        pool.add(old)
        return {"success": False, "message": f"not drained in {timeout_s:.0f} s"}
    return {"success": True, "message": f"{url} drained and out of the pool", "drain_s": took}


async def switch_role(
    session: aiohttp.ClientSession,
    pool: Pool,
    url: str,
    new_role: Role,
    bootstrap_port: int | None = None,
    drain_timeout_s: float = DRAIN_TIMEOUT_S,
) -> dict[str, Any]:
    """Drain ``url`` from ``pool``, switch it to ``new_role``, route to it again. Returns a
    report (``success``, ``message``, ``drain_s``, ``switch_s``); the instance is back in the
    pool either way (in its old role when the switch did not happen)."""
    if new_role not in ("prefill", "decode"):
        return {"success": False, "message": f"new_role must be prefill or decode: {new_role!r}"}
    if _last_of_its_role(pool, url):
        return {"success": False, "message": f"{url} is the last instance of its role"}
    old = pool.remove(url)
    port = bootstrap_port if bootstrap_port is not None else old.bootstrap_port
    if new_role == "prefill" and port is None:
        pool.add(old)
        return {"success": False, "message": "a prefill instance needs its bootstrap_port"}
    t0 = time.monotonic()
    deadline = t0 + drain_timeout_s
    try:
        took = await drain(session, pool, url, drain_timeout_s)
        if took is None:
            pool.add(old)
            return {"success": False, "message": f"not drained in {drain_timeout_s:.0f} s"}
        drain_s = took
        # NOTE: no decode graphs on CPU (or when not capturing); SGLang requires the field
        body = {"new_role": new_role, "decode_cuda_graph_memory_gb": 0}
        while True:
            post = session.post(f"{url}/pd_role_switch", json=body, timeout=CALL_TIMEOUT)
            async with post as r:
                out = await r.json(content_type=None)
            if not isinstance(out, dict):
                raise ValueError(f"unexpected answer {out!r}")
            not_idle = "not idle" in str(out.get("message"))
            if out.get("success") or not not_idle or time.monotonic() > deadline:
                break
            await asyncio.sleep(POLL_S)  # NOTE: a request slipped in before routing stopped
    except Exception as e:  # NOTE: any failure before the switch: back in its old role
        pool.add(old)
        return {"success": False, "message": f"switch failed: {e}"}
    if not out.get("success"):
        message = str(out.get("message"))
        if not out.get("safe_to_restore"):
            # NOTE: SGLang says the instance is unhealthy (restart required): not routed to
            return {"success": False, "message": message, "unhealthy": True}
        pool.add(old)
        return {"success": False, "message": message, "drain_s": drain_s}
    pool.add(replace(old, role=new_role, bootstrap_port=port))
    return {
        "success": True,
        "message": f"{url}: {old.role} -> {new_role}",
        "drain_s": drain_s,
        "switch_s": time.monotonic() - t0 - drain_s,
    }


def _last_of_its_role(pool: Pool, url: str) -> bool:
    role = next(i.role for i in pool.instances if i.url == url)
    return len(pool.of(role)) == 1
