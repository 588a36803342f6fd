"""The instances one host runs for a cluster: their ports and cores, processes, and cost.

:class:`PortPlan` gives each new instance its ports and (on CPU) a group of cores;
:class:`Fleet` starts instances through a :class:`~disagg.launcher.Launcher`, owns each process
from its start until it is stopped, and counts the cost in instance-seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from disagg.instances import Instance, Role
from disagg.launcher import Handle, InstanceSpec, Launcher
from disagg.weights import Started, start_instance


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
        NOTE: an instance started on a busy core starts slowly and slows the one serving there
        (measured: docs/pd.md, "Design decisions and what was tried")."""
        return self.plan.has_room()

    def instance_seconds(self) -> float:
        now = self.clock()
        with self._lock:
            lives = list(self._lifetimes.values())
        return sum((stop or now) - start for start, stop in lives if start)
