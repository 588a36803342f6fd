"""Is the installed SGLang the one the hook table was written against?

The plugin patches private SGLang 0.5.23 internals. A different SGLang version, or a hooked
function whose parameters changed, would make a hook silently misbehave, so at start-up every
process checks (a) the installed ``sglang`` version against :data:`PINNED_SGLANG` and (b) that
every target in :data:`mepic_sglang.hooks.HOOKS` resolves and has the parameter names recorded
there. ``--mepic-compat-check`` decides whether a problem is fatal (see
:class:`mepic_sglang.flags.PluginArgs`).
"""

from __future__ import annotations

import inspect
import pkgutil
from importlib.metadata import PackageNotFoundError, version

PINNED_SGLANG = "0.5.23"

_cached: list[str] | None = None


def installed_sglang_version() -> str | None:
    try:
        return version("sglang")
    except PackageNotFoundError:
        return None


def target_params(target: str) -> tuple[str, ...]:
    """Parameter names of the object at dotted path ``target`` (through any hook wrappers)."""
    obj = pkgutil.resolve_name(target)
    return tuple(inspect.signature(obj).parameters)


def check(hooks: tuple[tuple[str, tuple[str, ...]], ...]) -> list[str]:
    """Problems for ``(target, expected parameter names)`` pairs, plus the version pin."""
    out: list[str] = []
    found = installed_sglang_version()
    if found != PINNED_SGLANG:
        out.append(
            f"sglang {found or 'not installed'} is installed, mepic-sglang needs {PINNED_SGLANG}"
        )
    for target, expected in hooks:
        try:
            got = target_params(target)
        except Exception as exc:  # NOTE: any import-time failure is a problem to report
            out.append(f"hook target {target} cannot be resolved ({exc})")
            continue
        if got != expected:
            out.append(f"hook target {target} has parameters {got}, expected {expected}")
    return out


def problems() -> list[str]:
    """:func:`check` over the plugin's hook table, computed once per process."""
    global _cached
    if _cached is None:
        from mepic_sglang.hooks import HOOKS, REGISTRY_SEAMS

        _cached = check(tuple((h.target, h.params) for h in HOOKS) + REGISTRY_SEAMS)
    return list(_cached)
