"""P/D scenario for tests/e2e/test_pd_e2e.py; run INSIDE a loopback-only network namespace.

    unshare -n sh -c 'ip link set lo up && exec python tests/helpers/pd_scenario.py OUT_DIR'

(Mooncake's transfer engine and torch's TCP store listen on 0.0.0.0.) It starts a collocated
server, a prefill and a decode instance (tiny llama, float32, Mooncake over TCP) and the
dispatcher in front of the pair; sends the same greedy requests to the collocated server and
to the dispatcher; stops everything; writes ``OUT_DIR/result.json`` for the test to judge.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from disagg import server_info  # noqa: E402
from disagg.launcher import Handle, InstanceSpec, LocalProcessLauncher, wait_healthy  # noqa: E402
from mepic_sglang.models import ensure_tiny  # noqa: E402

CPU_ARGS = ("--dtype", "float32", "--sleep-on-idle", "--max-total-tokens", "4096")
# the P/D pair runs the plugin's SLO scheduling in both stages (greedy outputs do not change)
SLO_ARGS = (
    "--schedule-policy", "multi-slo", "--slo-unattainable", "reject",
    "--slo-classes", "interactive:ttft=60000,tpot=30000,priority=2;batch:priority=0",
)  # fmt: skip
PROMPTS = ["The capital of France is", "def fibonacci(n):", "1, 2, 3, 4,"]
MAX_NEW = 12


def start_dispatcher(
    instances: list[str], url: str, policy: str, out_dir: Path
) -> subprocess.Popen[bytes]:
    """``python -m disagg.dispatcher`` on ``url``'s port, healthy when this returns."""
    port = url.rsplit(":", 1)[1]
    cmd = [sys.executable, "-m", "disagg.dispatcher", "--port", port, "--policy", policy]
    with (out_dir / "dispatcher.log").open("wb") as log:
        proc = subprocess.Popen([*cmd, *instances], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    wait_for(url)
    return proc


def stop_all(
    result: dict[str, Any],
    dispatcher: subprocess.Popen[bytes] | None,
    launcher: LocalProcessLauncher,
    handles: list[Handle],
) -> None:
    """Stop the dispatcher and every instance; record which are still alive (none should)."""
    if dispatcher is not None:
        dispatcher.terminate()
        dispatcher.wait(30)
    for h in handles:
        launcher.stop(h, grace_s=20)
    result["alive_after_stop"] = [launcher.alive(h) for h in handles]


def wait_for(url: str, timeout_s: float = 60.0) -> None:
    """Until the dispatcher at ``url`` answers ``/health`` with 200."""
    wait_healthy(f"{url}/health", timeout_s, what=f"dispatcher {url}")


def generate(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    r = requests.post(f"{url}/generate", json=body, timeout=300)
    return r.status_code, r.json()


def chat(url: str, stream: bool) -> str:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "Count to five."}],
        "max_tokens": MAX_NEW,
        "temperature": 0,
        "stream": stream,
    }
    r = requests.post(f"{url}/v1/chat/completions", json=body, timeout=300, stream=stream)
    r.raise_for_status()
    if not stream:
        return str(r.json()["choices"][0]["message"]["content"])
    parts = []
    for line in r.iter_lines():
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            delta = json.loads(line[6:])["choices"][0].get("delta", {})
            parts.append(delta.get("content") or "")
    return "".join(parts)


def outputs(url: str) -> dict[str, Any]:
    greedy = {"max_new_tokens": MAX_NEW, "temperature": 0}
    single = [generate(url, {"text": p, "sampling_params": greedy}) for p in PROMPTS]
    batch = generate(url, {"text": PROMPTS[:2], "sampling_params": greedy})
    return {
        "single": [(s, o.get("output_ids") if s == 200 else o) for s, o in single],
        "batch": [o.get("output_ids") for o in batch[1]] if batch[0] == 200 else batch,
        "chat": chat(url, stream=False),
        "chat_stream": chat(url, stream=True),
    }


