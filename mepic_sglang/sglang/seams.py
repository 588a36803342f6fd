"""THE list of SGLang names the plugin relies on. An SGLang upgrade starts in this file.

Three tables, all checked at start-up against the installed SGLang by
:mod:`mepic_sglang.sglang.compat` (a target that no longer resolves or whose parameters changed
is reported, fatal with ``--mepic-compat-check strict``):

* :data:`HOOKS`: every place where the plugin attaches to SGLang: a dotted target, the hook kind
  (see ``sglang.srt.plugins.hook_registry``), our function (``module.function`` in this
  subpackage, registered by :func:`mepic_sglang.sglang.hooks.register_all`), and the target's
  parameter names as of the pinned SGLang;
* :data:`CALLED`: SGLang functions the plugin calls: its registries and the private (``_``)
  functions and methods that are not public API, with their parameter names;
* :data:`ATTRIBUTES`: private attributes the plugin reads on SGLang (or stdlib) objects.

This module is data only (it imports nothing of the plugin), so the compatibility check, the
flags and the hook functions can all read it. No other module may call ``HookRegistry``, name
an ``sglang.srt`` target or use a private SGLang name that is not listed here (enforced by
``tests/test_layering.py``).

| target                                   | kind  | why                                           |
|------------------------------------------|-------|-----------------------------------------------|
| ServerArgs.add_cli_args                  | AFTER | plugin flags appear in the CLI and ``--help`` |
| ServerArgs.from_cli_args                 | AFTER | validate flags, carry them to subprocesses    |
| Scheduler.__init__                       | AFTER | log that the plugin runs in the scheduler     |
| Scheduler.get_internal_state             | AFTER | ``/server_info`` shows the scheduler's view   |
| Scheduler.get_next_batch_to_run          | AFTER | sample KV pool use (peak/mean in server_info) |
| {Llama,Qwen2,Qwen3}Attention.__init__    | AFTER | NoPE keys: rotate q only, hand RoPE to attn   |
| TokenizerManager.generate_request        | AROUND| chunk segments -> page ids; SLO fields, meta; |
|                                          |       | field checks; 503 while shutting down         |
| TokenizerManager._create_tokenized_object| BEFORE| THE token-id gate: ids outside vocab -> 400   |
| TokenizerManager.get_internal_state      | AROUND| request ids in /server_info for admins only   |
| TokenizerManager.sigterm_watchdog        | AROUND| bounded graceful shutdown                     |
| utils.auth.decide_request_auth           | AFTER | remember whether the caller is an admin       |
| utils.common.build_server_info           | AFTER | /server_info: API keys and password redacted  |
| build_endpoint_weight_version_metadata   | AFTER | OpenAI responses: metadata.slo / .mepic       |
| PrefillAdder._select_prefill_admission   | AROUND| fit extra KV to the pool; never chunk MEPIC   |
| PrefillAdder._commit_prefill_admission   | AFTER | acquire the shared chunk entries a req reads  |
| ScheduleBatch.prepare_for_extend         | AFTER | non-contiguous extend: row, ids, slots        |
| ForwardBatch.init_new                    | AFTER | real positions + attention groups             |
| mem_cache.common.release_kv_cache        | BEFORE| row back to [shared | private]; release refs  |
| Scheduler.get_output_streamer_class      | AFTER | per-request mepic_* numbers sent once         |
| Scheduler.init_schedule_policy           | AROUND| ``--schedule-policy multi-slo``: wrap policy  |
| Scheduler._add_request_to_queue          | AROUND| arrival: MEPIC longer than a step -> 400;     |
|                                          |       | SLO decision: 429 / best-effort               |
| Scheduler.get_new_batch_prefill          | AROUND| preempt running requests for an urgent one    |
| Scheduler.get_prefill_adder_class        | AFTER | clamp a prefill step to the SLO budget        |
| Scheduler.run_batch                      | AROUND| step times -> the SLO latency model           |
| Scheduler.maybe_send_health_check_signal | AROUND| liveness: no health ack while stalled         |
| PrefillBootstrapQueue.create_sender      | AFTER | P/D on CPU: no pinned host-index transfers    |
| DecodeMixin._get_new_prebuilt_batch      | AROUND| P/D decode: SLO order, TPOT-guarded admission |
| SchedulerReqTimeStats.set_decode_prebuilt_finish_time | AFTER | P/D decode: first-token time |
| {loader,transporter}.register_memory_region | AROUND | D2D weights on CPU: one region per param |
| RemoteInstanceModelLoader.load_model     | AROUND| D2D weights: time bound, disk fallback        |
| RemoteInstanceWeightTransporter.maybe_... | AROUND | a seed loaded from a seed publishes too     |
| loader.get_remote_instance_..._per_rank  | AFTER | test-only pause (fault injection, env)        |
| ModelRunner.load_model                   | AROUND| load time, source, optional weights SHA-256   |

Registries (SGLang's own extension points, called once per process from
:func:`mepic_sglang.sglang.hooks.register_all`):

- ``register_attention_backend`` + ``add_attention_backend_choices``: ``--attention-backend mepic``
  (and ``mepic_torch`` / ``mepic_triton`` / ``mepic_flashinfer``)
- ``register_radix_cache_backend``: ``--radix-cache-backend mepic`` (radix tree + chunk store)
"""

