"""P/D role-switch scenario for tests/e2e/test_pd_e2e.py; run INSIDE a loopback-only network
namespace (see tests/helpers/pd_scenario.py).

1 prefill + 2 decode instances (tiny llama, ``--enable-pd-role-switch``) behind the dispatcher;
requests keep coming from 4 client threads while the dispatcher switches the second decode
instance to prefill (``POST /dispatcher/switch``); then the first prefill instance is retired
(scale-in, ``POST /dispatcher/retire``) while long requests run. Writes ``OUT_DIR/result.json``.
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from disagg.launcher import InstanceSpec  # noqa: E402
from mepic_sglang.models import ensure_tiny  # noqa: E402
from tests.helpers.pd_scenario import (  # noqa: E402
    CPU_ARGS,
    MAX_NEW,
    PROMPTS,
    generate,
    run,
)

SWITCH_ARGS = (*CPU_ARGS, "--enable-pd-role-switch")
URL = "http://127.0.0.1:31603"
REQUESTS = 36


def scale_in(victim: str) -> dict[str, Any]:
    """Retire ``victim`` (a prefill instance) while two long requests are in flight (round
    robin puts one on it): the retire returns once it drained; nothing is dropped."""
    long = {"max_new_tokens": 200, "temperature": 0, "ignore_eos": True}
    finished: list[float] = []

    def one(p: str) -> tuple[int, int]:
        status, out = generate(URL, {"text": p, "sampling_params": long})
        finished.append(time.monotonic())
        return status, len(out.get("output_ids") or []) if status == 200 else 0

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(one, p) for p in PROMPTS[:2]]
        time.sleep(0.5)  # NOTE: both routed by now
        r = requests.post(f"{URL}/dispatcher/retire", json={"url": victim}, timeout=300)
        retired_at = time.monotonic()
        longs = [f.result() for f in futures]
    greedy = {"max_new_tokens": MAX_NEW, "temperature": 0}
    return {
        "retire": {"status": r.status_code, **r.json()},
        "long": longs,
        "retired_after_a_long_one_finished": retired_at >= min(finished),
        "after_retire": [
            generate(URL, {"text": p, "sampling_params": greedy})[1].get("output_ids")
            for p in PROMPTS
        ],
        "state_retired": requests.get(f"{URL}/dispatcher/state", timeout=10).json(),
    }


def main(out_dir: Path) -> None:
    model = str(ensure_tiny("llama"))
    specs = [
        InstanceSpec(model, "prefill", 31601, 31698, 31611, extra_args=SWITCH_ARGS),
        InstanceSpec(model, "decode", 31602, 31697, 31612, extra_args=SWITCH_ARGS),
        InstanceSpec(model, "decode", 31604, 31696, 31614, extra_args=SWITCH_ARGS),
    ]

    def body(result: dict[str, Any]) -> None:
        greedy = {"max_new_tokens": MAX_NEW, "temperature": 0}
        reference = [generate(URL, {"text": p, "sampling_params": greedy})[1] for p in PROMPTS]
        result["reference"] = [r.get("output_ids") for r in reference]
        done = threading.Event()

        def one(i: int) -> tuple[int, int, Any]:
            if i == REQUESTS // 3:
                done.set()  # NOTE: the switch starts while the rest keep coming
            status, out = generate(URL, {"text": PROMPTS[i % 3], "sampling_params": greedy})
            return i % 3, status, out.get("output_ids") if status == 200 else out

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(one, i) for i in range(REQUESTS)]
            done.wait(300)
            before = requests.get(f"{URL}/dispatcher/state", timeout=10).json()
            t0 = time.monotonic()
            switch = {"url": specs[2].url, "new_role": "prefill", "bootstrap_port": 31696}
            r = requests.post(f"{URL}/dispatcher/switch", json=switch, timeout=300)
            wall = time.monotonic() - t0
            result["switch"] = {"status": r.status_code, **r.json(), "wall_s": wall}
            result["runs"] = [f.result() for f in futures]
        result["state_before"] = before
        result["state_after"] = requests.get(f"{URL}/dispatcher/state", timeout=10).json()
        # the switched instance now serves as a prefill instance
        result["after"] = [
            generate(URL, {"text": p, "sampling_params": greedy})[1].get("output_ids")
            for p in PROMPTS * 2
        ]
        result["state_end"] = requests.get(f"{URL}/dispatcher/state", timeout=10).json()
        result.update(scale_in(specs[0].url))

    args = [f"--prefill={specs[0].url},{specs[0].bootstrap_port}"]
    run(out_dir, specs, args + [f"--decode={s.url}" for s in specs[1:]], URL, "round-robin", body)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
