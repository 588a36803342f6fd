"""Load and latency-model polling for the dispatcher's SLO-aware choice (``--policy slo``).

Every ``interval`` seconds the dispatcher reads each instance's ``/v1/loads`` (SGLang's load
snapshot: queued uncached prompt tokens, running and waiting requests, KV in use) and, every
``MODEL_EVERY`` polls (``MISSING_EVERY`` until it has one), its latency model from
``/server_info`` (instances started with
``--schedule-policy multi-slo`` fit one online). NOTE: SGLang publishes the snapshot every 15
scheduler steps by default, so the dispatcher also counts what it sent since the last poll.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

from disagg import server_info
from disagg.instances import Instance, Pool
from scheduler_patch.latency_model import LatencyModel

logger = logging.getLogger(__name__)
CHARS_PER_TOKEN = 4  # text prompts are not tokenized here: a rough count is enough to rank
MODEL_EVERY = 10  # polls between latency-model reads (it changes slowly)
MISSING_EVERY = 2  # ... while an instance has not fitted one yet


def prompt_tokens(body: dict[str, Any]) -> int:
    """A request's prompt size in tokens (exact for ``input_ids``, estimated for text)."""
    ids = body.get("input_ids")
    if isinstance(ids, list):
        return sum(len(x) for x in ids) if ids and isinstance(ids[0], list) else len(ids)
    text: Any = body.get("text", body.get("prompt"))
    if text is None and isinstance(body.get("messages"), list):
        text = [m.get("content") for m in body["messages"] if isinstance(m, dict)]
    parts = text if isinstance(text, list) else [text]
    return sum(len(p) for p in parts if isinstance(p, str)) // CHARS_PER_TOKEN


def model_of(info: dict[str, Any]) -> LatencyModel | None:
    """The latency model in a multi-slo instance's ``/server_info`` (None otherwise)."""
    try:
        return server_info.latency_model(server_info.plugin_section(info))
    except server_info.ServerInfoError:
        return None


async def _get(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
        r.raise_for_status()
        return await r.json()


async def poll_once(session: aiohttp.ClientSession, pool: Pool, poll: int = 0) -> None:
    """One round over the pool (``poll``: its number; the latency model is read every
    ``MODEL_EVERY`` rounds, or every ``MISSING_EVERY`` while an instance has none yet)."""

    async def one(i: Instance) -> None:
        missing = pool.stats[i.url].model is None
        with_model = poll % MODEL_EVERY == 0 or (missing and poll % MISSING_EVERY == 0)
        try:
            loads = (await _get(session, f"{i.url}/v1/loads?include=core"))["loads"]
            snapshot = {
                k: sum(int(x.get(k) or 0) for x in loads)
                for k in ("num_waiting_uncached_tokens", "num_running_reqs", "num_waiting_reqs",
                          "num_used_tokens")
            }  # fmt: skip
            model = model_of(await _get(session, f"{i.url}/server_info")) if with_model else None
        except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as e:
            logger.debug("dispatcher: poll of %s failed: %s", i.url, e)
            return
        pool.update(i.url, snapshot, model)

    await asyncio.gather(*(one(i) for i in pool.instances))


async def poll_forever(session: aiohttp.ClientSession, pool: Pool, interval: float = 0.5) -> None:
    n = 0
    while True:
        try:
            await poll_once(session, pool, n)
        except Exception:  # NOTE: a bad answer must not end the polling for good
            logger.warning("dispatcher: poll %d failed", n, exc_info=True)
        n += 1
        await asyncio.sleep(interval)
