"""Start and stop real SGLang servers for tests, and prove that they stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

# NOTE: CPU facts: float32 (no bf16 units), --sleep-on-idle (an idle scheduler spins a core),
# always --max-total-tokens (SGLang would otherwise reserve ~72% of RAM for KV).
CPU_ARGS = ["--dtype", "float32", "--sleep-on-idle", "--max-total-tokens", "8192"]
READY_TIMEOUT_S = float(os.environ.get("MEPIC_TEST_SERVER_TIMEOUT", "600"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


@dataclass
class ServerHandle:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    tree: list[psutil.Process] = field(default_factory=list)  # launcher + children at ready time

    def stop(self, timeout_s: float = 60.0) -> list[str]:
        """SIGTERM the launcher; returns descriptions of processes still alive after timeout_s
        (they are then killed). Idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(self.tree, timeout=timeout_s)
        leftover = [f"{p.pid} {_name(p)}" for p in alive]
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything started after `tree` was taken
        self.proc.wait(timeout=30)
        return leftover


def _name(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())[:80] or p.name()
    except psutil.Error:
        return "<gone>"


def _server_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def start_server(
    model: Path, extra_args: list[str], log_path: Path, env: dict[str, str] | None = None
) -> ServerHandle:
    """Launch ``python -m sglang.launch_server`` and wait until ``/health_generate`` answers.

    ``env``: extra environment variables for the server processes (the test process's
    ``TRITON_INTERPRET`` is not passed on unless ``env`` names it)."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "sglang.launch_server",
        "--model-path", str(model), "--host", "127.0.0.1", "--port", str(port),
        *CPU_ARGS, *extra_args,
    ]  # fmt: skip
    with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**_server_env(), **(env or {})},
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log_tail(log_path)}")
        try:
            if requests.get(f"{url}/health_generate", timeout=60).status_code == 200:
                launcher = psutil.Process(proc.pid)
                tree = [launcher, *launcher.children(recursive=True)]
                return ServerHandle(proc=proc, url=url, log_path=log_path, tree=tree)
        except requests.RequestException:
            pass
        time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    raise TimeoutError(f"server not ready after {READY_TIMEOUT_S}s:\n{log_tail(log_path)}")


def run_cli(
    args: list[str], timeout_s: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (no shell), capturing its output."""
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout_s, check=False, env=env
    )
