"""Weights from a running instance (D2D): the pieces that need no server (issue 8).

The end-to-end runs (a real seed, a killed seed, a hung seed) are in tests/e2e/test_pd_e2e.py.
"""

from __future__ import annotations

import contextvars
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from disagg.cluster import build, parser
from disagg.fleet import PortPlan
from disagg.launcher import Handle, InstanceSpec, Launcher
from disagg.weights import start_instance
from mepic_sglang.flags import PluginArgs
from mepic_sglang.sglang import pd_hooks
from mepic_sglang.sglang.weights_hooks import _call_with_deadline, weights_digest


def params(seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [("b.weight", torch.randn(4, 3, generator=g)), ("a.bias", torch.randn(5, generator=g))]


def test_digest_is_the_same_for_the_same_weights_in_any_order() -> None:
    assert weights_digest(params()) == weights_digest(list(reversed(params())))


def test_digest_sees_one_changed_bit_a_dtype_and_a_name() -> None:
    base = weights_digest(params())
    flipped = params()
    flipped[0][1].view(torch.int32)[0, 0] ^= 1
    assert weights_digest(flipped) != base
    assert weights_digest([(n, p.double()) for n, p in params()]) != base
    assert weights_digest([(n + "x", p) for n, p in params()]) != base


def test_deadline_returns_raises_and_keeps_the_callers_context() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("v", default="unset")
    var.set("caller")
    cpu = SimpleNamespace(device="cpu", gpu_id=0)
    assert _call_with_deadline(var.get, 5.0, cpu) == "caller"
    with pytest.raises(ZeroDivisionError):
        _call_with_deadline(lambda: 1 / 0, 5.0, cpu)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="within 0.2 s"):
        _call_with_deadline(lambda: time.sleep(3), 0.2, cpu)
    assert time.monotonic() - t0 < 2.0  # NOTE: the stuck worker is abandoned, not joined


