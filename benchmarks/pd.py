"""P/D benchmark on CPU: weight-load time (D2D vs disk), and static provisioning vs the scaling
controller on a bursty trace (SLO attainment and cost in instance-seconds).

Run it INSIDE a loopback-only network namespace (Mooncake and torch listen on 0.0.0.0):

    unshare -n sh -c 'ip link set lo up && exec python -m benchmarks.pd'

1. **Weights**: a seed instance (SmolLM2-135M float32, collocated) serves its weights; then
   ``--load-rounds`` new instances load from disk and as many from the seed (alternating).
   Reported: the plugin's ``load_s`` (SGLang's ``ModelRunner.load_model`` wall time) and the
   time from process start to ``/health_generate`` 200.
2. **Scaling**: the same seeded bursty trace (quiet / burst / quiet Poisson phases, the three CPU
   SLO classes of ``benchmarks.slo_client``) replayed against ``python -m disagg.cluster`` in
   each configuration of ``--configs``: ``static-1p1d``, ``static-2p2d``, ``autoscale`` (starts
   1P+1D, up to ``--max-instances``), ``autoscale-2p2d`` (starts 2P+2D, at least 1 per role).
   Cost = instance-seconds while the trace ran.

Writes ``OUT/pd.json``, ``OUT/pd_scaling.png`` and prints the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import requests

from benchmarks import slo_client
from benchmarks.common import add_common_args, resolve_common_args
from disagg.launcher import InstanceSpec, LocalProcessLauncher, wait_healthy
from disagg.weights import start_instance
from scheduler_patch.sim_workload import SimRequest, poisson_workload

CPU = ("--dtype", "float32", "--sleep-on-idle", "--max-total-tokens", "16384")
CONFIGS = {  # name -> (prefill, decode, autoscale)
    "static-1p1d": (1, 1, False),
    "static-2p2d": (2, 2, False),
    "autoscale": (1, 1, True),
    "autoscale-2p2d": (2, 2, True),  # starts over-provisioned: scale-in when quiet
}


def bursty_trace(phases: list[tuple[float, float]], seed: int) -> list[SimRequest]:
    """Poisson arrivals, phase by phase: ``[(seconds, requests/s), ...]``."""
    out: list[SimRequest] = []
    t0 = 0.0
    for k, (duration, qps) in enumerate(phases):
        for r in poisson_workload(qps, duration, slo_client.CPU_CLASSES, seed=seed + k):
            out.append(dataclasses.replace(r, rid=f"r{len(out):06d}", arrival=t0 + r.arrival))
        t0 += duration
    return out


def weight_loads(args: argparse.Namespace) -> list[dict[str, Any]]:
    launcher = LocalProcessLauncher()
    seed_spec = InstanceSpec(args.model, "collocated", args.port + 100, nccl_port=args.port + 101,
                             extra_args=CPU, engine_info_port=args.port + 102)  # fmt: skip
    seed = launcher.start(seed_spec, args.out / "pd-seed.log")
    rows = []
    try:
        launcher.wait_ready(seed)
        for k in range(2 * args.load_rounds):
            remote = k % 2 == 1
            spec = InstanceSpec(
                args.model, "collocated", args.port + 110, nccl_port=args.port + 111,
                extra_args=CPU, weights_from=f"127.0.0.1:{seed_spec.port}" if remote else None,
            )  # fmt: skip
            started = start_instance(launcher, spec, args.out / f"pd-load-{k}.log")
            launcher.stop(started.handle)
            w = started.weights
            rows.append({"from": "seed (D2D)" if remote else "disk", "source": w["source"],
                         "load_s": w["load_s"], "ready_s": round(started.ready_s, 2)})  # fmt: skip
            print(rows[-1], flush=True)
    finally:
        launcher.stop(seed)
    return rows


def cluster_run(
    args: argparse.Namespace, name: str, trace: list[SimRequest], server_args: list[str]
) -> dict[str, Any]:
    prefill, decode, autoscale = CONFIGS[name]
    url = f"http://127.0.0.1:{args.port}"
    cmd = [
        sys.executable, "-m", "disagg.cluster", "--model-path", args.model,
        "--prefill", str(prefill), "--decode", str(decode), "--port", str(args.port),
        "--instance-port-base", str(args.port + 200), "--log-dir", str(args.out / f"pd-{name}"),
        "--policy", "slo", "--max-instances", str(args.max_instances),
        "--scale-ttft-ms", str(args.scale_ttft_ms), "--scale-tpot-ms", str(args.scale_tpot_ms),
        "--scale-cooldown-s", str(args.scale_cooldown_s),
    ]  # fmt: skip
    cmd += ["--autoscale"] if autoscale else []
    with (args.out / f"pd-{name}.log").open("wb") as log:
        proc = subprocess.Popen([*cmd, "--", *server_args], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        what = f"cluster (log: {args.out}/pd-{name}.log)"
        wait_healthy(f"{url}/health", 900, lambda: proc.poll() is None, what)
        before = requests.get(f"{url}/cluster/state", timeout=10).json()
        t0 = time.monotonic()
        rows = slo_client.replay(url, trace, args.seed, args.timeout)
        wall = time.monotonic() - t0
        after = requests.get(f"{url}/cluster/state", timeout=10).json()
        for instance in after["instances"]:  # NOTE: requests still queued would delay the stop
            requests.post(f"{instance}/abort_request", json={"abort_all": True}, timeout=30)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    cost = after["instance_seconds"] - before["instance_seconds"]
    return {
        "config": name, "initial": prefill + decode, "t_offset": before.get("uptime_s", 0.0),
        "wall_s": round(wall, 1), "instance_seconds": round(cost, 1),
        "mean_instances": round(cost / wall, 2), **slo_client.summarize(rows),
        "events": after["events"], "rows": rows,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p, port=33000)
    p.add_argument("--load-rounds", type=int, default=3, help="disk and D2D starts each")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated; empty: none")
    p.add_argument("--phases", default="40:0.1,100:1.0,60:0.1", help="seconds:qps,...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=120.0, help="after the last arrival")
    p.add_argument("--max-instances", type=int, default=4)
    p.add_argument("--scale-ttft-ms", type=float, default=2000.0)
    p.add_argument("--scale-tpot-ms", type=float, default=400.0)
    p.add_argument("--scale-cooldown-s", type=float, default=20.0)
    p.add_argument("--profile", default="docs/results/slo_cpu_profile_2026-11-27.json")
    args = p.parse_args()
    configs = [c for c in args.configs.split(",") if c]
    if unknown := set(configs) - set(CONFIGS):
        p.error(f"--configs: unknown {sorted(unknown)}; choose from {sorted(CONFIGS)}")
    resolve_common_args(args)
    phases = [(float(a), float(b)) for a, b in (x.split(":") for x in args.phases.split(","))]
    trace = bursty_trace(phases, args.seed)
    server_args = [*CPU, "--schedule-policy", "multi-slo", "--slo-latency-profile", args.profile,
                   "--slo-classes", slo_client.class_flags(slo_client.CPU_CLASSES)]  # fmt: skip
    out: dict[str, Any] = {"model": args.model, "phases": phases, "requests": len(trace),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    if args.load_rounds:
        out["weights"] = weight_loads(args)
    out["scaling"] = []
    for name in configs:
        print(f"--- {name}", flush=True)
        out["scaling"].append(cluster_run(args, name, trace, server_args))
        (args.out / "pd.json").write_text(json.dumps(out, indent=1))
    (args.out / "pd.json").write_text(json.dumps(out, indent=1))
    from benchmarks.pd_plots import plot, print_tables

    print_tables(out)
    plot(out, args.out / "pd_scaling.png")


if __name__ == "__main__":
    main()
