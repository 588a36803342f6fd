"""Liveness: notice a scheduler that makes no progress while requests wait.

SGLang 0.5.23's ``/health_generate`` answers 200 as soon as *any* message from the scheduler
reaches the launcher: while requests wait, the scheduler acknowledges a probe from its idle step
without running it, and a reply to ``/server_info`` or ``/v1/loads`` counts as well. A queue that
can never be admitted (a request whose KV can never fit, a bug) therefore stalls every request
behind it while the server looks healthy. The scheduler watches itself instead:

* **progress**: a step ran a batch, or the step after one (so a long forward is not counted), or
  no request waits, or the engine is paused on purpose (``/pause_generation``);
* **no progress for** ``now - max(last progress, when the queue last became non-empty)``;
* **stalled** once that reaches ``--mepic-stall-timeout`` (default 60; 0 turns the watch off).

While stalled:

* the scheduler (TP rank 0 of each DP rank) writes a small signal file, which the launcher reads
  every :data:`POLL_S` seconds (:func:`watch_signals`) and then holds SGLang's server status at
  ``Starting``: the one status SGLang's health handler answers 503 for before it probes, and that
  ``/ready`` refuses. So ``/health_generate`` and ``/ready`` fail whatever else the scheduler
  sends (a probe that began before the launcher read the signal, at most :data:`POLL_S` s after
  the stall was declared, may still pass); the status returns to ``Up`` when the stall ends;
* the scheduler also holds back its acknowledgement of skipped health probes;
* ``/server_info`` → ``internal_states[i].mepic_sglang.liveness`` and, with ``--enable-metrics``,
  ``sglang:mepic_scheduler_no_progress_seconds``, ``sglang:mepic_scheduler_stalled`` (gauges,
  refreshed whenever the scheduler wakes: every step, probe and ``/server_info``) and
  ``sglang:mepic_scheduler_stalls_total`` say so.

Not watched: P/D prefill and decode instances (their event loops do not call
``get_next_batch_to_run``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mepic_sglang.sglang.state import manager_state, scheduler_state

logger = logging.getLogger(__name__)
DEFAULT_STALL_TIMEOUT_S = 60.0
POLL_S = 1.0


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
        if ran_batch:
            self.last_progress = now
        self.update(now, waiting=waiting, paused=paused)
        self.previous_ran = ran_batch

    def update(self, now: float, *, waiting: int, paused: bool) -> None:
        """Bring the stall flag up to ``now``; also for reads between steps (a step that just
        ran a batch, an empty queue and a pause count as progress)."""
        if not waiting:
            self.waiting_since = None
        if self.previous_ran or not waiting or paused:
            self.last_progress = now
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

    def stuck(self, now: float) -> bool:
        return self.timeout_s > 0 and self.no_progress_s(now) >= self.timeout_s

    def no_progress_s(self, now: float) -> float:
        """Seconds requests have waited without the scheduler running a batch (0: none waits)."""
        if self.waiting_since is None:
            return 0.0
        return max(0.0, now - max(self.last_progress, self.waiting_since))

    def state(self, now: float) -> dict[str, Any]:
        return {
            "stalled": self.stalled,
            "no_progress_s": round(self.no_progress_s(now), 3),
            "stalls": self.stalls,
            "stall_timeout_s": self.timeout_s,
        }


class LivenessMetrics:
    """``/metrics`` series of :class:`Liveness` (no-op unless ``--enable-metrics``; created on
    TP rank 0 only, so TP ranks are not counted twice)."""

    def __init__(self, enabled: bool) -> None:
        self._counted = 0
        self._series: tuple[Any, Any, Any] | None = None
        if not enabled:
            return
        # NOTE: created in the scheduler process, after SGLang set PROMETHEUS_MULTIPROC_DIR.
        # "livemax": with several DP ranks the worst one shows (not the most recent writer).
        from prometheus_client import Counter, Gauge

        self._series = (
            Gauge(
                "sglang:mepic_scheduler_no_progress_seconds",
                "Seconds requests have waited without the scheduler running a batch",
                multiprocess_mode="livemax",
            ),
            Gauge(
                "sglang:mepic_scheduler_stalled",
                "1 while a scheduler is stalled (no progress for --mepic-stall-timeout)",
                multiprocess_mode="livemax",
            ),
            Counter("sglang:mepic_scheduler_stalls", "Times a scheduler was found stalled"),
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


# ---- the signal file between a scheduler and the launcher --------------------------------------
def signal_dir(server_args: Any) -> Path:
    """Where the schedulers of one server leave their stall signal (per port and process group:
    every process of one server shares both)."""
    name = f"mepic-sglang-liveness-{getattr(server_args, 'port', 0)}-{os.getpgid(0)}"
    return Path(tempfile.gettempdir()) / name


def write_signal(path: Path, waiting: int) -> None:
    """The scheduler is stalled (the file is removed when it recovers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"stalled": True, "waiting": waiting, "at": time.time()}))
    tmp.replace(path)  # NOTE: atomic: the launcher never reads half a file


