"""Instance lifecycle behind one interface: start an SGLang server in a role, wait, stop it.

:class:`Launcher` is the seam for other back ends (Ray actors, Kubernetes pods) later;
:class:`LocalProcessLauncher` runs ``python -m sglang.launch_server`` as local processes (the
default, and what the tests use). The plugin loads itself in every server it starts.

An instance's ports (all distinct per instance on one host):

| port            | flag                               | who dials it                         |
|-----------------|------------------------------------|--------------------------------------|
| port            | --port                             | clients / the dispatcher (HTTP)      |
| bootstrap_port  | --disaggregation-bootstrap-port    | decode instances (prefill's KV info) |
| nccl_port       | --nccl-port                        | the instance's own TP group store    |
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import requests

from disagg.instances import Instance, Role

TRANSFER_BACKEND_CPU = "mooncake_tcp"  # Mooncake over TCP: the P/D transfer that runs on CPU


@dataclass(frozen=True)
class InstanceSpec:
    """What to start: a model in a role, its ports, and any further server flags."""

    model: str
    role: Role
    port: int
    bootstrap_port: int | None = None
    nccl_port: int | None = None
    host: str = "127.0.0.1"
    transfer_backend: str = TRANSFER_BACKEND_CPU
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def instance(self) -> Instance:
        return Instance(self.url, self.role, self.bootstrap_port)

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", self.model]
        cmd += ["--host", self.host, "--port", str(self.port)]
        if self.nccl_port is not None:
            cmd += ["--nccl-port", str(self.nccl_port)]
        if self.role != "collocated":
            cmd += ["--disaggregation-mode", self.role]
            cmd += ["--disaggregation-transfer-backend", self.transfer_backend]
            if self.bootstrap_port is not None:
                cmd += ["--disaggregation-bootstrap-port", str(self.bootstrap_port)]
        return cmd + list(self.extra_args)


@dataclass
class Handle:
    """A started instance."""

    spec: InstanceSpec
    proc: subprocess.Popen[bytes]
    log: Path


class Launcher(ABC):
    """Starts and stops instances; implementations own where they run."""

    @abstractmethod
    def start(self, spec: InstanceSpec, log: Path) -> Handle:
        """Start ``spec`` (returns at once; see :meth:`wait_ready`)."""

    @abstractmethod
    def alive(self, handle: Handle) -> bool: ...

    @abstractmethod
    def stop(self, handle: Handle, grace_s: float = 30.0) -> None:
        """Stop it: SIGTERM (SGLang finishes what it holds), then SIGKILL after ``grace_s``."""

    def wait_ready(self, handle: Handle, timeout_s: float = 600.0) -> None:
        """Block until the instance serves (``/health_generate`` 200) or raise."""
        deadline = time.monotonic() + timeout_s
        url = handle.spec.url + "/health_generate"
        while time.monotonic() < deadline:
            if not self.alive(handle):
                raise RuntimeError(
                    f"{handle.spec.role} instance on port {handle.spec.port} exited "
                    f"(log: {handle.log})"
                )
            try:
                if requests.get(url, timeout=30).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1.0)
        raise TimeoutError(
            f"{handle.spec.url} not ready after {timeout_s:.0f} s (log: {handle.log})"
        )


class LocalProcessLauncher(Launcher):
    """Each instance is a local process group (the server and its scheduler subprocesses)."""

    def start(self, spec: InstanceSpec, log: Path) -> Handle:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                spec.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **spec.env},
                start_new_session=True,  # NOTE: one group per instance: stop() reaches children
            )
        return Handle(spec, proc, log)

    def alive(self, handle: Handle) -> bool:
        return handle.proc.poll() is None

    def stop(self, handle: Handle, grace_s: float = 30.0) -> None:
        if handle.proc.poll() is not None:
            _kill_group(handle.proc.pid, signal.SIGKILL)  # NOTE: orphaned children, if any
            return
        _kill_group(handle.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            handle.proc.wait(grace_s)
        _kill_group(handle.proc.pid, signal.SIGKILL)
        handle.proc.wait(10)


def _kill_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
