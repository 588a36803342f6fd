"""Scheduler-side evidence that the plugin is loaded: a log line and a ``/server_info`` field.

``/server_info`` (and ``Engine.get_server_info()``) return ``internal_states``, one dict per
data-parallel scheduler, built inside the scheduler process. We add ``mepic_sglang`` to it: the
plugin version, the scheduler's pid, the plugin flag values that reached it, any compatibility
problems, and how many attention layers store keys without RoPE. So an operator (or a test) sees
what the scheduler really runs with.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from disagg import server_info
from mepic_sglang import __version__
from mepic_sglang.flags import get_plugin_args
from mepic_sglang.sglang import compat, liveness, nope, slo_hooks, weights_hooks
from mepic_sglang.sglang.state import scheduler_state

logger = logging.getLogger(__name__)


def plugin_state(server_args: Any) -> dict[str, Any]:
    """The ``mepic_sglang`` entry of a scheduler's internal state."""
    return {
        "version": __version__,
        "pid": os.getpid(),
        "args": dataclasses.asdict(get_plugin_args(server_args)),
        "compat_problems": compat.problems(),
        "nope_attention_layers": nope.wrapped_layers(),
        "weights": weights_hooks.weights_state(),
    }


def after_scheduler_init(result: None, scheduler: Any, *args: Any, **kwargs: Any) -> None:
    """AFTER ``Scheduler.__init__``: one log line per scheduler process; the liveness watch."""
    state = plugin_state(scheduler.server_args)
    liveness.attach(scheduler, get_plugin_args(scheduler.server_args).mepic_stall_timeout)
    logger.info(
        "mepic-sglang %s active in scheduler pid %d: %s",
        state["version"],
        state["pid"],
        " ".join(f"{k}={v}" for k, v in state["args"].items()),
    )
    if state["args"]["enable_mepic"]:
        logger.info(
            "mepic-sglang: chunk cache %s, %d attention layers store keys without RoPE",
            type(scheduler.tree_cache).__name__,
            state["nope_attention_layers"],
        )
    for problem in state["compat_problems"]:
        logger.warning("mepic-sglang compatibility: %s", problem)


@dataclass
class UsageWindow:
    peak: int = 0
    busy_steps: int = 0
    busy_sum: int = 0

    def sample(self, used: int, busy: bool) -> None:
        self.peak = max(self.peak, used)
        if busy:
            self.busy_steps += 1
            self.busy_sum += used

    def as_dict(self, prefix: str) -> dict[str, float]:
        mean = self.busy_sum / self.busy_steps if self.busy_steps else 0.0
        return {f"{prefix}peak_used_tokens": self.peak, f"{prefix}mean_used_tokens": mean,
                f"{prefix}busy_steps": self.busy_steps}  # fmt: skip


@dataclass
class PoolUsage:
    """KV tokens held by running work (``total - available - evictable``: locked radix nodes,
    referenced chunk pages, scratch and request-private pages), sampled once per scheduler step
    after the step's allocations: exact at step granularity. ``mean`` is over the steps that ran
    a batch. ``since_start`` covers the server's life; ``window`` the time since the previous
    ``/server_info`` (reading it starts a new window: a benchmark brackets a pass with two)."""

    since_start: UsageWindow = field(default_factory=UsageWindow)
    window: UsageWindow = field(default_factory=UsageWindow)

    def sample(self, used: int, busy: bool) -> None:
        self.since_start.sample(used, busy)
        self.window.sample(used, busy)

    def read(self) -> dict[str, float]:
        out = {**self.since_start.as_dict(""), **self.window.as_dict("window_")}
        self.window = UsageWindow()
        return out


def _used_tokens(scheduler: Any) -> int:
    total = int(scheduler.max_total_num_tokens)
    available = int(scheduler.token_to_kv_pool_allocator.available_size())
    return total - available - int(scheduler.tree_cache.evictable_size())


