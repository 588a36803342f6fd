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
| {Llama,Qwen2,Qwen3}Attention.__init__    | AFTER | NoPE keys: rotate q only, hand RoPE to attn   |
| TokenizerManager.generate_request        | AROUND| chunk segments -> page-aligned token ids      |

Registries (SGLang's own extension points, called once per process from :func:`register_all`):

- ``register_attention_backend`` + ``add_attention_backend_choices``: ``--attention-backend mepic``
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from mepic_sglang import flags, model_support, nope, observe, request_api


class HookSpec(NamedTuple):
    target: str
    kind: str  # a ``sglang.srt.plugins.hook_registry.HookType`` member name
    fn: Callable[..., Any]
    params: tuple[str, ...]  # parameter names of ``target`` in the pinned SGLang


_SERVER_ARGS = "sglang.srt.server_args.ServerArgs"
_SCHEDULER = "sglang.srt.managers.scheduler.Scheduler"
_ATTENTION_INIT = {
    "sglang.srt.models.llama.LlamaAttention.__init__": (
        "self", "config", "hidden_size", "num_heads", "num_kv_heads", "layer_id", "start_layer",
        "rope_theta", "rope_scaling", "rope_is_neox_style", "max_position_embeddings",
        "quant_config", "prefix", "bias", "reduce_results",
    ),
    "sglang.srt.models.qwen2.Qwen2Attention.__init__": (
        "self", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "layer_id", "rope_theta",
        "rope_scaling", "max_position_embeddings", "quant_config", "dual_chunk_attention_config",
        "prefix",
    ),
    "sglang.srt.models.qwen3.Qwen3Attention.__init__": (
        "self", "hidden_size", "num_heads", "num_kv_heads", "layer_id", "start_layer",
        "rope_theta", "rope_scaling", "head_dim", "max_position_embeddings", "quant_config",
        "rms_norm_eps", "attention_bias", "prefix", "alt_stream",
    ),
}  # fmt: skip

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
    *(
        HookSpec(target, "AFTER", nope.after_attention_init, params)
        for target, params in _ATTENTION_INIT.items()
    ),
    HookSpec(
        "sglang.srt.managers.tokenizer_manager.TokenizerManager.generate_request",
        "AROUND",
        request_api.around_generate_request,
        ("self", "obj", "request"),
    ),
)

# Registry functions we call, with their parameters (checked like the hook targets).
REGISTRY_SEAMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sglang.srt.layers.attention.attention_registry.register_attention_backend", ("name",)),
)


def _register_attention_backends() -> None:
    from sglang.srt.layers.attention.attention_registry import register_attention_backend
    from sglang.srt.server_args import add_attention_backend_choices

    from flashinfer_ext.torch_backend import create_backend

    add_attention_backend_choices([model_support.MEPIC_ATTENTION_BACKEND])
    register_attention_backend(model_support.MEPIC_ATTENTION_BACKEND)(create_backend)


def register_all() -> None:
    """Register every row with SGLang (hooks are applied by ``load_plugins()``)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    for spec in HOOKS:
        HookRegistry.register(spec.target, spec.fn, HookType[spec.kind])
    _register_attention_backends()
