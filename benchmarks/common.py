"""Pieces every benchmark CLI shares: common flags and stopping a server's process tree."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests


def add_common_args(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument("--model", default=None, help="default: the local SmolLM2 checkpoint")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))


def resolve_common_args(args: argparse.Namespace) -> None:
    """Build the default model if needed and create the output folder."""
    if args.model is None:
        from mepic_sglang.models import ensure_smollm2

        args.model = str(ensure_smollm2())
    args.out.mkdir(parents=True, exist_ok=True)


def quantile(values: list[float], p: float) -> float:
    """The ``p`` quantile of ``values`` (nearest rank; NaN when empty)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def stop_tree(proc: subprocess.Popen[bytes], root: psutil.Process) -> None:
    """SIGTERM the server's process group and wait until every process of it is gone, so the
    next run starts on an idle machine and a free port."""
    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=60)
    if alive:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=30)
    proc.wait(timeout=30)


def start_server(
    model: str, port: int, extra: list[str], log: Path, max_total_tokens: int = 16384
) -> tuple[subprocess.Popen[bytes], psutil.Process, str]:
    """Stock ``python -m sglang.launch_server`` on CPU (float32, --sleep-on-idle) with ``extra``
    flags; returns ``(process, its psutil handle, base url)`` once ``/health_generate`` answers."""
    cmd = [
        sys.executable, "-m", "sglang.launch_server", "--model-path", model,
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--sleep-on-idle", "--max-total-tokens", str(max_total_tokens), *extra,
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(900):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {cmd} (log: {log})")
        try:
            if requests.get(f"{url}/health_generate", timeout=60).status_code == 200:
                return proc, psutil.Process(proc.pid), url
        except requests.RequestException:
            pass
        time.sleep(1)
    raise TimeoutError(f"server not ready (log: {log})")
