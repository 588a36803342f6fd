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
from typing import ClassVar, Literal, NamedTuple
from urllib.parse import urlsplit

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


POLICIES: dict[str, type[DispatchPolicy]] = {p.name: p for p in (RoundRobin, LeastLoaded)}


@dataclass
class Pool:
    """The instances of each role and their in-flight counts (one dispatcher process)."""

    instances: list[Instance]
    policy: DispatchPolicy = field(default_factory=LeastLoaded)
    in_flight: dict[str, int] = field(default_factory=dict)

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

    def of(self, role: Role) -> list[Instance]:
        return [i for i in self.instances if i.role == role]

    @property
    def disaggregated(self) -> bool:
        return bool(self.of("prefill"))

    def choose(self, role: Role) -> Instance:
        members = self.of(role)
        if not members:
            raise LookupError(f"no {role} instance")
        loads = [InstanceLoad(k, self.in_flight[m.url]) for k, m in enumerate(members)]
        return members[self.policy.pick(role, loads)]

    def route(self) -> tuple[Instance, ...]:
        """Where the next request goes: ``(prefill, decode)`` or ``(collocated,)``."""
        if self.disaggregated:
            return self.choose("prefill"), self.choose("decode")
        return (self.choose("collocated"),)

    def begin(self, targets: Sequence[Instance]) -> None:
        for t in targets:
            self.in_flight[t.url] += 1

    def end(self, targets: Sequence[Instance]) -> None:
        for t in targets:
            self.in_flight[t.url] -= 1

    def check_integrity(self) -> None:
        """Raise AssertionError when a count went negative or names an unknown instance."""
        known = {i.url for i in self.instances}
        if set(self.in_flight) != known:
            raise AssertionError("in-flight counts for unknown instances")
        if any(n < 0 for n in self.in_flight.values()):
            raise AssertionError(f"negative in-flight count: {self.in_flight}")
