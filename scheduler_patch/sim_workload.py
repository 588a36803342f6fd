"""Workloads for the simulator and the SLO benchmarks: requests with SLO classes, Poisson arrivals.

Pure code (seeded ``random``): the same seed gives the same requests.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from scheduler_patch.latency_model import LatencyModel
from scheduler_patch.slo import Slo


@dataclass(frozen=True)
class SimRequest:
    """A request of the workload; it generates exactly ``output_tokens`` tokens."""

    rid: str
    arrival: float
    prompt_tokens: int
    output_tokens: int
    slo: Slo

    @property
    def reserve(self) -> int:
        """KV held from admission to finish (SGLang reserves prompt + max_new_tokens)."""
        return self.prompt_tokens + self.output_tokens


@dataclass(frozen=True)
class WorkloadClass:
    """One SLO class of a workload: share of arrivals, targets and (inclusive) length ranges."""

    name: str
    share: float
    ttft_s: float | None
    tpot_s: float | None
    priority: int
    prompt_tokens: tuple[int, int]
    output_tokens: tuple[int, int]


# NOTE: sized for reference_model(); interactive TTFT/TPOT are tight, batch has no targets.
DEFAULT_CLASSES = (
    WorkloadClass("interactive", 0.3, 0.5, 0.15, 2, (50, 300), (10, 60)),
    WorkloadClass("standard", 0.4, 2.0, 0.2, 1, (200, 1000), (20, 150)),
    WorkloadClass("batch", 0.3, None, None, 0, (500, 2000), (50, 300)),
)


def reference_model() -> LatencyModel:
    """A made-up mid-size model on one GPU (~4k prefill tokens/s): the tests' "truth"."""
    return LatencyModel(prefill_coef=[0.01, 0.25, 0.02], decode_coef=[0.01, 0.001, 0.002])


def poisson_workload(
    qps: float, duration_s: float, classes: Sequence[WorkloadClass] = DEFAULT_CLASSES, seed: int = 0
) -> list[SimRequest]:
    """Poisson arrivals at ``qps`` over ``duration_s``: class by share, lengths uniform."""
    rng = random.Random(seed)
    slos = [Slo(c.ttft_s, c.tpot_s, c.name, c.priority) for c in classes]
    out: list[SimRequest] = []
    t = rng.expovariate(qps)
    while t < duration_s:
        [k] = rng.choices(range(len(classes)), weights=[c.share for c in classes])
        c = classes[k]
        prompt, output = rng.randint(*c.prompt_tokens), rng.randint(*c.output_tokens)
        out.append(SimRequest(f"r{len(out):06d}", t, prompt, output, slos[k]))
        t += rng.expovariate(qps)
    return out
