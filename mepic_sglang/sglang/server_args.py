"""Plugin flags on SGLang's ``ServerArgs``: the CLI hooks and :func:`attach_plugin_args`.

The values are one :class:`~mepic_sglang.flags.PluginArgs` record (how it travels to every
process: :mod:`mepic_sglang.flags`). Offline ``sglang.Engine`` users (the Engine has no CLI) call
:func:`attach_plugin_args`.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from mepic_sglang.flags import (
    ATTR,
    PluginArgError,
    PluginArgs,
    add_cli_args,
    from_namespace,
)
from mepic_sglang.sglang import compat, pd_hooks
from mepic_sglang.slo_flags import MULTI_SLO


def apply_defaults(plugin_args: PluginArgs, server_args: Any) -> None:
    """Fill SGLang flags that the plugin flags (or P/D on CPU) imply and the user left unset."""
    pd_hooks.apply_cpu_defaults(server_args)
    plugin_args.apply_defaults(server_args)


def attach_plugin_args(
    server_args: Any, plugin_args: PluginArgs | None = None, **values: Any
) -> Any:
    """Validate plugin values and attach them to ``server_args`` (returned, for chaining).

    For ``sglang.Engine``: ``Engine(server_args=attach_plugin_args(ServerArgs(...),
    enable_mepic=True))``. Raises :class:`PluginArgError` naming the offending flag.
    """
    unknown = set(values) - {f.name for f in dataclasses.fields(PluginArgs)}
    if unknown:
        raise PluginArgError(f"unknown mepic-sglang plugin argument(s): {sorted(unknown)}")
    args = dataclasses.replace(plugin_args or PluginArgs(), **values)
    apply_defaults(args, server_args)
    problems = args.problems(server_args, compat.problems)
    if problems:
        raise PluginArgError("; ".join(problems))
    setattr(server_args, ATTR, args)
    return server_args


# --------------------------------------------------------------------------- SGLang hooks
# Rows of mepic_sglang/sglang/seams.py.


def after_add_cli_args(result: None, parser: argparse.ArgumentParser) -> None:
    """AFTER ``ServerArgs.add_cli_args(parser)`` (a staticmethod)."""
    add_cli_args(parser)
    for action in parser._actions:  # NOTE: argparse keeps choices as a plain list
        if action.dest == "schedule_policy" and isinstance(action.choices, list):
            if MULTI_SLO not in action.choices:
                action.choices.append(MULTI_SLO)
            action.help = (action.help or "") + f" '{MULTI_SLO}': mepic-sglang's SLO scheduling."


def after_from_cli_args(result: Any, cls: type, args: argparse.Namespace) -> Any:
    """AFTER ``ServerArgs.from_cli_args(args)`` (a classmethod): validate and carry our values.

    A bad value stops start-up here, in the launcher, before any model is loaded, with a message
    naming the flag (argparse itself already rejected values outside ``choices``).
    """
    plugin_args = from_namespace(args)
    apply_defaults(plugin_args, result)
    problems = plugin_args.problems(result, compat.problems)
    if problems:
        raise SystemExit("mepic-sglang: error: " + "\nmepic-sglang: error: ".join(problems))
    setattr(result, ATTR, plugin_args)
    return result
