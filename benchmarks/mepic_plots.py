"""Tables and plots of a ``benchmarks.mepic`` run (reads the JSON it writes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SERVING_COLS = ["mode", "qps", "peak_pages", "mean_pages", "ttft_p50", "ttft_p99",
                "ttft_hit_p50", "e2e_p50", "e2e_p99", "throughput_rps", "f1", "contains",
                "token_agreement"]  # fmt: skip


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return "-" if v is None else str(v)


def print_tables(out: dict[str, Any]) -> None:
    print("\nServing passes (pages of 16 tokens; seconds; F1/contains/agreement in %)")
    print("| " + " | ".join(SERVING_COLS) + " |")
    print("|" + "---|" * len(SERVING_COLS))
    for row in out["serving"]:
        print("| " + " | ".join(_cell(row.get(c)) for c in SERVING_COLS) + " |")
    print("\nMemory passes (all requests at once; exact peak of pages in use)")
    print("| mode | chunks/request | requests | peak pages | lower bound | peak / bound |")
    print("|---|---|---|---|---|---|")
    for row in out["memory"]:
        ratio = row["peak_pages"] / row["lower_bound_pages"]
        print(f"| {row['mode']} | {row['chunks']} | {row['requests']} | {row['peak_pages']} | "
              f"{row['lower_bound_pages']} | {ratio:.2f} |")  # fmt: skip


def plot_all(out: dict[str, Any], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["mode"] for r in out["serving"] + out["memory"]))
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in names:
        pts = sorted((r["qps"], r["peak_pages"]) for r in out["serving"] if r["mode"] == name)
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    ax.set(xlabel="requests per second", ylabel="peak KV pages in use", title="Peak pages vs QPS")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "mepic_pages_vs_qps.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in names:
        pts = sorted((r["chunks"], r["peak_pages"]) for r in out["memory"] if r["mode"] == name)
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    bound = {r["chunks"]: r["lower_bound_pages"] for r in out["memory"]}
    if bound:
        ax.plot(*zip(*sorted(bound.items()), strict=True), "k--", label="lower bound")
    ax.set(xlabel="chunks per request", ylabel="peak KV pages in use",
           title="Peak pages of a burst vs chunks per request")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "mepic_pages_vs_chunks.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    rows = [r for r in out["serving"] if r["qps"] == min(x["qps"] for x in out["serving"])]
    ax.bar([r["mode"] for r in rows], [r["f1"] for r in rows])
    ax.set(ylabel="answer F1 (%)", title=f"Answer F1 per mode (qps {rows[0]['qps']})")
    fig.tight_layout()
    fig.savefig(folder / "mepic_f1.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":  # re-render from a saved run: python -m benchmarks.mepic_plots FILE
    path = Path(sys.argv[1])
    data = json.loads(path.read_text())
    print_tables(data)
    plot_all(data, path.parent)
