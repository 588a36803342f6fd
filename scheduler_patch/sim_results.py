"""What a simulation produced: per-request outcomes, steps, and their summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from scheduler_patch.latency_model import ErrorStats, Kind


@dataclass(frozen=True)
class RequestResult:
    """How one request went (seconds; None where it does not apply)."""

    rid: str
    slo_class: str
    priority: int
    arrival: float
    tokens: int  # generated
    ttft: float | None
    tpot: float | None  # mean time between tokens after the first
    e2e: float | None
    met_ttft: bool
    met_tpot: bool
    met: bool  # finished, and every target it has was met
    rejected: bool
    best_effort: bool
    preemptions: int
    reason: str  # why it was rejected or demoted


class StepRecord(NamedTuple):
    """One step: its measured seconds and what the policy's model predicted beforehand."""

    start: float
    kind: Kind
    seconds: float
    predicted: float | None  # None: the model was not calibrated for this kind yet
    batch_size: int
    new_tokens: int


@dataclass(frozen=True)
class Summary:
    """Aggregate outcome of a run (see :meth:`SimResult.summary`)."""

    submitted: int
    rejected: int
    preemptions: int
    attainment: float  # met / submitted (rejected count as missed)
    per_class: dict[str, float]
    goodput: float  # met requests per second of span
    ttft_p50: float | None
    ttft_p99: float | None
    busy_s: float  # summed over instances
    span_s: float  # first arrival to last finish


@dataclass
class SimResult:
    """Per-request outcomes (by arrival), every step, and the policy model's error stats."""

    requests: list[RequestResult]
    steps: list[StepRecord]
    busy_s: float
    errors: dict[str, ErrorStats]  # the policy model's own error stats (summed over instances)

    def summary(self) -> Summary:
        reqs = self.requests
        ttfts = [r.ttft for r in reqs if r.ttft is not None]
        ends = [r.arrival + r.e2e for r in reqs if r.e2e is not None]
        span = max(ends, default=0.0) - min((r.arrival for r in reqs), default=0.0)
        met: dict[str, list[bool]] = {}
        for r in reqs:
            met.setdefault(r.slo_class, []).append(r.met)
        p50, p99 = (float(v) for v in np.percentile(ttfts, [50, 99])) if ttfts else (None, None)
        return Summary(
            submitted=len(reqs),
            rejected=sum(r.rejected for r in reqs),
            preemptions=sum(r.preemptions for r in reqs),
            attainment=sum(r.met for r in reqs) / max(len(reqs), 1),
            per_class={c: sum(v) / len(v) for c, v in sorted(met.items())},
            goodput=sum(r.met for r in reqs) / span if span > 0 else 0.0,
            ttft_p50=p50,
            ttft_p99=p99,
            busy_s=self.busy_s,
            span_s=span,
        )

    def step_mape(self, kind: Kind, start: int = 0, stop: int | None = None) -> float:
        """Mean |relative error| of predicted step times over ``kind`` steps ``[start:stop]``
        (counting only the steps the model was calibrated for)."""
        rows = [(s.predicted, s.seconds) for s in self.steps if s.kind == kind and s.predicted]
        errs = [abs(p - m) / m for p, m in rows[start:stop] if m > 0]
        return float(np.mean(errs)) if errs else float("nan")
