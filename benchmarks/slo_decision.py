"""Cost of one scheduling decision: order + prefill budget + victims, per policy.

    python -m benchmarks.slo_decision                  # 1,000 waiting, 64 running
    python -m benchmarks.slo_decision --waiting 10000

A seeded queue of three SLO classes (tight TTFT / standard / batch without TTFT), a third of it
already late, with a calibrated latency model; each policy's full per-step decision is timed
(median and p99 over ``--repeats`` steps). The target of issue 7: < 1 ms at 1,000 waiting.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from scheduler_patch.latency_model import LatencyModel
from scheduler_patch.policy import POLICIES, make_policy
from scheduler_patch.slo import Slo
from scheduler_patch.views import EngineView, ReqView

MODEL = LatencyModel(prefill_coef=[0.02, 3.0, 0.5], decode_coef=[0.03, 0.002, 0.01])
CLASSES = (
    Slo(0.5, 0.1, "interactive", 2),
    Slo(3.0, 0.3, "standard", 1),
    Slo(None, None, "batch", 0),
)


def queue(n_waiting: int, n_running: int, seed: int) -> EngineView:
    rng = random.Random(seed)
    now = 100.0

    def one(i: int, running: bool) -> ReqView:
        slo = CLASSES[i % 3]
        return ReqView(
            rid=f"{'r' if running else 'w'}{i}",
            arrival=now - rng.uniform(0, 6),
            prompt_tokens=rng.randint(32, 2048),
            cached_tokens=rng.choice((0, 0, 256)),
            output_tokens=rng.randint(1, 200) if running else 0,
            max_new_tokens=256,
            slo=slo,
            first_token_at=now - rng.uniform(0, 5) if running else None,
        )

    return EngineView(
        now=now,
        waiting=[one(i, False) for i in range(n_waiting)],
        running=[one(i, True) for i in range(n_running)],
        free_kv_tokens=1000,
        max_prefill_tokens=8192,
    )


def time_policy(name: str, engine: EngineView, repeats: int) -> list[float]:
    policy = make_policy(name, MODEL)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        order = policy.plan_step(engine).order
        head = next(r for r in engine.waiting if r.rid == order[0])
        policy.victims(head, 4096, engine, 1)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--waiting", type=int, default=1000)
    parser.add_argument("--running", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    engine = queue(args.waiting, args.running, seed=0)
    rows = {}
    print(f"{args.waiting} waiting, {args.running} running, {args.repeats} steps")
    print(f"{'policy':<10} {'median ms':>10} {'p99 ms':>8}")
    for name in POLICIES:
        times = sorted(time_policy(name, engine, args.repeats))
        med, p99 = statistics.median(times) * 1e3, times[int(0.99 * (len(times) - 1))] * 1e3
        rows[name] = {"median_ms": med, "p99_ms": p99}
        print(f"{name:<10} {med:>10.3f} {p99:>8.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "slo_decision.json"
    path.write_text(
        json.dumps({"args": vars(args) | {"out": str(args.out)}, "results": rows}, indent=1)
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
