"""Unit tests of the hardening pieces (no server): the token-id gate, request field checks, the
pool fit of a MEPIC plan, the liveness watch, the /server_info privacy rules, the shutdown 503."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi import HTTPException

from mepic_sglang import token_ids
from mepic_sglang.chunks.manager import ChunkManager
from mepic_sglang.chunks.plan import ChunkUse, Plan, fit_extra
from mepic_sglang.chunks.recompute import make_policy
from mepic_sglang.sglang import chunk_admission, input_guard, liveness, privacy, shutdown
from mepic_sglang.sglang.liveness import Liveness, LivenessMetrics, SchedulerLiveness
from mepic_sglang.sglang.state import req_state
from mepic_sglang.token_ids import InputError


# ---- the token-id gate ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ids", "problem"),
    [
        ([0, 1, 49151], None),
        ([5, 49152], "token id 49152 at index 1"),
        ([-1], "token id -1 at index 0"),
        ([2**63], "token id 9223372036854775808 at index 0"),
        ([True], "token id True at index 0"),
        ([1.0], "token id 1.0 at index 0 is not an integer"),
        (["7"], "token id '7' at index 0 is not an integer"),
        ([np.int64(5), np.int32(7)], None),  # Engine users pass numpy ids; SGLang takes them
        ([np.int64(49152)], "token id np.int64(49152) at index 0 is outside"),
    ],
)
def test_token_id_problem(ids: list[object], problem: str | None) -> None:
    got = token_ids.token_id_problem(ids, 49152)
    assert got == problem if problem is None else problem in str(got)


def test_unknown_vocabulary_still_bounds_ids_to_int64() -> None:
    assert token_ids.token_id_problem([2**62], 0) is None
    assert "2**63" in str(token_ids.token_id_problem([2**63], 0))


def _manager(vocab: int) -> SimpleNamespace:
    return SimpleNamespace(model_config=SimpleNamespace(vocab_size=vocab))


def test_gate_names_input_ids_and_leaves_multimodal_prompts_to_sglang() -> None:
    gate = input_guard.before_create_tokenized_object
    with pytest.raises(InputError, match="input_ids: token id 49152 at index 2"):
        gate(_manager(49152), object(), "", [1, 2, 49152], None, None, None)
    assert gate(_manager(49152), object(), "", [1, 2, 3], None, None, None) is None
    assert gate(_manager(49152), object(), "", None) is None  # embeddings only
    with pytest.raises(InputError, match="the prompt is empty"):
        gate(_manager(49152), SimpleNamespace(session_params=None), "", [], None, None, None)
    session = SimpleNamespace(session_params={"id": "s1"})  # the history is the prompt
    assert gate(_manager(49152), session, "", [], None, None, None) is None
    # image placeholder ids may lie outside the text vocabulary
    assert gate(_manager(100), object(), "", [1, 500], None, {"image": 1}, None) is None
    assert gate(_manager(100), object(), "", [1, 500], mm_inputs={"image": 1}) is None


# ---- field checks ---------------------------------------------------------------------------
def _req(**kw: object) -> SimpleNamespace:
    base: dict[str, object] = {
        "text": "hi",
        "input_ids": None,
        "cache_salt": None,
        "sampling_params": {},
    }
    return SimpleNamespace(**{**base, **kw})


def test_cache_salt_type_and_requirement() -> None:
    check = input_guard.check_cache_salt
    check(_req(cache_salt="tenant-a"), required=True, single=True)
    check(_req(), required=False, single=True)
    check(_req(text=["a", "b"], cache_salt=["x", "y"]), required=True, single=False)
    with pytest.raises(InputError, match=r"cache_salt: expected a string, got \['a'\]"):
        check(_req(cache_salt=["a"]), required=False, single=True)
    with pytest.raises(InputError, match="cache_salt: expected a string, got 3"):
        check(_req(cache_salt=3), required=False, single=False)
    with pytest.raises(InputError, match="--mepic-require-cache-salt"):
        check(_req(), required=True, single=False)
    with pytest.raises(InputError, match="--mepic-require-cache-salt"):
        check(_req(cache_salt=""), required=True, single=True)


def test_reserved_custom_params_keys() -> None:
    check = input_guard.check_reserved_keys
    forged = _req(sampling_params={"custom_params": {"mepic_regions": [0]}})
    early = _req(sampling_params=[{}, {"custom_params": {"slo_arrival": 0}}])
    check(forged, mepic=False, slo_scheduling=True)  # nobody reads it there
    check(early, mepic=True, slo_scheduling=False)
    with pytest.raises(InputError, match="'mepic_' are reserved"):
        check(forged, mepic=True, slo_scheduling=False)
    with pytest.raises(InputError, match="custom_params.slo_arrival is set by the server"):
        check(early, mepic=False, slo_scheduling=True)


# ---- the pool fit of a plan -----------------------------------------------------------------
def _plan(warm_cold: str, copy_warm: bool = False, head: int = 16) -> Plan:
    """One 3-page chunk per letter: 'w' warm, 'c' cold."""
    uses = tuple(
        ChunkUse(f"k{i}", 48 * i, 48 * i + head, 48 * i + 48, warm=ch == "w")
        for i, ch in enumerate(warm_cold)
    )
    return Plan(48 * len(warm_cold) + 16, uses, copy_warm=copy_warm)


def _fit_reference(plan: Plan, room: int) -> tuple[bool, int]:
    """Plain reference of the rule: everything if it fits; else no copies, and cold chunks kept
    greedily in prompt order. Returns (copies kept, scratch kept)."""
    cold = [u for u in plan.uses if not u.warm]
    copies = sum(u.end - u.shared_start for u in plan.uses if u.warm) if plan.copy_warm else 0
    if copies + sum(u.head for u in cold) <= room:
        return plan.copy_warm, sum(u.head for u in cold)
    scratch = 0
    for u in cold:  # greedy in prompt order: a later small chunk may still fit
        if scratch + u.head <= room:
            scratch += u.head
    return False, scratch


@pytest.mark.parametrize("layout", ["", "w", "c", "wcw", "cccc", "cwcwc"])
@pytest.mark.parametrize("copy_warm", [False, True])
def test_fit_extra_matches_the_reference(layout: str, copy_warm: bool) -> None:
    plan = _plan(layout, copy_warm)
    for room in range(0, plan.extra_tokens + 40, 8):
        fitted = fit_extra(plan, room)
        assert fitted.extra_tokens <= room or (plan.extra_tokens == 0)
        assert fitted.cached_tokens == plan.cached_tokens  # served positions never move
        assert fitted.warm == plan.warm
        assert (fitted.copy_warm, fitted.scratch_tokens) == _fit_reference(plan, room)
        assert fitted.in_context == len(plan.cold) - len(fitted.cold)
        if plan.extra_tokens <= room:
            assert fitted is plan


def test_fit_extra_keeps_later_small_heads() -> None:
    uses = (
        ChunkUse("big", 0, 32, 64, warm=False),
        ChunkUse("small", 64, 80, 128, warm=False),
    )
    fitted = fit_extra(Plan(144, uses), 16)
    assert [u.key for u in fitted.cold] == ["small"] and fitted.in_context == 1


# ---- liveness -------------------------------------------------------------------------------
def test_liveness_counts_only_time_with_waiting_work_and_no_batch() -> None:
    live = Liveness(timeout_s=10.0, last_progress=0.0)
    live.observe(100.0, ran_batch=False, waiting=0, paused=False)  # idle for 100 s: fine
    live.observe(101.0, ran_batch=False, waiting=1, paused=False)  # a request arrives, blocked
    assert live.no_progress_s(105.0) == 4.0 and not live.stuck(105.0)
    live.observe(111.0, ran_batch=False, waiting=1, paused=False)
    assert live.stalled and live.stalls == 1 and live.no_progress_s(111.0) == 10.0
    live.observe(112.0, ran_batch=True, waiting=1, paused=False)  # a batch ran: recovered
    assert not live.stalled and live.no_progress_s(112.0) == 0.0
    live.observe(140.0, ran_batch=False, waiting=1, paused=False)  # the step after it: progress
    assert not live.stalled
    live.observe(151.0, ran_batch=False, waiting=1, paused=False)
    assert live.stalled and live.stalls == 2


def test_a_long_forward_read_between_steps_is_not_a_stall() -> None:
    # a 30-s forward starts at 101 while a request waits; the health hook reads at 131, right
    # after the batch's results were processed and before the next step
    live = Liveness(timeout_s=10.0, last_progress=0.0)
    live.observe(100.0, ran_batch=False, waiting=1, paused=False)
    live.observe(101.0, ran_batch=True, waiting=1, paused=False)
    live.update(131.0, waiting=1, paused=False)
    assert not live.stalled and live.no_progress_s(131.0) == 0.0


def test_liveness_pause_disable_and_read_only_update() -> None:
    live = Liveness(timeout_s=5.0, last_progress=0.0)
    live.observe(1.0, ran_batch=False, waiting=3, paused=False)
    live.observe(50.0, ran_batch=False, waiting=3, paused=True)  # /pause_generation on purpose
    assert not live.stalled
    live.update(54.0, waiting=3, paused=True)  # a paused engine runs no steps: reads only
    assert not live.stalled
    live.update(60.0, waiting=3, paused=False)  # a read between steps flags it
    assert live.stalled
    live.update(61.0, waiting=0, paused=False)  # the queue emptied (e.g. the request was aborted)
    assert not live.stalled and live.no_progress_s(61.0) == 0.0
    off = Liveness(timeout_s=0.0, last_progress=0.0)
    off.observe(1.0, ran_batch=False, waiting=1, paused=False)
    off.observe(1e6, ran_batch=False, waiting=1, paused=False)
    assert not off.stalled and off.state(1e6)["no_progress_s"] > 0


def test_the_stall_signal_reaches_the_launcher_side(tmp_path: Path) -> None:
    watch = SchedulerLiveness(
        Liveness(timeout_s=5.0, last_progress=0.0), LivenessMetrics(False), tmp_path / "dp0.json"
    )
    sched = SimpleNamespace(waiting_queue=[object()], _engine_paused=False)
    assert not liveness.read_stalled(tmp_path)
    watch.live.waiting_since = 0.0
    watch.refresh(sched)  # monotonic clock >> 5 s since "0.0"
    assert watch.live.stalled and liveness.read_stalled(tmp_path)
    sched.waiting_queue = []
    watch.refresh(sched)
    assert not watch.live.stalled and not liveness.read_stalled(tmp_path)
    assert list(tmp_path.iterdir()) == []  # the file goes with the stall


# ---- /server_info privacy -------------------------------------------------------------------
def test_admin_key_presentation() -> None:
    assert privacy.presented_admin_key("Bearer k1", "k1")
    assert privacy.presented_admin_key("bearer k1", "k1")
    assert not privacy.presented_admin_key("Bearer k2", "k1")
    assert not privacy.presented_admin_key(None, "k1")
    assert not privacy.presented_admin_key("Bearer ", None)


def test_request_ids_only_for_a_request_that_presented_the_admin_key() -> None:
    def states() -> list[object]:
        running = [{"rid": "abc", "allocated_tokens": 32}]
        return [{"mepic_sglang": {"chunks": {"running": running}}}, {"other": 1}]

    async def server_info(authorization: str | None, admin_key: str | None) -> list[object]:
        decision = SimpleNamespace(allowed=True)
        if admin_key is not None:  # SGLang's middleware only runs when a key is configured
            privacy.after_decide_request_auth(
                decision,
                method="GET",
                path="/server_info",
                authorization_header=authorization,
                api_key=None,
                admin_api_key=admin_key,
                auth_level=None,
            )

        async def original(manager: object) -> list[object]:
            return states()

        return await privacy.around_get_internal_state(original, object())

    def rids(out: list[object]) -> list[object]:
        return [e.get("rid") for e in out[0]["mepic_sglang"]["chunks"]["running"]]  # type: ignore[index]

    async def scenario() -> None:
        # each HTTP request runs in its own task (own context), as under uvicorn
        admin = asyncio.create_task(server_info("Bearer k", "k"))
        anonymous = asyncio.create_task(server_info(None, "k"))
        wrong = asyncio.create_task(server_info("Bearer x", "k"))
        no_keys = asyncio.create_task(server_info(None, None))
        assert rids(await admin) == ["abc"]
        assert rids(await anonymous) == [None]
        assert rids(await wrong) == [None]
        assert rids(await no_keys) == [None]

    asyncio.run(scenario())


def test_secrets_are_redacted_from_server_info() -> None:
    info = {
        "api_key": "k-client",
        "admin_api_key": "k-admin",
        "ssl_keyfile_password": None,
        "port": 30000,
        "launch_command": "--model-path m --admin-api-key k-admin --api-key=k-client --port 1",
    }
    out = privacy.after_build_server_info(info, object(), {})
    assert out["api_key"] == out["admin_api_key"] == "<redacted>"
    assert out["ssl_keyfile_password"] is None and out["port"] == 30000
    assert "k-admin" not in out["launch_command"] and "k-client" not in out["launch_command"]
    assert "--port 1" in out["launch_command"]
    assert privacy.redact_command_line("--api-key 'unbalanced") == "<redacted>"
    states = [
        {"admin_api_key": "k-admin", "nested": [{"api_key": "k", "launch_command": "--api-key k"}]}
    ]
    assert "k-admin" not in str(privacy.redact_secrets(states)) and "'k'" not in str(states)


# ---- shutdown -------------------------------------------------------------------------------
def test_shutting_down_is_a_503_for_every_sglang_handler() -> None:
    err = shutdown.ShuttingDown()
    assert isinstance(err, HTTPException) and isinstance(err, ValueError)
    assert err.status_code == 503 and "shutting down" in str(err)
    manager = SimpleNamespace(gracefully_exit=False)
    assert not shutdown.refusing(manager, 10.0)
    manager.gracefully_exit = True
    assert shutdown.refusing(manager, 10.0) and not shutdown.refusing(manager, 0.0)


def test_drain_tracks_http_requests_only() -> None:
    drain = shutdown.Drain(timeout_s=5.0)
    counter = itertools.count()
    objs = [SimpleNamespace(rid=f"r{next(counter)}") for _ in range(2)]
    http = SimpleNamespace(is_disconnected=lambda: None)
    token = drain.track(objs[0], http)
    assert drain.track(objs[1], None) is None  # Engine request
    assert list(drain.inflight) == [token]
    drain.untrack(token)
    drain.untrack(None)
    assert drain.inflight == {}


# ---- flags ----------------------------------------------------------------------------------
def test_hardening_flags_are_validated_and_count_as_features() -> None:
    from mepic_sglang.flags import PluginArgs

    bad = PluginArgs(mepic_shutdown_timeout=-1, mepic_stall_timeout=-0.5).problems(object())
    assert "argument --mepic-shutdown-timeout: must be >= 0, got -1" in bad
    assert "argument --mepic-stall-timeout: must be >= 0, got -0.5" in bad
    assert PluginArgs(mepic_shutdown_timeout=5).any_feature_enabled
    assert PluginArgs(mepic_require_cache_salt=True).any_feature_enabled
    assert not PluginArgs(mepic_stall_timeout=10).any_feature_enabled  # observability only


# ---- admission rounds -----------------------------------------------------------------------
def test_a_skipped_chunked_request_lets_later_ones_run_but_no_new_chunked_prefill(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sglang.srt.managers.schedule_policy import AddReqResult

    plan = Plan(64, (ChunkUse("k", 0, 16, 48, warm=False),))
    mepic_req = SimpleNamespace(rid="m")
    req_state(mepic_req).plan = plan
    plain_req = SimpleNamespace(rid="p")
    monkeypatch.setattr(
        chunk_admission, "req_plan", lambda r: req_state(r).plan if r is mepic_req else None
    )
    monkeypatch.setattr(chunk_admission, "room_in_empty_pool", lambda adder, req: 10**6)
    chunks = ChunkManager(16, make_policy("first-page"))
    adder = SimpleNamespace(
        can_run_list=["earlier"], tree_cache=SimpleNamespace(mepic_chunks=chunks)
    )
    chunked = SimpleNamespace(is_chunked=True)
    whole = SimpleNamespace(is_chunked=False)

    def select(result: object) -> object:
        return lambda a, r, **kw: result

    around = chunk_admission.around_select_admission
    # before any skip, a plain request may start a chunked prefill
    assert around(select(chunked), adder, plain_req, total_tokens=1) is chunked
    # the MEPIC extend does not fit the rest of the step: skipped, the round goes on
    assert around(select(chunked), adder, mepic_req, total_tokens=1) is AddReqResult.CONTINUE
    assert around(select(whole), adder, plain_req, total_tokens=1) is whole
    # ... but no chunked prefill may start behind it in this round
    assert around(select(chunked), adder, plain_req, total_tokens=1) is AddReqResult.OTHER
