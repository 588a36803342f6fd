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
``tests/unit/test_layering.py``).

The rows carry their reasons; ``docs/hooks.md`` is generated from them (:func:`markdown`).
"""

from __future__ import annotations

from typing import NamedTuple


class HookSpec(NamedTuple):
    target: str
    kind: str  # a ``sglang.srt.plugins.hook_registry.HookType`` member name
    fn: str  # ``module.function`` in mepic_sglang.sglang (resolved by hooks.register_all)
    params: tuple[str, ...]  # parameter names of ``target`` in the pinned SGLang
    why: str  # what the plugin does there (docs/hooks.md is generated from these rows)


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

_NOPE_WHY = (
    "with MEPIC attention: `rotary_emb` rotates q only; the real rope goes to `attn.mepic_rope` "
    "(NoPE keys)"
)

HOOKS: tuple[HookSpec, ...] = (
    HookSpec(
        f"{_SERVER_ARGS}.add_cli_args",
        "AFTER",
        "server_args.after_add_cli_args",
        ("parser",),
        "add the `mepic-sglang plugin` argument group (shown by `--help`)",
    ),
    HookSpec(
        f"{_SERVER_ARGS}.from_cli_args",
        "AFTER",
        "server_args.after_from_cli_args",
        ("args",),
        "build `PluginArgs`, validate (the error names the flag), store it on `ServerArgs` for "
        "every subprocess",
    ),
    HookSpec(
        f"{_SCHEDULER}.__init__",
        "AFTER",
        "observe.after_scheduler_init",
        ("self", "server_args", "port_args"),
        "log `mepic-sglang <v> active in scheduler pid <pid>: <flags>`; start the liveness watch",
    ),
    HookSpec(
        f"{_SCHEDULER}.get_internal_state",
        "AFTER",
        "observe.after_get_internal_state",
        ("self", "recv_req"),
        "`/server_info` `internal_states[i].mepic_sglang`: version, flags, compat problems, pool, "
        "chunks, attention, slo, liveness, weights (schema: `disagg/server_info.py`)",
    ),
    HookSpec(
        f"{_SCHEDULER}.get_next_batch_to_run",
        "AFTER",
        "observe.after_next_batch",
        ("self", "running_batch", "last_batch"),
        "sample KV tokens in use once per step (peak/mean in `/server_info`); one step for the "
        "liveness watch",
    ),
    *(
        HookSpec(target, "AFTER", "nope.after_attention_init", params, _NOPE_WHY)
        for target, params in _ATTENTION_INIT.items()
    ),
    HookSpec(
        f"{_TOKENIZER}.generate_request",
        "AROUND",
        "request_api.around_generate_request",
        ("self", "obj", "request"),
        "chunk segments -> page-aligned token ids, layout in `custom_params` "
        "(`RegionTable.to_wire`), `meta_info.mepic`; SLO headers and fields; field checks "
        "(`cache_salt`, reserved keys); HTTP 503 once a bounded shutdown began",
    ),
    HookSpec(
        f"{_TOKENIZER}._create_tokenized_object",
        "BEFORE",
        "input_guard.before_create_tokenized_object",
        ("self", "obj", "input_text", "input_ids", "input_embeds", "mm_inputs", "token_type_ids"),
        "**the token-id gate**: every prompt's final ids, whatever field they came from, are ints "
        "in `[0, vocab)` and not empty (HTTP 400)",
    ),
    HookSpec(
        f"{_TOKENIZER}.get_internal_state",
        "AROUND",
        "privacy.around_get_internal_state",
        ("self",),
        "`/server_info`: request ids only for a caller that presented `--admin-api-key`",
    ),
    HookSpec(
        f"{_TOKENIZER}.sigterm_watchdog",
        "AROUND",
        "shutdown.around_sigterm_watchdog",
        ("self",),
        "`--mepic-shutdown-timeout`: drain for S seconds, abort the rest (503), then SGLang's "
        "exit; also the launcher side of the liveness watch",
    ),
    HookSpec(
        "sglang.srt.utils.common.build_server_info",
        "AFTER",
        "privacy.after_build_server_info",
        ("server_args", "scheduler_info"),
        "`/server_info`: `--api-key`, `--admin-api-key`, `--ssl-keyfile-password` redacted, also "
        "in `launch_command`",
    ),
    HookSpec(
        "sglang.srt.utils.auth.decide_request_auth",
        "AFTER",
        "privacy.after_decide_request_auth",
        ("method", "path", "authorization_header", "api_key", "admin_api_key", "auth_level"),
        "remember (context variable) whether this HTTP request carried the admin key",
    ),
    HookSpec(
        "sglang.srt.utils.weight_versions.build_endpoint_weight_version_metadata",
        "AFTER",
        "slo_request.after_endpoint_metadata",
        ("meta_info",),
        "OpenAI non-streaming responses carry `metadata.slo` (and `metadata.mepic`)",
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
        "budget the scratch heads of cold chunks within what an empty pool can give "
        "(`ChunkManager.fit`, `reserve_tokens`); never split (chunk) a MEPIC extend; skip it for "
        "this round when the round's step is partly used",
    ),  # fmt: skip
    HookSpec(
        f"{_ADDER}._commit_prefill_admission",
        "AFTER",
        "chunk_admission.after_commit_admission",
        ("self", "req", "admission", "mamba_gap_reserve"),
        "the request acquires its warm chunk entries (`ChunkManager.acquire`); scratch charged to "
        "the round's budget",
    ),
    HookSpec(
        "sglang.srt.managers.schedule_batch.ScheduleBatch.prepare_for_extend",
        "AFTER",
        "chunk_batch.after_prepare_for_extend",
        ("self",),
        "the non-contiguous extend: row to logical order, extend ids/slots, scratch heads, publish"
        " cold chunks",
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
        "real positions; attention inputs (`flashinfer_ext.inputs.MepicAttention`)",
    ),  # fmt: skip
    HookSpec(
        f"{_SCHEDULER}.get_output_streamer_class",
        "AFTER",
        "chunk_batch.after_output_streamer_class",
        ("self",),
        "`mepic_*` `customized_info` keys are sent once per request (-> `meta_info.mepic`)",
    ),
    HookSpec(
        f"{_SCHEDULER}.init_schedule_policy",
        "AROUND",
        "slo_hooks.around_init_schedule_policy",
        ("self",),
        "`--schedule-policy multi-slo`: build SGLang's policy as `fcfs` (its `calc_priority` keeps"
        " the plugin's order), create the process's `SloScheduler`",
    ),
    HookSpec(
        f"{_SCHEDULER}._add_request_to_queue",
        "AROUND",
        "slo_hooks.around_add_request_to_queue",
        ("self", "req", "is_retracted"),
        "arrival: a chunked prompt longer than the scheduler's `chunked_prefill_size` ends with "
        "HTTP 400; then the SLO verdict: admit, best-effort, or HTTP 429",
    ),
    HookSpec(
        f"{_SCHEDULER}.maybe_send_health_check_signal",
        "AROUND",
        "liveness.around_health_check_signal",
        ("self",),
        "liveness: no acknowledgement of a health probe while the scheduler is stalled",
    ),
    HookSpec(
        f"{_SCHEDULER}.get_new_batch_prefill",
        "AROUND",
        "slo_hooks.around_get_new_batch_prefill",
        ("self", "running_batch"),
        "the step's SLO plan before SGLang's admission (`plan_step`): queue order, preemption for "
        "the most urgent request, prefill budget (0: no prefill this step)",
    ),
    HookSpec(
        f"{_SCHEDULER}.get_prefill_adder_class",
        "AFTER",
        "slo_hooks.after_prefill_adder_class",
        ("self",),
        "a `PrefillAdder` subclass that clamps the step's input/chunk tokens to the budget",
    ),
    HookSpec(
        f"{_SCHEDULER}.run_batch",
        "AROUND",
        "slo_hooks.around_run_batch",
        ("self", "batch", "pp_proxy_tensors"),
        "step cadence (its `run_batch` to the next) -> the latency model; stamp first tokens",
    ),
    HookSpec(
        "sglang.srt.disaggregation.decode.SchedulerDisaggregationDecodeMixin"
        "._get_new_prebuilt_batch",
        "AROUND",
        "slo_hooks.around_get_new_prebuilt_batch",
        ("self", "running_batch"),
        "P/D decode stage with multi-slo: order arrived requests, hold back those whose joining "
        "would break a running request's TPOT",
    ),
    HookSpec(
        "sglang.srt.disaggregation.prefill.PrefillBootstrapQueue.create_sender",
        "AFTER",
        "pd_hooks.after_create_sender",
        ("self", "req", "num_kv_heads"),
        "P/D on CPU: the KV sender sends indices as plain arrays (SGLang's host path pins memory "
        "and records a CUDA event); not hooked on `MooncakeKVSender`, whose import at plugin load "
        "would break `/metrics`",
    ),
    *(
        HookSpec(
            f"{module}.register_memory_region",
            "AROUND",
            "weights_hooks.around_register_memory_region",
            ("model", "transfer_engine"),
            "D2D weights on CPU: register each parameter as its own region (SGLang's v2 reads"
            " the CUDA allocator's snapshot)",
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
        "D2D weights: bounded by `--mepic-d2d-timeout-s`; a failed or slow source -> the same "
        "weights from disk",
    ),
    HookSpec(
        "sglang.srt.model_executor.model_runner_components.remote_instance_weight_transporter"
        ".RemoteInstanceWeightTransporter.maybe_register_and_publish_weight_info",
        "AROUND",
        "weights_hooks.around_publish_weight_info",
        ("self",),
        "a seed whose weights came from another instance publishes them too (a chain of "
        "scale-outs)",
    ),
    HookSpec(
        "sglang.srt.model_executor.model_runner.ModelRunner.load_model",
        "AROUND",
        "weights_hooks.around_model_runner_load_model",
        ("self",),
        "`/server_info` `weights`: load time, source, and with `--mepic-weights-digest` a SHA-256 "
        "over all parameters",
    ),
    HookSpec(
        "sglang.srt.observability.req_time_stats.SchedulerReqTimeStats"
        ".set_decode_prebuilt_finish_time",
        "AFTER",
        "pd_hooks.after_decode_prebuilt",
        ("self", "ts"),
        "P/D decode: the first token is ready when its KV arrived and the prebuilt batch ran "
        "(SGLang's first-token time of a non-streaming request)",
    ),
    HookSpec(
        "sglang.srt.mem_cache.common.release_kv_cache",
        "BEFORE",
        "chunk_batch.before_release_kv_cache",
        ("req", "tree_cache", "checkpoint"),
        "finished requests hand their leading text to the radix tree; row back to `[tree | shared "
        "| private]` so SGLang frees exactly the private pages; `ChunkManager.release`",
    ),
)


class Called(NamedTuple):
    """An SGLang function the plugin calls (a registry, or a private function or method)."""

    target: str
    params: tuple[str, ...]  # parameter names of ``target`` in the pinned SGLang
    why: str


_TRANSPORTER = (
    "sglang.srt.model_executor.model_runner_components.remote_instance_weight_transporter"
    ".RemoteInstanceWeightTransporter"
)
_UNIFIED = "sglang.srt.mem_cache.unified_radix_cache.UnifiedRadixCache"

# SGLang functions the plugin calls, with their parameters (checked like the hook targets).
CALLED: tuple[Called, ...] = (
    Called(
        "sglang.srt.layers.attention.attention_registry.register_attention_backend",
        ("name",),
        "hooks.py: `--attention-backend mepic` (and `mepic_torch`, `mepic_triton`, "
        "`mepic_flashinfer`)",
    ),
    Called(
        "sglang.srt.mem_cache.registry.register_radix_cache_backend",
        ("name", "factory"),
        "hooks.py: `--radix-cache-backend mepic` (radix tree + chunk store in one pool)",
    ),
    Called(
        "sglang.srt.mem_cache.registry.create_unified_radix_cache",
        ("ctx", "cache_class"),
        "chunk_cache.py: SGLang builds `MepicRadixCache` as it builds its own",
    ),
    Called(
        "sglang.srt.mem_cache.registry.get_radix_cache_factory",
        ("name",),
        "hooks.py: register the cache backend once per process",
    ),
    Called(
        "sglang.srt.server_args.add_attention_backend_choices",
        ("iterable",),
        "hooks.py: the MEPIC backends are valid `--attention-backend` choices",
    ),
    Called(
        f"{_TOKENIZER}._dispatch_to_scheduler",
        ("self", "obj"),
        "shutdown.py: hand an abort to the scheduler like SGLang's own handlers (private)",
    ),
    Called(
        f"{_TOKENIZER}.abort_request",
        ("self", "rid", "abort_all"),
        "shutdown.py: abort what is left when the shutdown timeout ends",
    ),
    Called(
        "sglang.srt.managers.schedule_batch.Req.set_finish_with_abort",
        ("self", "error_msg", "status_code", "err_type"),
        "chunk_admission.py, slo_adapter.py: end a request at arrival with an HTTP status",
    ),
    Called(
        "sglang.srt.managers.io_struct.AbortReq",
        (
            "rid",
            "http_worker_ipc",
            "abort_all",
            "finished_reason",
            "abort_message",
            "weight_versions",
        ),
        "shutdown.py: the abort message a scheduler expects",
    ),  # fmt: skip
    Called(
        "sglang.srt.managers.scheduler._make_abort_req",
        ("req", "finished_reason"),
        "slo_adapter.py: refuse a queued request as SGLang's own abort path does (private)",
    ),
    Called(
        f"{_SCHEDULER}._release_aborted_request",
        ("self", "req"),
        "slo_adapter.py: free a refused request's resources (private)",
    ),
    Called(
        "sglang.srt.managers.scheduler_components.invariant_checker.SchedulerInvariantChecker"
        "._requests_owning_rows",
        ("self",),
        "observe.py: the requests that own KV rows, as SGLang's invariant checker finds them "
        "(private)",
    ),
    Called(
        f"{_TRANSPORTER}._register_to_engine_info_bootstrap",
        ("self",),
        "weights_hooks.py: a seed loaded from a seed publishes its weights too (private)",
    ),
    Called(
        f"{_UNIFIED}.checkpoint_into_tree",
        ("self", "req", "up_to", "kwargs"),
        "chunk_batch.py: a finished request's leading text goes into the radix tree",
    ),
    Called(
        f"{_UNIFIED}.match_prefix",
        ("self", "params"),
        "chunk_cache.py: plain requests and the leading text match as stock",
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


# ---- docs/hooks.md ----------------------------------------------------------------------------
def markdown() -> str:
    """docs/hooks.md, generated from the tables above (``python -m mepic_sglang.sglang.seams``;
    a test checks that the committed file is up to date)."""
    out = [
        "# SGLang seams",
        "",
        "Generated from `mepic_sglang/sglang/seams.py` by `python -m mepic_sglang.sglang.seams >"
        " docs/hooks.md`; do not edit. Every row is resolved and its parameters compared with the"
        " installed SGLang at start-up (`compat.py`; fatal with `--mepic-compat-check strict`, the"
        " default, when plugin features are on).",
        "",
        f"## Hooks ({len(HOOKS)})",
        "",
        "| target | kind | function (`mepic_sglang/sglang/`) | what the plugin does |",
        "|---|---|---|---|",
    ]
    out += [f"| `{h.target}` | {h.kind} | `{h.fn}` | {h.why} |" for h in HOOKS]
    out += ["", f"## SGLang functions the plugin calls ({len(CALLED)})", ""]
    out += ["| function | parameters | why |", "|---|---|---|"]
    out += [f"| `{c.target}` | `{', '.join(c.params)}` | {c.why} |" for c in CALLED]
    out += ["", f"## Private attributes the plugin reads ({len(ATTRIBUTES)})", ""]
    out += ["| owner | attribute | why |", "|---|---|---|"]
    out += [f"| `{a.owner}` | `{a.name}` | {a.why} |" for a in ATTRIBUTES]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
