"""Scaling scenario for tests/e2e/test_pd_e2e.py; run INSIDE a loopback-only network namespace (see
tests/helpers/pd_scenario.py).

``python -m disagg.cluster`` starts 1 prefill + 2 decode instances (tiny llama, multi-slo, the
first from disk, the others with its weights, D2D) with ``--autoscale``. Requests keep coming;
once the decode instances have fitted a latency model and stay idle-ish, the controller retires
one of them (scale-in: drain, then stop). Then an operator's ``POST /cluster/scale`` adds a
prefill instance (scale-out, weights from a running instance) that serves. SIGTERM to the
cluster must stop every process it started. Writes ``OUT_DIR/result.json``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from disagg.launcher import wait_healthy  # noqa: E402
from mepic_sglang.models import ensure_tiny  # noqa: E402
from tests.helpers.pd_scenario import CPU_ARGS, MAX_NEW, PROMPTS, generate  # noqa: E402

URL = "http://127.0.0.1:31900"
TAG = "MEPIC_SCENARIO_TAG"
SERVER_ARGS = (*CPU_ARGS, "--schedule-policy", "multi-slo", "--mepic-weights-digest")
GREEDY = {"max_new_tokens": MAX_NEW, "temperature": 0}


def tagged_pids(tag: str) -> list[int]:
    """Processes whose environment carries ``TAG=tag`` (the cluster and all it started)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"{TAG}={tag}".encode() in env.split(b"\0"):
            out.append(int(entry.name))
    return out


def state() -> dict[str, Any]:
    return dict(requests.get(f"{URL}/cluster/state", timeout=10).json())


def main(out_dir: Path) -> None:
    model = str(ensure_tiny("llama"))
    tag = uuid.uuid4().hex
    cmd = [
        sys.executable, "-m", "disagg.cluster", "--model-path", model, "--prefill", "1",
        "--decode", "2", "--port", URL.rsplit(":", 1)[1], "--instance-port-base", "31910",
        "--policy", "round-robin", "--log-dir", str(out_dir), "--autoscale",
        "--scale-interval-s", "0.5", "--scale-sustain", "3", "--scale-cooldown-s", "5",
        "--max-instances", "3", "--", *SERVER_ARGS,
    ]  # fmt: skip
    env = {**os.environ, TAG: tag}
    with (out_dir / "cluster.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    result: dict[str, Any] = {}
    try:
        t0 = time.monotonic()
        wait_healthy(f"{URL}/health", 600, lambda: proc.poll() is None, "the cluster")
        result["ready_s"] = time.monotonic() - t0
        result["start"] = state()
        result["reference"] = generate(URL, {"text": PROMPTS[0], "sampling_params": GREEDY})[1][
            "output_ids"
        ]
        # requests keep coming until the controller has retired an idle decode instance
        statuses, outputs = [], []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            s, out = generate(URL, {"text": PROMPTS[0], "sampling_params": GREEDY})
            statuses.append(s)
            outputs.append(out.get("output_ids") if s == 200 else out)
            if any(e["action"] == "in" and e["ok"] for e in state()["events"]):
                break
            time.sleep(0.3)
        result["scale_in"] = {"statuses": statuses, "outputs": outputs, "state": state()}
        r = requests.post(f"{URL}/cluster/scale", json={"action": "out", "role": "prefill"},
                          timeout=600)  # fmt: skip
        result["scale_out"] = {"status": r.status_code, "event": r.json()}
        after = [generate(URL, {"text": PROMPTS[0], "sampling_params": GREEDY}) for _ in range(4)]
        result["after_out"] = [(s, o.get("output_ids") if s == 200 else o) for s, o in after]
        result["dispatcher"] = requests.get(f"{URL}/dispatcher/state", timeout=10).json()
        result["end"] = state()
    except Exception as e:  # NOTE: reported to the test, which shows the logs
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
        time.sleep(2)
        left = tagged_pids(tag)
        result["left_after_stop"] = left
        for pid in left:  # NOTE: never leave a process behind, even when the test fails
            os.kill(pid, signal.SIGKILL)
    (out_dir / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