def slo_requests(url: str) -> dict[str, Any]:
    """Concurrent SLO requests through the pair, and one whose TTFT no server can meet (the
    prefill stage answers 429; the dispatcher must abort the decode leg, not wait for it)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> tuple[int, Any]:
        params = {"max_new_tokens": MAX_NEW, "temperature": 0, "ignore_eos": True,
                  "custom_params": {"slo_class": "interactive"}}  # fmt: skip
        return generate(url, {"text": f"{i} " + PROMPTS[i % 3], "sampling_params": params})

    with ThreadPoolExecutor(6) as pool:
        done = list(pool.map(one, range(6)))
    t0 = time.monotonic()
    impossible = generate(url, {"text": PROMPTS[0], "sampling_params": {
        "max_new_tokens": MAX_NEW, "custom_params": {"slo_ttft_ms": 1}}})  # fmt: skip
    return {
        "statuses": [s for s, _ in done],
        "reports": [o["meta_info"].get("slo") for s, o in done if s == 200],
        "tokens": [len(o["output_ids"]) for s, o in done if s == 200],
        "impossible": impossible,
        "impossible_s": time.monotonic() - t0,
    }


def run(
    out_dir: Path,
    specs: list[InstanceSpec],
    dispatcher_args: list[str],
    url: str,
    policy: str,
    body: Callable[[dict[str, Any]], None],
) -> None:
    """Start ``specs`` and a dispatcher on ``url``, run ``body(result)``, stop everything,
    write ``OUT_DIR/result.json`` (an exception is recorded for the test, which shows logs)."""
    launcher = LocalProcessLauncher()
    handles = [launcher.start(s, out_dir / f"{s.role}-{s.port}.log") for s in specs]
    dispatcher = None
    result: dict[str, Any] = {}
    try:
        t0 = time.monotonic()
        for h in handles:
            launcher.wait_ready(h)
        result["ready_s"] = time.monotonic() - t0
        dispatcher = start_dispatcher(dispatcher_args, url, policy, out_dir)
        body(result)
    except Exception as e:  # NOTE: reported to the test, which shows the logs
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        stop_all(result, dispatcher, launcher, handles)
    (out_dir / "result.json").write_text(json.dumps(result, indent=1))


def main(out_dir: Path) -> None:
    model = str(ensure_tiny("llama"))
    specs = [
        InstanceSpec(model, "collocated", 31500, nccl_port=31510, extra_args=CPU_ARGS),
        InstanceSpec(model, "prefill", 31501, 31598, 31511, extra_args=CPU_ARGS + SLO_ARGS),
        InstanceSpec(model, "decode", 31502, None, 31512, extra_args=CPU_ARGS + SLO_ARGS),
    ]
    url = "http://127.0.0.1:31503"

    def body(result: dict[str, Any]) -> None:
        result["collocated"] = outputs(specs[0].url)
        result["pd"] = outputs(url)
        bad = {"text": "x", "sampling_params": {"max_new_tokens": -1}}
        result["bad"] = generate(url, bad)
        result["after_bad"] = generate(url, {"text": PROMPTS[0], "sampling_params": {
            "max_new_tokens": MAX_NEW, "temperature": 0}})[1].get("output_ids")  # fmt: skip
        result["slo"] = slo_requests(url)
        result["stage_state"] = [server_info.fetch(s.url, 30)["slo"] for s in specs[1:]]
        for _ in range(40):  # NOTE: the poller reads a fitted model within a few polls
            result["state"] = requests.get(f"{url}/dispatcher/state", timeout=5).json()
            if all(row["model"] for row in result["state"]["instances"]):
                break
            time.sleep(0.5)

    pd_args = [f"--prefill={specs[1].url},{specs[1].bootstrap_port}", f"--decode={specs[2].url}"]
    run(out_dir, specs, pd_args, url, "slo", body)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
