"""Start-up time and peak memory of the CPU server: stock SGLang vs SGLang with the plugin.

    python -m benchmarks.server_startup [--runs 3] [--model PATH] [--out benchmarks/results]

Each run launches ``python -m sglang.launch_server`` (CPU flags of the README), samples the
memory of the whole process tree every 0.25 s until ``/health_generate`` answers and then while
one chat request is served, and stops the server. Modes:

* ``stock``: the plugin is kept out with SGLang's own whitelist (``SGLANG_PLUGINS``);
* ``plugin``: the plugin loaded, ``--enable-mepic``.

Reported per mode (median over runs): seconds to ready, peak summed RSS of the tree (shared pages
count once per process, so this over-counts) and peak summed PSS (shared pages split between the
processes that map them: the honest total). Writes ``startup.json`` and ``startup_memory.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

from benchmarks.common import add_common_args, resolve_common_args, stop_tree

CPU_ARGS = ["--dtype", "float32", "--sleep-on-idle", "--max-total-tokens", "16384"]
MODES = {"stock": ([], "no-such-plugin"), "plugin": (["--enable-mepic"], None)}


@dataclass
class Run:
    mode: str
    ready_s: float
    peak_rss_mb: float
    peak_pss_mb: float
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (t, rss, pss)


def _tree_memory(root: psutil.Process) -> tuple[float, float]:
    rss = pss = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss / 2**20, pss / 2**20


def one_run(mode: str, model: str, port: int) -> Run:
    extra, plugins_env = MODES[mode]
    env = dict(os.environ)
    if plugins_env:
        env["SGLANG_PLUGINS"] = plugins_env
    cmd = [
        sys.executable, "-m", "sglang.launch_server", "--model-path", model,
        "--host", "127.0.0.1", "--port", str(port), *CPU_ARGS, *extra,
    ]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    root = psutil.Process(proc.pid)
    url = f"http://127.0.0.1:{port}"
    samples: list[tuple[float, float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.monotonic() - t0, *_tree_memory(root)))
            done.wait(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    ready_s = -1.0
    try:
        while ready_s < 0 and time.monotonic() - t0 < 900:
            if proc.poll() is not None:
                raise RuntimeError(f"{mode}: server exited with {proc.returncode}")
            try:
                if requests.get(f"{url}/health_generate", timeout=60).status_code == 200:
                    ready_s = time.monotonic() - t0
                    break
            except requests.RequestException:
                pass
            time.sleep(0.25)
        if ready_s >= 0:  # serve one request, so the peak includes a real forward pass
            body: dict[str, Any] = {
                "model": model,
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "max_tokens": 32,
                "temperature": 0,
            }
            requests.post(f"{url}/v1/chat/completions", json=body, timeout=300).raise_for_status()
    finally:
        done.set()
        sampler.join()
        stop_tree(proc, root)
    if ready_s < 0:
        raise TimeoutError(f"{mode}: not ready in 900 s")
    return Run(
        mode=mode,
        ready_s=ready_s,
        peak_rss_mb=max(s[1] for s in samples),
        peak_pss_mb=max(s[2] for s in samples),
        samples=samples,
    )


def _plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        ts = [s[0] for s in run.samples]
        ax.plot(ts, [s[2] for s in run.samples], label=f"{run.mode} (ready {run.ready_s:.1f} s)")
    ax.set_xlabel("seconds since launch")
    ax.set_ylabel("process-tree PSS (MiB)")
    ax.set_title("SGLang CPU server start-up: SmolLM2-135M, float32")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.server_startup")
    parser.add_argument("--runs", type=int, default=3)
    add_common_args(parser, port=30310)
    args = parser.parse_args(argv)
    resolve_common_args(args)

    runs: list[Run] = []
    for i in range(args.runs):
        for mode in MODES:  # interleaved, so drift in machine load hits both modes alike
            run = one_run(mode, args.model, args.port)
            print(f"run {i + 1}/{args.runs} {mode:6s} ready {run.ready_s:5.1f} s  "
                  f"peak PSS {run.peak_pss_mb:6.0f} MiB  peak RSS {run.peak_rss_mb:6.0f} MiB",
                  flush=True)  # fmt: skip
            runs.append(run)

    print("\n| mode | runs | ready (s, median) | peak PSS (MiB) | peak RSS sum (MiB) |")
    print("|---|---|---|---|---|")
    summary = {}
    for mode in MODES:
        mine = [r for r in runs if r.mode == mode]
        row = {
            "runs": len(mine),
            "ready_s": statistics.median(r.ready_s for r in mine),
            "peak_pss_mb": statistics.median(r.peak_pss_mb for r in mine),
            "peak_rss_mb": statistics.median(r.peak_rss_mb for r in mine),
        }
        summary[mode] = row
        print(f"| {mode} | {row['runs']} | {row['ready_s']:.1f} | {row['peak_pss_mb']:.0f} | "
              f"{row['peak_rss_mb']:.0f} |")  # fmt: skip
    meta = {"cpu_count": os.cpu_count(), "model": args.model, "flags": CPU_ARGS}
    (args.out / "startup.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "runs": [asdict(r) for r in runs]}) + "\n"
    )
    _plot([r for r in runs if r is runs[-1] or r is runs[-2]], args.out / "startup_memory.png")
    print(f"\nwrote {args.out / 'startup.json'} and {args.out / 'startup_memory.png'}")


if __name__ == "__main__":
    main()
