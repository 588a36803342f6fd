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
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp

from disagg.instances import Instance, Pool, Role
from disagg.launcher import Handle, InstanceSpec, Launcher
from disagg.roles import retire, switch_role
from disagg.scaling import PD_ROLES, Decision, ScalingPolicy
from disagg.weights import Started, start_instance

logger = logging.getLogger(__name__)


@dataclass
class PortPlan:
    """Ports (and on CPU, cores) for the k-th instance on this host (stride 10 from ``base``):

    | offset | port                                          |
    |--------|-----------------------------------------------|
    | +0     | HTTP (--port)                                 |
    | +1     | --disaggregation-bootstrap-port               |
    | +2     | --nccl-port                                   |
    | +3     | --engine-info-bootstrap-port (weights seed)   |

    ``cores`` > 0 (CPU hosts): the host's usable ``cpus`` are cut into groups of ``cores``; a new
    instance takes a free group (``InstanceSpec.cpus``: affinity and thread count) and gives it
    back when it stops. With no group free it shares the least used one (over-subscribed).
    NOTE: unbound, every instance runs one thread per core on all cores, and several instances'
    spinning OpenMP threads starve each other (seen: P/D on 2 cores, decode steps of 1-3 s).
    """

    base: int
    stride: int = 10
    cores: int = 0
    cpus: tuple[int, ...] = ()
    _next: int = 0
    _use: dict[tuple[int, ...], int] = field(default_factory=dict)  # core group -> instances
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.cores > 0:
            groups = [self.cpus[i : i + self.cores] for i in range(0, len(self.cpus), self.cores)]
            self._use = {g: 0 for g in groups if len(g) == self.cores} or {self.cpus: 0}

    def spec(self, model: str, role: Role, extra_args: tuple[str, ...] = ()) -> InstanceSpec:
        with self._lock:  # NOTE: launches run on worker threads
            k = self._next
            self._next += 1
            cpus: tuple[int, ...] = ()
            if self._use:
                cpus = min(self._use, key=lambda g: self._use[g])  # a free group if any
                self._use[cpus] += 1
        port = self.base + self.stride * k
        pd = role != "collocated"
        return InstanceSpec(
            model, role, port, port + 1 if pd else None, port + 2,
            extra_args=extra_args, cpus=cpus, engine_info_port=port + 3,
        )  # fmt: skip

    def release(self, cpus: tuple[int, ...]) -> None:
        with self._lock:
            if self._use.get(cpus, 0) > 0:
                self._use[cpus] -= 1

    def has_room(self) -> bool:
        """A free core group (always true without core binding: the launcher decides)."""
        with self._lock:
            return not self._use or min(self._use.values()) == 0


class Event(NamedTuple):
    t: float  # seconds since the controller started
    action: str  # out / in / switch / start
    role: str
    url: str
    ok: bool
    seconds: float  # how long the action took
    detail: dict[str, Any]


def pool_instance(spec: InstanceSpec) -> Instance:
    """The pool row of a started instance (every P/D instance keeps its bootstrap port, so it
    can be switched to prefill later)."""
    return Instance(spec.url, spec.role, spec.bootstrap_port)


@dataclass
class Fleet:
    """The instances this host started (their handles) and what they cost (instance-seconds).

    An instance is owned from the moment its process starts (not only once it serves), so
    :meth:`stop_all` also stops launches still in progress."""

    launcher: Launcher
    plan: PortPlan
    model: str
    extra_args: tuple[str, ...]
    log_dir: Path
    ready_timeout_s: float = 600.0
    clock: Callable[[], float] = time.monotonic
    handles: dict[str, Handle] = field(default_factory=dict)
    launches: list[dict[str, Any]] = field(default_factory=list)  # one row per started instance
    closing: bool = False
    _lifetimes: dict[str, list[float | None]] = field(default_factory=dict)  # url -> [start, stop]
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def launch(self, role: Role, seed: Instance | None = None) -> Started:
        """Start one instance (blocking; from ``seed``'s weights when given) and own it."""
        spec = self.plan.spec(self.model, role, self.extra_args)
        if seed is not None:
            spec = replace(spec, weights_from=seed.url.split("//", 1)[1])
        with self._lock:
            self._lifetimes[spec.url] = [self.clock(), None]

        def own(handle: Handle) -> None:
            with self._lock:
                self.handles[spec.url] = handle
                closing = self.closing
            if closing:  # NOTE: started while the fleet stops: stop it too
                self.stop(spec.url)

        log = self.log_dir / f"{role}-{spec.port}.log"
        try:
            started = start_instance(self.launcher, spec, log, self.ready_timeout_s, on_start=own)
            if self.closing:
                raise RuntimeError("the fleet is stopping")
        except BaseException:
            self.stop(spec.url)
            self._end(spec)
            raise
        self.launches.append(
            {"url": spec.url, "role": role, "seed": spec.weights_from, "weights": started.weights,
             "ready_s": round(started.ready_s, 2), "relaunched": started.relaunched}
        )  # fmt: skip
        return started

    def stop(self, url: str) -> None:
        with self._lock:
            handle = self.handles.pop(url, None)
        if handle is not None:
            try:
                self.launcher.stop(handle)
            finally:
                self._end(handle.spec)

    def _end(self, spec: InstanceSpec) -> None:
        with self._lock:
            life = self._lifetimes.get(spec.url)
            if life is not None and life[1] is None:
                life[1] = self.clock()
                self.plan.release(spec.cpus)

    def stop_all(self) -> None:
        """Stop every instance, all at once (each drains what it holds), and any that a launch
        in progress starts from now on."""
        self.closing = True
        with self._lock:
            urls = list(self.handles)
        if urls:
            with ThreadPoolExecutor(len(urls)) as ex:
                list(ex.map(self.stop, urls))

    def has_room(self) -> bool:
        """Room for one more instance on this host (see :meth:`PortPlan.has_room`).
        NOTE: measured on 2 cores, an instance started on a busy core took 85 s to get ready
        (26 s idle) and slowed the one serving there: attainment 82.5% -> 50.8%."""
        return self.plan.has_room()

    def instance_seconds(self) -> float:
        now = self.clock()
        with self._lock:
            lives = list(self._lifetimes.values())
        return sum((stop or now) - start for start, stop in lives if start)


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
