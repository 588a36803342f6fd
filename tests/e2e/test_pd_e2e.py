"""P/D disaggregation end to end on CPU: 1 prefill + 1 decode instance behind the dispatcher give
the same greedy outputs as a collocated server (issue 8).

The instances run in a loopback-only network namespace (tests/helpers/pd_scenario.py), because
Mooncake's transfer engine and torch's TCP store listen on 0.0.0.0.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.server_utils import log_tail

ROOT = Path(__file__).resolve().parents[2]


def _why_not() -> str | None:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs root with unshare and ip (a loopback-only network namespace)"
    if importlib.util.find_spec("mooncake") is None:
        return "needs mooncake-transfer-engine-non-cuda (scripts/setup_cpu.sh installs it)"
    try:
        from mooncake.engine import TransferEngine  # noqa: F401
    except ImportError as e:  # NOTE: libibverbs1 (Debian) missing
        return f"Mooncake's transfer engine does not load: {e}"
    return None


pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(_why_not() is not None, reason=str(_why_not())),
]


def run_in_netns(script: str, out: Path) -> dict:
    """Run ``tests/helpers/<script> OUT`` in a loopback-only network namespace; its result.json."""
    cmd = f"ip link set lo up && exec {sys.executable} tests/helpers/{script} {out}"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", cmd], cwd=ROOT, env=env, timeout=1200,
        capture_output=True, text=True,
    )  # fmt: skip
    result_file = out / "result.json"
    logs = (
        "\n".join(f"--- {p.name}\n{log_tail(p)}" for p in sorted(out.glob("*.log")))
        + f"\n--- scenario\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    )
    assert result_file.exists(), logs
    result = json.loads(result_file.read_text())
    assert "error" not in result, f"{result['error']}\n{logs}"
    result["logs"] = logs
    return result


def netns_fixture(script: str) -> Any:
    """A module-scoped fixture: the result of ``tests/helpers/<script>`` run in a network
    namespace."""

    @pytest.fixture(scope="module")
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> dict:
        return run_in_netns(script, tmp_path_factory.mktemp(script.removesuffix(".py")))

    return fixture


scenario = netns_fixture("pd_scenario.py")
d2d_scenario = netns_fixture("d2d_scenario.py")
scale_scenario = netns_fixture("pd_scale_scenario.py")
switch_scenario = netns_fixture("pd_switch_scenario.py")


def test_pd_matches_collocated_greedy_output(scenario: dict) -> None:
    colo, pd = scenario["collocated"], scenario["pd"]
    assert all(status == 200 for status, _ in colo["single"]), scenario["logs"]
    assert pd["single"] == colo["single"], scenario["logs"]
    assert pd["batch"] == colo["batch"]
    assert pd["batch"] == [ids for _, ids in colo["single"][:2]]
    assert pd["chat"] == colo["chat"] and pd["chat"]
    assert pd["chat_stream"] == colo["chat"]  # streamed through the dispatcher, chunk by chunk


def test_pd_bad_request_is_a_400_and_the_pair_keeps_serving(scenario: dict) -> None:
    status, body = scenario["bad"]
    assert status == 400, body
    assert "max_new_tokens" in json.dumps(body)
    assert scenario["after_bad"] == scenario["collocated"]["single"][0][1]
    # the dispatcher's in-flight counts went back to zero
    assert all(row["in_flight"] == 0 for row in scenario["state"]["instances"])


def test_pd_slo_dispatch_reads_each_stage_latency_model(scenario: dict) -> None:
    # --policy slo: the dispatcher polled /v1/loads and /server_info of both instances, and
    # predicts the prefill wait and the decode step from their online latency models
    state = scenario["state"]
    assert state["policy"] == "slo"
    for row in state["instances"]:
        assert row["model"] is True, row
        assert row["predicted_s"] is not None and 0 <= row["predicted_s"] < 60, row


def test_pd_every_process_stopped(scenario: dict) -> None:
    assert scenario["alive_after_stop"] == [False, False, False]


def test_pd_multi_slo_in_both_stages(scenario: dict) -> None:
    slo = scenario["slo"]
    assert slo["statuses"] == [200] * 6, scenario["logs"]
    assert slo["tokens"] == [12] * 6
    assert all(r is not None and r["class"] == "interactive" for r in slo["reports"])
    assert all(r["ttft_met"] and r["tpot_met"] for r in slo["reports"])
    # the decode instance reports the first token when its KV arrived, not at the end
    assert all(r["tpot_ms"] and r["tpot_ms"] > 0 for r in slo["reports"]), slo["reports"]
    prefill, decode = scenario["stage_state"]
    assert prefill["policy"] == decode["policy"] == "multi-slo"
    assert prefill["steps"]["prefill"] > 0 and decode["steps"]["decode"] > 0
    assert prefill["rejected"] >= 1 and decode["rejected"] == 0  # only the prefill stage refuses


def test_pd_unattainable_slo_is_a_429_without_waiting_for_the_other_leg(scenario: dict) -> None:
    status, body = scenario["slo"]["impossible"]
    assert status == 429, body
    assert "TTFT SLO" in json.dumps(body)
    # NOTE: without the abort the decode leg would wait for its KV until SGLang's bootstrap
    # timeout (300 s)
    assert scenario["slo"]["impossible_s"] < 30


def test_role_switch_under_load_loses_no_request(switch_scenario: dict) -> None:
    result = switch_scenario
    switch = result["switch"]
    assert switch["status"] == 200 and switch["success"], (switch, result["logs"])
    runs = result["runs"]
    assert len(runs) == 36
    assert all(status == 200 for _, status, _ in runs), result["logs"]
    # every answer, before, during and after the switch, is the greedy reference
    assert all(ids == result["reference"][k] for k, _, ids in runs)
    assert result["after"] == result["reference"] * 2
    roles = {row["url"]: row["role"] for row in result["state_end"]["instances"]}
    assert sorted(roles.values()) == ["decode", "prefill", "prefill"]
    switched = "http://127.0.0.1:31604"
    assert roles[switched] == "prefill"
    served = {row["url"]: row["served"] for row in result["state_after"]["instances"]}
    end = {row["url"]: row["served"] for row in result["state_end"]["instances"]}
    assert end[switched] > served[switched]  # it served as a prefill instance afterwards
    assert result["alive_after_stop"] == [False, False, False]


def test_scale_in_drains_before_the_instance_leaves(switch_scenario: dict) -> None:
    result = switch_scenario
    retire = result["retire"]
    assert retire["status"] == 200 and retire["success"], (retire, result["logs"])
    assert [list(x) for x in result["long"]] == [[200, 200]] * 2  # (status, tokens): none dropped
    assert result["retired_after_a_long_one_finished"]  # it waited for the one it held
    assert result["after_retire"] == result["reference"]  # the rest of the pool serves
    urls = [row["url"] for row in result["state_retired"]["instances"]]
    assert "http://127.0.0.1:31601" not in urls and len(urls) == 2


def test_d2d_weights_are_bit_identical_and_serve(d2d_scenario: dict) -> None:
    result = d2d_scenario
    seed = result["seed"]
    assert seed["source"] == "auto" and len(seed["sha256"]) == 64
    ok = result["ok"]["weights"]
    assert ok["source"] == "remote_instance", result["logs"]
    assert ok["sha256"] == seed["sha256"]  # bit for bit
    assert result["ok"]["outputs"] == result["seed_outputs"]
    # an instance that got its weights from a seed is a seed itself
    chain = result["chain"]["weights"]
    assert chain["source"] == "remote_instance" and chain["sha256"] == seed["sha256"]
    assert result["chain"]["outputs"] == result["seed_outputs"]


def test_d2d_source_killed_mid_transfer_falls_back_to_disk(d2d_scenario: dict) -> None:
    killed = d2d_scenario["killed"]
    w = killed["weights"]
    assert w["source"] == "disk_fallback", d2d_scenario["logs"]
    assert "Failed to load weights from remote instance" in w["fallback_reason"]
    assert w["sha256"] == d2d_scenario["seed"]["sha256"]
    assert killed["outputs"] == d2d_scenario["seed_outputs"]
    assert killed["ready_after_kill_s"] < 120  # no hang
    # after the fallback it serves the weights it loaded from disk, not the abandoned copy
    after = d2d_scenario["chain_after_fallback"]["weights"]
    assert after["source"] == "remote_instance" and after["sha256"] == w["sha256"]


def test_d2d_hung_source_times_out_to_disk(d2d_scenario: dict) -> None:
    hung = d2d_scenario["hung"]
    w = hung["weights"]
    assert w["source"] == "disk_fallback" and w["fallback_reason"].startswith("TimeoutError")
    assert 5 <= w["load_s"] < 60  # waited its --mepic-d2d-timeout-s (not the 300 s default)
    assert hung["outputs"] == d2d_scenario["seed_outputs"]
    assert d2d_scenario["alive_after_stop"] == [False] * 7


def test_cluster_starts_instances_with_weights_from_the_first(scale_scenario: dict) -> None:
    launches = scale_scenario["start"]["launches"]
    assert [row["role"] for row in launches] == ["prefill", "decode", "decode"]
    assert launches[0]["weights"]["source"] == "auto"  # the first one from disk
    assert all(row["weights"]["source"] == "remote_instance" for row in launches[1:])
    assert len({row["weights"]["sha256"] for row in launches}) == 1


def test_autoscale_retires_an_idle_decode_instance_without_dropping(scale_scenario: dict) -> None:
    result = scale_scenario
    scale_in = result["scale_in"]
    events = scale_in["state"]["events"]
    assert any(e["action"] == "in" and e["role"] == "decode" and e["ok"] for e in events), (
        events, result["logs"],
    )  # fmt: skip
    assert set(scale_in["statuses"]) == {200}
    assert all(out == result["reference"] for out in scale_in["outputs"])
    assert sorted(scale_in["state"]["instances"].values()) == ["decode", "prefill"]


def test_scale_out_takes_weights_from_a_running_instance_and_serves(scale_scenario: dict) -> None:
    result = scale_scenario
    out = result["scale_out"]
    assert out["status"] == 200 and out["event"]["ok"], (out, result["logs"])
    weights = out["event"]["detail"]["weights"]
    assert weights["source"] == "remote_instance"
    assert weights["sha256"] == result["start"]["launches"][0]["weights"]["sha256"]
    assert [s for s, _ in result["after_out"]] == [200] * 4
    assert all(ids == result["reference"] for _, ids in result["after_out"])
    new = out["event"]["url"]
    served = {row["url"]: row["served"] for row in result["dispatcher"]["instances"]}
    assert served[new] >= 2  # round robin over two prefill instances: it served its share
    assert result["left_after_stop"] == []  # SIGTERM to the cluster stopped all it started
