"""``python -m benchmarks.mepic --smoke``: the benchmark end to end on the tiny model, and the
memory ordering it must show from exact page counts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers.server_utils import free_port, run_cli

pytestmark = pytest.mark.server


def test_mepic_benchmark_smoke(tmp_path: Path, tiny_llama_path: Path) -> None:
    out = run_cli(
        [sys.executable, "-m", "benchmarks.mepic", "--smoke", "--modes", "stock,epic,mepic",
         "--model", str(tiny_llama_path), "--out", str(tmp_path), "--port", str(free_port())],
        timeout_s=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads((tmp_path / "mepic.json").read_text())
    peak = {r["mode"]: r["peak_pages"] for r in data["memory"]}
    bound = data["memory"][0]["lower_bound_pages"]
    # MEPIC holds one shared copy of each chunk: below both baselines that hold one per request
    assert peak["mepic"] < peak["epic"] and peak["mepic"] < peak["stock"], peak
    assert bound <= peak["mepic"] <= 1.1 * bound, (peak, bound)
    assert {r["mode"] for r in data["serving"]} == {"stock", "epic", "mepic"}
    assert all(r["peak_pages"] > 0 and r["ttft_p50"] > 0 for r in data["serving"])
    for name in ("mepic_pages_vs_qps.png", "mepic_pages_vs_chunks.png", "mepic_f1.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "Memory passes" in out.stdout
