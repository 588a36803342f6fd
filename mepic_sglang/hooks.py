"""THE table of SGLang hook targets. An SGLang upgrade touches this file and nothing else.

Every place where the plugin attaches to SGLang is one row here: a dotted target, the hook kind
(see ``sglang.srt.plugins.hook_registry``), our function, and the target's parameter names as of
the pinned SGLang (checked at start-up by :mod:`mepic_sglang.compat`). No other module may call
``HookRegistry`` or name an ``sglang.srt`` hook target (enforced by ``tests/test_layering.py``).

| target                                   | kind  | why                                           |
|------------------------------------------|-------|-----------------------------------------------|
| ServerArgs.add_cli_args                  | AFTER | plugin flags appear in the CLI and ``--help`` |
| ServerArgs.from_cli_args                 | AFTER | validate flags, carry them to subprocesses    |
| Scheduler.__init__                       | AFTER | log that the plugin runs in the scheduler     |
| Scheduler.get_internal_state             | AFTER | ``/server_info`` shows the scheduler's view   |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from mepic_sglang import flags, observe


class HookSpec(NamedTuple):
    target: str
    kind: str  # a ``sglang.srt.plugins.hook_registry.HookType`` member name
    fn: Callable[..., Any]
    params: tuple[str, ...]  # parameter names of ``target`` in the pinned SGLang


_SERVER_ARGS = "sglang.srt.server_args.ServerArgs"
_SCHEDULER = "sglang.srt.managers.scheduler.Scheduler"

HOOKS: tuple[HookSpec, ...] = (
    HookSpec(f"{_SERVER_ARGS}.add_cli_args", "AFTER", flags.after_add_cli_args, ("parser",)),
    HookSpec(f"{_SERVER_ARGS}.from_cli_args", "AFTER", flags.after_from_cli_args, ("args",)),
    HookSpec(
        f"{_SCHEDULER}.__init__",
        "AFTER",
        observe.after_scheduler_init,
        ("self", "server_args", "port_args"),
    ),
    HookSpec(
        f"{_SCHEDULER}.get_internal_state",
        "AFTER",
        observe.after_get_internal_state,
        ("self", "recv_req"),
    ),
)


def register_all() -> None:
    """Register every row with SGLang's ``HookRegistry`` (applied by ``load_plugins()``)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    for spec in HOOKS:
        HookRegistry.register(spec.target, spec.fn, HookType[spec.kind])
