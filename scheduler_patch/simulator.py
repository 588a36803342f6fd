"""Discrete-event simulator of SGLang instances driving the real scheduling policies.

It replays SGLang 0.5.23's scheduler loop step by step on a clock: admit arrivals
(``on_arrival``), then prefill first (``order`` / ``prefill_budget`` / ``victims`` of the same
:class:`SchedulingPolicy` objects the server uses; one request at a time is chunked), else one
decode step for every running request. Step times come from a "truth" :class:`LatencyModel`
(times optional lognormal noise) and are fed to the policy's own model through ``observe``, as
the server adapter does. Pure code: no SGLang or torch. Workloads: :mod:`sim_workload`;
outcomes: :mod:`sim_results`.
"""

from __future__ import annotations

import copy
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

from scheduler_patch.latency_model import ErrorStats, Kind, LatencyModel, StepSample, attn_work
from scheduler_patch.policy import POLICIES, make_policy
from scheduler_patch.sim_results import RequestResult, SimResult, StepRecord
from scheduler_patch.sim_workload import SimRequest
from scheduler_patch.views import Action, EngineView, ReqView


@dataclass(frozen=True)
class SimConfig:
    """One instance: pool sizes, policy and latency models (``model`` is copied per run)."""

    model: LatencyModel  # what the policy predicts with (learns online when ``learn``)
    policy: str = "multi-slo"
    unattainable: Action = "best-effort"
    kv_tokens: int = 65_536  # KV pool capacity (tokens)
    max_running: int = 64  # request slots (--max-running-requests)
    max_prefill_tokens: int = 8_192  # tokens per prefill step (--chunked-prefill-size)
    truth: LatencyModel | None = None  # real step times; None: ``model``'s coefficients
    noise_sigma: float = 0.0  # each step time *= lognormal(0, sigma)
    learn: bool = True

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose from {sorted(POLICIES)}")
        if min(self.kv_tokens, self.max_running, self.max_prefill_tokens) < 1:
            raise ValueError("kv_tokens, max_running and max_prefill_tokens must be >= 1")
        truth = self.truth or self.model
        if truth.prefill_coef is None or truth.decode_coef is None:
            raise ValueError("the truth model needs prefill and decode coefficients")


@dataclass(slots=True)
class _Live:
    req: SimRequest
    best_effort: bool = False
    generated: int = 0
    target: int = 0  # tokens this (re-)prefill computes
    prefilled: int = 0
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished_at: float | None = None
    preemptions: int = 0
    rejected: bool = False
    reason: str = ""