def after_next_batch(result: Any, scheduler: Any, *args: Any, **kwargs: Any) -> Any:
    """AFTER ``Scheduler.get_next_batch_to_run``: sample the pool for :class:`PoolUsage`; one step
    for the liveness watch."""
    ran = getattr(result, "batch_to_run", None) is not None
    state = scheduler_state(scheduler)
    if state.usage is None:
        state.usage = PoolUsage()
    usage = state.usage
    usage.sample(_used_tokens(scheduler), ran)
    if (watch := liveness.of(scheduler)) is not None:
        watch.observe(scheduler, ran_batch=ran)
    return result


def pool_state(scheduler: Any) -> dict[str, Any]:
    """The KV pool in tokens, for any server (stock included), so benchmarks compare alike."""
    cache = scheduler.tree_cache
    allocator = scheduler.token_to_kv_pool_allocator
    usage = scheduler_state(scheduler).usage or PoolUsage()
    return {
        "total_tokens": int(scheduler.max_total_num_tokens),
        "available_tokens": int(allocator.available_size()),
        "evictable_tokens": int(cache.evictable_size()),
        "protected_tokens": int(cache.protected_size()),
        "running_requests": len(scheduler.running_batch.reqs),
        "page_size": int(getattr(scheduler, "page_size", 1)),
        **usage.read(),
    }


def chunk_state(scheduler: Any) -> dict[str, Any] | None:
    """Chunk-store counters, the running requests' rows and a full pool integrity check."""
    cache = scheduler.tree_cache
    chunks = getattr(cache, "mepic_chunks", None)
    if chunks is None:
        return None
    out: dict[str, Any] = {"store": chunks.snapshot(), "policy": chunks.policy.name}
    # NOTE: the requests that own KV rows, as SGLang's own invariant checker finds them (the
    # last batch, the running batch, a chunked request).
    live = scheduler.invariant_checker._requests_owning_rows()
    out["running"] = [
        {
            "rid": r.rid,
            "allocated_tokens": int(r.kv.kv_allocated_len),
            "protected_tokens": int(r.kv.cache_protected_len),
        }
        for r in live
        if r.kv.holds_kv
    ]
    try:
        out["pages"] = cache.check_integrity(live)
        out["integrity"] = "ok"
    except AssertionError as e:
        logger.error("mepic-sglang: pool integrity check failed: %s", e)
        out["integrity"] = f"FAILED: {e}"
    return out


def attention_state(scheduler: Any) -> dict[str, Any] | None:
    """Which MEPIC attention kernels serve this scheduler: forwards per kernel, and why FlashInfer
    is not used (None when it is, or before the first forward decided it)."""
    runner = getattr(getattr(scheduler, "tp_worker", None), "model_runner", None)
    backend = getattr(runner, "attn_backend", None)
    if backend is None or not type(backend).__module__.startswith("flashinfer_ext."):
        return None
    out: dict[str, Any] = {"backend": type(backend).__name__}
    if hasattr(backend, "batches"):
        out["forwards"] = dict(backend.batches)
        out["flashinfer_problem"] = backend.fi_problem
    return out


def after_get_internal_state(result: Any, scheduler: Any, *args: Any, **kwargs: Any) -> Any:
    """AFTER ``Scheduler.get_internal_state``: add :func:`plugin_state` to the reply."""
    state = plugin_state(scheduler.server_args)
    state["pool"] = pool_state(scheduler)
    if (chunks := chunk_state(scheduler)) is not None:
        state["chunks"] = chunks
    if (attention := attention_state(scheduler)) is not None:
        state["attention"] = attention
    if (slo := slo_hooks.runtime_of(scheduler)) is not None:
        state["slo"] = slo.state()
    if (watch := liveness.of(scheduler)) is not None:
        watch.refresh(scheduler)
        state["liveness"] = {
            **watch.state(),
            "waiting_requests": len(scheduler.waiting_queue),
            "running_requests": len(scheduler.running_batch.reqs),
        }
    result.internal_state[server_info.PLUGIN_KEY] = state
    return result
