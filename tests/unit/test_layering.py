"""The layering rule of docs/architecture.md, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("mepic_sglang", "flashinfer_ext", "scheduler_patch", "disagg")
# package -> plugin packages it may import (besides itself)
ALLOWED = {
    "flashinfer_ext": set(),
    "scheduler_patch": set(),
    "disagg": {"scheduler_patch"},
    "mepic_sglang": {"flashinfer_ext", "scheduler_patch", "disagg"},
}
SIDE = ROOT / "mepic_sglang" / "sglang"  # the one subpackage that touches SGLang
SEAMS = SIDE / "seams.py"  # names every SGLang target
REGISTRAR = SIDE / "hooks.py"  # the one HookRegistry caller
ENTRY = ROOT / "mepic_sglang" / "plugin.py"  # the entry point registers the SGLang side
# NOTE: files outside SIDE that import sglang, each with its reason (docs/architecture.md)
SGLANG_IMPORT_EXCEPTIONS = {
    # subclasses SGLang's torch-native attention backend (a registered backend class)
    ROOT / "flashinfer_ext" / "torch_backend.py",
}
CHUNKS = ROOT / "mepic_sglang" / "chunks"  # the MEPIC core: plain Python + torch
# NOTE: plugin modules outside the SGLang side and flashinfer_ext that import torch, each with its
# reason (the dispatcher and the policy start without importing torch).
TORCH_USERS = {
    CHUNKS / "plan.py": "extend layouts are index tensors",
    CHUNKS / "store.py": "chunk entries hold slot tensors",
    CHUNKS / "manager.py": "holds scratch slot tensors",
    ROOT / "mepic_sglang" / "flags.py": "probes CUDA when a MEPIC backend is chosen (late import)",
    ROOT / "mepic_sglang" / "models.py": "writes tiny random checkpoints (late import)",
    ROOT / "mepic_sglang" / "cpu_shims" / "sgl_kernel" / "__init__.py": "CPU stand-ins of kernels",
    ROOT / "disagg" / "cluster.py": "tells a CPU host from a CUDA one (late import)",
}
# public methods of namedtuples, which start with "_"
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make"}


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


def test_only_the_sglang_subpackage_imports_sglang() -> None:
    offenders = []
    for package in PACKAGES:
        for path in _sources(package):
            if SIDE in path.parents or path in SGLANG_IMPORT_EXCEPTIONS:
                continue
            imported = _imported_modules(path)
            offenders += [
                f"{path.relative_to(ROOT)} imports {m}"
                for m in imported
                if m.split(".")[0] == "sglang"
            ]
            if path != ENTRY and package == "mepic_sglang":
                # the MEPIC core is plain Python: it never reaches into the SGLang side
                offenders += [
                    f"{path.relative_to(ROOT)} imports {m}"
                    for m in imported
                    if m.startswith("mepic_sglang.sglang")
                ]
    assert offenders == []


def test_torch_is_imported_only_where_needed() -> None:
    offenders = []
    for package in ("mepic_sglang", "scheduler_patch", "disagg"):
        for path in _sources(package):
            if SIDE in path.parents or path in TORCH_USERS:
                continue
            offenders += [
                f"{path.relative_to(ROOT)} imports {m}"
                for m in _imported_modules(path)
                if m.split(".")[0] == "torch"
            ]
    assert offenders == []


def test_the_chunk_core_imports_only_itself_and_the_token_id_rules() -> None:
    allowed = ("mepic_sglang.chunks", "mepic_sglang.token_ids")
    offenders = [
        f"{path.relative_to(ROOT)} imports {m}"
        for path in sorted(CHUNKS.rglob("*.py"))
        for m in _imported_modules(path)
        if m.split(".")[0] in (*PACKAGES, "sglang") and not m.startswith(allowed)
    ]
    assert offenders == []


def test_only_the_seams_table_touches_sglang_hooks() -> None:
    offenders = []
    for package in PACKAGES:
        for path in _sources(package):
            name = str(path.relative_to(ROOT))
            if path != REGISTRAR and any(
                m.startswith("sglang.srt.plugins") for m in _imported_modules(path)
            ):
                offenders.append(f"{name} imports sglang.srt.plugins")
            if path == SEAMS:
                continue
            # NOTE: every hook target lives in sglang.srt; other module names (the launcher's
            # ``python -m sglang.launch_server``) are not hook targets
            targets = [s for s in _string_constants(path) if s.startswith("sglang.srt.")]
            if targets:
                offenders.append(f"{name} names {targets}")
    assert offenders == []


def test_every_hook_target_is_in_the_table_and_resolves() -> None:
    from mepic_sglang.sglang import compat
    from mepic_sglang.sglang.hooks import hook_function
    from mepic_sglang.sglang.seams import ATTRIBUTES, CALLED, HOOKS

    targets = [h.target for h in HOOKS]
    assert len(targets) == len(set(targets)), "one row per target"
    for spec in HOOKS:
        assert spec.kind in ("BEFORE", "AFTER", "AROUND", "REPLACE")
        assert compat.target_params(spec.target) == spec.params, spec.target
        assert callable(hook_function(spec)), spec.fn
    for target, params, _ in CALLED:
        assert compat.target_params(target) == params, target
    assert compat.attribute_problems(ATTRIBUTES) == []


def _names_defined_by_the_plugin() -> set[str]:
    out: set[str] = set()
    for package in PACKAGES:
        for path in _sources(package):
            for n in ast.walk(ast.parse(path.read_text())):
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    out.add(n.name)
                elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store):
                    out.add(n.attr)
                elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                    out.add(n.id)
    return out


def test_every_private_name_of_sglang_is_a_checked_seam() -> None:
    """A ``_name`` the plugin reads on an object that is not its own (``x._name`` or
    ``getattr(x, "_name")``) or imports from SGLang must be a row of seams.py, so that compat
    checks it at start-up."""
    from mepic_sglang.sglang.seams import ATTRIBUTES, CALLED, HOOKS

    listed = {c.target.rsplit(".", 1)[1] for c in CALLED} | {a.name for a in ATTRIBUTES}
    listed |= {h.target.rsplit(".", 1)[1] for h in HOOKS}
    ours = _names_defined_by_the_plugin() | NAMEDTUPLE_API
    offenders = []
    for package in PACKAGES:
        for path in _sources(package):
            tree = ast.parse(path.read_text())
            for n in ast.walk(tree):
                names: list[str] = []
                if isinstance(n, ast.Attribute):
                    names = [n.attr]
                elif isinstance(n, ast.ImportFrom) and (n.module or "").startswith("sglang"):
                    names = [a.name for a in n.names]
                elif (
                    isinstance(n, ast.Call)
                    and isinstance(n.func, ast.Name)
                    and n.func.id in ("getattr", "hasattr", "setattr")
                    and len(n.args) > 1
                    and isinstance(n.args[1], ast.Constant)
                    and isinstance(n.args[1].value, str)
                ):
                    names = [n.args[1].value]
                for name in names:
                    private = name.startswith("_") and not name.startswith("__")
                    if private and name not in ours and name not in listed:
                        offenders.append(f"{path.relative_to(ROOT)}:{n.lineno} uses {name}")
    assert offenders == []


STATE = SIDE / "state.py"  # the one module that puts plugin state on SGLang objects
STATE_NAME_OWNERS = {STATE, ROOT / "mepic_sglang" / "flags.py"}  # flags: ServerArgs' PluginArgs


def test_plugin_state_on_sglang_objects_goes_through_state_py() -> None:
    """No ``obj.__dict__`` access, ``_mepic*`` attribute name or store outside state.py: every
    value the plugin keeps on an SGLang object is a field of one of its dataclasses."""
    offenders = []
    for package in PACKAGES:
        for path in _sources(package):
            if path == STATE:
                continue
            for n in ast.walk(ast.parse(path.read_text())):
                where = f"{path.relative_to(ROOT)}:{getattr(n, 'lineno', '?')}"
                if isinstance(n, ast.Attribute) and n.attr == "__dict__":
                    offenders.append(f"{where} reads an object's __dict__")
                elif isinstance(n, ast.Attribute) and n.attr.startswith("_mepic"):
                    offenders.append(f"{where} uses attribute {n.attr}")
                elif (
                    isinstance(n, ast.Constant)
                    and isinstance(n.value, str)
                    and n.value.startswith("_mepic")
                    and path not in STATE_NAME_OWNERS
                ):
                    offenders.append(f"{where} names attribute {n.value}")
    assert offenders == []


def test_compat_check_reports_drift() -> None:
    from mepic_sglang.sglang import compat

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


def test_the_hook_docs_are_generated_from_the_seams_table() -> None:
    from mepic_sglang.sglang import seams

    committed = (ROOT / "docs" / "hooks.md").read_text()
    assert committed == seams.markdown(), (
        "docs/hooks.md is stale: python -m mepic_sglang.sglang.seams > docs/hooks.md"
    )
