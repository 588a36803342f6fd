"""The layering rule of docs/architecture.md, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mepic_sglang", "flashinfer_ext", "scheduler_patch", "disagg")
# package -> plugin packages it may import (besides itself)
ALLOWED = {
    "flashinfer_ext": set(),
    "scheduler_patch": set(),
    "disagg": {"scheduler_patch"},
    "mepic_sglang": {"flashinfer_ext", "scheduler_patch", "disagg"},
}
HOOK_TABLE = ROOT / "mepic_sglang" / "hooks.py"


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_packages_import_only_downwards() -> None:
    bad = []
    for package in PACKAGES:
        for path in _sources(package):
            for module in _imported_modules(path):
                top = module.split(".")[0]
                if top in PACKAGES and top != package and top not in ALLOWED[package]:
                    bad.append(f"{path.relative_to(ROOT)} imports {module}")
    assert bad == []


def _string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def test_only_the_hook_table_touches_sglang_hooks() -> None:
    offenders = []
    for package in PACKAGES:
        for path in _sources(package):
            if path == HOOK_TABLE:
                continue
            name = str(path.relative_to(ROOT))
            if any(m.startswith("sglang.srt.plugins") for m in _imported_modules(path)):
                offenders.append(f"{name} imports sglang.srt.plugins")
            # NOTE: every hook target lives in sglang.srt; other module names (the launcher's
            # ``python -m sglang.launch_server``) are not hook targets
            targets = [s for s in _string_constants(path) if s.startswith("sglang.srt.")]
            if targets:
                offenders.append(f"{name} names {targets}")
    assert offenders == []


def test_every_hook_target_is_in_the_table_and_resolves() -> None:
    from mepic_sglang import compat
    from mepic_sglang.hooks import HOOKS

    targets = [h.target for h in HOOKS]
    assert len(targets) == len(set(targets)), "one row per target"
    for spec in HOOKS:
        assert spec.kind in ("BEFORE", "AFTER", "AROUND", "REPLACE")
        assert compat.target_params(spec.target) == spec.params, spec.target


def test_compat_check_reports_drift() -> None:
    from mepic_sglang import compat

    target = "sglang.srt.server_args.ServerArgs.from_cli_args"
    assert compat.check(((target, ("args",)),)) == []
    drift = compat.check(((target, ("argv",)),))
    assert len(drift) == 1 and "expected ('argv',)" in drift[0]
    missing = compat.check((("sglang.srt.server_args.ServerArgs.no_such_method", ()),))
    assert "cannot be resolved" in missing[0]


def test_applying_the_hooks_imports_no_prometheus_client() -> None:
    # SGLang imports prometheus_client only after it sets PROMETHEUS_MULTIPROC_DIR; a hook target
    # whose module imports it earlier (e.g. the Mooncake connector) makes the plugin's counters
    # vanish from /metrics
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from sglang.srt.plugins.hook_registry import HookRegistry\n"
        "from mepic_sglang.plugin import register\n"
        "register(); HookRegistry.apply_hooks()\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-2000:]
