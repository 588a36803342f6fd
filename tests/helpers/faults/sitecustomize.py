"""Test-only fault injection for server processes; never shipped, never imported by the plugin.

A test puts this folder first on a server's ``PYTHONPATH`` (:func:`tests.helpers.faults.env`);
Python then runs this module at start-up in every process of that server (spawned ones too), and
it patches the named module right after that module is first imported::

    variable                           patches                      so that
    ---------------------------------  ---------------------------  ------------------------------
    MEPIC_FAULT_NO_POOL_FIT=1          chunk_admission.             a chunked request whose scratch
                                       room_in_empty_pool           heads never fit is never shrunk
                                                                    to fit: the queue stalls (the
                                                                    liveness watch's real stall)
    MEPIC_FAULT_PAUSE_AFTER_INFO_S=S   SGLang's remote-instance     a D2D client sleeps S s after
                                       weight-info read (loader)    reading the seed's weight info,
                                                                    so a test can kill the seed
                                                                    in the middle of a transfer
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Runs ``patch(module)`` once, right after ``name`` is executed."""

    def __init__(self, name: str, patch: Callable[[ModuleType], None]) -> None:
        self.name, self.patch = name, patch

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader, patch = spec.loader, self.patch
        exec_module = loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            patch(module)

        loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


def _no_pool_fit(module: ModuleType) -> None:
    module.room_in_empty_pool = lambda adder, req: 1 << 40  # type: ignore[attr-defined]


def _pause_after_info(seconds: float) -> Callable[[ModuleType], None]:
    def patch(module: ModuleType) -> None:
        name = "get_remote_instance_transfer_engine_info_per_rank"
        original = getattr(module, name)

        def paused(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            print(f"mepic-sglang test fault: pausing before the weight read ({seconds} s)",
                  file=sys.stderr, flush=True)  # fmt: skip
            time.sleep(seconds)
            return result

        setattr(module, name, paused)

    return patch


if os.environ.get("MEPIC_FAULT_NO_POOL_FIT", "0") not in ("", "0"):
    sys.meta_path.insert(0, _PatchOnImport("mepic_sglang.sglang.chunk_admission", _no_pool_fit))
if float(os.environ.get("MEPIC_FAULT_PAUSE_AFTER_INFO_S", "0") or 0) > 0:
    pause = _pause_after_info(float(os.environ["MEPIC_FAULT_PAUSE_AFTER_INFO_S"]))
    sys.meta_path.insert(0, _PatchOnImport("sglang.srt.model_loader.loader", pause))
