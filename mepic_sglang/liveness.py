"""Liveness: notice a scheduler that makes no progress while requests wait.

SGLang 0.5.23's ``/health_generate`` answers 200 as long as the scheduler process runs its loop:
while requests wait, it acknowledges the probe from its idle step without running it. A queue that
can never be admitted (a request whose KV can never fit, a bug) therefore stalls every request
behind it while the server looks healthy. The scheduler watches itself instead:

* **progress**: a step ran a batch (or the step after one, so a long forward is not counted), or
  no request waits, or the engine is paused on purpose (``/pause_generation``);
* **no progress for** ``now - max(last progress, when the queue last became non-empty)``;
* **stalled** once that reaches ``--mepic-stall-timeout`` (default 60; 0 turns the watch off).

While stalled, ``/health_generate`` fails (the scheduler holds back its acknowledgement, so SGLang's
probe times out with 503 after ``SGLANG_HEALTH_CHECK_TIMEOUT`` s), ``/server_info`` →
``internal_states[0].mepic_sglang.liveness`` says so, and with ``--enable-metrics`` ``/metrics``
has ``sglang:mepic_scheduler_no_progress_seconds``, ``sglang:mepic_scheduler_stalled`` and
``sglang:mepic_scheduler_stalls_total`` (the gauges are refreshed whenever the scheduler wakes:
every step, every probe and every ``/server_info``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)
DEFAULT_STALL_TIMEOUT_S = 60.0


@dataclass
class Liveness:
    """Progress of one scheduler (pure: the caller passes the clock and the queue)."""

    timeout_s: float = DEFAULT_STALL_TIMEOUT_S
    last_progress: float = field(default_factory=time.monotonic)
    waiting_since: float | None = None  # when the queue last went from empty to non-empty
    previous_ran: bool = False
    stalled: bool = False
    stalls: int = 0

    def observe(self, now: float, *, ran_batch: bool, waiting: int, paused: bool) -> None:
        """One scheduler step: did it run a batch, how many requests wait, is it paused."""
        if waiting and self.waiting_since is None:
            self.waiting_since = now
        if not waiting:
            self.waiting_since = None
        if ran_batch or self.previous_ran or not waiting or paused:
            self.last_progress = now
        self.previous_ran = ran_batch
        self.update(now, waiting)

    def update(self, now: float, waiting: int) -> None:
        """Re-evaluate the stall flag at ``now`` (no step ran: progress is left as it is)."""
        if not waiting:
            self.waiting_since = None
        if self.stuck(now):
            if not self.stalled:
                self.stalled = True
                self.stalls += 1
                logger.error(
                    "mepic-sglang: scheduler stalled: %d request(s) waiting, no batch for %.1f s "
                    "(--mepic-stall-timeout %g); /health_generate fails until it recovers",
                    waiting,
                    self.no_progress_s(now),
                    self.timeout_s,
                )
        elif self.stalled:
            self.stalled = False
            logger.warning("mepic-sglang: scheduler makes progress again")

    def no_progress_s(self, now: float) -> float:
        """Seconds requests have waited without the scheduler running a batch (0: none waits)."""
        if self.waiting_since is None:
            return 0.0
        return max(0.0, now - max(self.last_progress, self.waiting_since))

    def stuck(self, now: float) -> bool:
        """Stalled as of ``now`` (read-only: the step state is left to :meth:`observe`)."""
        return self.timeout_s > 0 and self.no_progress_s(now) >= self.timeout_s

    def state(self, now: float) -> dict[str, Any]:
        return {
            "stalled": self.stalled,
            "no_progress_s": round(self.no_progress_s(now), 3),
            "stalls": self.stalls,
            "stall_timeout_s": self.timeout_s,
        }


class LivenessMetrics:
    """``/metrics`` series of :class:`Liveness` (no-op unless ``--enable-metrics``)."""

    def __init__(self, enabled: bool) -> None:
        self._counted = 0
        self._series: tuple[Any, Any, Any] | None = None
        if not enabled:
            return
        # NOTE: created in the scheduler process, after SGLang set PROMETHEUS_MULTIPROC_DIR.
        from prometheus_client import Counter, Gauge

        self._series = (
            Gauge(
                "sglang:mepic_scheduler_no_progress_seconds",
                "Seconds requests have waited without the scheduler running a batch",
                multiprocess_mode="mostrecent",
            ),
            Gauge(
                "sglang:mepic_scheduler_stalled",
                "1 while the scheduler is stalled (no progress for --mepic-stall-timeout-s)",
                multiprocess_mode="mostrecent",
            ),
            Counter("sglang:mepic_scheduler_stalls", "Times the scheduler was found stalled"),
        )

    def sync(self, live: Liveness, now: float) -> None:
        if self._series is None:
            return
        no_progress, stalled, stalls = self._series
        no_progress.set(live.no_progress_s(now))
        stalled.set(1 if live.stalled else 0)
        if live.stalls > self._counted:
            stalls.inc(live.stalls - self._counted)
            self._counted = live.stalls


@dataclass
class SchedulerLiveness:
    """What the plugin keeps on an SGLang ``Scheduler`` for liveness."""

    live: Liveness
    metrics: LivenessMetrics

    def observe(self, scheduler: Any, ran_batch: bool) -> None:
        now = time.monotonic()
        self.live.observe(
            now,
            ran_batch=ran_batch,
            waiting=len(scheduler.waiting_queue),
            paused=bool(getattr(scheduler, "_engine_paused", False)),
        )
        self.metrics.sync(self.live, now)

    def refresh(self, scheduler: Any) -> None:
        """Bring the stall flag and the gauges up to now (for a read between steps)."""
        now = time.monotonic()
        self.live.update(now, len(scheduler.waiting_queue))
        self.metrics.sync(self.live, now)

    def state(self) -> dict[str, Any]:
        return self.live.state(time.monotonic())


ATTR = "_mepic_liveness"  # Scheduler attribute: SchedulerLiveness


def attach(scheduler: Any, timeout_s: float) -> None:
    """Start watching ``scheduler`` (from the AFTER hook on ``Scheduler.__init__``)."""
    metrics = LivenessMetrics(bool(getattr(scheduler.server_args, "enable_metrics", False)))
    scheduler.__dict__[ATTR] = SchedulerLiveness(Liveness(timeout_s=timeout_s), metrics)


def of(scheduler: Any) -> SchedulerLiveness | None:
    value = scheduler.__dict__.get(ATTR)
    return value if isinstance(value, SchedulerLiveness) else None


def around_health_check_signal(original: Any, scheduler: Any) -> Any:
    """AROUND ``Scheduler.maybe_send_health_check_signal``: while the scheduler is stalled it
    holds back the acknowledgement of a skipped health probe, so ``/health_generate`` fails; the
    probes are answered once it makes progress again."""
    watch = of(scheduler)
    if watch is not None:
        watch.refresh(scheduler)
        if watch.live.stalled:
            return None
    return original(scheduler)
