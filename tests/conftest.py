"""Shared fixtures: local models and real SGLang servers (session-scoped: each costs ~30 s)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers.server_utils import ServerHandle, start_server


def _has_cuda() -> bool:
    return bool(torch.cuda.is_available())


# NOTE: SGLang reads this once, at import (is_cpu() is lru_cached), and no test module imports
# SGLang at collection time. The CPU .pth sets the same default; on a GPU machine we leave it.
if not _has_cuda():
    os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
    # NOTE: Triton picks interpreted vs compiled kernels when it is imported, so the CPU runs of
    # the Triton kernel tests need this before anything imports triton. Servers started by the
    # tests do not inherit it (tests/helpers/server_utils.py) unless a test asks for it.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # NOTE: the folder says what a test needs: e2e/ starts servers or engines (marked `server`),
    # unit/ and kernels/ never do; a misfiled test fails collection.
    misfiled = [
        item.nodeid for item in items if ("e2e" in item.path.parts) != ("server" in item.keywords)
    ]
    if misfiled:
        raise pytest.UsageError(
            "tests in tests/e2e/ (and only those) must be marked `server`: " + ", ".join(misfiled)
        )
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from mepic_sglang.models import ensure_smollm2

    return ensure_smollm2()


@pytest.fixture(scope="session")
def tiny_llama_path() -> Path:
    from mepic_sglang.models import ensure_tiny

    return ensure_tiny("llama")


@pytest.fixture(scope="module")
def smollm2_server(
    smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerHandle]:
    """SmolLM2 behind stock ``python -m sglang.launch_server`` with a plugin flag."""
    server = start_server(
        smollm2_path,
        ["--enable-mepic"],
        log_path=tmp_path_factory.mktemp("smollm2-server") / "server.log",
    )
    yield server
    server.stop()
