"""Liveness and bounded shutdown on a real server (issue 17).

The module's server injects the stall that the hostile-input run found (the test-only fault
``MEPIC_FAULT_NO_POOL_FIT=1`` of tests/helpers/faults: a chunked request whose scratch heads can
never fit the pool is budgeted as before the fix, so it is never admitted and blocks the queue),
watches itself with
``--mepic-stall-timeout 3``, shuts down with ``--mepic-shutdown-timeout 6`` and requires a
``cache_salt`` on every request (which SGLang's own warm-up and health probes do not carry). The
shutdown test runs last: it stops the server.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from disagg import server_info
from mepic_sglang.sglang.shutdown import ABORT_MESSAGE
from tests.helpers import faults
from tests.helpers.server_utils import ServerHandle, start_server

pytestmark = pytest.mark.server
STALL_S = 3.0
SHUTDOWN_S = 6.0
HEALTH_TIMEOUT_S = 5
SALT = {"cache_salt": "tenant-a"}


@pytest.fixture(scope="module")
def server(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    handle = start_server(
        smollm2_path,
        [
            "--enable-mepic",
            "--max-total-tokens", "4096",
            "--enable-metrics",
            "--mepic-stall-timeout", str(STALL_S),
            "--mepic-shutdown-timeout", str(SHUTDOWN_S),
            "--mepic-require-cache-salt",
        ],
        log_path=tmp_path_factory.mktemp("liveness-server") / "server.log",
        env={
            **faults.env(MEPIC_FAULT_NO_POOL_FIT="1"),
            "SGLANG_HEALTH_CHECK_TIMEOUT": str(HEALTH_TIMEOUT_S),
        },
    )  # fmt: skip
    yield handle
    handle.stop()


def liveness(server: ServerHandle) -> dict[str, Any]:
    info = requests.get(f"{server.url}/server_info", timeout=60).json()
    return dict(server_info.plugin_section(info)["liveness"])


def metric(server: ServerHandle, name: str) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=60).text
    found = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def ready(server: ServerHandle) -> int:
    return requests.get(f"{server.url}/ready", timeout=60).status_code


def health(server: ServerHandle) -> int:
    return requests.get(f"{server.url}/health_generate", timeout=120).status_code


VOCAB_WORDS = "amber basalt cedar delta ember fjord garnet harbor indigo juniper kelp lagoon"


def words(seed: int, n: int) -> str:
    vocab = VOCAB_WORDS.split()
    return " ".join(f"{vocab[(seed * 7 + i * 5) % len(vocab)]}{i % 17}" for i in range(n))


def open_stream(server: ServerHandle, body: dict[str, Any]) -> socket.socket:
    """Send a streaming /generate and keep the connection open (closing it = client gone)."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    payload = json.dumps({**body, **SALT, "stream": True}).encode()
    sock.sendall(
        b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def wait_for(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_every_request_must_name_its_tenant(server: ServerHandle) -> None:
    # the server started: SGLang's warm-up and health probes carry no salt and were let through
    assert health(server) == 200
    body = {"text": "Hi", "sampling_params": {"max_new_tokens": 2}}
    r = requests.post(f"{server.url}/generate", json=body, timeout=120)
    assert r.status_code == 400 and "--mepic-require-cache-salt" in r.text, r.text
    r = requests.post(f"{server.url}/generate", json={**body, **SALT}, timeout=120)
    assert r.status_code == 200, r.text


def test_a_stalled_scheduler_is_reported_and_fails_its_health_check(server: ServerHandle) -> None:
    assert liveness(server)["stalled"] is False and health(server) == 200
    stuck = {
        "rid": "stuck-request",
        "mepic_segments": [{"chunk": words(1, 400)}, {"chunk": words(2, 400)}, {"text": "Go."}],
        "sampling_params": {"max_new_tokens": 3000},
    }
    sock = open_stream(server, stuck)
    try:
        state = wait_for(lambda: (s := liveness(server))["stalled"] and s, 30, "the stall")
        assert state["waiting_requests"] == 1 and state["running_requests"] == 0
        assert state["no_progress_s"] >= STALL_S and state["stalls"] == 1
        assert metric(server, "sglang:mepic_scheduler_stalled") == 1.0
        assert metric(server, "sglang:mepic_scheduler_stalls_total") >= 1.0
        assert metric(server, "sglang:mepic_scheduler_no_progress_seconds") >= STALL_S
        # any message from the scheduler (here: /server_info replies, polled while the probe
        # waits) used to make SGLang's probe pass
        polling = threading.Event()

        def poll() -> None:
            while not polling.is_set():
                liveness(server)
                time.sleep(0.3)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        try:
            # the launcher learns of the stall within a second (it reads the scheduler's
            # signal once a second); /ready reads the status it holds
            wait_for(lambda: ready(server) == 503, 10, "/ready to refuse")
            assert health(server) == 503  # stock SGLang answered 200 here
        finally:
            polling.set()
            poller.join(timeout=30)
    finally:
        sock.close()  # the client leaves: SGLang aborts the request, the queue empties
    wait_for(lambda: not liveness(server)["stalled"], 30, "the recovery")
    wait_for(lambda: health(server) == 200, 30, "the health probe to pass again")
    assert metric(server, "sglang:mepic_scheduler_stalled") == 0.0


def test_sigterm_refuses_new_requests_drains_then_aborts_within_the_timeout(
    server: ServerHandle,
) -> None:
    results: dict[str, tuple[int, str]] = {}

    def call(name: str, body: dict[str, Any]) -> None:
        try:
            r = requests.post(f"{server.url}/generate", json={**body, **SALT}, timeout=120)
            results[name] = (r.status_code, r.text)
        except requests.RequestException as e:
            results[name] = (-1, str(e))

    long = {"sampling_params": {"max_new_tokens": 400, "ignore_eos": True, "temperature": 0}}
    # every forward sleeps 0.2 s (SGLang's /slow_down): 400 tokens cannot finish in the grace
    # period however fast the machine is
    slow = requests.post(f"{server.url}/slow_down", json={"forward_sleep_time": 0.2}, timeout=60)
    assert slow.status_code == 200, slow.text
    short = {"sampling_params": {"max_new_tokens": 8, "temperature": 0}}
    calls = [
        threading.Thread(target=call, args=(f"long{i}", {"text": f"Story {i}:", **long}))
        for i in range(3)
    ]
    calls.append(threading.Thread(target=call, args=("short", {"text": "Hi there", **short})))
    for t in calls:
        t.start()
    leavers = [
        open_stream(server, {"rid": f"leaver{i}", "text": f"Tale {i}:", **long}) for i in range(2)
    ]
    time.sleep(3)  # everything is running
    for s in leavers:
        s.close()
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(1)
    call("late", {"text": "Late", **short})
    server.proc.wait(timeout=SHUTDOWN_S + 60)
    exit_s = time.monotonic() - t0
    for t in calls:
        t.join(timeout=30)
    print(f"shutdown with 6 requests in flight: process exited {exit_s:.1f} s after SIGTERM")
    # stock SGLang drains without a limit: 97 s for 4 such requests plus 4 that left (measured)
    assert exit_s < SHUTDOWN_S + 25, exit_s
    assert results["late"][0] == 503 and "shutting down" in results["late"][1], results["late"]
    assert results["short"][0] == 200, results["short"]
    for i in range(3):
        code, text = results[f"long{i}"]
        assert code == 503 and ABORT_MESSAGE in text, (code, text[:300])
    log = server.log_path.read_text(errors="replace")
    # the two clients that left were aborted during the drain, not generated for: only the
    # three long requests were still running when the grace period ended
    aborted = re.findall(r"shutdown grace period over: aborting (\d+) request", log)
    assert aborted == ["3"], aborted
    assert "drained in" in log
