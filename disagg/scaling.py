"""Cost-aware scaling decisions for a P/D pool (pure: no clock reads, no HTTP).

Each role's **pressure** is its predicted latency over its SLO: a prefill instance's predicted
queue wait over the TTFT target, a decode instance's predicted step time over the TPOT target
(:class:`~disagg.instances.InstanceStats`). Pressure above 1 means new requests there are
predicted to miss. Per role and observation:

| state | condition (over the role's instances)                  | after ``sustain`` in a row      |
|-------|--------------------------------------------------------|---------------------------------|
| hot   | least pressure > ``high``: even the best one is slow   | switch a cold instance of the   |
|       |                                                        | other role here, else scale out |
| cold  | pressure x n / (n - 1) < ``low`` for the busiest: one  | scale in (never below ``min``)  |
|       | instance fewer would still be comfortable              |                                 |

Hysteresis: a state must hold ``sustain`` observations in a row, ``high`` > ``low`` leaves a
dead band, and no decision follows a change within ``cooldown_s``. Cost: a role switch costs no
new instance-seconds, so it is preferred over scaling out when the other role is cold; scale-in
returns instance-seconds as soon as the load allows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from disagg.instances import Role

Action = Literal["out", "in", "switch", "hold"]
PD_ROLES: tuple[Role, Role] = ("prefill", "decode")


@dataclass(frozen=True)
class ScalingConfig:
    ttft_s: float = 2.0  # prefill pressure = predicted queue wait / ttft_s
    tpot_s: float = 0.2  # decode pressure = predicted step time / tpot_s
    high: float = 0.8
    low: float = 0.3
    sustain: int = 3  # observations in a row before acting
    cooldown_s: float = 30.0  # after any change
    min_instances: int = 1  # per role
    max_instances: int = 8  # all roles together

    def __post_init__(self) -> None:
        if not 0 < self.low < self.high:
            raise ValueError(f"need 0 < low < high, got low={self.low}, high={self.high}")
        if self.sustain < 1 or self.min_instances < 1 or self.max_instances < 2:
            raise ValueError("sustain and min_instances must be >= 1, max_instances >= 2")


class Decision(NamedTuple):
    action: Action
    role: Role | None = None  # out/in: the role; switch: the role that gains an instance
    reason: str = ""


HOLD = Decision("hold")


@dataclass
class ScalingPolicy:
    """Turns per-role predictions into decisions, one observation at a time."""

    config: ScalingConfig = field(default_factory=ScalingConfig)
    _streak: dict[str, tuple[str, int]] = field(default_factory=dict)  # role -> (state, count)
    _last_change: float = float("-inf")

    def pressure(self, role: Role, predicted: Sequence[float | None]) -> list[float]:
        target = self.config.ttft_s if role == "prefill" else self.config.tpot_s
        return [p / target for p in predicted if p is not None]

    def state(self, role: Role, predicted: Sequence[float | None]) -> str:
        """hot / cold / ok for one role (ok when nothing is known)."""
        p = self.pressure(role, predicted)
        if not p:
            return "ok"
        if min(p) > self.config.high:
            return "hot"
        n = len(predicted)
        if n > self.config.min_instances and max(p) * n / (n - 1) < self.config.low:
            return "cold"
        return "ok"

    def observe(
        self,
        now: float,
        predicted: Mapping[Role, Sequence[float | None]],
        can_grow: bool = True,
    ) -> Decision:
        """One observation: each P/D role's predicted seconds per instance (None: unknown).
        ``can_grow``: the hosts have room for one more instance (else only switches)."""
        states = {role: self.state(role, predicted.get(role, ())) for role in PD_ROLES}
        for role, st in states.items():
            prev, count = self._streak.get(role, ("ok", 0))
            self._streak[role] = (st, count + 1 if st == prev else 1)
        if now - self._last_change < self.config.cooldown_s:
            return HOLD
        sustained = {
            role: st
            for role, st in states.items()
            if st != "ok" and self._streak[role][1] >= self.config.sustain
        }
        total = sum(len(predicted.get(role, ())) for role in PD_ROLES)
        for role in PD_ROLES:
            if sustained.get(role) != "hot":
                continue
            other: Role = "decode" if role == "prefill" else "prefill"
            if states[other] == "cold":
                return self._change(now, Decision("switch", role, f"{role} hot, {other} cold"))
            if total < self.config.max_instances and can_grow:
                return self._change(now, Decision("out", role, f"{role} hot"))
        for role in PD_ROLES:
            if sustained.get(role) == "cold":
                return self._change(now, Decision("in", role, f"{role} cold"))
        return HOLD

    def changed(self, now: float) -> None:
        """The pool changed (a decision was acted on, or an operator scaled): start the
        cooldown and forget the streaks, which described the old pool."""
        self._last_change = now
        self._streak.clear()

    def _change(self, now: float, decision: Decision) -> Decision:
        self.changed(now)
        return decision
