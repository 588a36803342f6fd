"""SGLang's scheduler, seen and steered through a :class:`~scheduler_patch.policy.SchedulingPolicy`.

One :class:`SloScheduler` lives in each scheduler process (``scheduler_state(scheduler).slo``).
The hook functions in ``mepic_sglang/sglang/slo_hooks.py`` call it; it converts SGLang ``Req``
objects into :class:`ReqView` s, asks the pure policy, and applies the answer with SGLang's own
mechanics:

| SGLang step (0.5.23)                   | here            | effect                          |
|----------------------------------------|-----------------|---------------------------------|
| _add_request_to_queue (new request)    | on_enqueue      | 429 reject / best-effort mark   |
| get_new_batch_prefill(running_batch)   | before_prefill  | order, preempt, budget (or skip)|
| get_prefill_adder_class()(...)         | adder_class     | clamp the step's prefill tokens |
| run_batch(batch)                       | on_step         | step cadence -> latency model   |
| P/D decode: _get_new_prebuilt_batch    | before_prebuilt | order, hold back (TPOT guards)  |

Clock: wall seconds (``time.time()``), the clock the tokenizer stamps arrivals with
(``custom_params.slo_arrival``), so TTFT deadlines count from the HTTP request, not from the
scheduler's receipt.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from mepic_sglang.sglang.state import req_state
from scheduler_patch.latency_model import StepSample, attn_work
from scheduler_patch.policy import SchedulingPolicy
from scheduler_patch.slo import ARRIVAL_KEY, Slo, SloDefaults, SloError
from scheduler_patch.views import EngineView, ReqView, StepPlan, Verdict

logger = logging.getLogger(__name__)
CLIP_MAX_NEW_TOKENS = 4096  # SGLang's reservation cap per request (schedule_policy.py)
REJECT_STATUS = 429  # Too Many Requests: the server cannot meet the SLO now; retry later/elsewhere


@dataclass
class ReqSlo:
    """What the plugin keeps on an SGLang ``Req``."""

    slo: Slo
    arrival: float
    best_effort: bool = False
    first_token_at: float | None = None
    view: ReqView | None = None
    view_key: tuple[Any, ...] = ()


@dataclass
class Counters:
    arrivals: int = 0
    rejected: int = 0
    best_effort: int = 0
    reorders: int = 0
    deferred: int = 0  # steps that ran decodes instead of a prefill (TPOT protection)
    preempted: int = 0
    budget_clamps: int = 0
    held_decodes: int = 0  # P/D decode stage: request-steps held out of the running batch
    steps: dict[str, int] = field(default_factory=lambda: {"prefill": 0, "decode": 0})


class SloScheduler:
    """The multi-SLO runtime of one SGLang scheduler process."""

    def __init__(self, policy: SchedulingPolicy, defaults: SloDefaults) -> None:
        self.policy = policy
        self.defaults = defaults
        self.counters = Counters()
        self.step: StepPlan | None = None  # this step's plan, until the adder takes its budget
        self._adder_classes: dict[type, type] = {}
        self._last_step: tuple[StepSample, float] | None = None  # awaiting its cadence

    # ------------------------------------------------------------------ views
    def req_slo(self, req: Any, now: float) -> ReqSlo:
        """The request's :class:`ReqSlo`, created from its ``custom_params`` on first sight."""
        holder = req_state(req)
        state = holder.slo
        if state is None:
            custom = getattr(req.sampling_params, "custom_params", None) or {}
            try:
                slo = self.defaults.resolve(custom, req.priority)
            except SloError as e:  # NOTE: the tokenizer validated it; Engine-internal paths may not
                logger.warning("mepic-sglang: request %s: %s; no SLO applied", req.rid, e)
                slo = self.defaults.resolve({}, req.priority)
            arrival = custom.get(ARRIVAL_KEY)
            state = ReqSlo(slo, float(arrival) if isinstance(arrival, int | float) else now)
            holder.slo = state
        return state

    def req_view(self, req: Any, now: float) -> ReqView:
        state = self.req_slo(req, now)
        cached = int(getattr(req, "prefix_len", 0) or 0)
        key = (cached, len(req.output_ids), state.best_effort, state.first_token_at)
        if state.view is not None and state.view_key == key:
            return state.view  # NOTE: views are rebuilt only when the request changed
        state.view_key = key
        state.view = ReqView(
            rid=req.rid,
            arrival=state.arrival,
            prompt_tokens=len(req.origin_input_ids),
            cached_tokens=cached,
            output_tokens=key[1],
            max_new_tokens=int(req.sampling_params.max_new_tokens or 0),
            slo=state.slo,
            first_token_at=state.first_token_at,
            best_effort=state.best_effort,
        )
        return state.view

    def engine_view(
        self, scheduler: Any, now: float, waiting: list[Any] | None = None
    ) -> EngineView:
        free = int(scheduler.token_to_kv_pool_allocator.available_size()) + int(
            scheduler.tree_cache.evictable_size()
        )
        step_cap = scheduler.chunked_prefill_size or scheduler.max_prefill_tokens
        return EngineView(
            now=now,
            waiting=[
                self.req_view(r, now)
                for r in (scheduler.waiting_queue if waiting is None else waiting)
            ],
            running=[self.req_view(r, now) for r in scheduler.running_batch.reqs],
            free_kv_tokens=free,
            max_prefill_tokens=int(min(step_cap, scheduler.max_prefill_tokens)),
        )

    # ------------------------------------------------------------------ decisions
    def on_enqueue(self, scheduler: Any, req: Any) -> Verdict:
        """A new request reaches the queue: admit, mark best-effort, or say why it is refused."""
        now = time.time()
        state = self.req_slo(req, now)
        self.counters.arrivals += 1
        engine = self.engine_view(scheduler, now, [])  # NOTE: the verdict reads no queue
        verdict = self.policy.on_arrival(self.req_view(req, now), engine)
        if verdict.action != "admit":
            logger.info("mepic-sglang: request %s %s: %s", req.rid, verdict.action, verdict.reason)
        if verdict.action == "best-effort":
            state.best_effort = True
            self.counters.best_effort += 1
        elif verdict.action == "reject":
            self.counters.rejected += 1
        return verdict

    def before_prefill(self, scheduler: Any, running_batch: Any) -> bool:
        """Decide the step before SGLang's admission code runs: order the queue, preempt for the
        most urgent request if it cannot get a slot or its KV, and set the step's prefill
        budget. True: run no prefill this step (the budget is 0 while requests decode)."""
        waiting = scheduler.waiting_queue
        self.step = None
        if not waiting:
            return False
        now = time.time()
        engine = self.engine_view(scheduler, now, waiting)
        step = self.policy.plan_step(engine)
        order = step.order
        rank = {rid: i for i, rid in enumerate(order)}
        waiting.sort(key=lambda r: rank[r.rid])
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("mepic-sglang: queue order %s", order)
        self.counters.reorders += 1
        if scheduler.chunked_req is None and running_batch.reqs:
            head = next(v for v in engine.waiting if v.rid == order[0])
            if self._make_room(scheduler, running_batch, engine, head):
                # NOTE: the victims joined the queue: budget the step on the new view
                engine = self.engine_view(scheduler, now, waiting)
                step = dataclasses.replace(step, budget=self.policy.prefill_budget(engine))
        self.step = step
        skip = step.budget == 0 and bool(running_batch.reqs)
        self.counters.deferred += skip
        return skip

    def _make_room(
        self, scheduler: Any, running_batch: Any, engine: EngineView, head: ReqView
    ) -> bool:
        """Preempt (retract) the running requests the policy names when ``head`` cannot get a
        slot or its KV. True when some were preempted."""
        slots_short = scheduler.req_to_token_pool.available_size() <= 0
        ratio = float(scheduler.new_token_ratio_tracker.current)
        reserved = sum(_reserve(r, ratio) for r in running_batch.reqs)
        need = head.prefill_tokens + min(head.max_new_tokens, CLIP_MAX_NEW_TOKENS)
        deficit = math.ceil(need - (engine.free_kv_tokens - reserved))
        if not slots_short and deficit <= 0:
            return False
        rids = set(self.policy.victims(head, max(deficit, 0), engine, int(slots_short)))
        victims = retract(scheduler, running_batch, rids)
        if victims:
            self.counters.preempted += len(victims)
            logger.info(
                "mepic-sglang: preempted %s for %s (%s)",
                [r.rid for r in victims],
                head.rid,
                "slots" if slots_short else f"{deficit} KV tokens short",
            )
        return bool(victims)

    def before_prebuilt(self, scheduler: Any) -> list[Any]:
        """P/D decode stage, before SGLang turns arrived requests into a batch: order the queue
        and hold back the ones the policy does not admit this step (returned; the caller puts
        them back behind what SGLang leaves in the queue)."""
        waiting = scheduler.waiting_queue
        if not waiting:
            return []
        engine = self.engine_view(scheduler, time.time(), waiting)
        order = self.policy.order(engine)
        rank = {rid: i for i, rid in enumerate(order)}
        waiting.sort(key=lambda r: rank[r.rid])
        self.counters.reorders += 1
        # NOTE: the same view with the queue in its new order (views are per request)
        ordered = sorted(engine.waiting, key=lambda v: rank[v.rid])
        cap = self.policy.decode_admission(dataclasses.replace(engine, waiting=ordered))
        if cap is None or cap >= len(waiting):
            return []
        held = waiting[cap:]
        del waiting[cap:]
        self.counters.held_decodes += len(held)
        return held

    def stamp_first_tokens(self, reqs: Any) -> None:
        """Requests whose first token the client receives now (decode stage: joining a batch)."""
        now = time.time()
        for req in reqs:
            state = self.req_slo(req, now)
            if state.first_token_at is None:
                state.first_token_at = now

    def take_budget(self) -> int | None:
        """The prefill budget of this step's plan (once: the adder of this step takes it)."""
        step, self.step = self.step, None
        budget = None if step is None else step.budget
        if budget is not None:
            self.counters.budget_clamps += 1
        return budget

    def adder_class(self, base: type) -> type:
        """A subclass of SGLang's ``PrefillAdder`` that clamps the step to the policy's budget."""
        cls = self._adder_classes.get(base)
        if cls is None:
            runtime = self

            class SloPrefillAdder(base):
                def __init__(self, *args: Any, **kwargs: Any) -> None:
                    super().__init__(*args, **kwargs)
                    budget = runtime.take_budget()
                    if budget is not None:
                        clamp(self, budget)

            cls = self._adder_classes[base] = SloPrefillAdder
        return cls

    # ------------------------------------------------------------------ measurement
    def on_step(self, batch: Any, start: float, seconds: float, chunked_req: Any = None) -> None:
        """SGLang ran ``batch`` (``run_batch`` began at ``start``, ``perf_counter`` seconds, and
        took ``seconds``): stamp first tokens, and teach the model the PREVIOUS step's time.

        NOTE: a step's time is the cadence from its ``run_batch`` to the next one: the forward
        plus result processing, detokenizer hand-off and the next scheduling decision; timing
        ``run_batch`` alone made the policy spend slack it did not have (measured:
        docs/slo.md, "Design decisions and what was tried"). On CUDA with the overlap loop
        ``run_batch`` only launches work, and the cadence is again the step time. A step the
        scheduler idled after has no cadence: its ``run_batch`` time is used.
        """
        sample = self._sample(batch, seconds)
        if sample is not None and sample.kind == "prefill":
            self.stamp_first_tokens(r for r in batch.reqs if r is not chunked_req)
        last, self._last_step = self._last_step, (None if sample is None else (sample, start))
        if last is not None:
            prev, prev_start = last
            idled = bool(getattr(batch, "after_idle_gap", False))
            self.observe(prev if idled else prev._replace(seconds=start - prev_start))

    def observe(self, sample: StepSample) -> None:
        self.counters.steps[sample.kind] += 1
        self.policy.model.observe(sample)

    @staticmethod
    def _sample(batch: Any, seconds: float) -> StepSample | None:
        """The step's features, read at once (SGLang reuses and filters batch objects)."""
        mode = batch.forward_mode
        if mode.is_extend():
            extend = list(batch.extend_lens or [])
            prefix = list(batch.prefix_lens or [])
            attn = sum(attn_work(n, c) for n, c in zip(extend, prefix, strict=False))
            return StepSample("prefill", sum(extend), attn, len(batch.reqs), 0, seconds)
        if mode.is_decode():
            bs = len(batch.reqs)
            return StepSample("decode", bs, 0.0, bs, int(batch.seq_lens_sum), seconds)
        return None

    def state(self) -> dict[str, Any]:
        """For ``/server_info``: policy, counters and the latency model (with its error)."""
        c = self.counters
        return {
            "policy": self.policy.name,
            "unattainable": self.policy.unattainable,
            "arrivals": c.arrivals,
            "rejected": c.rejected,
            "best_effort": c.best_effort,
            "preempted": c.preempted,
            "reorders": c.reorders,
            "deferred_prefills": c.deferred,
            "budget_clamps": c.budget_clamps,
            "held_decodes": c.held_decodes,
            "steps": dict(c.steps),
            "latency_model": self.policy.model.state(),
        }


