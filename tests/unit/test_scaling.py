"""Scaling decisions (disagg/scaling.py): thresholds, hysteresis, cooldown, switch before out."""

from __future__ import annotations

import pytest

from disagg.scaling import ScalingConfig, ScalingPolicy

CFG = ScalingConfig(ttft_s=1.0, tpot_s=0.1, high=0.8, low=0.3, sustain=3, cooldown_s=30.0)


def test_states_and_dead_band() -> None:
    policy = ScalingPolicy(CFG)
    assert policy.state("prefill", [0.9, 1.2]) == "hot"  # even the best is slow
    assert policy.state("prefill", [0.9, 0.5]) == "ok"  # one has room
    assert policy.state("decode", [0.01, 0.01]) == "cold"  # 0.1 x 2/1 < 0.3
    assert policy.state("decode", [0.02, 0.01]) == "ok"  # 0.2 x 2 = 0.4: one fewer is too tight
    assert policy.state("decode", [0.001]) == "ok"  # never below min_instances
    assert policy.state("prefill", [None, None]) == "ok"  # nothing known: no action


def test_sustained_hot_scales_out_then_cools_down() -> None:
    policy = ScalingPolicy(CFG)
    hot = {"prefill": [2.0], "decode": [0.05]}
    assert [policy.observe(t, hot).action for t in (0, 1)] == ["hold", "hold"]
    out = policy.observe(2, hot)
    assert out.action == "out" and out.role == "prefill"
    # cooldown: still hot, but no new decision for 30 s
    assert all(policy.observe(t, hot).action == "hold" for t in range(3, 32))
    assert policy.observe(40, hot).action == "out"  # hot for 3 observations after the cooldown


def test_flapping_load_causes_no_change() -> None:
    policy = ScalingPolicy(CFG)
    hot, ok = {"prefill": [2.0], "decode": [0.05]}, {"prefill": [0.5], "decode": [0.05]}
    assert all(policy.observe(t, hot if t % 2 else ok).action == "hold" for t in range(20))


def test_switch_is_preferred_when_the_other_role_is_cold() -> None:
    policy = ScalingPolicy(CFG)
    obs = {"prefill": [3.0], "decode": [0.005, 0.005, 0.005]}
    decisions = [policy.observe(t, obs) for t in range(3)]
    assert decisions[-1].action == "switch" and decisions[-1].role == "prefill"


def test_scale_in_and_the_instance_cap() -> None:
    policy = ScalingPolicy(CFG)
    cold = {"prefill": [0.5], "decode": [0.005, 0.005]}
    assert [policy.observe(t, cold).action for t in range(3)] == ["hold", "hold", "in"]
    capped = ScalingPolicy(ScalingConfig(sustain=1, max_instances=2))
    full = {"prefill": [10.0], "decode": [0.1]}
    assert capped.observe(0, full).action == "hold"  # 2 instances already: no scale-out


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="low < high"):
        ScalingConfig(low=0.9, high=0.8)
    with pytest.raises(ValueError, match="sustain"):
        ScalingConfig(sustain=0)


def test_a_full_host_only_switches() -> None:
    policy = ScalingPolicy(ScalingConfig(sustain=1, cooldown_s=0))
    hot_prefill = {"prefill": [9.0], "decode": [0.01]}
    assert policy.observe(0, hot_prefill, can_grow=False).action == "hold"
    assert policy.observe(1, hot_prefill, can_grow=True).action == "out"
    full = ScalingPolicy(ScalingConfig(sustain=1, cooldown_s=0))
    cold_decode = {"prefill": [9.0], "decode": [0.01, 0.01]}
    assert full.observe(0, cold_decode, can_grow=False) == (
        "switch",
        "prefill",
        "prefill hot, decode cold",
    )
