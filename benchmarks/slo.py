"""Multi-SLO scheduling against SGLang's fcfs and priority policies: real server and simulator.

    python -m benchmarks.slo            # SmolLM2 on CPU: 0.5x/1x/2x load, 3 policies (~35 min)
    python -m benchmarks.slo --smoke    # tiny random model, a few seconds per run (CI)

1. **Profile**: a multi-slo server measures this machine's step times (``benchmarks.slo_profile``
   sweep); the fitted latency model gives the capacity estimate and the simulator's truth.
2. **Real**: one server per policy (same flags otherwise), each load replayed from the same
   seeded workload (three SLO classes, Poisson arrivals at load x capacity). Scored from the
   server's ``meta_info["slo"]``.
3. **Simulator, same scale**: the same workloads on the simulator with the profile as truth: its
   attainment is checked against the real server's.
4. **Simulator, cluster scale**: ``--sim-instances`` instances of a GPU-like reference model at
   the same loads (thousands of requests).

Capacity (requests/s): what the instance serves when saturated, i.e. a burst of 300 requests of
the workload mix queued at once, served by the simulator with the measured profile (fcfs) until
the last one ends; requests / makespan. Loads are multiples of it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from benchmarks import slo_client
from benchmarks.common import (
    add_common_args,
    resolve_common_args,
    start_server,
    stop_tree,
)
from benchmarks.slo_profile import measure
from disagg import server_info
from scheduler_patch.latency_model import LatencyModel
from scheduler_patch.sim_workload import DEFAULT_CLASSES, poisson_workload, reference_model
from scheduler_patch.simulator import SimConfig, simulate_cluster

POLICIES = {  # name -> server flags
    "fcfs": ["--schedule-policy", "fcfs"],
    "priority": ["--schedule-policy", "fcfs", "--enable-priority-scheduling"],
    "multi-slo": ["--schedule-policy", "multi-slo"],
}


def capacity(model: LatencyModel, classes: Any, pools: dict[str, int], n: int = 300) -> float:
    """Requests/s the instance serves when saturated: ``n`` requests of the workload mix all
    queued at t=0, served by the simulator (fcfs, the profile as truth) until the last one ends."""
    burst = [
        dataclasses.replace(r, arrival=0.0) for r in poisson_workload(1000.0, 10.0, classes)[:n]
    ]
    config = SimConfig(model=model, policy="fcfs", truth=model, learn=False, **pools)  # type: ignore[arg-type]
    result = simulate_cluster(1, burst, config)
    return len(burst) / result.summary().span_s


def server_flags(args: argparse.Namespace, policy: str, profile: Path | None) -> list[str]:
    out = [*POLICIES[policy], "--slo-classes", slo_client.class_flags(args.classes)]
    out += [
        "--chunked-prefill-size",
        str(args.chunk),
        "--max-running-requests",
        str(args.max_running),
    ]
    if policy == "multi-slo" and profile is not None:
        out += ["--slo-latency-profile", str(profile)]
    return out


def measure_profile(args: argparse.Namespace) -> Path:
    path = args.out / "slo_profile.json"
    proc, root, url = start_server(
        args.model,
        args.port,
        server_flags(args, "multi-slo", None),
        args.out / "slo_server_profile.log",
        args.kv_tokens,
    )
    try:
        words = [16, 64] if args.smoke else [32, 128, 384, 768]
        sizes = [1, 4] if args.smoke else [1, 2, 4, 8, 16]
        profile = measure(url, words, sizes, f"{args.model}, benchmarks.slo")
    finally:
        stop_tree(proc, root)
    path.write_text(json.dumps(profile, indent=1))
    return path


def real_runs(
    args: argparse.Namespace, profile: Path, qps: dict[float, float]
) -> list[dict[str, Any]]:
    rows = []
    for policy in args.policies:
        log = args.out / f"slo_server_{policy}.log"
        proc, root, url = start_server(
            args.model, args.port, server_flags(args, policy, profile), log, args.kv_tokens
        )
        try:
            for load, rate in qps.items():
                workload = poisson_workload(rate, args.duration, args.classes, args.seed)
                t0 = time.monotonic()
                results = slo_client.replay(url, workload, args.seed, args.drain)
                row = {"policy": policy, "load": load, "qps": rate, **slo_client.summarize(results)}
                row["wall_s"] = time.monotonic() - t0
                if policy == "multi-slo":
                    row["server_slo"] = server_info.fetch(url).get("slo")
                rows.append(row)
                print(
                    f"real {policy:<9} load {load:>4}x  attainment {row['attainment']:.3f}  "
                    f"{row['per_class']}  rejected {row['rejected']}  "
                    f"retractions {row['retractions']}"
                )
        finally:
            stop_tree(proc, root)
    return rows


def sim_runs(
    args: argparse.Namespace,
    truth: LatencyModel,
    qps: dict[float, float],
    instances: int,
    classes: Any,
    label: str,
    **pools: int,
) -> list[dict[str, Any]]:
    """The same policies on the simulator (``pools``: SimConfig pool sizes)."""
    rows = []
    for policy in args.policies:
        model = LatencyModel(prefill_coef=truth.prefill_coef, decode_coef=truth.decode_coef)
        config = SimConfig(model=model, policy=policy, truth=truth, **pools)  # type: ignore[arg-type]
        for load, rate in qps.items():
            workload = poisson_workload(
                rate * instances,
                args.sim_duration if instances > 1 else args.duration,
                classes,
                args.seed,
            )
            t0 = time.perf_counter()
            result = simulate_cluster(instances, workload, config, seed=args.seed)
            s = result.summary()
            rows.append(
                {
                    "scale": label,
                    "policy": policy,
                    "load": load,
                    "instances": instances,
                    "requests": s.submitted,
                    "attainment": s.attainment,
                    "per_class": s.per_class,
                    "rejected": s.rejected,
                    "preemptions": s.preemptions,
                    "ttft_p50": s.ttft_p50,
                    "ttft_p99": s.ttft_p99,
                    "sim_seconds": time.perf_counter() - t0,
                }
            )
            print(
                f"sim  {label:<7} {policy:<9} load {load:>4}x  attainment {s.attainment:.3f}  "
                f"{ {k: round(v, 3) for k, v in s.per_class.items()} }  ({s.submitted} requests, "
                f"{rows[-1]['sim_seconds']:.1f} s)"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, port=30500)
    parser.add_argument("--smoke", action="store_true", help="tiny model, short runs (CI)")
    parser.add_argument("--loads", default="0.5,1,2", help="multiples of the capacity estimate")
    parser.add_argument("--policies", default="fcfs,priority,multi-slo")
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of arrivals per run")
    parser.add_argument("--drain", type=float, default=240.0, help="seconds to wait after the last")
    parser.add_argument("--profile", type=Path, default=None, help="reuse a latency profile")
    parser.add_argument("--chunk", type=int, default=256, help="--chunked-prefill-size")
    parser.add_argument("--max-running", type=int, default=16)
    parser.add_argument("--kv-tokens", type=int, default=16384)
    parser.add_argument("--sim-instances", type=int, default=16)
    parser.add_argument("--sim-duration", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.policies = args.policies.split(",")
    args.classes = slo_client.CPU_CLASSES
    if args.smoke:
        from mepic_sglang.models import ensure_tiny

        args.model = args.model or str(ensure_tiny("llama"))
        args.duration, args.drain, args.sim_instances, args.sim_duration = 8.0, 60.0, 2, 10.0
    resolve_common_args(args)
    profile = args.profile or measure_profile(args)
    truth = LatencyModel.load(profile)
    pools = {
        "kv_tokens": args.kv_tokens,
        "max_running": args.max_running,
        "max_prefill_tokens": args.chunk,
    }
    cap = capacity(truth, args.classes, pools)
    qps = {float(x): float(x) * cap for x in args.loads.split(",")}
    print(f"capacity estimate {cap:.3f} requests/s; loads {qps}")
    out: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "capacity_qps": cap,
        "profile": json.loads(profile.read_text()),
    }
    out["real"] = real_runs(args, profile, qps)
    pools = {
        "kv_tokens": args.kv_tokens,
        "max_running": args.max_running,
        "max_prefill_tokens": args.chunk,
    }
    out["sim_same_scale"] = sim_runs(args, truth, qps, 1, args.classes, "same", **pools)
    ref = reference_model()
    ref_cap = capacity(ref, DEFAULT_CLASSES, {})
    ref_qps = {load: load * ref_cap for load in qps}
    out["sim_cluster"] = sim_runs(
        args, ref, ref_qps, args.sim_instances, DEFAULT_CLASSES, "cluster"
    )
    path = args.out / "slo.json"
    path.write_text(json.dumps(out, indent=1, default=str))
    from benchmarks.slo_plots import plot_all, print_tables

    print_tables(out)
    plot_all(out, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