from __future__ import annotations

from typing import NamedTuple


class HookSpec(NamedTuple):
    target: str
    kind: str  # a ``sglang.srt.plugins.hook_registry.HookType`` member name
    fn: str  # ``module.function`` in mepic_sglang.sglang (resolved by hooks.register_all)
    params: tuple[str, ...]  # parameter names of ``target`` in the pinned SGLang


_SERVER_ARGS = "sglang.srt.server_args.ServerArgs"
_SCHEDULER = "sglang.srt.managers.scheduler.Scheduler"
_ADDER = "sglang.srt.managers.schedule_policy.PrefillAdder"
_LOADER = "sglang.srt.model_loader.loader"
_TOKENIZER = "sglang.srt.managers.tokenizer_manager.TokenizerManager"
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
    HookSpec(
        f"{_SERVER_ARGS}.add_cli_args", "AFTER", "server_args.after_add_cli_args", ("parser",)
    ),
    HookSpec(
        f"{_SERVER_ARGS}.from_cli_args", "AFTER", "server_args.after_from_cli_args", ("args",)
    ),
    HookSpec(
        f"{_SCHEDULER}.__init__",
        "AFTER",
        "observe.after_scheduler_init",
        ("self", "server_args", "port_args"),
    ),
    HookSpec(
        f"{_SCHEDULER}.get_internal_state",
        "AFTER",
        "observe.after_get_internal_state",
        ("self", "recv_req"),
    ),
    HookSpec(
        f"{_SCHEDULER}.get_next_batch_to_run",
        "AFTER",
        "observe.after_next_batch",
        ("self", "running_batch", "last_batch"),
    ),
    *(
        HookSpec(target, "AFTER", "nope.after_attention_init", params)
        for target, params in _ATTENTION_INIT.items()
    ),
    HookSpec(
        f"{_TOKENIZER}.generate_request",
        "AROUND",
        "request_api.around_generate_request",
        ("self", "obj", "request"),
    ),
    HookSpec(
        f"{_TOKENIZER}._create_tokenized_object",
        "BEFORE",
        "input_guard.before_create_tokenized_object",
        ("self", "obj", "input_text", "input_ids", "input_embeds", "mm_inputs", "token_type_ids"),
    ),
    HookSpec(
        f"{_TOKENIZER}.get_internal_state",
        "AROUND",
        "privacy.around_get_internal_state",
        ("self",),
    ),
    HookSpec(
        f"{_TOKENIZER}.sigterm_watchdog",
        "AROUND",
        "shutdown.around_sigterm_watchdog",
        ("self",),
    ),
    HookSpec(
        "sglang.srt.utils.common.build_server_info",
        "AFTER",
        "privacy.after_build_server_info",
        ("server_args", "scheduler_info"),
    ),
    HookSpec(
        "sglang.srt.utils.auth.decide_request_auth",
        "AFTER",
        "privacy.after_decide_request_auth",
        ("method", "path", "authorization_header", "api_key", "admin_api_key", "auth_level"),
    ),
    HookSpec(
        "sglang.srt.utils.weight_versions.build_endpoint_weight_version_metadata",
        "AFTER",
        "slo_request.after_endpoint_metadata",
        ("meta_info",),
    ),
    HookSpec(
        f"{_ADDER}._select_prefill_admission",
        "AROUND",
        "chunk_admission.around_select_admission",
        (
            "self",
            "req",
            "total_tokens",
            "host_hit_length",
            "swa_host_hit_length",
            "truncation_align_size",
            "has_chunked_req",
        ),
    ),  # fmt: skip
    HookSpec(
        f"{_ADDER}._commit_prefill_admission",
        "AFTER",
        "chunk_admission.after_commit_admission",
        ("self", "req", "admission", "mamba_gap_reserve"),
    ),
    HookSpec(
        "sglang.srt.managers.schedule_batch.ScheduleBatch.prepare_for_extend",
        "AFTER",
        "chunk_batch.after_prepare_for_extend",
        ("self",),
    ),
    HookSpec(
        "sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new",
        "AFTER",
        "chunk_batch.after_forward_batch_init",
        (
            "batch",
            "model_runner",
            "capture_hidden_mode",
            "return_hidden_states_before_norm",
            "extend_position_info",
            "spec_mrope_positions",
            "kv_loc_plan",
            "write_cols",
        ),
    ),  # fmt: skip
    HookSpec(
        f"{_SCHEDULER}.get_output_streamer_class",
        "AFTER",
        "chunk_batch.after_output_streamer_class",
        ("self",),
    ),
    HookSpec(
        f"{_SCHEDULER}.init_schedule_policy",
        "AROUND",
        "slo_hooks.around_init_schedule_policy",
        ("self",),
    ),
    HookSpec(
        f"{_SCHEDULER}._add_request_to_queue",
        "AROUND",
        "slo_hooks.around_add_request_to_queue",
        ("self", "req", "is_retracted"),
    ),
    HookSpec(
        f"{_SCHEDULER}.maybe_send_health_check_signal",
        "AROUND",
        "liveness.around_health_check_signal",
        ("self",),
    ),
    HookSpec(
        f"{_SCHEDULER}.get_new_batch_prefill",
        "AROUND",
        "slo_hooks.around_get_new_batch_prefill",
        ("self", "running_batch"),
    ),
    HookSpec(
        f"{_SCHEDULER}.get_prefill_adder_class",
        "AFTER",
        "slo_hooks.after_prefill_adder_class",
        ("self",),
    ),
    HookSpec(
        f"{_SCHEDULER}.run_batch",
        "AROUND",
        "slo_hooks.around_run_batch",
        ("self", "batch", "pp_proxy_tensors"),
    ),
    HookSpec(
        "sglang.srt.disaggregation.decode.SchedulerDisaggregationDecodeMixin"
        "._get_new_prebuilt_batch",
        "AROUND",
        "slo_hooks.around_get_new_prebuilt_batch",
        ("self", "running_batch"),
    ),
    HookSpec(
        "sglang.srt.disaggregation.prefill.PrefillBootstrapQueue.create_sender",
        "AFTER",
        "pd_hooks.after_create_sender",
        ("self", "req", "num_kv_heads"),
    ),
    *(
        HookSpec(
            f"{module}.register_memory_region",
            "AROUND",
            "weights_hooks.around_register_memory_region",
            ("model", "transfer_engine"),
        )
        for module in (
            _LOADER,
            "sglang.srt.model_executor.model_runner_components.remote_instance_weight_transporter",
        )
    ),
    HookSpec(
        f"{_LOADER}.RemoteInstanceModelLoader.load_model",
        "AROUND",
        "weights_hooks.around_remote_load_model",
        ("self", "model_config", "device_config"),
    ),
    HookSpec(
        "sglang.srt.model_executor.model_runner_components.remote_instance_weight_transporter"
        ".RemoteInstanceWeightTransporter.maybe_register_and_publish_weight_info",
        "AROUND",
        "weights_hooks.around_publish_weight_info",
        ("self",),
    ),
    HookSpec(
        f"{_LOADER}.get_remote_instance_transfer_engine_info_per_rank",
        "AFTER",
        "weights_hooks.after_weight_info",
        ("seed_url", "rank"),
    ),
    HookSpec(
        "sglang.srt.model_executor.model_runner.ModelRunner.load_model",
        "AROUND",
        "weights_hooks.around_model_runner_load_model",
        ("self",),
    ),
    HookSpec(
        "sglang.srt.observability.req_time_stats.SchedulerReqTimeStats"
        ".set_decode_prebuilt_finish_time",
        "AFTER",
        "pd_hooks.after_decode_prebuilt",
        ("self", "ts"),
    ),
    HookSpec(
        "sglang.srt.mem_cache.common.release_kv_cache",
        "BEFORE",
        "chunk_batch.before_release_kv_cache",
        ("req", "tree_cache", "checkpoint"),
    ),
)

