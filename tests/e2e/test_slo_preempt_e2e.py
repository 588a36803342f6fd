"""Multi-SLO preemption on the real server (tiny random Llama, CPU): a high-priority request with a
TTFT SLO arrives while low-priority requests hold every slot; one of them is retracted, the
urgent one runs at once, and the retracted one still finishes with exactly its own tokens."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from disagg import server_info
from tests.helpers.server_utils import ServerHandle, start_server

pytestmark = pytest.mark.server

# NOTE: a bulk request needs ~1500 decode steps (seconds) to free its slot, so waiting would miss
# the urgent request's 1 s TTFT and multi-slo preempts; when waiting suffices it does not
# (tests/unit/test_slo_policy.py::test_multi_slo_preempts_only_when_waiting_would_miss).
LOW_TOKENS = 1500


@pytest.fixture(scope="module")
def server(
    tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerHandle]:
    handle = start_server(
        tiny_llama_path,
        ["--schedule-policy", "multi-slo", "--max-running-requests", "2",
         "--slo-classes", "urgent:ttft=1000,priority=5;bulk:priority=0"],
        log_path=tmp_path_factory.mktemp("slo-preempt") / "server.log",
    )  # fmt: skip
    yield handle
    handle.stop()


def generate(server: ServerHandle, ids: list[int], n: int, slo_class: str) -> dict[str, Any]:
    body = {
        "input_ids": ids,
        "sampling_params": {
            "max_new_tokens": n,
            "temperature": 0,
            "ignore_eos": True,
            "custom_params": {"slo_class": slo_class},
        },
    }
    r = requests.post(f"{server.url}/generate", json=body, timeout=600)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_urgent_request_preempts_a_bulk_one_that_still_finishes_exactly(
    server: ServerHandle,
) -> None:
    prompts = [[10 + i + 7 * j for j in range(64)] for i in range(2)]
    reference = [generate(server, p, LOW_TOKENS, "bulk")["output_ids"] for p in prompts]
    outs: dict[int, dict[str, Any]] = {}

    def bulk(i: int) -> None:
        outs[i] = generate(server, prompts[i], LOW_TOKENS, "bulk")

    threads = [threading.Thread(target=bulk, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # both bulk requests are decoding: every slot is taken
    urgent = generate(server, [5, 6, 7, 8], 4, "urgent")
    urgent_done = time.monotonic()
    for t in threads:
        t.join()
    bulk_done = time.monotonic()
    retracted = [outs[i]["meta_info"]["num_retractions"] for i in range(2)]
    assert sum(retracted) >= 1, retracted
    assert urgent["meta_info"]["slo"]["met"] is True
    assert urgent_done < bulk_done
    for i in range(2):
        assert outs[i]["output_ids"] == reference[i]
        assert outs[i]["meta_info"]["completion_tokens"] == LOW_TOKENS
    info = requests.get(f"{server.url}/server_info", timeout=60).json()
    state = server_info.plugin_section(info)
    assert state["slo"]["preempted"] >= 1
    assert state["pool"]["running_requests"] == 0
