"""Offline ``sglang.Engine``: the plugin loads in its scheduler, flags attach through
``attach_plugin_args``, and with the plugin loaded the outputs equal stock SGLang's."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.server_utils import run_cli

pytestmark = pytest.mark.server
PROBE = Path(__file__).with_name("engine_probe.py")


def _run_probe(model: Path, *args: str, plugins: str | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    if plugins is not None:
        env["SGLANG_PLUGINS"] = plugins  # SGLang's own whitelist of plugin names
    out = run_cli([sys.executable, str(PROBE), "--model", str(model), *args], env=env)
    lines = [line for line in out.stdout.splitlines() if line.startswith("ENGINE_PROBE ")]
    assert out.returncode == 0 and lines, out.stderr[-3000:]
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("ENGINE_PROBE "))
    return result


def test_engine_with_plugin_matches_stock_sglang(smollm2_path: Path) -> None:
    stock = _run_probe(smollm2_path, plugins="no-such-plugin")
    with_plugin = _run_probe(smollm2_path, "--enable-mepic")

    assert stock["plugin"] is None, "the whitelist must have kept the plugin out"
    plugin = with_plugin["plugin"]
    assert plugin["args"]["enable_mepic"] is True and plugin["compat_problems"] == []

    assert with_plugin["output_ids"] == stock["output_ids"]
    for ours, theirs in zip(with_plugin["logprobs"], stock["logprobs"], strict=True):
        assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < 1e-4
