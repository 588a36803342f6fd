"""Plugin flags through the real CLI (``python -m sglang.launch_server``, ``sglang serve``) in a
subprocess: --help, bad values and conflicts fail start-up naming the flag."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from mepic_sglang.flags import PluginArgs, cli_name
from tests.helpers.server_utils import run_cli

pytestmark = pytest.mark.server


LAUNCH = [sys.executable, "-m", "sglang.launch_server"]


def test_launch_server_help_lists_every_plugin_flag() -> None:
    out = run_cli([*LAUNCH, "--help"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mepic-sglang plugin" in out.stdout
    for f in dataclasses.fields(PluginArgs):
        assert cli_name(f.name) in out.stdout
    assert "(default: strict)" in " ".join(out.stdout.split())


@pytest.mark.parametrize("entry", ["launch_server", "sglang_serve"])
def test_bad_flag_value_fails_startup_naming_the_flag(entry: str, smollm2_path: Path) -> None:
    # NOTE: `sglang serve --help` prints before plugins load, but its parser has our flags.
    cmd = (
        LAUNCH
        if entry == "launch_server"
        else [str(Path(sys.executable).parent / "sglang"), "serve"]
    )
    out = run_cli([*cmd, "--model-path", str(smollm2_path), "--mepic-compat-check", "bogus"])
    assert out.returncode != 0
    assert "argument --mepic-compat-check: invalid choice: 'bogus'" in out.stderr


def test_conflicting_flags_fail_startup_before_loading_the_model(smollm2_path: Path) -> None:
    out = run_cli(
        [*LAUNCH, "--model-path", str(smollm2_path), "--enable-mepic", "--disable-radix-cache"]
    )
    assert out.returncode != 0
    assert "mepic-sglang: error: argument --enable-mepic" in out.stderr
    assert "Load weight" not in out.stderr + out.stdout
