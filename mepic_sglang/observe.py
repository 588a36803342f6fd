"""Scheduler-side evidence that the plugin is loaded: a log line and a ``/server_info`` field.

``/server_info`` (and ``Engine.get_server_info()``) return ``internal_states``, one dict per
data-parallel scheduler, built inside the scheduler process. We add ``mepic_sglang`` to it: the
plugin version, the scheduler's pid, the plugin flag values that reached it, any compatibility
problems, and how many attention layers store keys without RoPE. So an operator (or a test) sees
what the scheduler really runs with.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from mepic_sglang import __version__, compat, nope
from mepic_sglang.flags import get_plugin_args

logger = logging.getLogger(__name__)
INTERNAL_STATE_KEY = "mepic_sglang"


def plugin_state(server_args: Any) -> dict[str, Any]:
    """The ``mepic_sglang`` entry of a scheduler's internal state."""
    return {
        "version": __version__,
        "pid": os.getpid(),
        "args": dataclasses.asdict(get_plugin_args(server_args)),
        "compat_problems": compat.problems(),
        "nope_attention_layers": nope.wrapped_layers(),
    }


def after_scheduler_init(result: None, scheduler: Any, *args: Any, **kwargs: Any) -> None:
    """AFTER ``Scheduler.__init__``: one log line per scheduler process."""
    state = plugin_state(scheduler.server_args)
    logger.info(
        "mepic-sglang %s active in scheduler pid %d: %s",
        state["version"],
        state["pid"],
        " ".join(f"{k}={v}" for k, v in state["args"].items()),
    )
    if state["args"]["enable_mepic"]:
        # TODO(#4): remove once chunk caching lands; until then say so instead of pretending.
        logger.warning(
            "mepic-sglang: --enable-mepic: keys are stored without RoPE and rotated inside "
            "attention (%d layers), but chunk caching is not implemented in this version yet; "
            "prompts are cached by SGLang's radix prefix cache",
            state["nope_attention_layers"],
        )
    for problem in state["compat_problems"]:
        logger.warning("mepic-sglang compatibility: %s", problem)


def after_get_internal_state(result: Any, scheduler: Any, *args: Any, **kwargs: Any) -> Any:
    """AFTER ``Scheduler.get_internal_state``: add :func:`plugin_state` to the reply."""
    result.internal_state[INTERNAL_STATE_KEY] = plugin_state(scheduler.server_args)
    return result
