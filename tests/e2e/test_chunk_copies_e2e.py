"""``--mepic-chunk-copies`` (the EPIC-style baseline of the benchmark) and the pool-usage window.

Two tiny-Llama servers, MEPIC with shared chunk pages and with private copies, get the same
requests: outputs must be identical (a copy holds the same KV), every page must be accounted for
(strict memory checks on, ``check_integrity``), and a concurrent batch must hold more pages with
copies than with sharing (exact window peaks from ``/server_info``).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from disagg import server_info
from tests.helpers.server_utils import ServerHandle, start_server

pytestmark = pytest.mark.server
ENV = {"SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY": "1"}
DOCS = [
    "alpha beta gamma delta epsilon " * 9,
    "the mill stands by the river and grinds grain " * 5,
    "seven bridges cross the canal in the old town " * 4,
]


@pytest.fixture(scope="module")
def servers(
    tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServerHandle]]:
    logs = tmp_path_factory.mktemp("copies")
    args = {"shared": ["--enable-mepic"], "copies": ["--enable-mepic", "--mepic-chunk-copies"]}
    with ThreadPoolExecutor(2) as pool:
        futures = {
            name: pool.submit(start_server, tiny_llama_path, extra, logs / f"{name}.log", ENV)
            for name, extra in args.items()
        }
        started = {name: f.result() for name, f in futures.items()}
    yield started
    for s in started.values():
        s.stop()


def _generate(server: ServerHandle, i: int) -> Any:
    segs = [{"text": "sys: "}, {"chunk": DOCS[i % 3]}, {"chunk": DOCS[(i + 1) % 3]},
            {"text": f" question {i}?"}]  # fmt: skip
    body = {
        "text": "",
        "mepic_segments": segs,
        "return_logprob": True,
        "sampling_params": {"temperature": 0, "max_new_tokens": 6, "ignore_eos": True},
    }
    r = requests.post(f"{server.url}/generate", json=body, timeout=600)
    assert r.status_code == 200, r.text
    return r.json()


def _state(server: ServerHandle) -> Any:
    info = requests.get(f"{server.url}/server_info", timeout=60).json()
    return server_info.plugin_section(info)


def test_copies_serve_identical_outputs_with_more_pages(servers: dict[str, ServerHandle]) -> None:
    for s in servers.values():
        _generate(s, 0)  # every chunk published
        _generate(s, 1)
        _generate(s, 2)
        _state(s)  # start a usage window
    got = {}
    for name, s in servers.items():
        with ThreadPoolExecutor(6) as pool:
            got[name] = list(pool.map(lambda i, s=s: _generate(s, i), range(3, 9)))
    for a, b in zip(got["shared"], got["copies"], strict=True):
        assert a["output_ids"] == b["output_ids"]
        la = [t[0] for t in a["meta_info"]["output_token_logprobs"]]
        lb = [t[0] for t in b["meta_info"]["output_token_logprobs"]]
        assert max(abs(x - y) for x, y in zip(la, lb, strict=True)) <= 1e-5
    states = {name: _state(s) for name, s in servers.items()}
    for st in states.values():
        assert st["chunks"]["integrity"] == "ok"
        assert st["pool"]["running_requests"] == 0
    shared, copies = (states[n]["pool"]["window_peak_used_tokens"] for n in ("shared", "copies"))
    assert 0 < shared < copies, (shared, copies)
    # the window restarts on every read: nothing ran since the reads above
    assert _state(servers["shared"])["pool"]["window_busy_steps"] == 0
