"""The plugin's part of SGLang's ``/server_info``: where it is and how to read it (one parser).

The plugin adds one entry to every scheduler's ``internal_states`` (written by
``mepic_sglang/sglang/observe.py``; keys below are the ones readers here rely on)::

    /server_info
      internal_states[dp rank]
        mepic_sglang                   PLUGIN_KEY: absent when the plugin is not loaded
          pool                         KV pool in tokens (total, available, evictable, peak, ...)
          chunks                       MEPIC chunk store (--enable-mepic)
          attention                    MEPIC attention backend counters
          slo                          multi-slo runtime (--schedule-policy multi-slo)
            latency_model              {prefill_coef: [3 floats] | null, decode_coef: ...}
          liveness                     progress watch (--mepic-stall-timeout > 0)
          weights                      how the weights were loaded (source, seconds, digest)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests

from scheduler_patch.latency_model import LatencyModel

PLUGIN_KEY = "mepic_sglang"


class ServerInfoError(ValueError):
    """The ``/server_info`` reply has no plugin entry (the plugin is not loaded there)."""


def plugin_section(info: Mapping[str, Any], rank: int = 0) -> dict[str, Any]:
    """The plugin's entry in a ``/server_info`` reply, for data-parallel rank ``rank``."""
    try:
        section = info["internal_states"][rank][PLUGIN_KEY]
    except (KeyError, IndexError, TypeError) as e:
        raise ServerInfoError(f"no internal_states[{rank}].{PLUGIN_KEY} in /server_info") from e
    if not isinstance(section, dict):
        raise ServerInfoError(f"internal_states[{rank}].{PLUGIN_KEY} is not an object")
    return section


def fetch(url: str, timeout_s: float = 60.0, rank: int = 0) -> dict[str, Any]:
    """GET ``url/server_info`` and return :func:`plugin_section` of it."""
    reply = requests.get(f"{url}/server_info", timeout=timeout_s)
    reply.raise_for_status()
    return plugin_section(reply.json(), rank)


def latency_model(section: Mapping[str, Any]) -> LatencyModel | None:
    """The fitted latency model of a multi-slo instance (None: not multi-slo, or nothing fitted)."""
    slo = section.get("slo")
    state = slo.get("latency_model") if isinstance(slo, dict) else None
    if not isinstance(state, dict):
        return None
    coefs = [state.get("prefill_coef"), state.get("decode_coef")]
    good = [c if isinstance(c, list) and len(c) == 3 else None for c in coefs]
    if good == [None, None]:
        return None
    return LatencyModel(prefill_coef=good[0], decode_coef=good[1])


def weights(section: Mapping[str, Any]) -> dict[str, Any]:
    """The instance's weights report (empty when it has none)."""
    value = section.get("weights")
    return dict(value) if isinstance(value, dict) else {}


def pool(section: Mapping[str, Any]) -> dict[str, Any]:
    """The KV pool numbers (reading ``/server_info`` starts a new usage window)."""
    value = section.get("pool")
    if not isinstance(value, dict):
        raise ServerInfoError(f"{PLUGIN_KEY}.pool is missing")
    return value
