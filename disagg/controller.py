"""The scaling controller: :class:`~disagg.scaling.ScalingPolicy` decisions acted on a live pool.

Every ``interval`` seconds it reads each instance's prediction from the dispatcher's pool (the
poller keeps them fresh; ``--policy slo``), asks the policy, and acts:

| decision      | action                                                                      |
|---------------|-----------------------------------------------------------------------------|
| out(role)     | start one instance of ``role`` (weights from a running instance, D2D, when  |
|               | ``d2d``), wait until it serves, add it to the pool. Linking: the dispatcher |
|               | pairs a new prefill instance with every decode instance (decode learns its  |
|               | prefill peer from each request's bootstrap fields; SGLang keeps no links)   |
| in(role)      | retire the least busy instance of ``role`` (stop routing, drain), stop it   |
| switch(role)  | switch the least busy instance of the other role to ``role`` (drain first)  |

One action at a time (an operator's ``POST /cluster/scale`` waits for the controller's); the
policy's hysteresis and cooldown keep it from flapping. The controller scales out only when the
host has room (a free core group on CPU, :meth:`Fleet.has_room`); an operator's scale-out may
over-subscribe. Cost is counted as instance-seconds: from an instance's start until it stops.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import aiohttp

from disagg.fleet import Fleet, pool_instance
from disagg.instances import Instance, Pool, Role
from disagg.roles import retire, switch_role
from disagg.scaling import PD_ROLES, Decision, ScalingPolicy

logger = logging.getLogger(__name__)


class Event(NamedTuple):
    t: float  # seconds since the controller started
    action: str  # out / in / switch / start
    role: str
    url: str
    ok: bool
    seconds: float  # how long the action took
    detail: dict[str, Any]


@dataclass
class ScalingController:
    """Changes the pool the dispatcher routes to, with instances from ``fleet``."""

    pool: Pool
    session: aiohttp.ClientSession
    fleet: Fleet
    policy: ScalingPolicy = field(default_factory=ScalingPolicy)
    d2d: bool = True
    events: list[Event] = field(default_factory=list)
    _t0: float = field(init=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self._t0 = self.fleet.clock()

    # ------------------------------------------------------------------ decisions
    def predictions(self) -> dict[Role, list[float | None]]:
        return {
            role: [self.pool.stats[i.url].predicted_s(role) for i in self.pool.of(role)]
            for role in PD_ROLES
        }

    async def step(self) -> Decision:
        decision = self.policy.observe(
            self.fleet.clock(), self.predictions(), self.fleet.has_room()
        )
        if decision.action != "hold" and decision.role is not None:
            await self.act(decision)
        return decision

    async def run(self, interval_s: float = 1.0) -> None:
        while True:
            try:
                await self.step()
            except Exception:  # NOTE: a failed action is logged; the next observation goes on
                logger.warning("scaling controller: step failed", exc_info=True)
            await asyncio.sleep(interval_s)

    async def act(self, decision: Decision) -> Event:
        """Carry out one decision (the controller's or an operator's), one at a time."""
        async with self._lock:
            return await self._act(decision)

    async def _act(self, decision: Decision) -> Event:
        role = decision.role
        assert role is not None
        t0 = self.fleet.clock()
        url, ok = "", False
        detail: dict[str, Any] = {"reason": decision.reason}
        loop = asyncio.get_running_loop()
        other: Role = "decode" if role == "prefill" else "prefill"
        most = self.policy.config.max_instances
        if not self.pool.disaggregated:
            detail["error"] = "only a P/D pool scales (prefill and decode instances)"
        elif decision.action == "out" and len(self.pool.instances) >= most:
            detail["error"] = f"at the maximum of {most} instances"
        elif decision.action == "out":
            seed = self._least_busy(list(self.pool.instances)) if self.d2d else None
            try:
                started = await loop.run_in_executor(None, self.fleet.launch, role, seed)
                url = started.handle.spec.url
                self.pool.add(pool_instance(started.handle.spec))
            except Exception as e:
                detail["error"] = str(e)
                if url:  # NOTE: started but not routable: not kept running (and billed)
                    await loop.run_in_executor(None, self.fleet.stop, url)
            else:
                ok = True
                detail["ready_s"] = round(started.ready_s, 2)
                detail["weights"] = started.weights
                detail["relaunched"] = started.relaunched
                detail["seed"] = seed.url if seed else None
        elif not self.pool.of(role if decision.action == "in" else other):
            detail["error"] = f"no {role if decision.action == 'in' else other} instance"
        elif decision.action == "in":
            victim = self._least_busy(self.pool.of(role))
            url = victim.url
            report = await retire(self.session, self.pool, url)
            ok = bool(report["success"])
            detail |= report
            if ok:
                await loop.run_in_executor(None, self.fleet.stop, url)
        elif decision.action == "switch":
            victim = self._least_busy(self.pool.of(other))
            url = victim.url
            report = await switch_role(self.session, self.pool, url, role, victim.bootstrap_port)
            ok = bool(report["success"])
            detail |= report
            if report.get("unhealthy"):  # NOTE: out of the pool; SGLang says restart required
                await loop.run_in_executor(None, self.fleet.stop, url)
                detail["stopped"] = True
        if ok:
            self.policy.changed(self.fleet.clock())
        event = Event(round(t0 - self._t0, 2), decision.action, role, url, ok,
                      round(self.fleet.clock() - t0, 2), detail)  # fmt: skip
        self.events.append(event)
        logger.info("scaling controller: %s", event)
        return event

    def _least_busy(self, members: list[Instance]) -> Instance:
        return min(members, key=lambda i: (self.pool.in_flight.get(i.url, 0), i.url))

    def report(self) -> dict[str, Any]:
        return {
            "uptime_s": round(self.fleet.clock() - self._t0, 2),  # the clock of the events' t
            "instances": {i.url: i.role for i in self.pool.instances},
            "instance_seconds": round(self.fleet.instance_seconds(), 1),
            "launches": self.fleet.launches,
            "events": [e._asdict() for e in self.events],
        }