def _reserve(req: Any, ratio: float) -> float:
    """KV tokens SGLang's admission keeps free for a running request's remaining output."""
    left = int(req.sampling_params.max_new_tokens or 0) - len(req.output_ids)
    return max(min(left, CLIP_MAX_NEW_TOKENS), 0) * ratio


def retract(scheduler: Any, batch: Any, rids: set[str]) -> list[Any]:
    """Retract running requests ``rids`` the way SGLang's ``retract_decode`` does: free their KV
    (prompt pages stay in the radix cache), drop them from the batch, queue them again; they
    are prefilled again (prompt + generated tokens) when re-admitted."""
    pick = [
        i
        for i, r in enumerate(batch.reqs)
        if r.rid in rids and r.beam_group is None and not r.finished()
    ]
    if not pick:
        return []
    keep = [i for i in range(len(batch.reqs)) if i not in set(pick)]
    victims = [batch.reqs[i] for i in pick]
    for i in pick:
        batch.release_req(i, len(keep))
    batch.filter_batch(keep_indices=keep)
    batch.batch_is_full = False
    for req in victims:
        scheduler._add_request_to_queue(req, is_retracted=True)
    return victims


def clamp(adder: Any, budget: int) -> None:
    """Cap an SGLang ``PrefillAdder``'s token budgets for this step at ``budget``."""
    adder.rem_input_tokens = min(adder.rem_input_tokens, budget)
    if adder.rem_chunk_tokens is not None:
        adder.rem_chunk_tokens = min(adder.rem_chunk_tokens, budget)


def reject(scheduler: Any, req: Any, message: str) -> None:
    """End a queued-to-be request at once with HTTP 429 (no forward pass, nothing allocated)."""
    from sglang.srt.managers.scheduler import _make_abort_req

    reason = {"type": "abort", "status_code": REJECT_STATUS, "message": message}
    scheduler.send_abort_output(_make_abort_req(req, finished_reason=reason), req)
    scheduler._release_aborted_request(req)