class Simulator:
    """One instance: :meth:`submit` requests in arrival order, then :meth:`run`."""

    def __init__(self, config: SimConfig, seed: int = 0) -> None:
        self.config = config
        model = copy.deepcopy(config.model)  # NOTE: runs must not share learned state
        self.policy = make_policy(config.policy, model, config.unattainable)
        self.truth = copy.deepcopy(config.truth or config.model)
        self.rng = random.Random(seed)  # step-time noise only
        self.now = self.busy_s = 0.0
        self.free_kv = config.kv_tokens
        self.steps: list[StepRecord] = []
        self._pending: deque[_Live] = deque()
        self._waiting: dict[str, ReqView] = {}  # insertion order = queue order
        self._running: dict[str, _Live] = {}  # decoding
        self._chunked: _Live | None = None  # partly prefilled; continues first
        self._kv_read = 0  # KV the running requests attend to (prompt + generated)
        self._running_views: tuple[ReqView, ...] | None = None  # cache, reset when they change
        self._live: dict[str, _Live] = {}
        self._done = 0

    def submit(self, req: SimRequest) -> None:
        """Queue a request (in arrival order); it arrives once the clock reaches it."""
        if req.rid in self._live:
            raise ValueError(f"duplicate rid {req.rid!r}")
        if self._pending and req.arrival < self._pending[-1].req.arrival:
            raise ValueError("requests must be submitted in arrival order")
        if req.prompt_tokens < 1 or req.output_tokens < 1:
            raise ValueError(f"{req.rid}: prompt and output need >= 1 token")
        self._live[req.rid] = live = _Live(req)
        self._pending.append(live)

    @property
    def outstanding(self) -> int:
        """Submitted requests that have not finished or been rejected yet."""
        return len(self._live) - self._done

    def run(self, until: float = float("inf"), check: bool = False) -> None:
        """Step while a step can start before ``until`` (``check``: verify state every step)."""
        while self.outstanding:
            busy = self._waiting or self._running or self._chunked
            if (self.now if busy else self._pending[0].req.arrival) >= until or not self.step():
                break
            if check:
                self.check_integrity()

    def step(self) -> bool:
        """One scheduling step (a prefill or a decode); False when nothing is left to do."""
        self._running_views = None
        self._arrivals()
        if not (self._waiting or self._running or self._chunked):
            if not self._pending:
                return False
            self.now = max(self.now, self._pending[0].req.arrival)  # idle: jump to next arrival
        elif not self._prefill():
            if not self._running:
                raise RuntimeError(f"policy {self.policy.name} admits nothing into an idle engine")
            self._decode()
        return True

    def _view(self, live: _Live, running: bool = False) -> ReqView:
        r = live.req
        return ReqView(
            r.rid, r.arrival, r.prompt_tokens, r.prompt_tokens if running else 0,  # no prefix cache
            live.generated, r.output_tokens, r.slo, live.first_token_at, live.best_effort,
        )  # fmt: skip

    def _engine(self) -> EngineView:
        if self._running_views is None:  # NOTE: built at most once per step (or preemption)
            self._running_views = tuple(self._view(x, True) for x in self._running.values())
        waiting = tuple(self._waiting.values())
        return EngineView(
            self.now, waiting, self._running_views, self.free_kv, self.config.max_prefill_tokens
        )

    def _arrivals(self) -> None:
        while self._pending and self._pending[0].req.arrival <= self.now:
            live = self._pending.popleft()
            view = self._view(live)
            if live.req.reserve > self.config.kv_tokens:  # SGLang rejects these up front too
                action, live.reason = "reject", "prompt + output tokens exceed the KV pool"
            else:
                action, live.reason = self.policy.on_arrival(view, self._engine())
            if action == "reject":
                self._end(live, rejected=True)
                continue
            if action == "best-effort":
                live.best_effort, view = True, replace(view, best_effort=True)
            self._waiting[view.rid] = view

    def _preempt(self, rid: str) -> None:
        live = self._running.pop(rid, None)
        if live is None:
            raise ValueError(
                f"policy {self.policy.name} chose victim {rid!r}, which is not running"
            )
        live.preemptions += 1
        self._running_views = None
        self.free_kv += live.req.reserve
        self._kv_read -= live.req.prompt_tokens + live.generated
        self._waiting[rid] = self._view(live)  # NOTE: re-prefills prompt + generated tokens

    def _end(self, live: _Live, rejected: bool = False) -> None:
        if self._running.pop(live.req.rid, None) is not None:
            self._kv_read -= live.req.prompt_tokens + live.generated
        if not rejected:
            self.free_kv += live.req.reserve
        live.finished_at, live.rejected = self.now, rejected
        self._done += 1

    def _measure(self, kind: Kind, new: int, attn: float, bs: int, kv: int) -> None:
        """Advance the clock by the step's (noisy) truth time and teach the policy's model."""
        sample = StepSample(kind, new, attn, bs, kv, 0.0)
        sigma = self.config.noise_sigma
        seconds = self.truth.predict(sample) * (self.rng.lognormvariate(0, sigma) if sigma else 1)
        sample = sample._replace(seconds=seconds)
        model = self.policy.model
        predicted = model.predict(sample) if model.calibrated(kind) else None
        self.steps.append(StepRecord(self.now, kind, seconds, predicted, bs, new))
        if self.config.learn:
            model.observe(sample)
        self.now += seconds
        self.busy_s += seconds

    def _prefill(self) -> bool:
        """Admit and run one prefill step; False when nothing was prefilled."""
        if not (self._waiting or self._chunked):
            return False
        cfg = self.config
        engine = self._engine()
        budget = cfg.max_prefill_tokens
        step = self.policy.plan_step(engine)
        own = step.budget
        if own is not None:
            budget = min(budget, own)
        if budget <= 0 and not self._running:
            budget = cfg.max_prefill_tokens  # NOTE: a budget must never stall an idle engine
        batch: list[tuple[_Live, int, int]] = []  # (request, new tokens, cached tokens)
        if (chunk := self._chunked) is not None and budget > 0:
            n = min(chunk.target - chunk.prefilled, budget)
            batch.append((chunk, n, chunk.prefilled))
            budget -= n
            if chunk.prefilled + n == chunk.target:
                self._chunked = None
        for i, rid in enumerate(step.order if self._waiting and budget > 0 else []):
            view, live = self._waiting[rid], self._live[rid]
            if budget <= 0:
                break
            full = len(self._running) + len(batch) >= cfg.max_running
            if full or live.req.reserve > self.free_kv:
                # NOTE: SGLang stops at the first request that does not fit (no skipping). Like
                # the adapter, only the head of the queue, with no chunk in progress, may have
                # the policy preempt running requests for it; it is then retried once.
                if i > 0 or chunk is not None:
                    break
                short = max(live.req.reserve - self.free_kv, 0)
                for victim in self.policy.victims(view, short, self._engine(), int(full)):
                    self._preempt(victim)
                full = len(self._running) + len(batch) >= cfg.max_running
                if full or live.req.reserve > self.free_kv:
                    break
            del self._waiting[rid]
            self.free_kv -= live.req.reserve
            live.target, live.prefilled = view.prefill_tokens, 0
            n = min(live.target, budget)
            batch.append((live, n, 0))
            budget -= n
            if n < live.target:
                self._chunked = live  # SGLang chunks the request that overflows the budget
                break
        if not batch:
            return False
        new = sum(n for _, n, _ in batch)
        self._measure("prefill", new, sum(attn_work(n, c) for _, n, c in batch), len(batch), 0)
        for live, n, _ in batch:
            live.prefilled += n
            if live is self._chunked:
                continue
            live.generated += 1  # the step that completes a (re-)prefill samples a token
            live.last_token_at = self.now
            if live.first_token_at is None:
                live.first_token_at = self.now
            if live.generated >= live.req.output_tokens:
                self._end(live)
            else:
                self._running[live.req.rid] = live
                self._kv_read += live.req.prompt_tokens + live.generated
        return True

    def _decode(self) -> None:
        bs = len(self._running)
        self._measure("decode", bs, 0.0, bs, self._kv_read)
        self._kv_read += bs
        done = []
        for live in self._running.values():  # NOTE: the hot loop; kept free of calls
            live.generated += 1
            live.last_token_at = self.now
            if live.generated >= live.req.output_tokens:
                done.append(live)
        for live in done:
            self._end(live)

    def check_integrity(self) -> None:
        """Raise AssertionError if the state is inconsistent (requests, KV, slots)."""
        chunk = [self._chunked] if self._chunked else []
        held = [*self._running.values(), *chunk]
        queued = [x.req.rid for x in [*self._pending, *held]] + list(self._waiting)
        if len(set(queued)) != len(queued) or len(queued) + self._done != len(self._live):
            raise AssertionError("a request is in two places at once, or lost")
        if sum(x.req.reserve for x in held) + self.free_kv != self.config.kv_tokens:
            raise AssertionError(f"KV: held + free {self.free_kv} != pool")
        if self.free_kv < 0 or len(held) > self.config.max_running:
            raise AssertionError(f"KV ({self.free_kv} free) or slots ({len(held)}) overbooked")
        if any(not 0 < x.generated < x.req.output_tokens for x in self._running.values()):
            raise AssertionError("a running request has no token yet, or all of them")
        if self._kv_read != sum(x.req.prompt_tokens + x.generated for x in self._running.values()):
            raise AssertionError("running KV count drifted")

    def result(self) -> SimResult:
        """Outcomes so far (unfinished requests count as missed)."""
        reqs = [_result(x) for x in self._live.values()]
        return SimResult(reqs, self.steps, self.busy_s, dict(self.policy.model.errors))


