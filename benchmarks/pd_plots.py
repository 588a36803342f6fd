"""Tables and plot of a ``benchmarks.pd`` run (reads the JSON it writes)."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _event(e: dict[str, Any]) -> str:
    return f"{e['action']} {e['role']} @{e['t']:.0f}s" + ("" if e["ok"] else " (failed)")


def print_tables(out: dict[str, Any]) -> None:
    loads = out.get("weights") or []
    if loads:
        print("\nWeight load (median over runs): load_s = ModelRunner.load_model, ready_s = start "
              "to /health_generate 200")  # fmt: skip
        print("| from | runs | load_s | ready_s | sources |")
        print("|---|---|---|---|---|")
        for src in sorted({r["from"] for r in loads}):
            rows = [r for r in loads if r["from"] == src]
            med = statistics.median
            print(f"| {src} | {len(rows)} | {med(r['load_s'] for r in rows):.3f} | "
                  f"{med(r['ready_s'] for r in rows):.1f} | "
                  f"{','.join(sorted({r['source'] for r in rows}))} |")  # fmt: skip
    runs = out.get("scaling") or []
    if not runs:
        return
    classes = sorted({c for r in runs for c in r["per_class"]})
    print(f"\nBursty trace {out['phases']} ({out['requests']} requests): SLO attainment (%)")
    print("| config | all | " + " | ".join(classes) + " | instance-s | mean instances | "
          "TTFT p50 s | errors | scaling events |")  # fmt: skip
    print("|---|---|" + "---|" * len(classes) + "---|---|---|---|---|")
    for r in runs:
        events = ", ".join(_event(e) for e in r["events"]) or "-"
        p50 = r.get("ttft_p50")
        cells = [r["config"], _pct(r["attainment"])]
        cells += [_pct(r["per_class"].get(c)) for c in classes]
        cells += [f"{r['instance_seconds']:.0f}", f"{r['mean_instances']:.2f}",
                  "-" if p50 is None else f"{p50:.2f}", str(r["errors"]), events]  # fmt: skip
        print("| " + " | ".join(cells) + " |")


def plot(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = out.get("scaling") or []
    if not runs:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    names = [r["config"] for r in runs]
    a.bar(names, [100 * r["attainment"] for r in runs], color="tab:blue")
    for k, r in enumerate(runs):
        a.text(k, 100 * r["attainment"] + 1, f"{r['instance_seconds']:.0f} inst-s", ha="center")
    plt.setp(a.get_xticklabels(), rotation=20, ha="right", fontsize=8)
    a.set_ylabel("SLO attainment (%)")
    a.set_ylim(0, 110)
    a.set_title("attainment, cost (instance-seconds)")
    t, rate = 0.0, []
    for duration, qps in out["phases"]:
        rate += [(t, qps), (t + duration, qps)]
        t += duration
    b.plot([x for x, _ in rate], [y for _, y in rate], color="gray", label="arrival rate (req/s)")
    b.set_xlabel("seconds into the trace")
    b.set_ylabel("requests/s")
    autos = [r for r in runs if r["config"].startswith("autoscale")]
    if autos:
        c = b.twinx()
        for r, color in zip(autos, ("tab:red", "tab:green", "tab:purple"), strict=False):
            n = r.get("initial", 2)
            xs, ys = [0.0], [n]
            for e in r["events"]:
                if e["ok"] and e["action"] in ("out", "in"):
                    n += 1 if e["action"] == "out" else -1
                    xs.append(e["t"] + e["seconds"] - r.get("t_offset", 0.0))
                    ys.append(n)
            xs.append(r["wall_s"])
            ys.append(n)
            c.step(xs, ys, where="post", color=color, label=f"{r['config']}: instances")
        c.set_ylabel("instances (autoscale runs)")
        c.set_ylim(0, 5)
        c.legend(loc="upper right", fontsize=8)
    b.set_title("bursty trace and the controller")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    data = json.loads(Path(sys.argv[1]).read_text())
    print_tables(data)
    if len(sys.argv) > 2:
        plot(data, Path(sys.argv[2]))
