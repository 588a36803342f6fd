"""``python -m benchmarks.slo --smoke``: profile, real servers and both simulator scales, end to end
on the tiny model; ``benchmarks.slo_decision`` on a small queue."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers.server_utils import free_port, run_cli

pytestmark = pytest.mark.server


def test_slo_benchmark_smoke(tmp_path: Path, tiny_llama_path: Path) -> None:
    out = run_cli(
        [sys.executable, "-m", "benchmarks.slo", "--smoke", "--policies", "fcfs,multi-slo",
         "--loads", "2", "--model", str(tiny_llama_path), "--out", str(tmp_path),
         "--port", str(free_port())],
        timeout_s=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads((tmp_path / "slo.json").read_text())
    assert data["capacity_qps"] > 0 and data["profile"]["prefill"] is not None
    for key in ("real", "sim_same_scale", "sim_cluster"):
        rows = data[key]
        assert [r["policy"] for r in rows] == ["fcfs", "multi-slo"], key
        for r in rows:
            assert r["requests"] > 0 and 0 <= r["attainment"] <= 1
            assert set(r["per_class"]) == {"interactive", "standard", "batch"}
    real = {r["policy"]: r for r in data["real"]}
    assert all(r["errors"] == 0 for r in real.values()), real
    assert real["multi-slo"]["server_slo"]["latency_model"]["samples"]["prefill"] > 0
    assert (tmp_path / "slo_attainment.png").stat().st_size > 0
    assert "Real CPU server: SLO attainment" in out.stdout


def test_slo_decision_benchmark(tmp_path: Path) -> None:
    out = run_cli(
        [sys.executable, "-m", "benchmarks.slo_decision", "--waiting", "200", "--repeats", "5",
         "--out", str(tmp_path)],
        timeout_s=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads((tmp_path / "slo_decision.json").read_text())
    assert set(data["results"]) == {"fcfs", "priority", "multi-slo"}
    assert all(v["median_ms"] > 0 for v in data["results"].values())