def _result(x: _Live) -> RequestResult:
    r, slo = x.req, x.req.slo
    done = x.finished_at is not None and not x.rejected
    first, last = (x.first_token_at, x.last_token_at) if done else (None, None)
    ttft = None if first is None else first - r.arrival
    tpot = None
    if first is not None and last is not None and x.generated > 1:
        tpot = (last - first) / (x.generated - 1)
    e2e = None if not done or x.finished_at is None else x.finished_at - r.arrival
    met_ttft = done and (slo.ttft_s is None or (ttft is not None and ttft <= slo.ttft_s))
    met_tpot = done and (slo.tpot_s is None or tpot is None or tpot <= slo.tpot_s)
    return RequestResult(
        r.rid, slo.slo_class, slo.priority, r.arrival, x.generated, ttft, tpot, e2e, met_ttft,
        met_tpot, met_ttft and met_tpot, x.rejected, x.best_effort, x.preemptions, x.reason,
    )  # fmt: skip


def simulate(
    requests: Iterable[SimRequest], config: SimConfig, seed: int = 0, check: bool = False
) -> SimResult:
    """Run ``requests`` on one instance to completion (``check``: verify state every step)."""
    return simulate_cluster(1, requests, config, "round-robin", seed, check)


def simulate_cluster(
    n_instances: int,
    requests: Iterable[SimRequest],
    config: SimConfig,
    dispatch: Literal["round-robin", "least-loaded"] = "least-loaded",
    seed: int = 0,
    check: bool = False,
) -> SimResult:
    """N independent instances (each with its own copy of the policy model). Arrivals go
    round-robin, or to the instance with the fewest outstanding requests (run in lockstep)."""
    sims = [Simulator(config, seed + i) for i in range(n_instances)]
    for i, req in enumerate(sorted(requests, key=lambda r: r.arrival)):
        if dispatch == "least-loaded":
            for sim in sims:
                sim.run(until=req.arrival, check=check)
            min(sims, key=lambda s: s.outstanding).submit(req)
        else:
            sims[i % n_instances].submit(req)
    errors = {k: ErrorStats() for k in ("prefill", "decode")}
    parts = []
    for sim in sims:
        sim.run(check=check)
        parts.append(part := sim.result())
        for k, e in part.errors.items():
            a = errors[k]
            errors[k] = ErrorStats(
                a.count + e.count, a.abs_rel_sum + e.abs_rel_sum, a.rel_sum + e.rel_sum
            )
    reqs = sorted((r for p in parts for r in p.requests), key=lambda r: (r.arrival, r.rid))
    steps = [s for p in parts for s in p.steps]
    return SimResult(reqs, steps, sum(p.busy_s for p in parts), errors)
