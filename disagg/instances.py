"""The instances a dispatcher routes to, and the pluggable policy that picks one (ABC + registry).

An instance is a running SGLang server in one role: ``prefill`` or ``decode`` (P/D
disaggregation; a prefill instance also names its ``--disaggregation-bootstrap-port``, which
the decode side dials to pull the KV), or ``collocated`` (a plain server). A request goes to one
collocated instance, or to one prefill AND one decode instance (a pair).

Pure code: no HTTP here. The dispatcher counts each instance's in-flight requests; policies see
only :class:`InstanceLoad` rows.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple
from urllib.parse import urlsplit

from scheduler_patch.latency_model import LatencyModel

Role = Literal["prefill", "decode", "collocated"]
ROLES: tuple[Role, ...] = ("prefill", "decode", "collocated")


@dataclass(frozen=True)
class Instance:
    """One SGLang server: base URL (``http://host:port``), role, and for a prefill instance its
    bootstrap port."""

    url: str
    role: Role
    bootstrap_port: int | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
            raise ValueError(f"instance URL must be http(s)://HOST:PORT, got {self.url!r}")
        if self.role not in ROLES:
            raise ValueError(f"instance role must be one of {ROLES}, got {self.role!r}")
        if self.role == "prefill" and self.bootstrap_port is None:
            raise ValueError(f"prefill instance {self.url} needs its bootstrap port")

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @staticmethod
    def parse(spec: str, role: Role) -> Instance:
        """``http://HOST:PORT`` (decode/collocated) or ``http://HOST:PORT,BOOTSTRAP_PORT``
        (prefill), as given on the dispatcher's command line."""
        url, _, bootstrap = spec.partition(",")
        if role == "prefill" and not bootstrap:
            raise ValueError(f"--prefill {spec!r}: expected URL,BOOTSTRAP_PORT")
        if bootstrap and role != "prefill":
            raise ValueError(f"--{role} {spec!r}: only prefill instances take a bootstrap port")
        try:
            port = int(bootstrap) if bootstrap else None
        except ValueError:
            raise ValueError(f"--{role} {spec!r}: bootstrap port must be an integer") from None
        return Instance(url.rstrip("/"), role, port)


class InstanceLoad(NamedTuple):
    """What a policy sees of one candidate."""

    slot: int  # position in the pool's list for that role
    in_flight: int  # requests the dispatcher sent there that have not finished
    predicted_s: float | None = None  # see InstanceStats.predicted_s


@dataclass
class InstanceStats:
    """What the dispatcher knows of an instance's queue: its last load snapshot (``/v1/loads``)
    and latency model (``/server_info``, instances with ``--schedule-policy multi-slo``), plus
    what it sent there since that snapshot."""

    model: LatencyModel | None = None
    waiting_tokens: int = 0  # uncached prompt tokens queued (snapshot)
    running: int = 0  # requests running and queued (snapshot)
    used_tokens: int = 0  # KV tokens in use (snapshot)
    sent_tokens: int = 0  # prompt tokens sent since the snapshot
    sent_requests: int = 0

    def predicted_s(self, role: Role) -> float | None:
        """Prefill/collocated: seconds until a new prompt's prefill could start (the queued
        prompt tokens, NOTE: attention term left out: queued prompts are separate requests).
        Decode: the decode step time a new request would see. None without a model."""
        m = self.model
        if m is None:
            return None
        if role == "decode":
            if not m.calibrated("decode"):
                return None
            bs = self.running + self.sent_requests + 1
            return m.decode(bs, self.used_tokens + self.sent_tokens)
        if not m.calibrated("prefill"):
            return None
        queued = self.waiting_tokens + self.sent_tokens
        return m.prefill(queued, 0.0) if queued else 0.0


class DispatchPolicy(ABC):
    """Picks one instance of a role for a request. Subclasses register in :data:`POLICIES`."""

    name: ClassVar[str]

    @abstractmethod
    def pick(self, role: Role, candidates: Sequence[InstanceLoad]) -> int:
        """The ``slot`` of the chosen candidate (``candidates`` is never empty)."""


class RoundRobin(DispatchPolicy):
    name = "round-robin"

    def __init__(self) -> None:
        self._next = {role: itertools.count() for role in ROLES}

    def pick(self, role: Role, candidates: Sequence[InstanceLoad]) -> int:
        return candidates[next(self._next[role]) % len(candidates)].slot


class LeastLoaded(DispatchPolicy):
    """Fewest requests in flight (ties: the first listed)."""

    name = "least-loaded"

    def pick(self, role: Role, candidates: Sequence[InstanceLoad]) -> int:
        return min(candidates, key=lambda c: (c.in_flight, c.slot)).slot


class SloAware(DispatchPolicy):
    """Least predicted time (prefill: queue wait; decode: step time, i.e. TPOT) from each
    instance's latency model and load; instances without a prediction come last, then fewest
    in flight."""

    name = "slo"

    def pick(self, role: Role, candidates: Sequence[InstanceLoad]) -> int:
        def key(c: InstanceLoad) -> tuple[bool, float, int, int]:
            p = c.predicted_s
            return (p is None, 0.0 if p is None else p, c.in_flight, c.slot)

        return min(candidates, key=key).slot


POLICIES: dict[str, type[DispatchPolicy]] = {p.name: p for p in (RoundRobin, LeastLoaded, SloAware)}


@dataclass
class Pool:
    """The instances of each role and their in-flight counts (one dispatcher process)."""

    instances: list[Instance]
    policy: DispatchPolicy = field(default_factory=LeastLoaded)
    in_flight: dict[str, int] = field(default_factory=dict)
    stats: dict[str, InstanceStats] = field(default_factory=dict)
    served: dict[str, int] = field(default_factory=dict)  # requests sent there, ever

    def __post_init__(self) -> None:
        urls = [i.url for i in self.instances]
        if len(set(urls)) != len(urls):
            raise ValueError("an instance is listed twice")
        if not self.instances:
            raise ValueError("no instances: give --collocated, or --prefill and --decode")
        if bool(self.of("prefill")) != bool(self.of("decode")):
            raise ValueError("P/D needs at least one --prefill AND one --decode instance")
        if self.of("prefill") and self.of("collocated"):
            raise ValueError("a dispatcher serves either P/D pairs or collocated instances")
        for i in self.instances:
            self.in_flight.setdefault(i.url, 0)
            self.stats.setdefault(i.url, InstanceStats())

    def add(self, instance: Instance) -> None:
        """Route to ``instance`` from now on (its counts start at 0)."""
        if any(i.url == instance.url for i in self.instances):
            raise ValueError(f"{instance.url} is already in the pool")
        pd = instance.role != "collocated"
        if self.instances and pd != any(i.role != "collocated" for i in self.instances):
            raise ValueError("a dispatcher serves either P/D pairs or collocated instances")
        port = instance.bootstrap_port
        if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
            raise ValueError(f"bootstrap_port must be a port number, got {port!r}")
        self.instances.append(instance)
        self.in_flight.setdefault(instance.url, 0)
        self.stats[instance.url] = InstanceStats()

    def remove(self, url: str) -> Instance:
        """Stop routing to ``url``; requests already there finish (``in_flight`` keeps them)."""
        for k, i in enumerate(self.instances):
            if i.url == url:
                return self.instances.pop(k)
        raise LookupError(f"{url} is not in the pool")

    def of(self, role: Role) -> list[Instance]:
        return [i for i in self.instances if i.role == role]

    @property
    def disaggregated(self) -> bool:
        return bool(self.of("prefill"))

    def choose(self, role: Role) -> Instance:
        members = self.of(role)
        if not members:
            raise LookupError(f"no {role} instance")
        loads = [
            InstanceLoad(k, self.in_flight[m.url], self.stats[m.url].predicted_s(role))
            for k, m in enumerate(members)
        ]
        return members[self.policy.pick(role, loads)]

    def route(self, tokens: int = 0) -> tuple[Instance, ...]:
        """Where the next request (``tokens``: its prompt, estimated) goes: ``(prefill,
        decode)`` or ``(collocated,)``; counted as sent there until the next snapshot."""
        if self.disaggregated:
            targets: tuple[Instance, ...] = (self.choose("prefill"), self.choose("decode"))
        else:
            targets = (self.choose("collocated"),)
        for t in targets:
            self.stats[t.url].sent_tokens += tokens
            self.stats[t.url].sent_requests += 1
        return targets

    def update(self, url: str, snapshot: dict[str, Any], model: LatencyModel | None = None) -> None:
        """A fresh load snapshot (``/v1/loads`` core fields) and, if read, latency model."""
        st = self.stats[url]
        st.waiting_tokens = int(snapshot.get("num_waiting_uncached_tokens") or 0)
        st.running = int(snapshot.get("num_running_reqs") or 0) + int(
            snapshot.get("num_waiting_reqs") or 0
        )
        st.used_tokens = int(snapshot.get("num_used_tokens") or 0)
        st.sent_tokens = st.sent_requests = 0
        if model is not None:
            st.model = model

    def begin(self, targets: Sequence[Instance]) -> None:
        for t in targets:
            self.in_flight[t.url] += 1
            self.served[t.url] = self.served.get(t.url, 0) + 1

    def end(self, targets: Sequence[Instance]) -> None:
        for t in targets:
            self.in_flight[t.url] -= 1

    def check_integrity(self) -> None:
        """Raise AssertionError when a count went negative or names an unknown instance."""
        known = {i.url for i in self.instances}
        if not known <= set(self.in_flight):
            raise AssertionError("an instance without an in-flight count")
        if any(n < 0 for n in self.in_flight.values()):
            raise AssertionError(f"negative in-flight count: {self.in_flight}")
