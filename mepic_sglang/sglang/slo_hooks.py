"""Scheduler-side hooks of ``--schedule-policy multi-slo`` (rows in
:mod:`mepic_sglang.sglang.seams`).

They find the process's :class:`~mepic_sglang.sglang.slo_adapter.SloScheduler` on the scheduler
and hand it SGLang's objects; a scheduler without ``multi-slo`` runs SGLang's code untouched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from mepic_sglang.flags import get_plugin_args
from mepic_sglang.sglang import chunk_admission
from mepic_sglang.sglang.slo_adapter import SloScheduler, reject
from mepic_sglang.sglang.state import scheduler_state
from mepic_sglang.slo_flags import MULTI_SLO
from scheduler_patch.latency_model import LatencyModel
from scheduler_patch.policy import make_policy

logger = logging.getLogger(__name__)


def runtime_of(scheduler: Any) -> SloScheduler | None:
    return scheduler_state(scheduler).slo


def around_init_schedule_policy(original: Callable[..., Any], scheduler: Any) -> Any:
    """AROUND ``Scheduler.init_schedule_policy``: with ``multi-slo``, build SGLang's policy as
    ``fcfs`` (SGLang does not know the name) and attach the process's :class:`SloScheduler`.

    NOTE: SGLang's fcfs ``calc_priority`` (priority scheduling off) only matches prefixes and
    leaves the queue in the order :meth:`SloScheduler.before_prefill` sorted it into."""
    if scheduler.schedule_policy != MULTI_SLO:
        return original(scheduler)
    scheduler.schedule_policy = "fcfs"
    try:
        out = original(scheduler)
    finally:
        scheduler.schedule_policy = MULTI_SLO
    args = get_plugin_args(scheduler.server_args)
    if args.slo_latency_profile:
        model = LatencyModel.load(args.slo_latency_profile)
    else:
        model = LatencyModel()
    runtime = SloScheduler(
        make_policy(MULTI_SLO, model, args.slo_unattainable),  # type: ignore[arg-type]
        args.slo_defaults(),
    )
    scheduler_state(scheduler).slo = runtime
    logger.info(
        "mepic-sglang: multi-slo scheduling (unattainable: %s; latency profile: %s)",
        args.slo_unattainable,
        args.slo_latency_profile or "none, learning online",
    )
    return out


def around_add_request_to_queue(
    original: Callable[..., Any], scheduler: Any, req: Any, is_retracted: bool = False
) -> Any:
    """AROUND ``Scheduler._add_request_to_queue``: a new request meets the arrival checks: MEPIC's
    (:func:`mepic_sglang.sglang.chunk_admission.check_arrival`), then the SLO decision."""
    chunk_admission.check_arrival(scheduler, req, is_retracted)
    runtime = runtime_of(scheduler)
    if runtime is None or is_retracted or req.to_finish is not None or _decode_stage(scheduler):
        # NOTE: a P/D decode instance never refuses: the prefill instance gave the verdict
        return original(scheduler, req, is_retracted)
    verdict = runtime.on_enqueue(scheduler, req)
    if verdict.action == "reject":
        reject(scheduler, req, f"SLO unattainable: {verdict.reason}")
        return None
    return original(scheduler, req, is_retracted)


def around_get_new_batch_prefill(
    original: Callable[..., Any], scheduler: Any, running_batch: Any
) -> Any:
    """AROUND ``Scheduler.get_new_batch_prefill``: the step's SLO decisions, then SGLang's
    admission (or no prefill at all this step, as SGLang's own ``--prefill-decode-interval``
    defers one).

    NOTE: SGLang returns early, before any policy call, when the slots are full; so preemption
    is decided here, ahead of its admission code."""
    runtime = runtime_of(scheduler)
    if runtime is not None and runtime.before_prefill(scheduler, running_batch):
        from sglang.srt.managers.schedule_batch import NextBatchPlan

        return NextBatchPlan(batch_to_run=None, running_batch=running_batch)
    return original(scheduler, running_batch)


def after_prefill_adder_class(result: type, scheduler: Any) -> type:
    """AFTER ``Scheduler.get_prefill_adder_class``: the adder that keeps the step's budget."""
    runtime = runtime_of(scheduler)
    return result if runtime is None else runtime.adder_class(result)


def around_run_batch(
    original: Callable[..., Any], scheduler: Any, batch: Any, *args: Any, **kwargs: Any
) -> Any:
    """AROUND ``Scheduler.run_batch``: time the step for the latency model (the cadence of
    consecutive steps, see :meth:`SloScheduler.on_step`)."""
    runtime = runtime_of(scheduler)
    if runtime is None:
        return original(scheduler, batch, *args, **kwargs)
    start = time.perf_counter()
    result = original(scheduler, batch, *args, **kwargs)
    runtime.on_step(
        batch, start, time.perf_counter() - start, getattr(scheduler, "chunked_req", None)
    )
    return result


def around_get_new_prebuilt_batch(
    original: Callable[..., Any], scheduler: Any, running_batch: Any
) -> Any:
    """AROUND the P/D decode stage's ``_get_new_prebuilt_batch``: requests whose KV arrived
    join the running batch in SLO order, as many as keep the running requests' TPOT."""
    runtime = runtime_of(scheduler)
    if runtime is None:
        return original(scheduler, running_batch)
    held = runtime.before_prebuilt(scheduler)
    try:
        batch = original(scheduler, running_batch)
    finally:
        if held:  # NOTE: SGLang reassigns the queue to what it did not take
            scheduler.waiting_queue = list(scheduler.waiting_queue) + held
    if batch is not None:
        runtime.stamp_first_tokens(batch.reqs)
    return batch


def _decode_stage(scheduler: Any) -> bool:
    mode = getattr(scheduler, "disaggregation_mode", None)
    return str(getattr(mode, "value", mode)) == "decode"
