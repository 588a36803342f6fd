"""Attach the plugin to SGLang: every row of :data:`mepic_sglang.sglang.seams.HOOKS` and SGLang's
registries (``--attention-backend mepic*``, ``--radix-cache-backend mepic``).

The only module that calls ``HookRegistry`` (``tests/unit/test_layering.py``). The table itself is
data in :mod:`mepic_sglang.sglang.seams`, so the compatibility check reads it without importing
the hook functions.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from mepic_sglang import flags
from mepic_sglang.sglang.seams import HOOKS, HookSpec

PACKAGE = "mepic_sglang.sglang"


def hook_function(spec: HookSpec) -> Callable[..., Any]:
    """Our function for a row (``module.function`` in this subpackage)."""
    module, _, name = spec.fn.rpartition(".")
    fn: Callable[..., Any] = getattr(importlib.import_module(f"{PACKAGE}.{module}"), name)
    return fn


def _register_attention_backends() -> None:
    from sglang.srt.layers.attention.attention_registry import register_attention_backend
    from sglang.srt.server_args import add_attention_backend_choices

    from flashinfer_ext.backends import FACTORIES

    add_attention_backend_choices(list(FACTORIES))
    for name, factory in FACTORIES.items():
        register_attention_backend(name)(factory)


def _register_radix_cache_backend() -> None:
    from sglang.srt.mem_cache.registry import get_radix_cache_factory, register_radix_cache_backend

    from mepic_sglang.sglang.chunk_cache import create_mepic_cache

    # NOTE: register() runs once per process, but Engine users may load plugins twice.
    if get_radix_cache_factory(flags.MEPIC_RADIX_CACHE_BACKEND) is None:
        register_radix_cache_backend(flags.MEPIC_RADIX_CACHE_BACKEND, create_mepic_cache)


def register_all() -> None:
    """Register every row with SGLang (hooks are applied by ``load_plugins()``)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    for spec in HOOKS:
        HookRegistry.register(spec.target, hook_function(spec), HookType[spec.kind])
    _register_attention_backends()
    _register_radix_cache_backend()