def read_stalled(directory: Path) -> bool:
    """Whether any scheduler's signal file says it is stalled."""
    for path in directory.glob("dp*.json"):
        try:
            if json.loads(path.read_text()).get("stalled"):
                return True
        except (OSError, ValueError):
            continue
    return False


@dataclass
class SchedulerLiveness:
    """What the plugin keeps on an SGLang ``Scheduler`` for liveness."""

    live: Liveness
    metrics: LivenessMetrics
    signal: Path | None  # None: not the rank that reports (TP rank > 0)
    _signalled: bool = False

    def observe(self, scheduler: Any, ran_batch: bool) -> None:
        now = time.monotonic()
        waiting = len(scheduler.waiting_queue)
        self.live.observe(now, ran_batch=ran_batch, waiting=waiting, paused=_paused(scheduler))
        self._publish(now, waiting)

    def refresh(self, scheduler: Any) -> None:
        """Bring the stall flag, the gauges and the signal up to now (a read between steps)."""
        now = time.monotonic()
        waiting = len(scheduler.waiting_queue)
        self.live.update(now, waiting=waiting, paused=_paused(scheduler))
        self._publish(now, waiting)

    def _publish(self, now: float, waiting: int) -> None:
        self.metrics.sync(self.live, now)
        if self.signal is not None and self.live.stalled != self._signalled:
            try:
                if self.live.stalled:
                    write_signal(self.signal, waiting)
                else:
                    self.signal.unlink(missing_ok=True)
                self._signalled = self.live.stalled
            except OSError as e:  # NOTE: the watch still works through /server_info and metrics
                logger.warning("mepic-sglang: liveness signal %s: %s", self.signal, e)

    def state(self) -> dict[str, Any]:
        return self.live.state(time.monotonic())


def _paused(scheduler: Any) -> bool:
    return bool(getattr(scheduler, "_engine_paused", False))


def attach(scheduler: Any, timeout_s: float) -> None:
    """Start watching ``scheduler`` (from the AFTER hook on ``Scheduler.__init__``)."""
    from sglang.srt.runtime_context import get_parallel

    parallel = get_parallel()
    reporter = (parallel.tp_rank or 0) == 0
    metrics_on = bool(getattr(scheduler.server_args, "enable_metrics", False)) and reporter
    signal = None
    if reporter and timeout_s > 0:
        signal = signal_dir(scheduler.server_args) / f"dp{parallel.dp_rank or 0}.json"
    scheduler_state(scheduler).liveness = SchedulerLiveness(
        Liveness(timeout_s=timeout_s), LivenessMetrics(metrics_on), signal
    )


def of(scheduler: Any) -> SchedulerLiveness | None:
    return scheduler_state(scheduler).liveness


def around_health_check_signal(original: Any, scheduler: Any) -> Any:
    """AROUND ``Scheduler.maybe_send_health_check_signal``: while the scheduler is stalled it
    holds back the acknowledgement of a skipped health probe; the probes are answered once it
    makes progress again."""
    watch = of(scheduler)
    if watch is not None:
        watch.refresh(scheduler)
        if watch.live.stalled:
            return None
    return original(scheduler)


# ---- the launcher side ---------------------------------------------------------------------
def holding(manager: Any) -> bool:
    """True while :func:`watch_signals` holds the server status at ``Starting``."""
    return manager_state(manager).liveness_held


async def watch_signals(manager: Any, timeout_s: float) -> None:
    """In the launcher, for the server's life: hold the server status at ``Starting`` while a
    scheduler signals a stall (see the module doc)."""
    if timeout_s <= 0:
        return
    from sglang.srt.managers.tokenizer_manager import ServerStatus

    directory = signal_dir(manager.server_args)
    for stale in directory.glob("dp*.json"):  # NOTE: left by a server that died on this port
        stale.unlink(missing_ok=True)
    held = False
    while True:
        await asyncio.sleep(POLL_S)
        stalled = read_stalled(directory)
        if stalled and manager.server_status == ServerStatus.Up:
            manager.server_status = ServerStatus.Starting
            held = manager_state(manager).liveness_held = True
            logger.error("mepic-sglang: a scheduler is stalled: /health_generate answers 503")
        elif not stalled and held:
            if manager.server_status == ServerStatus.Starting:
                manager.server_status = ServerStatus.Up
            held = manager_state(manager).liveness_held = False
            logger.warning("mepic-sglang: the stall is over: /health_generate answers again")
