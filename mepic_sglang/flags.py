"""The plugin's server flags: one typed record, added to SGLang's CLI, carried to every process.

How a value travels (SGLang 0.5.23):

1. ``ServerArgs.add_cli_args(parser)`` (AFTER hook) adds one argument group built from the fields
   of :class:`PluginArgs`, so ``python -m sglang.launch_server --help`` lists them.
2. ``ServerArgs.from_cli_args(args)`` copies only SGLang's declared fields. The AFTER hook builds a
   :class:`PluginArgs` from the namespace, validates it against the rest of the server args and
   stores it as ``server_args._mepic_plugin_args``.
3. ``ServerArgs`` is a msgspec Struct with an instance ``__dict__``; ``_``-prefixed extras are
   allowed at any time and travel with the record when it is pickled into the scheduler,
   detokenizer and DP-controller processes. Code anywhere reads them with
   :func:`get_plugin_args`.

Offline ``sglang.Engine`` users (the Engine has no CLI) call :func:`attach_plugin_args`.

To add a flag, add a field with :func:`flag` to :class:`PluginArgs` (and a check to
:meth:`PluginArgs.problems` if it constrains other flags); nothing else changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mepic_sglang import model_support, slo_flags
from mepic_sglang.chunks.recompute import POLICIES
from mepic_sglang.slo_flags import MULTI_SLO
from scheduler_patch.slo import SloDefaults, parse_classes
from scheduler_patch.views import UNATTAINABLE_ACTIONS

MEPIC_RADIX_CACHE_BACKEND = "mepic"
# SGLang features whose row/batch handling MEPIC's non-contiguous extend does not support (yet).
_MEPIC_CONFLICTS = (
    ("enable_mixed_chunk", "--enable-mixed-chunk", lambda v: bool(v)),
    ("speculative_algorithm", "--speculative-algorithm", lambda v: v not in (None, "", "NONE")),
    ("enable_dp_attention", "--enable-dp-attention", lambda v: bool(v)),
    ("disaggregation_mode", "--disaggregation-mode", lambda v: v not in (None, "null")),
    ("enable_hierarchical_cache", "--enable-hierarchical-cache", lambda v: bool(v)),
)

ATTR = "_mepic_plugin_args"
DEFAULT_MEPIC_PAGE_SIZE = 16
GROUP_TITLE = "mepic-sglang plugin"


class PluginArgError(ValueError):
    """A plugin flag has a bad value or conflicts with another flag; the message names the flag."""


def flag(default: Any, help: str, *, choices: tuple[str, ...] | None = None) -> Any:
    """A :class:`PluginArgs` field that is also a CLI flag ``--<name-with-dashes>``."""
    return field(default=default, metadata={"help": help, "choices": choices})


def cli_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


@dataclass(frozen=True)
class PluginArgs:
    """Values of every plugin flag. Defaults leave SGLang behaving exactly as stock."""

    enable_mepic: bool = flag(
        False,
        "Enable MEPIC position-independent chunk caching: chunks marked in a request share one "
        "page-aligned copy of their KV across positions, requests and batches.",
    )
    mepic_chunk_separator: str = flag(
        "",
        "Separator mode for marking chunks in plain-text prompts (LMCache-compatible, e.g. "
        "' # # '): 'prefix SEP chunk1 SEP chunk2 SEP question' makes every piece between two "
        "separators a chunk. Empty: off (chunks are marked with mepic_segments only). "
        "Needs --enable-mepic.",
    )
    mepic_recompute: str = flag(
        "first-page",
        "Which head of every reused chunk is recomputed in the request's context (private "
        "pages); the rest of the chunk is read from one shared copy. 'first-page' (MEPIC), "
        "'first-k-tokens' (EPIC; see --mepic-recompute-k), 'none'.",
        choices=tuple(POLICIES),
    )
    mepic_recompute_k: int = flag(
        16,
        "With --mepic-recompute first-k-tokens: recompute the pages holding each chunk's first K "
        "tokens.",
    )
    mepic_chunk_copies: bool = flag(
        False,
        "Baseline mode for benchmarks (EPIC/CacheBlend-style memory): every request reads a "
        "private copy of its reused chunks' pages instead of the one shared copy. Needs "
        "--enable-mepic.",
    )
    slo_default_ttft_ms: float = flag(
        0.0,
        "TTFT SLO (ms) of requests that set none (0: no default). Requests set theirs with "
        "custom_params.slo_ttft_ms or the x-slo-ttft-ms header.",
    )
    slo_default_tpot_ms: float = flag(
        0.0,
        "TPOT SLO (ms per output token) of requests that set none (0: no default). Requests set "
        "theirs with custom_params.slo_tpot_ms or the x-slo-tpot-ms header.",
    )
    slo_classes: str = flag(
        "",
        "Named SLO classes, chosen per request with custom_params.slo_class or x-slo-class: "
        "'name:ttft=MS,tpot=MS,priority=N;name2:...' (every key optional).",
    )
    slo_unattainable: str = flag(
        "best-effort",
        "With --schedule-policy multi-slo: what happens to a request whose SLO cannot be met "
        "even if it ran alone now: 'best-effort' (served after all others) or 'reject' "
        "(HTTP 429 at once).",
        choices=UNATTAINABLE_ACTIONS,
    )
    slo_latency_profile: str = flag(
        "",
        "With --schedule-policy multi-slo: JSON latency profile of this model and machine "
        "(python -m benchmarks.slo_profile writes one). Without it the latency model learns "
        "from the first measured steps.",
    )
    mepic_d2d_timeout_s: float = flag(
        300.0,
        "With --load-format remote_instance: seconds to wait for the weights from the running "
        "instance before loading them from disk instead (a failed source falls back at once).",
    )
    mepic_weights_digest: bool = flag(
        False,
        "Compute a SHA-256 over all weights after loading and show it in /server_info "
        "(mepic_sglang.weights.sha256), e.g. to check a scale-out copied weights bit for bit. "
        "Reads every weight once at start-up.",
    )
    mepic_require_cache_salt: bool = flag(
        False,
        "Every generate request must carry a non-empty cache_salt (HTTP 400 otherwise), so that "
        "requests of different tenants never share cached KV (chunk pages or radix prefixes) "
        "by accident.",
    )
    mepic_shutdown_timeout: float = flag(
        0.0,
        "Bounded graceful shutdown: on SIGTERM refuse new requests (HTTP 503), let in-flight "
        "requests finish for up to this many seconds (aborting those whose client left), abort "
        "the rest (finish reason abort, HTTP 503), then exit. 0: SGLang's own shutdown (drains "
        "without a time limit and keeps admitting).",
    )
    mepic_stall_timeout: float = flag(
        60.0,
        "Liveness: seconds requests may wait without the scheduler running a batch before it "
        "counts as stalled (/server_info and /metrics say so, /health_generate fails until it "
        "recovers). 0: off.",
    )
    mepic_compat_check: str = flag(
        "strict",
        "What to do when the installed SGLang is not the version this plugin was built for, or a "
        "hooked SGLang function changed its signature: 'strict' refuses to start when a plugin "
        "feature is enabled, 'warn' only logs. Without plugin features both only log.",
        choices=("strict", "warn"),
    )

    @property
    def any_feature_enabled(self) -> bool:
        """True when some flag changes SGLang's behaviour (not just observability)."""
        return (
            self.enable_mepic
            or self.slo_configured
            or self.mepic_require_cache_salt
            or self.mepic_shutdown_timeout > 0
        )

    @property
    def slo_configured(self) -> bool:
        """A server-wide SLO default or class is set."""
        return bool(self.slo_default_ttft_ms or self.slo_default_tpot_ms or self.slo_classes)

    def slo_defaults(self) -> SloDefaults:
        """Server-wide SLO settings (raises :class:`SloError` naming the flag)."""
        return SloDefaults(
            ttft_ms=self.slo_default_ttft_ms or None,
            tpot_ms=self.slo_default_tpot_ms or None,
            classes=parse_classes(self.slo_classes),
        )

    def apply_defaults(self, server_args: Any) -> None:
        """Fill SGLang flags that a plugin flag implies and the user left unset (the SGLang-side
        defaults are added by :func:`mepic_sglang.sglang.server_args.apply_defaults`)."""
        if self.slo_configured or getattr(server_args, "schedule_policy", None) == MULTI_SLO:
            # NOTE: measured TTFT/TPOT (meta_info["slo"], /metrics) come from SGLang's time
            # stats, which only travel with --enable-metrics.
            server_args.enable_metrics = True
        if not self.enable_mepic:
            return
        if getattr(server_args, "attention_backend", None) is None:
            server_args.attention_backend = model_support.MEPIC_ATTENTION_BACKEND
        if getattr(server_args, "radix_cache_backend", None) is None:
            server_args.radix_cache_backend = MEPIC_RADIX_CACHE_BACKEND
        if getattr(server_args, "page_size", None) is None:
            # NOTE: chunks are padded to page boundaries; 16 as in the MEPIC paper (vLLM blocks).
            server_args.page_size = DEFAULT_MEPIC_PAGE_SIZE
        if model_support.uses_mepic_attention(server_args) and _cuda_target(server_args):
            # NOTE: the MEPIC backends have no CUDA-graph capture (per-forward ragged metadata and
            # lazy FlashInfer plans); SGLang would otherwise try to capture decode graphs.
            server_args.disable_cuda_graph = True

    def problems(
        self, server_args: Any, compat_problems: Callable[[], list[str]] = list
    ) -> list[str]:
        """Human-readable reasons why these values cannot run with ``server_args``; each names a
        flag. ``compat_problems`` (:func:`mepic_sglang.sglang.compat.problems`) is only called
        when a plugin feature is on, so a stock start-up never pays for the check."""
        out: list[str] = []
        if self.mepic_compat_check not in ("strict", "warn"):
            out.append(
                f"argument --mepic-compat-check: invalid choice {self.mepic_compat_check!r} "
                "(choose from 'strict', 'warn')"
            )
        if self.enable_mepic and getattr(server_args, "disable_radix_cache", False):
            out.append(
                "argument --enable-mepic: MEPIC keeps chunk pages beside the radix prefix cache; "
                "it cannot run with --disable-radix-cache"
            )
        if self.mepic_recompute not in POLICIES:
            out.append(
                f"argument --mepic-recompute: invalid choice {self.mepic_recompute!r} "
                f"(choose from {', '.join(map(repr, POLICIES))})"
            )
        if not self.mepic_d2d_timeout_s > 0:
            got = self.mepic_d2d_timeout_s
            out.append(f"argument --mepic-d2d-timeout-s: must be > 0, got {got}")
        for name in ("mepic_shutdown_timeout", "mepic_stall_timeout"):
            if not getattr(self, name) >= 0:
                out.append(f"argument {cli_name(name)}: must be >= 0, got {getattr(self, name)}")
        if self.mepic_recompute_k < 1:
            out.append(f"argument --mepic-recompute-k: must be >= 1, got {self.mepic_recompute_k}")
        if self.enable_mepic:
            backend = getattr(server_args, "radix_cache_backend", None)
            if backend != MEPIC_RADIX_CACHE_BACKEND:
                out.append(
                    f"argument --radix-cache-backend: {backend!r} cannot run with --enable-mepic "
                    f"(chunk pages live in the {MEPIC_RADIX_CACHE_BACKEND!r} cache, the default)"
                )
            for name, cli, is_on in _MEPIC_CONFLICTS:
                if is_on(getattr(server_args, name, None)):
                    out.append(f"argument {cli}: not supported with --enable-mepic yet")
        out += slo_flags.problems(self, server_args)
        if self.mepic_chunk_copies and not self.enable_mepic:
            out.append("argument --mepic-chunk-copies: needs --enable-mepic")
        if self.mepic_chunk_separator and not self.enable_mepic:
            out.append("argument --mepic-chunk-separator: needs --enable-mepic")
        mepic_attention = model_support.uses_mepic_attention(server_args)
        if self.enable_mepic and not mepic_attention:
            out.append(
                "argument --enable-mepic: needs RoPE applied inside attention: "
                f"--attention-backend {model_support.MEPIC_ATTENTION_BACKEND} (the default with "
                f"--enable-mepic; or {', '.join(model_support.MEPIC_ATTENTION_BACKENDS[1:])}), "
                f"not {getattr(server_args, 'attention_backend', None)!r}"
            )
        if mepic_attention:
            out += model_support.backend_problems(server_args)
            out += model_support.device_problems(
                server_args,
                cuda=_cuda_target(server_args),
                triton_interpret=os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
                flashinfer=importlib.util.find_spec("flashinfer") is not None,
            )
            if model := getattr(server_args, "model_path", None):
                out += [
                    f"argument --enable-mepic: {p}" for p in model_support.model_problems(model)
                ]
        features_on = self.any_feature_enabled or mepic_attention
        drift = compat_problems() if features_on else []
        if drift and self.mepic_compat_check == "strict":
            out.append(
                "argument --mepic-compat-check=strict: refusing to enable plugin features on an "
                "unsupported SGLang: "
                + "; ".join(drift)
                + " (pass --mepic-compat-check warn to try anyway)"
            )
        return out


