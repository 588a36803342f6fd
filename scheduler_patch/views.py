"""What a scheduling policy sees and answers: plain values, no SGLang, no clock.

``ReqView`` / ``EngineView`` are built per step by the SGLang adapter
(``mepic_sglang/sglang/slo_adapter.py``) or the simulator; ``Verdict`` answers an arrival;
``StepPlan`` is a policy's whole decision for one prefill step (queue order, prefill budget, and
the queue facts the budget used).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from scheduler_patch.slo import Slo

Action = Literal["admit", "best-effort", "reject"]
UNATTAINABLE_ACTIONS = ("best-effort", "reject")


@dataclass(frozen=True)
class ReqView:
    """A request as a policy sees it (times in seconds on the engine's clock)."""

    rid: str
    arrival: float
    prompt_tokens: int
    cached_tokens: int  # prompt tokens already in the cache (waiting: matched prefix)
    output_tokens: int  # generated so far (a retracted request re-prefills them)
    max_new_tokens: int
    slo: Slo
    first_token_at: float | None = None
    best_effort: bool = False  # demoted at arrival: its SLO cannot be met

    @property
    def priority(self) -> int:
        return self.slo.priority

    @property
    def prefill_tokens(self) -> int:
        """Tokens a (re-)admission computes."""
        return max(self.prompt_tokens + self.output_tokens - self.cached_tokens, 1)

    @property
    def kv_tokens(self) -> int:
        """KV tokens the request holds while running."""
        return self.prompt_tokens + self.output_tokens

    def deadline(self) -> float | None:
        """When the next token is due: the first token by ``arrival + TTFT``; for a request
        that already has tokens (retracted), the next one keeps its average TPOT on target."""
        if self.first_token_at is None:
            return None if self.slo.ttft_s is None else self.arrival + self.slo.ttft_s
        if self.slo.tpot_s is None:
            return None
        return self.first_token_at + self.slo.tpot_s * self.output_tokens


@dataclass(frozen=True)
class EngineView:
    """The engine at one scheduling step."""

    now: float
    waiting: Sequence[ReqView]
    running: Sequence[ReqView]
    free_kv_tokens: int
    max_prefill_tokens: int  # most tokens one prefill step may compute


class Verdict(NamedTuple):
    action: Action
    reason: str = ""


ADMIT = Verdict("admit")


@dataclass(frozen=True)
class QueueHead:
    """Facts of the waiting queue that bound the next prefill step."""

    top_priority: float = -math.inf  # most important waiting request (best-effort ones aside)
    first_due: float = math.inf  # earliest next-token deadline among them
    first_tokens: int = 0  # prefill tokens of the request with that deadline


@dataclass(frozen=True)
class StepPlan:
    """One prefill step's decision: admit in ``order``, computing at most ``budget`` new tokens
    (None: no limit of the policy's own; 0: decode this step)."""

    order: list[str]
    budget: int | None
    head: QueueHead | None = None  # the queue facts the budget used (policies that need them)
