"""Tables and plots of a ``benchmarks.slo`` run (reads the JSON it writes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def print_tables(out: dict[str, Any]) -> None:
    print(f"\nCapacity estimate: {out['capacity_qps']:.3f} requests/s (real server)")
    for key, title in (("real", "Real CPU server"), ("sim_same_scale", "Simulator, same scale"),
                       ("sim_cluster", "Simulator, cluster scale")):  # fmt: skip
        rows = out.get(key) or []
        if not rows:
            continue
        classes = sorted({c for r in rows for c in r["per_class"]})
        print(f"\n{title}: SLO attainment (%)")
        print(
            "| policy | load | requests | all | "
            + " | ".join(classes)
            + " | rejected | TTFT p50 s |"
        )
        print("|---|---|---|---|" + "---|" * len(classes) + "---|---|")
        for r in rows:
            cells = [r["policy"], f"{r['load']}x", str(r["requests"]), _pct(r["attainment"])]
            cells += [_pct(r["per_class"].get(c)) for c in classes]
            p50 = r.get("ttft_p50")
            cells += [str(r.get("rejected", 0)), "-" if p50 is None else f"{p50:.2f}"]
            print("| " + " | ".join(cells) + " |")


def plot_all(out: dict[str, Any], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("real", "sim_same_scale", "sim_cluster") if out.get(k)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    titles = {"real": "real CPU server", "sim_same_scale": "simulator (same scale)",
              "sim_cluster": "simulator (cluster)"}  # fmt: skip
    for ax, key in zip(axes[0], panels, strict=True):
        rows = out[key]
        for policy in dict.fromkeys(r["policy"] for r in rows):
            pts = sorted((r["load"], r["attainment"]) for r in rows if r["policy"] == policy)
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=policy)
        ax.set_title(titles[key])
        ax.set_xlabel("load (x capacity estimate)")
        ax.set_ylabel("SLO attainment (%)")
        ax.set_ylim(0, 105)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "slo_attainment.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    data = json.loads(Path(sys.argv[1]).read_text())
    print_tables(data)
    plot_all(data, Path(sys.argv[1]).parent)
