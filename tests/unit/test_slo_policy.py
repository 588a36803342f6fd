"""SLO fields, the latency model and the scheduling policies on constructed queues (pure code)."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from scheduler_patch.latency_model import LatencyModel, StepSample, attn_work
from scheduler_patch.multi_slo import MultiSloPolicy
from scheduler_patch.policy import POLICIES, make_policy
from scheduler_patch.slo import Slo, SloDefaults, SloError, header_fields, parse_classes
from scheduler_patch.views import EngineView, ReqView

# 1 s per 1000 new tokens (+ 10 ms per step); decode 20 ms + 1 ms per request.
MODEL = LatencyModel(prefill_coef=[0.01, 1.0, 0.0], decode_coef=[0.02, 0.001, 0.0])


def slo(ttft: float | None = None, tpot: float | None = None, priority: int = 0) -> Slo:
    return Slo(ttft_s=ttft, tpot_s=tpot, slo_class="c", priority=priority)


def req(rid: str, prompt: int = 1000, arrival: float = 0.0, **kw: object) -> ReqView:
    fields: dict[str, object] = {"cached_tokens": 0, "output_tokens": 0, "max_new_tokens": 16}
    fields.update(kw)
    fields.setdefault("slo", slo())
    return ReqView(rid=rid, arrival=arrival, prompt_tokens=prompt, **fields)  # type: ignore[arg-type]


def engine(waiting=(), running=(), now: float = 0.0, free: int = 100_000) -> EngineView:  # type: ignore[no-untyped-def]
    return EngineView(now, list(waiting), list(running), free, max_prefill_tokens=4096)


# ---------------------------------------------------------------------------------- SLO fields
def test_classes_parse_and_resolve_with_precedence() -> None:
    classes = parse_classes("interactive:ttft=300,tpot=50,priority=2; batch:priority=-1")
    defaults = SloDefaults(ttft_ms=2000, tpot_ms=None, classes=classes)
    assert defaults.resolve({}, None) == Slo(2.0, None, "default", 0)
    assert defaults.resolve({"slo_class": "interactive"}, None) == Slo(0.3, 0.05, "interactive", 2)
    # request fields beat the class; an explicit priority beats the class's
    got = defaults.resolve({"slo_class": "interactive", "slo_ttft_ms": "120"}, 7)
    assert got == Slo(0.12, 0.05, "interactive", 7)
    assert defaults.resolve({"slo_class": "batch"}, None) == Slo(2.0, None, "batch", -1)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("x", "expected 'name:key=value"),
        ("a:ttft=1;a:ttft=2", "given twice"),
        ("a:latency=3", "expected ttft=MS"),
        ("a:ttft=-5", "must be > 0"),
        ("a:priority=high", "bad priority"),
    ],
)
def test_bad_class_specs_name_the_flag(spec: str, match: str) -> None:
    with pytest.raises(SloError, match=match) as e:
        parse_classes(spec)
    assert "--slo-classes" in str(e.value)


@pytest.mark.parametrize(
    "custom, match",
    [
        ({"slo_ttft_ms": "soon"}, "slo_ttft_ms must be a number"),
        ({"slo_tpot_ms": 0}, "slo_tpot_ms must be > 0"),
        ({"slo_ttft_ms": True}, "slo_ttft_ms must be a number"),
        ({"slo_ttft_ms": float("nan")}, "must be > 0"),
        ({"slo_class": "gold"}, "unknown slo_class 'gold'"),
    ],
)
def test_bad_request_fields_are_refused(custom: dict[str, object], match: str) -> None:
    with pytest.raises(SloError, match=match):
        SloDefaults().resolve(custom, None)


def test_headers() -> None:
    got = header_fields({"x-slo-ttft-ms": "250", "x-slo-class": " gold ", "other": "1"})
    assert got == {"slo_ttft_ms": 250.0, "slo_class": "gold"}
    with pytest.raises(SloError, match="header x-slo-tpot-ms"):
        header_fields({"x-slo-tpot-ms": "fast"})


# ---------------------------------------------------------------------------------- latency model
def test_fit_recovers_coefficients_and_learns_online() -> None:
    truth = LatencyModel(prefill_coef=[0.05, 2.0, 0.3], decode_coef=[0.03, 0.004, 0.02])
    rng = random.Random(0)
    model = LatencyModel()
    assert not model.calibrated("prefill") and model.prefill(1000, 0.0) == 0.0
    for _ in range(64):
        new, cached = rng.randint(16, 4096), rng.randint(0, 8192)
        s = StepSample("prefill", new, attn_work(new, cached), 1, 0, 0.0)
        model.observe(s._replace(seconds=truth.predict(s)))
        bs, kv = rng.randint(1, 64), rng.randint(100, 50_000)
        d = StepSample("decode", bs, 0.0, bs, kv, 0.0)
        model.observe(d._replace(seconds=truth.predict(d)))
    assert model.prefill_coef == pytest.approx(truth.prefill_coef, rel=1e-6)
    assert model.decode_coef == pytest.approx(truth.decode_coef, rel=1e-6)
    assert model.errors["prefill"].as_dict()["mape"] < 1e-6 + model.errors["prefill"].rel_sum


def test_fit_never_returns_negative_coefficients() -> None:
    model = LatencyModel(min_samples=2)
    # time falls with tokens: plain least squares would give a negative slope
    for new, sec in ((100, 1.0), (200, 0.9), (300, 0.8), (400, 0.7)):
        model.observe(StepSample("prefill", new, 0.0, 1, 0, sec))
    assert model.prefill_coef is not None and min(model.prefill_coef) >= 0


def test_online_correction_reduces_error_of_a_wrong_profile() -> None:
    truth = LatencyModel(prefill_coef=[0.01, 1.0, 0.0], decode_coef=[0.02, 0.001, 0.0])
    model = LatencyModel(prefill_coef=[0.003, 0.3, 0.0], decode_coef=[0.006, 0.0003, 0.0])
    first, last = [], []
    for i in range(200):
        s = StepSample("decode", 1 + i % 32, 0.0, 1 + i % 32, 1000, 0.0)
        s = s._replace(seconds=truth.predict(s))
        err = abs(model.predict(s) - s.seconds) / s.seconds
        (first if i < 8 else last).append(err)
        model.observe(s)
    assert min(first) > 0.5 and max(last[-50:]) < 1e-6


def test_profile_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(MODEL.to_profile("test")))
    loaded = LatencyModel.load(path)
    assert loaded.prefill(500, 0.0) == MODEL.prefill(500, 0.0)
    path.write_text(json.dumps({"version": 1, "prefill": [1, -2, 3]}))
    with pytest.raises(ValueError, match="non-negative"):
        LatencyModel.load(path)
    with pytest.raises(ValueError, match="cannot read"):
        LatencyModel.load(tmp_path / "missing.json")


# ---------------------------------------------------------------------------------- policies
def test_registry() -> None:
    assert set(POLICIES) == {"fcfs", "priority", "multi-slo"}
    with pytest.raises(ValueError, match="unknown scheduling policy"):
        make_policy("lottery", MODEL)


def test_fcfs_and_priority_orders() -> None:
    w = [
        req("a", arrival=2, slo=slo(priority=1)),
        req("b", arrival=1),
        req("c", arrival=3, slo=slo(priority=5)),
    ]
    assert make_policy("fcfs", MODEL).order(engine(w)) == ["b", "a", "c"]
    assert make_policy("priority", MODEL).order(engine(w)) == ["c", "a", "b"]


def test_multi_slo_orders_deadlines_first_then_untimed_then_late_then_best_effort() -> None:
    w = [
        req("batch", arrival=0.0, slo=slo(priority=5)),  # no TTFT target
        req("loose", arrival=0.0, slo=slo(ttft=30.0)),
        req("tight", arrival=0.5, slo=slo(ttft=2.0)),
        req("hopeless", arrival=0.0, slo=slo(ttft=0.5)),  # due at 0.5, needs 1 s
        req("demoted", arrival=0.0, slo=slo(ttft=9.0), best_effort=True),
    ]
    order = MultiSloPolicy(MODEL).order(engine(w, now=0.0))
    assert order == ["tight", "loose", "batch", "hopeless", "demoted"]


def test_moore_hodgson_keeps_the_most_important_requests_on_time() -> None:
    # three 1-s prefills all due by 2.2 s: only two can make it; the least important moves back
    w = [
        req("p1", slo=slo(ttft=2.0, priority=1)),
        req("p0", slo=slo(ttft=2.1, priority=0)),
        req("p2", slo=slo(ttft=2.2, priority=2)),
    ]
    assert MultiSloPolicy(MODEL).order(engine(w)) == ["p1", "p2", "p0"]
    # equal priorities: the longest job goes, so the two short ones both make it
    w = [
        req("long", prompt=1800, slo=slo(ttft=2.0)),
        req("s1", prompt=900, slo=slo(ttft=2.1)),
        req("s2", prompt=900, slo=slo(ttft=2.2)),
    ]
    assert MultiSloPolicy(MODEL).order(engine(w)) == ["s1", "s2", "long"]


def test_unattainable_requests_are_demoted_or_rejected() -> None:
    big = req("big", prompt=10_000, slo=slo(ttft=2.0))  # 10 s of prefill for a 2 s target
    assert MultiSloPolicy(MODEL).on_arrival(big, engine()).action == "best-effort"
    verdict = MultiSloPolicy(MODEL, "reject").on_arrival(big, engine())
    assert verdict.action == "reject" and "TTFT SLO 2000 ms" in verdict.reason
    late = req("late", prompt=100, slo=slo(ttft=1.0))
    assert MultiSloPolicy(MODEL).on_arrival(late, engine(now=0.95)).action == "best-effort"
    assert MultiSloPolicy(MODEL).on_arrival(late, engine(now=0.5)).action == "admit"
    tpot = req("t", prompt=100, slo=slo(tpot=0.001))  # a lone decode step takes 21 ms
    assert "TPOT SLO" in MultiSloPolicy(MODEL).on_arrival(tpot, engine()).reason
    with pytest.raises(ValueError):
        MultiSloPolicy(MODEL, "drop")  # type: ignore[arg-type]


def test_prefill_budget_protects_running_decodes() -> None:
    # 10 of 16 tokens out; the 16th is due at 15 x 0.1 s; 6 decode steps still to run: a
    # prefill step of n tokens fits if safety x (its stall + 6 decodes of a batch one request
    # bigger) ends by then, less the paced reserve: pace x 6 x (TPOT - step)
    running = [
        req("r", prompt=100, output_tokens=10, first_token_at=0.0, slo=slo(tpot=0.1, priority=1))
    ]
    waiting = [req("w", prompt=4000, slo=slo(priority=1))]
    now = 0.48
    policy = MultiSloPolicy(MODEL)

    def cost(n: int) -> float:
        return policy.safety * (MODEL.prefill(n, attn_work(n, 0)) + 6 * MODEL.decode(2, 110 + n))

    budget = policy.prefill_budget(engine(waiting, running, now=now))
    reserve = policy.pace * 6 * (0.1 - MODEL.decode(1, 110))
    assert budget is not None and budget > 0
    assert cost(budget) <= 1.5 - now - reserve < cost(budget + 1)
    # no slack left: no prefill this step
    assert policy.prefill_budget(engine(waiting, running, now=1.5 - 6 * 0.021 - 1e-6)) == 0
    # a decode that will miss anyway does not hold the queue
    assert policy.prefill_budget(engine(waiting, running, now=5.0)) is None
    # a more important request waits: the decode may slip; the step still fits that request
    urgent = [req("u", prompt=3000, slo=slo(ttft=1.0, priority=3))]
    assert policy.prefill_budget(engine(urgent, running, now=now)) == 3000
    # the step ends before the earliest TTFT deadline: 0.3 s left leaves ~290 tokens, but never
    # fewer than the tight request's own
    tight = [req("t", prompt=100, slo=slo(ttft=0.3)), req("bulk", prompt=4000)]
    assert policy.prefill_budget(engine(tight, [], now=0.0)) == 290
    # an uncalibrated model sets no budget
    assert MultiSloPolicy(LatencyModel()).prefill_budget(engine(waiting, running, now)) is None


def test_prefill_budget_paces_the_slack() -> None:
    # same running request as above: half the allowance of its 6 tokens to come is held back
    running = [
        req("r", prompt=100, output_tokens=10, first_token_at=0.0, slo=slo(tpot=0.1, priority=1))
    ]
    policy, now = MultiSloPolicy(MODEL), 0.48
    waiting = [req("w", prompt=4000, slo=slo(priority=1))]
    paced = policy.prefill_budget(engine(waiting, running, now=now))
    policy.pace = 0.0
    greedy = policy.prefill_budget(engine(waiting, running, now=now))
    assert paced is not None and greedy is not None and 0 < paced < greedy
    # later in its output less is held back: the budget grows as it decodes
    policy.pace = MultiSloPolicy.pace
    later = req(
        "r", prompt=100, output_tokens=13, first_token_at=0.0, slo=slo(tpot=0.1, priority=1)
    )
    grown = policy.prefill_budget(engine(waiting, [later], now=now + 3 * MODEL.decode(1, 112)))
    assert grown is not None and grown > paced


def test_prefill_budget_counts_the_slower_decodes_of_a_bigger_batch() -> None:
    # decode steps cost 50 ms more per 1000 KV tokens: admitting n tokens slows each of the 100
    # remaining decodes of a request whose last token is due in 4 s by 5e-5 * n seconds
    model = LatencyModel(prefill_coef=[0.0, 0.1, 0.0], decode_coef=[0.02, 0.0, 0.05])
    running = [
        req("r", prompt=0, output_tokens=1, max_new_tokens=101, first_token_at=0.0,
            slo=slo(tpot=0.04))
    ]  # fmt: skip
    policy = MultiSloPolicy(model)
    budget = policy.prefill_budget(engine([req("w", prompt=9000)], running))
    assert budget is not None

    def cost(n: int) -> float:
        return policy.safety * (model.prefill(n, 0) + 100 * model.decode(2, 1 + n))

    due = 4.0 - policy.pace * 100 * (0.04 - model.decode(1, 1))  # less the paced reserve
    assert cost(budget) <= due < cost(budget + 1)
    alone = due / policy.safety - 100 * model.decode(1, 1)  # stall if decodes did not slow
    assert budget < _prefill_only(model, alone)  # the slower decodes are what limits it


def _prefill_only(model: LatencyModel, seconds: float) -> int:
    return int(seconds / model.prefill(1000, 0) * 1000)


def test_multi_slo_preempts_only_when_waiting_would_miss() -> None:
    # two running requests with 5 and 100 tokens left; decode steps of ~22 ms
    running = [
        req("soon", prompt=50, output_tokens=95, max_new_tokens=100, slo=slo(priority=0)),
        req("long", prompt=50, output_tokens=0, max_new_tokens=100, slo=slo(priority=0)),
    ]
    patient = req("p", prompt=100, slo=slo(ttft=1.0, priority=5))  # waits ~0.11 s: fine
    assert MultiSloPolicy(MODEL).victims(patient, 0, engine([patient], running), 1) == []
    running[0] = (
        running[0]._replace(output_tokens=0)
        if False
        else req("soon", prompt=50, output_tokens=0, max_new_tokens=100, slo=slo(priority=0))
    )
    # now the first slot frees in ~2.2 s: the urgent request (due in 1 s) preempts one
    assert MultiSloPolicy(MODEL).victims(patient, 0, engine([patient], running), 1) == ["soon"]


def test_victims_cover_the_need_with_the_least_important_newest_requests() -> None:
    running = [
        req("low-old", prompt=600, output_tokens=50, slo=slo(priority=0)),
        req("low-new", prompt=600, arrival=1.0, output_tokens=2, slo=slo(priority=0)),
        req("mid", prompt=600, output_tokens=2, slo=slo(priority=1)),
        req("high", prompt=600, output_tokens=2, slo=slo(priority=9)),
    ]
    urgent = req("u", prompt=500, slo=slo(ttft=2.0, priority=5))
    policy = MultiSloPolicy(MODEL)
    assert policy.victims(urgent, 500, engine([urgent], running)) == ["low-new"]
    assert policy.victims(urgent, 1300, engine([urgent], running)) == ["low-new", "low-old", "mid"]
    assert policy.victims(urgent, 5000, engine([urgent], running)) == []  # cannot cover: none
    late = req("u", prompt=5000, slo=slo(ttft=2.0, priority=5))  # late anyway: no victims
    assert policy.victims(late, 500, engine([late], running)) == []
    assert make_policy("fcfs", MODEL).victims(urgent, 500, engine([urgent], running)) == []
    vip = req("v", prompt=10, slo=slo(priority=20))
    assert make_policy("priority", MODEL).victims(vip, 500, engine([vip], running)) == ["low-new"]


# ---------------------------------------------------------------------------------- references
def reference_order(policy: MultiSloPolicy, e: EngineView) -> list[str]:
    """The slow, obvious version of MultiSloPolicy.order (list scans instead of heaps)."""

    def cost(r: ReqView) -> float:
        n = r.prefill_tokens
        return policy.model.prefill(n, attn_work(n, r.cached_tokens))

    live = [r for r in e.waiting if not r.best_effort]
    timed = sorted(
        (r for r in live if r.deadline() is not None),
        key=lambda r: (r.deadline(), -r.priority, r.arrival, cost(r), r.rid),
    )
    kept: list[ReqView] = []
    late: list[ReqView] = []
    for r in timed:
        kept.append(r)
        while kept and e.now + sum(cost(k) for k in kept) > r.deadline():  # type: ignore[operator]
            worst = min(kept, key=lambda k: (k.priority, -cost(k), timed.index(k)))
            kept.remove(worst)
            late.append(worst)
    untimed = sorted(
        (r for r in live if r.deadline() is None), key=lambda r: (-r.priority, r.arrival, r.rid)
    )
    late.sort(key=lambda r: (-r.priority, r.deadline(), r.rid))
    demoted = sorted((r for r in e.waiting if r.best_effort), key=lambda r: (r.arrival, r.rid))
    return [r.rid for r in kept + untimed + late + demoted]


def random_queue(rng: random.Random, n: int) -> list[ReqView]:
    out = []
    for i in range(n):
        ttft = rng.choice((None, rng.uniform(0.2, 6.0)))
        out.append(
            req(
                f"q{i:03d}",
                prompt=rng.randint(10, 2000),
                arrival=rng.uniform(0, 1),
                cached_tokens=rng.choice((0, 0, 5)),
                slo=slo(ttft=ttft, priority=rng.randint(0, 3)),
                best_effort=rng.random() < 0.1,
            )
        )
    return out


def test_order_matches_the_slow_reference() -> None:
    rng = random.Random(7)
    policy = MultiSloPolicy(MODEL)
    for _ in range(200):
        e = engine(random_queue(rng, rng.randint(1, 40)), now=rng.uniform(0, 2))
        assert policy.order(e) == reference_order(policy, e)


def test_order_keeps_the_most_requests_on_time_at_equal_priority() -> None:
    """Moore-Hodgson is optimal for the number of on-time jobs: check against every subset."""
    rng = random.Random(3)
    policy = MultiSloPolicy(MODEL)
    for _ in range(60):
        w = [
            req(f"j{i}", prompt=rng.randint(100, 1500), slo=slo(ttft=rng.uniform(0.3, 4.0)))
            for i in range(rng.randint(1, 7))
        ]
        e = engine(w)
        order = policy.order(e)

        def on_time(seq: list[ReqView]) -> int:
            t, n = 0.0, 0
            for r in seq:
                t += MODEL.prefill_request(r.prefill_tokens, 0)
                n += t <= r.deadline()  # type: ignore[operator]
            return n

        by_rid = {r.rid: r for r in w}
        best = max(
            on_time(sorted(sub, key=lambda r: r.deadline()))  # type: ignore[arg-type,return-value]
            for k in range(len(w) + 1)
            for sub in itertools.combinations(w, k)
        )
        assert on_time([by_rid[rid] for rid in order]) == best


def test_budget_is_the_same_with_or_without_the_steps_order() -> None:
    """plan_step's budget uses the queue facts that its order pass found; prefill_budget alone
    reads them from the queue; both paths agree (and plan_step's order is order())."""
    rng = random.Random(11)
    for _ in range(100):
        waiting = random_queue(rng, rng.randint(1, 30))
        running = [
            req(f"r{i}", prompt=rng.randint(10, 500), output_tokens=rng.randint(1, 40),
                max_new_tokens=64, first_token_at=rng.uniform(0, 1),
                slo=slo(tpot=rng.choice((None, 0.05, 0.2)), priority=rng.randint(0, 3)))
            for i in range(rng.randint(0, 8))
        ]  # fmt: skip
        e = engine(waiting, running, now=rng.uniform(0, 3))
        cold = MultiSloPolicy(MODEL).prefill_budget(e)
        warm = MultiSloPolicy(MODEL).plan_step(e)
        assert warm.budget == cold
        assert warm.order == MultiSloPolicy(MODEL).order(e)


def test_decode_admission_keeps_running_tpot() -> None:
    # P/D decode stage: each arrived request that joins makes every decode step 1 ms slower; a
    # running request with 6 decodes left and its last token due in 0.35 s admits the longest
    # prefix whose bigger batch still keeps its TPOT (safety and paced reserve included)
    running = [req("r", prompt=10, output_tokens=10, first_token_at=0.0, slo=slo(tpot=0.03))]
    arrived = [req(f"w{i}", prompt=10, output_tokens=1) for i in range(30)]
    policy, now = MultiSloPolicy(MODEL), 0.1
    due = 0.03 * 15 - now - policy.pace * 6 * (0.03 - MODEL.decode(1, 20))

    def fits(k: int) -> bool:  # the slow, obvious version
        return policy.safety * 6 * MODEL.decode(1 + k, 20 + 11 * k) <= due

    expected = max(k for k in range(31) if fits(k))
    assert 0 < expected < 30
    assert policy.decode_admission(engine(arrived, running, now=now)) == expected
    # a more important arrival: the running request may slip, no limit
    urgent = [req("u", prompt=10, output_tokens=1, slo=slo(priority=5)), *arrived]
    assert policy.decode_admission(engine(urgent, running, now=now)) is None
    # a running request that will miss anyway does not hold the others back
    assert policy.decode_admission(engine(arrived, running, now=5.0)) is None
    # nothing running: no limit; FCFS and priority set none either
    assert policy.decode_admission(engine(arrived, [], now=now)) is None
    assert POLICIES["priority"](MODEL).decode_admission(engine(arrived, running, now=now)) is None
