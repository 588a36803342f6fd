"""Start a new instance with weights from a running one (D2D), never hanging on a bad source.

Two layers keep a scale-out alive when the seed fails:

| layer            | where                                | catches                              |
|------------------|--------------------------------------|--------------------------------------|
| in the instance  | plugin hook on SGLang's remote load  | seed dead / unreachable / too slow   |
|                  | (``--mepic-d2d-timeout-s``)          | -> loads the same weights from disk  |
| here (launcher)  | :func:`start_instance` watchdog      | the instance exited or is not ready  |
|                  |                                      | in time -> stopped, started from disk|

:func:`weights_report` reads what happened from the instance's ``/server_info`` (``source``:
``remote_instance`` / ``disk_fallback`` / SGLang's load format; ``load_s``; ``sha256`` with
``--mepic-weights-digest``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from disagg import server_info
from disagg.launcher import Handle, InstanceSpec, Launcher


class Started(NamedTuple):
    handle: Handle
    ready_s: float  # from the first start to /health_generate 200 (relaunch included)
    relaunched: bool  # the watchdog gave up on the remote load and started it from disk
    weights: dict[str, Any]  # the instance's weights report (see weights_report)


def weights_report(url: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The ``weights`` entry of the plugin's state in ``url``'s ``/server_info``."""
    return server_info.weights(server_info.fetch(url, timeout_s))


def start_instance(
    launcher: Launcher,
    spec: InstanceSpec,
    log: Path,
    ready_timeout_s: float = 600.0,
    report: Callable[[str], dict[str, Any]] = weights_report,
    on_start: Callable[[Handle], None] = lambda handle: None,
) -> Started:
    """Start ``spec`` and wait until it serves. If it loads from a seed (``weights_from``) and
    exits or is not ready within ``ready_timeout_s``, stop it and start it again from disk.
    Raises when the disk start fails too (nothing is left running then). ``on_start`` sees
    every process started (so a caller can own it before it serves)."""
    t0 = time.monotonic()
    handle = launcher.start(spec, log)
    on_start(handle)
    try:
        launcher.wait_ready(handle, ready_timeout_s)
        relaunched = False
    except (RuntimeError, TimeoutError):
        launcher.stop(handle, grace_s=5.0)
        if spec.weights_from is None:
            raise
        disk = dataclasses.replace(spec, weights_from=None)
        handle = launcher.start(disk, log.with_suffix(".disk.log"))
        on_start(handle)
        try:
            launcher.wait_ready(handle, ready_timeout_s)
        except (RuntimeError, TimeoutError):
            launcher.stop(handle, grace_s=5.0)
            raise
        relaunched = True
    try:
        weights = report(spec.url)
    except Exception as e:  # NOTE: it serves; a missing report is no reason to lose it
        weights = {"error": f"{type(e).__name__}: {e}"}
    return Started(handle, time.monotonic() - t0, relaunched, weights)