def test_cpu_defaults_for_weight_transfer(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in (pd_hooks.PROTOCOL_ENV, pd_hooks.HOST_IP_ENV, pd_hooks.EARLY_SEND_ENV):
        monkeypatch.setenv(env, "x")  # NOTE: recorded, so the test's writes are undone after it
        monkeypatch.delenv(env)
    args = SimpleNamespace(
        device="cpu", host="127.0.0.1", disaggregation_mode="null", load_format="remote_instance",
        remote_instance_weight_loader_backend="transfer_engine",
        remote_instance_weight_loader_start_seed_via_transfer_engine=False,
    )  # fmt: skip
    pd_hooks.apply_cpu_defaults(args)
    import os

    assert os.environ[pd_hooks.PROTOCOL_ENV] == "tcp"
    assert os.environ[pd_hooks.HOST_IP_ENV] == "127.0.0.1"
    assert pd_hooks.EARLY_SEND_ENV not in os.environ  # a P/D-only setting
    plain = SimpleNamespace(
        device="cpu",
        host="127.0.0.1",
        load_format="auto",
        remote_instance_weight_loader_backend="nccl",
        remote_instance_weight_loader_start_seed_via_transfer_engine=False,
    )
    assert not pd_hooks.transfers_weights(plain)


def test_d2d_timeout_must_be_positive() -> None:
    problems = PluginArgs(mepic_d2d_timeout_s=0).problems(SimpleNamespace())
    assert any("--mepic-d2d-timeout-s" in p for p in problems)


def test_spec_flags_for_a_seed_and_for_loading_from_one() -> None:
    spec = PortPlan(32000).spec("M", "decode")
    assert (spec.port, spec.bootstrap_port, spec.nccl_port, spec.engine_info_port) == (
        32000, 32001, 32002, 32003,
    )  # fmt: skip
    cmd = " ".join(spec.command())
    assert "--remote-instance-weight-loader-start-seed-via-transfer-engine" in cmd
    assert "--engine-info-bootstrap-port 32003" in cmd and "--load-format" not in cmd
    plan = PortPlan(32000)
    assert [plan.spec("M", "prefill").port for _ in range(2)] == [32000, 32010]
    assert plan.spec("M", "decode").cpus == () and plan.has_room()  # no binding unless asked
    cpu = PortPlan(32000, cores=1, cpus=(0, 1))
    first, second = cpu.spec("M", "decode").cpus, cpu.spec("M", "decode").cpus
    assert (first, second) == ((0,), (1,)) and not cpu.has_room()
    assert cpu.spec("M", "decode").cpus == (0,)  # full: shares the least used group
    cpu.release((1,))
    assert cpu.has_room() and cpu.spec("M", "decode").cpus == (1,)  # a freed core is reused
    three = PortPlan(32000, cores=3, cpus=(0, 1, 2, 3)).spec("M", "decode")
    env = three.process_env()
    assert env["OMP_NUM_THREADS"] == "3" and env["SGLANG_CPU_OMP_THREADS_BIND"] == "0,1,2"
    assert three.command()[:3] == ["taskset", "-c", "0,1,2"]
    client = InstanceSpec("M", "collocated", 32010, weights_from="127.0.0.1:32000")
    cmd = " ".join(client.command())
    assert "--load-format remote_instance" in cmd
    assert "--remote-instance-weight-loader-seed-instance-service-port 32000" in cmd
    assert client.process_env()["MOONCAKE_PROTOCOL"] in ("tcp", "rdma")
    assert InstanceSpec("M", "collocated", 1).process_env() == {}


class ScriptedLauncher(Launcher):
    """Instances that become ready or not as scripted (by whether they load from a seed)."""

    def __init__(self, remote_ready: bool, disk_ready: bool = True) -> None:
        self.remote_ready, self.disk_ready = remote_ready, disk_ready
        self.started: list[InstanceSpec] = []
        self.stopped: list[InstanceSpec] = []

    def start(self, spec: InstanceSpec, log: Path) -> Handle:
        self.started.append(spec)
        return Handle(spec, None, log)  # type: ignore[arg-type]

    def alive(self, handle: Handle) -> bool:
        return handle.spec not in self.stopped

    def stop(self, handle: Handle, grace_s: float = 30.0) -> None:
        self.stopped.append(handle.spec)

    def wait_ready(self, handle: Handle, timeout_s: float = 600.0) -> None:
        ok = self.remote_ready if handle.spec.weights_from else self.disk_ready
        if not ok:
            raise TimeoutError("not ready")


def report(url: str) -> dict[str, Any]:
    return {"source": "scripted"}


def test_start_instance_relaunches_from_disk_when_the_remote_load_never_gets_ready() -> None:
    spec = InstanceSpec("M", "decode", 32000, weights_from="127.0.0.1:32100")
    launcher = ScriptedLauncher(remote_ready=False)
    started = start_instance(launcher, spec, Path("/tmp/x.log"), 1.0, report)
    assert started.relaunched and launcher.stopped == [spec]
    assert launcher.started[1].weights_from is None and started.handle.spec.weights_from is None
    ok = start_instance(ScriptedLauncher(remote_ready=True), spec, Path("/tmp/x.log"), 1.0, report)
    assert not ok.relaunched and ok.weights == {"source": "scripted"}


def test_start_instance_leaves_nothing_running_when_disk_fails_too() -> None:
    spec = InstanceSpec("M", "decode", 32000, weights_from="127.0.0.1:32100")
    launcher = ScriptedLauncher(remote_ready=False, disk_ready=False)
    with pytest.raises(TimeoutError):
        start_instance(launcher, spec, Path("/tmp/x.log"), 1.0, report)
    assert len(launcher.stopped) == len(launcher.started) == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model-path", "M"], "no instances"),
        (["--model-path", "M", "--prefill", "1"], "--prefill AND --decode"),
        (["--model-path", "M", "--collocated", "2", "--autoscale"], "--autoscale"),
        (["--model-path", "M", "--prefill", "-1", "--decode", "1"], "--prefill must be"),
        (
            ["--model-path", "M", "--prefill", "1", "--decode", "1", "--max-instances", "1"],
            "max_instances",
        ),
        (["--model-path", "M", "--prefill", "1", "--decode", "1", "--scale-low", "0.9"], "low"),
        (["--model-path", "M", "--collocated", "1", "--port", "31005"], "--port 31005"),
        (["--model-path", "M", "--collocated", "1", "--scale-interval-s", "0"], "interval"),
    ],
)
def test_cluster_refuses_bad_shapes_before_starting_anything(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build(parser().parse_args(argv))
