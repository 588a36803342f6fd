"""The discrete-event simulator, driving the real scheduling policies (pure: no SGLang, no GPU)."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from scheduler_patch.latency_model import LatencyModel
from scheduler_patch.sim_results import RequestResult, SimResult
from scheduler_patch.sim_workload import (
    DEFAULT_CLASSES,
    SimRequest,
    poisson_workload,
    reference_model,
)
from scheduler_patch.simulator import SimConfig, Simulator, simulate, simulate_cluster
from scheduler_patch.slo import Slo

INTERACTIVE = Slo(ttft_s=0.4, tpot_s=0.1, slo_class="interactive", priority=2)
BATCH = Slo(ttft_s=None, tpot_s=None, slo_class="batch", priority=0)
STANDARD = Slo(ttft_s=5.0, tpot_s=None, slo_class="standard", priority=1)
POLICY_NAMES = ("fcfs", "priority", "multi-slo")


def config(policy: str = "multi-slo", **kw: object) -> SimConfig:
    kw = {"kv_tokens": 60_000, "max_running": 32, "max_prefill_tokens": 2048, **kw}
    return SimConfig(model=reference_model(), policy=policy, **kw)  # type: ignore[arg-type]


def by_rid(res: SimResult) -> dict[str, RequestResult]:
    return {r.rid: r for r in res.requests}


def ttft(r: RequestResult) -> float:
    assert r.ttft is not None, r
    return r.ttft


def test_deterministic() -> None:
    reqs = poisson_workload(3.0, 30, seed=7)
    assert reqs == poisson_workload(3.0, 30, seed=7)
    assert reqs != poisson_workload(3.0, 30, seed=8)
    cfg = config(noise_sigma=0.1)
    a, b = simulate(reqs, cfg, seed=1), simulate(reqs, cfg, seed=1)
    assert a.requests == b.requests and a.steps == b.steps
    assert simulate(reqs, cfg, seed=2).requests != a.requests  # other step-time noise
    assert simulate_cluster(3, reqs, cfg, seed=1).requests == (
        simulate_cluster(3, reqs, cfg, seed=1).requests
    )


@pytest.mark.parametrize("policy", ["fcfs", "priority", "multi-slo"])
def test_conservation(policy: str) -> None:
    # Small pool and few slots: KV pressure, chunking, preemption (multi-slo).
    reqs = poisson_workload(4.0, 20, seed=3)
    cfg = config(policy, kv_tokens=12_000, max_running=8, max_prefill_tokens=512, noise_sigma=0.1)
    sim = Simulator(cfg, seed=0)
    for r in reqs:
        sim.submit(r)
    sim.run(check=True)  # check_integrity() after every step: KV <= pool, slots <= max_running
    res = sim.result()
    assert [r.rid for r in res.requests] == [r.rid for r in reqs]  # each ends exactly once
    assert sim.outstanding == 0
    for want, got in zip(reqs, res.requests, strict=True):
        assert got.rejected or got.tokens == want.output_tokens, got
        assert got.rejected or (got.ttft is not None and got.e2e is not None)
    assert res.busy_s == pytest.approx(sum(s.seconds for s in res.steps))
    assert max(s.new_tokens for s in res.steps if s.kind == "prefill") <= 512  # chunked
    if policy == "multi-slo":
        assert res.summary().preemptions > 0  # the workload did exercise preemption


def test_integrity_check_catches_corruption() -> None:
    sim = Simulator(config("fcfs"))
    sim.submit(SimRequest("a", 0.0, 100, 10, BATCH))
    sim.step()
    sim.check_integrity()
    sim.free_kv -= 1
    with pytest.raises(AssertionError, match="KV"):
        sim.check_integrity()


def test_fcfs_misses_tight_request_behind_batch_prefills() -> None:
    # Six long batch prompts and one tight interactive request arrive together (interactive
    # last); each prefill step computes at most 512 tokens (~0.14 s).
    reqs = [SimRequest(f"b{i}", 0.0, 500, 20, BATCH) for i in range(6)]
    reqs.append(SimRequest("tight", 0.0, 100, 10, INTERACTIVE))
    out: dict[str, RequestResult] = {}
    for policy in ("fcfs", "multi-slo"):
        res = simulate(reqs, config(policy, max_prefill_tokens=512), check=True)
        out[policy] = by_rid(res)["tight"]
    assert not out["fcfs"].met_ttft and ttft(out["fcfs"]) > 0.4
    assert out["multi-slo"].met_ttft  # earliest deadline first, batch prompts fill the step


def test_prefill_budget_keeps_running_tight_request_on_tpot() -> None:
    # A tight request is decoding when six 2000-token batch prompts arrive: FCFS prefills them
    # in 2048-token steps (~0.55 s each), stalling its decode; multi-slo's budget must not.
    reqs = [SimRequest("tight", 0.0, 100, 30, INTERACTIVE)]
    reqs += [SimRequest(f"b{i}", 0.3, 2000, 20, BATCH) for i in range(6)]
    tight = {p: by_rid(simulate(reqs, config(p), check=True))["tight"] for p in POLICY_NAMES}
    print({p: round(r.tpot or 0, 4) for p, r in tight.items()})
    assert not tight["fcfs"].met_tpot
    assert tight["multi-slo"].met_tpot


def test_multi_slo_beats_priority_and_fcfs_at_2x_overload() -> None:
    # The reference model serves ~2 req/s of DEFAULT_CLASSES when saturated: 4 req/s is 2x.
    reqs = poisson_workload(4.0, 120, DEFAULT_CLASSES, seed=1)
    att: dict[str, float] = {}
    for policy in ("fcfs", "priority", "multi-slo"):
        s = simulate(reqs, config(policy, noise_sigma=0.05)).summary()
        att[policy] = s.attainment
        classes = {k: round(v, 3) for k, v in s.per_class.items()}
        print(f"{policy:9s} attainment {s.attainment:.3f} {classes} preemptions {s.preemptions}")
    assert att["multi-slo"] >= att["fcfs"]
    assert att["multi-slo"] > att["priority"]


def test_preempts_low_priority_for_tight_request_when_kv_is_full() -> None:
    # Three batch requests fill the KV pool (3 x 1300 of 4000); a tight request arrives at 1 s.
    reqs = [SimRequest(f"b{i}", 0.0, 1000, 300, BATCH) for i in range(3)]
    reqs.append(SimRequest("tight", 1.0, 200, 20, INTERACTIVE))
    res = {p: by_rid(simulate(reqs, config(p, kv_tokens=4000), check=True)) for p in POLICY_NAMES}
    tight = res["multi-slo"]["tight"]
    assert tight.met_ttft and tight.preemptions == 0
    victims = [r for r in res["multi-slo"].values() if r.preemptions]
    assert len(victims) == 1 and victims[0].tokens == 300  # re-prefilled, then finished
    assert ttft(victims[0]) < 1.0  # its first token predates the preemption
    for p in ("fcfs", "priority"):  # no preemption: it waits for a batch request to finish
        assert not res[p]["tight"].met_ttft
        assert all(r.preemptions == 0 for r in res[p].values())


def test_unattainable_request_rejected_or_served_last() -> None:
    # 3000 prompt tokens take ~0.85 s alone: a 50 ms TTFT cannot be met.
    hopeless = SimRequest("x", 0.0, 3000, 5, dataclasses.replace(INTERACTIVE, ttft_s=0.05))
    others = [SimRequest(f"s{i}", 0.0, 400, 5, STANDARD) for i in range(5)]
    rejected = by_rid(simulate([hopeless, *others], config(unattainable="reject")))
    assert rejected["x"].rejected and "TTFT" in rejected["x"].reason
    assert rejected["x"].ttft is None and not rejected["x"].met
    assert all(rejected[r.rid].met for r in others)
    served = by_rid(simulate([hopeless, *others], config(max_prefill_tokens=512)))
    x = served["x"]
    assert x.best_effort and not x.rejected and x.tokens == 5
    assert ttft(x) > max(ttft(served[r.rid]) for r in others)


def test_online_correction_learns_true_step_times() -> None:
    truth = reference_model()
    wrong = LatencyModel(
        prefill_coef=[c / 3 for c in truth.prefill_coef or []],
        decode_coef=[c / 3 for c in truth.decode_coef or []],
    )
    reqs = poisson_workload(1.5, 60, seed=5)
    cfg = dataclasses.replace(config("fcfs", truth=truth, noise_sigma=0.05), model=wrong)
    res = simulate(reqs, cfg)
    for kind in ("prefill", "decode"):
        half = sum(s.kind == kind for s in res.steps) // 2
        early, late = res.step_mape(kind, 0, 8), res.step_mape(kind, half)
        print(f"{kind}: mape first 8 steps {early:.3f}, second half {late:.3f}")
        assert early > 0.5 and late < 0.1
    assert res.errors["decode"].count > 200


@pytest.mark.parametrize("dispatch", ["round-robin", "least-loaded"])
def test_cluster(dispatch: Literal["round-robin", "least-loaded"]) -> None:
    reqs = poisson_workload(6.0, 30, seed=4)
    huge = SimRequest("huge", 1.0, 59_000, 2000, STANDARD)  # larger than a KV pool
    res = simulate_cluster(4, [*reqs, huge], config(noise_sigma=0.05), dispatch, check=True)
    assert sorted(r.rid for r in res.requests) == sorted(r.rid for r in [*reqs, huge])
    assert by_rid(res)["huge"].rejected and "KV pool" in by_rid(res)["huge"].reason
    s = res.summary()
    print(dispatch, s)
    assert s.submitted == len(reqs) + 1 and s.rejected == 1
    assert s.attainment > 0.9 and s.busy_s == pytest.approx(sum(x.seconds for x in res.steps))
    assert res.errors["decode"].count == sum(x.kind == "decode" for x in res.steps)
