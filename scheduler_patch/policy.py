"""Scheduling policies over plain views of the engine (ABC + registry): fcfs, priority, multi-slo.

The same policy objects drive the real SGLang scheduler (through
:mod:`mepic_sglang.sglang.slo_adapter`) and the simulator (:mod:`scheduler_patch.simulator`); they
see only :class:`ReqView` / :class:`EngineView` and the :class:`LatencyModel`, never SGLang
objects, and never read a clock (``now`` is passed in). Decisions per scheduling step:

| call             | when                             | answers                                |
|------------------|----------------------------------|----------------------------------------|
| on_arrival       | a request enters the queue       | admit / best-effort / reject (+ why)   |
| plan_step        | before each prefill admission    | a StepPlan: the waiting queue, most    |
|                  |                                  | urgent first (``order``), and the max  |
|                  |                                  | new prefill tokens (``prefill_budget``)|
| victims          | the head request cannot fit      | running requests to preempt for it     |
| decode_admission | P/D decode: before a new batch   | how many arrived requests may join     |

Priorities follow SGLang's default: a higher ``priority`` value is more important.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, TypeVar

from scheduler_patch.latency_model import LatencyModel
from scheduler_patch.views import (
    ADMIT,
    UNATTAINABLE_ACTIONS,
    Action,
    EngineView,
    QueueHead,
    ReqView,
    StepPlan,
    Verdict,
)

__all__ = [
    "ADMIT",
    "POLICIES",
    "UNATTAINABLE_ACTIONS",
    "Action",
    "EngineView",
    "FcfsPolicy",
    "PriorityPolicy",
    "QueueHead",
    "ReqView",
    "SchedulingPolicy",
    "StepPlan",
    "Verdict",
    "cover",
    "make_policy",
    "register",
]


POLICIES: dict[str, type[SchedulingPolicy]] = {}  # name -> class (see :func:`register`)
P = TypeVar("P", bound="SchedulingPolicy")


def register(cls: type[P]) -> type[P]:
    """Class decorator: make ``cls`` available as ``--schedule-policy cls.name``."""
    POLICIES[cls.name] = cls
    return cls


class SchedulingPolicy(ABC):
    """Orders, admits and preempts requests. Subclasses register in :data:`POLICIES`."""

    name: ClassVar[str]

    def __init__(self, model: LatencyModel, unattainable: Action = "best-effort") -> None:
        if unattainable not in UNATTAINABLE_ACTIONS:
            raise ValueError(f"unattainable action must be one of {UNATTAINABLE_ACTIONS}")
        self.model = model
        self.unattainable = unattainable

    def on_arrival(self, req: ReqView, engine: EngineView) -> Verdict:
        """Whether a new request is admitted to the queue (default: always)."""
        return ADMIT

    @abstractmethod
    def order(self, engine: EngineView) -> list[str]:
        """The rids of ``engine.waiting``, in the order they should be admitted."""

    def prefill_budget(self, engine: EngineView, head: QueueHead | None = None) -> int | None:
        """Most new tokens the next prefill step may compute (None: no limit of its own).
        ``head``: the queue facts of ``engine`` when the caller has them."""
        return None

    def plan_step(self, engine: EngineView) -> StepPlan:
        """The whole decision for one prefill step."""
        return StepPlan(self.order(engine), self.prefill_budget(engine))

    def victims(
        self, urgent: ReqView, need_tokens: int, engine: EngineView, need_slots: int = 0
    ) -> list[str]:
        """Running requests to preempt so that ``urgent`` gets ``need_tokens`` more KV tokens
        and ``need_slots`` request slots (empty: do not preempt)."""
        return []

    def decode_admission(self, engine: EngineView) -> int | None:
        """P/D decode stage: how many of ``engine.waiting`` (in queue order, their KV arrived)
        may join the running batch this step (None: no limit of its own)."""
        return None


@register
class FcfsPolicy(SchedulingPolicy):
    """First come, first served (SGLang's ``fcfs``)."""

    name = "fcfs"

    def order(self, engine: EngineView) -> list[str]:
        return [r.rid for r in sorted(engine.waiting, key=lambda r: r.arrival)]


@register
class PriorityPolicy(SchedulingPolicy):
    """SGLang's ``--enable-priority-scheduling`` on fcfs: priority, then arrival; a request
    preempts running ones more than ``threshold`` priority levels below it."""

    name = "priority"
    threshold = 10  # SGLang's --priority-scheduling-preemption-threshold default

    def order(self, engine: EngineView) -> list[str]:
        return [r.rid for r in sorted(engine.waiting, key=lambda r: (-r.priority, r.arrival))]

    def victims(
        self, urgent: ReqView, need_tokens: int, engine: EngineView, need_slots: int = 0
    ) -> list[str]:
        lower = [r for r in engine.running if urgent.priority - r.priority > self.threshold]
        order = sorted(lower, key=lambda r: (r.priority, -r.arrival))
        return cover(need_tokens, need_slots, order)


def cover(need_tokens: int, need_slots: int, candidates: Sequence[ReqView]) -> list[str]:
    """The shortest prefix of ``candidates`` that frees ``need_tokens`` KV tokens and
    ``need_slots`` slots (else none: preempting without making room only wastes work)."""
    out: list[str] = []
    freed = 0
    for r in candidates:
        if freed >= need_tokens and len(out) >= need_slots:
            break
        out.append(r.rid)
        freed += r.prompt_tokens + max(r.max_new_tokens, r.output_tokens)  # KV + reservation
    return out if freed >= need_tokens and len(out) >= need_slots else []


def make_policy(
    name: str, model: LatencyModel, unattainable: Action = "best-effort"
) -> SchedulingPolicy:
    cls = POLICIES.get(name)
    if cls is None:
        raise ValueError(f"unknown scheduling policy {name!r}; choose from {sorted(POLICIES)}")
    return cls(model, unattainable)