# SGLang functions the plugin calls, with their parameters (checked like the hook targets).
CALLED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sglang.srt.layers.attention.attention_registry.register_attention_backend", ("name",)),
    ("sglang.srt.mem_cache.registry.register_radix_cache_backend", ("name", "factory")),
    ("sglang.srt.mem_cache.registry.create_unified_radix_cache", ("ctx", "cache_class")),
    ("sglang.srt.mem_cache.registry.get_radix_cache_factory", ("name",)),
    ("sglang.srt.server_args.add_attention_backend_choices", ("iterable",)),
    # private SGLang functions and methods the plugin calls (not public API)
    # shutdown.py: hand an abort to the scheduler like SGLang's own handlers
    (f"{_TOKENIZER}._dispatch_to_scheduler", ("self", "obj")),
    (f"{_TOKENIZER}.abort_request", ("self", "rid", "abort_all")),
    (
        "sglang.srt.managers.schedule_batch.Req.set_finish_with_abort",
        ("self", "error_msg", "status_code", "err_type"),
    ),
    (
        "sglang.srt.managers.io_struct.AbortReq",
        (
            "rid",
            "http_worker_ipc",
            "abort_all",
            "finished_reason",
            "abort_message",
            "weight_versions",
        ),
    ),  # fmt: skip
    # slo_adapter.py: refuse / preempt a queued request as SGLang's own abort path does
    ("sglang.srt.managers.scheduler._make_abort_req", ("req", "finished_reason")),
    (f"{_SCHEDULER}._release_aborted_request", ("self", "req")),
    # observe.py: the requests that own KV rows, as SGLang's invariant checker finds them
    (
        "sglang.srt.managers.scheduler_components.invariant_checker.SchedulerInvariantChecker"
        "._requests_owning_rows",
        ("self",),
    ),
    # weights_hooks.py: a seed loaded from a seed publishes its weights too
    (
        "sglang.srt.model_executor.model_runner_components.remote_instance_weight_transporter"
        ".RemoteInstanceWeightTransporter._register_to_engine_info_bootstrap",
        ("self",),
    ),
    # SGLang methods the chunk cache calls on itself (chunk_cache.py, chunk_batch.py)
    (
        "sglang.srt.mem_cache.unified_radix_cache.UnifiedRadixCache.checkpoint_into_tree",
        ("self", "req", "up_to", "kwargs"),
    ),
    (
        "sglang.srt.mem_cache.unified_radix_cache.UnifiedRadixCache.match_prefix",
        ("self", "params"),
    ),
)


class Attribute(NamedTuple):
    """A private attribute read on instances of ``owner`` (it must be assigned in the source of
    ``owner`` or a base class)."""

    owner: str
    name: str
    why: str


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute(_SCHEDULER, "_engine_paused", "liveness.py: no stall while paused"),
    Attribute("argparse.ArgumentParser", "_actions", "server_args.py: add 'multi-slo' choice"),
)
