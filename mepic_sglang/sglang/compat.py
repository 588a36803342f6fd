"""Is the installed SGLang the one the hook table was written against?

The plugin patches private SGLang 0.5.23 internals. A different SGLang version, or a hooked
function whose parameters changed, would make a hook silently misbehave, so at start-up every
process checks (a) the installed ``sglang`` version against :data:`PINNED_SGLANG`, (b) that every
hook target and every SGLang function the plugin calls (:mod:`mepic_sglang.sglang.seams`)
resolves and has the parameter names recorded there, and (c) that every private attribute the
plugin reads is still assigned by its owner class. ``--mepic-compat-check`` decides whether a
problem is fatal (see :class:`mepic_sglang.flags.PluginArgs`).
"""

from __future__ import annotations

import inspect
import pkgutil
import re
from importlib.metadata import PackageNotFoundError, version

from mepic_sglang.sglang import seams

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


def attribute_problems(attributes: tuple[seams.Attribute, ...]) -> list[str]:
    """Problems for private attributes: each must be assigned (``self.<name> =``) in the source
    of its owner class or a base class."""
    out: list[str] = []
    for attr in attributes:
        try:
            owner = pkgutil.resolve_name(attr.owner)
            sources = [inspect.getsource(c) for c in inspect.getmro(owner) if c is not object]
        except Exception as exc:  # NOTE: any import-time failure is a problem to report
            out.append(f"{attr.owner} cannot be resolved ({exc})")
            continue
        if not any(re.search(rf"self\.{attr.name}\s*(:[^=]*)?=", src) for src in sources):
            out.append(f"{attr.owner} no longer sets the attribute {attr.name} ({attr.why})")
    return out


def problems() -> list[str]:
    """:func:`check` over :mod:`mepic_sglang.sglang.seams`, computed once per process."""
    global _cached
    if _cached is None:
        rows = tuple((h.target, h.params) for h in seams.HOOKS)
        rows += tuple((c.target, c.params) for c in seams.CALLED)
        _cached = check(rows) + attribute_problems(seams.ATTRIBUTES)
    return list(_cached)
