"""Pieces every benchmark CLI shares: common flags and stopping a server's process tree."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
from pathlib import Path

import psutil


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
