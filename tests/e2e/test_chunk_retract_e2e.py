"""MEPIC requests retracted mid-decode (SGLang's SGLANG_TEST_RETRACT forces it every 3 steps).

A retracted request's row goes back to ``[shared | private]`` and is freed; on re-admission its
prompt plus outputs are re-planned (chunks warm again, outputs computed in context). The pool
must end clean, with SGLang's strict busy check on every step.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.test_chunk_cache_e2e import DOCS, chunk_state, segs, wait_idle
from tests.helpers.server_utils import ServerHandle, start_server

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    handle = start_server(
        smollm2_path,
        ["--enable-mepic"],
        log_path=tmp_path_factory.mktemp("mepic-retract-server") / "server.log",
        env={
            "SGLANG_TEST_RETRACT": "1",
            "SGLANG_TEST_RETRACT_INTERVAL": "3",
            "SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY": "1",
        },
    )
    yield handle
    assert handle.stop() == []


def _run(server: ServerHandle, order: tuple[str, ...]) -> Any:
    body = {
        "text": "",
        "mepic_segments": segs(*order),
        "sampling_params": {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True},
    }
    r = requests.post(f"{server.url}/generate", json=body, timeout=600)
    assert r.status_code == 200, r.text
    return r.json()


def test_retracted_mepic_requests_finish_and_leave_the_pool_clean(server: ServerHandle) -> None:
    orders = [("zorblat", "mills"), ("mills", "zorblat"), ("comet",), ("comet", "zorblat")]
    with ThreadPoolExecutor(len(orders)) as pool:
        outs = list(pool.map(lambda o: _run(server, o), orders))
    assert all(o["meta_info"]["completion_tokens"] == 24 for o in outs)
    log = server.log_path.read_text(errors="replace")
    retracted = [int(n) for n in re.findall(r"Testing retraction\. #retracted_reqs: (\d+)", log)]
    assert sum(retracted) > 0, "no request was retracted"
    state = wait_idle(server)
    assert state["integrity"] == "ok", state["integrity"]
    assert state["pages"]["private"] == 0 and state["pages"]["scratch"] == 0
    assert chunk_state(server)["store"]["referenced_chunks"] == 0
    assert set(DOCS) >= {c for o in orders for c in o}
