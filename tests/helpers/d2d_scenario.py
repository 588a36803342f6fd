"""D2D weight loading scenario for tests/e2e/test_pd_e2e.py; run INSIDE a loopback-only network
namespace (see tests/helpers/pd_scenario.py; Mooncake's transfer engine listens on 0.0.0.0).

Two seed instances (tiny llama, float32, ``--mepic-weights-digest``) serve their weights. Then:

1. ``ok``: a new instance loads from seed A (Mooncake over TCP): same SHA-256 as A, same output;
   ``chain``: another one loads from that new instance;
2. ``killed``: a new instance pauses after fetching A's weight info (test-only env), A is
   SIGKILLed, the read fails, the instance loads from disk: same SHA-256, serves, and serves its
   weights to the next one (``chain_after_fallback``);
3. ``hung``: seed B is SIGSTOPped (a hung source), a new instance with
   ``--mepic-d2d-timeout-s 5`` gives up on it and loads from disk.

Writes ``OUT_DIR/result.json``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from disagg.launcher import Handle, InstanceSpec, LocalProcessLauncher  # noqa: E402
from disagg.weights import start_instance, weights_report  # noqa: E402
from mepic_sglang.models import ensure_tiny  # noqa: E402
from tests.helpers import faults  # noqa: E402
from tests.helpers.pd_scenario import CPU_ARGS, MAX_NEW, PROMPTS, generate  # noqa: E402

ARGS = (*CPU_ARGS, "--mepic-weights-digest")
GREEDY = {"max_new_tokens": MAX_NEW, "temperature": 0}


def served(url: str) -> list[Any]:
    return [generate(url, {"text": p, "sampling_params": GREEDY})[1]["output_ids"] for p in PROMPTS]


def wait_log(path: Path, needle: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{needle!r} not in {path} after {timeout_s:.0f} s")


def main(out_dir: Path) -> None:
    model = str(ensure_tiny("llama"))
    launcher = LocalProcessLauncher()
    seeds = [
        InstanceSpec(model, "collocated", 31701, nccl_port=31711, extra_args=ARGS,
                     engine_info_port=31789),
        InstanceSpec(model, "collocated", 31702, nccl_port=31712, extra_args=ARGS,
                     engine_info_port=31788),
    ]  # fmt: skip

    def client(port: int, seed: InstanceSpec, *extra: str, **env: str) -> InstanceSpec:
        # NOTE: every client is a seed too: the next instance may load from it
        return InstanceSpec(model, "collocated", port, nccl_port=port + 10,
                            extra_args=(*ARGS, *extra), env=env, engine_info_port=port + 80,
                            weights_from=f"127.0.0.1:{seed.port}")  # fmt: skip

    def chain(port: int, seed: InstanceSpec) -> dict[str, Any]:
        """An instance loading from ``seed``, which itself did not load from disk first."""
        started = start_instance(launcher, client(port, seed), out_dir / f"chain-{port}.log")
        handles.append(started.handle)
        row = {"weights": started.weights, "outputs": served(started.handle.spec.url)}
        launcher.stop(started.handle)
        return row

    handles: list[Handle] = [launcher.start(s, out_dir / f"seed-{s.port}.log") for s in seeds]
    result: dict[str, Any] = {}
    try:
        for h in handles:
            launcher.wait_ready(h)
        result["seed"] = weights_report(seeds[0].url)
        result["seed_outputs"] = served(seeds[0].url)

        # 1. weights from a running instance
        ok = start_instance(launcher, client(31703, seeds[0]), out_dir / "ok.log")
        handles.append(ok.handle)
        result["ok"] = {"weights": ok.weights, "outputs": served(ok.handle.spec.url)}
        result["chain"] = chain(31706, ok.handle.spec)  # from an instance loaded from a seed
        launcher.stop(ok.handle)

        # 2. the seed dies in the middle of the transfer
        spec = client(31704, seeds[0], **faults.env(MEPIC_FAULT_PAUSE_AFTER_INFO_S="3"))
        h = launcher.start(spec, out_dir / "killed.log")
        handles.append(h)
        wait_log(h.log, "pausing before the weight read")
        os.killpg(handles[0].proc.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        launcher.wait_ready(h, 300)
        result["killed"] = {
            "ready_after_kill_s": time.monotonic() - t_kill,
            "weights": weights_report(spec.url),
            "outputs": served(spec.url),
        }
        result["chain_after_fallback"] = chain(31707, spec)  # it serves its disk weights
        launcher.stop(h)

        # 3. the seed hangs (stopped): the instance gives up after its timeout
        os.killpg(handles[1].proc.pid, signal.SIGSTOP)
        spec = client(31705, seeds[1], "--mepic-d2d-timeout-s", "5")
        t0 = time.monotonic()
        h = launcher.start(spec, out_dir / "hung.log")
        handles.append(h)
        launcher.wait_ready(h, 300)
        result["hung"] = {
            "ready_s": time.monotonic() - t0,
            "weights": weights_report(spec.url),
            "outputs": served(spec.url),
        }
        os.killpg(handles[1].proc.pid, signal.SIGCONT)
    except Exception as e:  # NOTE: reported to the test, which shows the logs
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        for h in handles:
            if launcher.alive(h):
                os.killpg(h.proc.pid, signal.SIGCONT)
            launcher.stop(h, grace_s=20)
        result["alive_after_stop"] = [launcher.alive(h) for h in handles]
    (out_dir / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
