"""Tokenizer-side SLO handling: request fields in, ``meta_info["slo"]`` and ``/metrics`` out.

Runs inside the AROUND hook on ``TokenizerManager.generate_request`` (launcher process), for
``/generate``, OpenAI completions/chat and ``Engine.generate``:

1. SLO headers (``x-slo-ttft-ms``, ``x-slo-tpot-ms``, ``x-slo-class``) become ``custom_params``;
   every SLO field is validated (a bad one is an HTTP 400 naming the field);
2. the arrival time is stamped (``custom_params.slo_arrival``), so the scheduler's TTFT deadline
   counts from the HTTP request;
3. the final output of a request that has an SLO gets ``meta_info["slo"]``: the targets, the
   measured TTFT/TPOT (SGLang's own time stats, needs ``--enable-metrics``), whether each was
   met, and ``rejected`` when the server refused it early;
4. OpenAI non-streaming responses repeat it as ``metadata.slo`` (streaming chunks have no free
   field in SGLang's OpenAI models);
5. with ``--enable-metrics``, ``/metrics`` gets ``mepic_slo_requests_total{slo_class,outcome}``
   (outcome: met / missed / rejected) and ``mepic_slo_goodput_tokens_total{slo_class}`` (output
   tokens of requests that met their SLO). Attainment of a class is
   ``met / (met + missed + rejected)``.
"""

from __future__ import annotations

import time
from functools import cache
from typing import Any

from mepic_sglang.flags import PluginArgs, get_plugin_args
from mepic_sglang.sglang.slo_adapter import REJECT_STATUS
from scheduler_patch.slo import (
    ARRIVAL_KEY,
    CLASS_KEY,
    TPOT_KEY,
    TTFT_KEY,
    Slo,
    SloDefaults,
    SloError,
    header_fields,
)

META_KEY = "slo"
_SLO_KEYS = (TTFT_KEY, TPOT_KEY, CLASS_KEY)


@cache
def _defaults(args: PluginArgs) -> SloDefaults:
    return args.slo_defaults()  # NOTE: parsed once per flag set, not per request


def prepare(manager: Any, obj: Any, request: Any) -> Slo | None:
    """Validate and complete the request's SLO fields; the SLO of its first prompt (None when
    neither the request nor the server sets one). Raises :class:`SloError` (HTTP 400).

    Only the sampling params of prompts that have an SLO are rewritten (with their arrival)."""
    defaults = _defaults(get_plugin_args(manager.server_args))
    headers = getattr(request, "headers", None)
    from_headers = header_fields(headers) if headers is not None else {}
    params = obj.sampling_params
    batch = isinstance(params, list)
    priority = obj.priority if isinstance(getattr(obj, "priority", None), int) else None
    first: Slo | None = None
    asked = False
    now = time.time()
    for i, sampling in enumerate(params if batch else [params]):
        sampling = sampling or {}
        custom = sampling.get("custom_params")
        if custom is not None and not isinstance(custom, dict):
            raise SloError(f"custom_params must be an object, got {type(custom).__name__}")
        custom = {**(custom or {}), **from_headers}
        slo = defaults.resolve(custom, priority)
        first = first or slo
        if not (any(k in custom for k in _SLO_KEYS) or slo.has_target):
            continue
        asked = True
        custom.setdefault(ARRIVAL_KEY, now)
        if batch:
            params[i] = {**sampling, "custom_params": custom}
        else:
            obj.sampling_params = {**sampling, "custom_params": custom}
    return first if asked else None


def outcome(slo: Slo, meta_info: dict[str, Any]) -> dict[str, Any]:
    """``meta_info["slo"]`` for a finished request."""
    finish = meta_info.get("finish_reason") or {}
    rejected = isinstance(finish, dict) and finish.get("status_code") == REJECT_STATUS
    ttft = meta_info.get("first_token_latency")
    completion = int(meta_info.get("completion_tokens") or 0)
    e2e = meta_info.get("e2e_latency")
    tpot = None
    if isinstance(ttft, int | float) and isinstance(e2e, int | float) and completion > 1:
        tpot = (e2e - ttft) / (completion - 1)
    out: dict[str, Any] = {
        "class": slo.slo_class,
        "priority": slo.priority,
        "ttft_slo_ms": None if slo.ttft_s is None else slo.ttft_s * 1e3,
        "tpot_slo_ms": None if slo.tpot_s is None else slo.tpot_s * 1e3,
        "ttft_ms": None if ttft is None else ttft * 1e3,
        "tpot_ms": None if tpot is None else tpot * 1e3,
        "rejected": rejected,
    }
    ttft_met = _met(slo.ttft_s, ttft, rejected)
    tpot_met = _met(slo.tpot_s, tpot, rejected, missing_ok=completion <= 1 and not rejected)
    out["ttft_met"], out["tpot_met"] = ttft_met, tpot_met
    checks = [m for m, t in ((ttft_met, slo.ttft_s), (tpot_met, slo.tpot_s)) if t is not None]
    out["met"] = False if rejected or False in checks else None if None in checks else True
    if ttft is None and slo.ttft_s is not None and not rejected:
        out["note"] = "TTFT not measured: start the server with --enable-metrics"
    return out


def _met(
    target: float | None, measured: Any, rejected: bool, missing_ok: bool = False
) -> bool | None:
    if target is None:
        return None
    if rejected:
        return False
    if not isinstance(measured, int | float):
        return True if missing_ok else None
    return bool(measured <= target)


@cache
def _metrics() -> tuple[Any, Any]:
    # NOTE: created lazily, after SGLang set PROMETHEUS_MULTIPROC_DIR, once per process.
    from prometheus_client import Counter

    requests = Counter(
        "mepic_slo_requests",
        "Finished requests with an SLO, by class and outcome (met / missed / rejected).",
        labelnames=["slo_class", "outcome"],
    )
    goodput = Counter(
        "mepic_slo_goodput_tokens",
        "Output tokens of requests that met their SLO, by class.",
        labelnames=["slo_class"],
    )
    return requests, goodput


def finish(manager: Any, slo: Slo, meta_info: dict[str, Any]) -> None:
    """A request with an SLO ended: add ``meta_info["slo"]`` and count it."""
    report = outcome(slo, meta_info)
    meta_info[META_KEY] = report
    record(manager, report, int(meta_info.get("completion_tokens") or 0))


def record(manager: Any, report: dict[str, Any], completion_tokens: int) -> None:
    """Count a finished request in ``/metrics`` (when the server exports metrics)."""
    if not getattr(manager.server_args, "enable_metrics", False):
        return
    requests, goodput = _metrics()
    if report["met"] is None and not report["rejected"]:
        return  # not measured (no time stats): neither met nor missed
    kind = "rejected" if report["rejected"] else "met" if report["met"] else "missed"
    requests.labels(slo_class=report["class"], outcome=kind).inc()
    if kind == "met":
        goodput.labels(slo_class=report["class"]).inc(completion_tokens)


def after_endpoint_metadata(result: dict[str, Any], meta_info: dict[str, Any]) -> dict[str, Any]:
    """AFTER ``build_endpoint_weight_version_metadata(meta_info)``: OpenAI non-streaming responses
    carry ``metadata.slo`` (and ``metadata.mepic`` for requests with chunks)."""
    for key in (META_KEY, "mepic"):
        if key in meta_info:
            result[key] = meta_info[key]
    return result
