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
| engine_info_port| --engine-info-bootstrap-port       | the instance's own weight-info store |

With ``engine_info_port`` the instance is a weight **seed**: it registers its weights with a
Mooncake transfer engine, so a new instance started with ``weights_from`` (the seed's host:port)
reads them from it instead of from disk (``--load-format remote_instance``; the plugin falls
back to disk when the seed fails, see ``mepic_sglang/sglang/weights_hooks.py``).
``MOONCAKE_PROTOCOL`` picks the wire: ``tcp`` (the default here, and the only one on CPU) or
``rdma``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
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
    cpus: tuple[int, ...] = ()  # CPU hosts: run on these cores only (empty: all)
    engine_info_port: int | None = None  # serve its weights to new instances (a seed)
    weights_from: str | None = None  # "host:port" of a seed's HTTP server; None: from disk

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def instance(self) -> Instance:
        return Instance(self.url, self.role, self.bootstrap_port)

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", self.model]
        if self.cpus and shutil.which("taskset"):
            cmd = ["taskset", "-c", ",".join(map(str, self.cpus)), *cmd]
        cmd += ["--host", self.host, "--port", str(self.port)]
        if self.nccl_port is not None:
            cmd += ["--nccl-port", str(self.nccl_port)]
        if self.role != "collocated":
            cmd += ["--disaggregation-mode", self.role]
            cmd += ["--disaggregation-transfer-backend", self.transfer_backend]
            if self.bootstrap_port is not None:
                cmd += ["--disaggregation-bootstrap-port", str(self.bootstrap_port)]
        if self.engine_info_port is not None:
            cmd += ["--remote-instance-weight-loader-start-seed-via-transfer-engine"]
            cmd += ["--engine-info-bootstrap-port", str(self.engine_info_port)]
        if self.weights_from is not None:
            host, _, port = self.weights_from.rpartition(":")
            cmd += ["--load-format", "remote_instance"]
            cmd += ["--remote-instance-weight-loader-backend", "transfer_engine"]
            cmd += ["--remote-instance-weight-loader-seed-instance-ip", host]
            cmd += ["--remote-instance-weight-loader-seed-instance-service-port", port]
        return cmd + list(self.extra_args)

    def process_env(self) -> dict[str, str]:
        """What the instance's process gets on top of the launcher's environment."""
        env = dict(self.env)
        if self.cpus:
            # NOTE: torch sizes its thread pool from OMP_NUM_THREADS; SGLang binds its OpenMP
            # threads (AMX / arm64 builds) from SGLANG_CPU_OMP_THREADS_BIND
            cores = ",".join(map(str, self.cpus))
            env.setdefault("OMP_NUM_THREADS", str(len(self.cpus)))
            env.setdefault("SGLANG_CPU_OMP_THREADS_BIND", cores)
        if self.engine_info_port is not None or self.weights_from is not None:
            env.setdefault("MOONCAKE_PROTOCOL", os.environ.get("MOONCAKE_PROTOCOL", "tcp"))
        return env


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
        spec = handle.spec
        wait_healthy(
            spec.url + "/health_generate", timeout_s, lambda: self.alive(handle),
            f"{spec.role} instance on port {spec.port} (log: {handle.log})",
        )  # fmt: skip


def wait_healthy(
    url: str, timeout_s: float, alive: Callable[[], bool] = lambda: True, what: str = ""
) -> None:
    """Poll ``GET url`` until it answers 200. Raises ``RuntimeError`` as soon as ``alive()`` is
    false (the process behind it exited) and ``TimeoutError`` after ``timeout_s``."""
    what = what or url
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{what} exited")
        try:
            if requests.get(url, timeout=30).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s")


class LocalProcessLauncher(Launcher):
    """Each instance is a local process group (the server and its scheduler subprocesses)."""

    def start(self, spec: InstanceSpec, log: Path) -> Handle:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                spec.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **spec.process_env()},
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