def _cuda_target(server_args: Any) -> bool:
    """True when the server will run on a CUDA device (``--device cuda``, or unset with CUDA)."""
    device = getattr(server_args, "device", None)
    if device not in (None, "cuda"):
        return False
    import torch  # NOTE: late import; only reached when a MEPIC backend is selected

    return bool(torch.cuda.is_available())


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """Add one argument group with every :class:`PluginArgs` field."""
    group = parser.add_argument_group(GROUP_TITLE, "Flags added by the mepic-sglang plugin.")
    for f in dataclasses.fields(PluginArgs):
        help_text = f.metadata["help"]
        if isinstance(f.default, bool):
            # NOTE: a flag that defaults to on gets a --no-<name> form, like SGLang's own.
            action = argparse.BooleanOptionalAction if f.default else "store_true"
            group.add_argument(cli_name(f.name), action=action, default=f.default, help=help_text)
            continue
        choices = f.metadata["choices"]
        group.add_argument(
            cli_name(f.name),
            type=type(f.default),
            default=f.default,
            choices=list(choices) if choices else None,
            help=f"{help_text} (default: {f.default})",
        )


def from_namespace(namespace: argparse.Namespace) -> PluginArgs:
    """Plugin values parsed by a parser that went through :func:`add_cli_args`."""
    values = {
        f.name: getattr(namespace, f.name)
        for f in dataclasses.fields(PluginArgs)
        if hasattr(namespace, f.name)
    }
    return PluginArgs(**values)


def get_plugin_args(server_args: Any) -> PluginArgs:
    """The plugin values carried by ``server_args`` (defaults when none were attached)."""
    value = getattr(server_args, ATTR, None)
    return value if isinstance(value, PluginArgs) else PluginArgs()
