"""P/D disaggregation on CPU: what SGLang 0.5.23 needs to move KV with Mooncake over TCP.

SGLang's P/D runs on CPU with ``--disaggregation-transfer-backend mooncake_tcp`` (the
``mooncake-transfer-engine-non-cuda`` wheel) once three CUDA-only paths are avoided:

| SGLang 0.5.23 path                     | CUDA-only because                | here                 |
|----------------------------------------|----------------------------------|----------------------|
| decode KV: retraction backup host_pool | cudaHostRegister of a host pool  | default cpu_tensor   |
| prefill send: host-tensor KV indices   | pin_memory=True + cuda.Event     | hook (below)         |
| prefill: early send of cached prefix   | torch.cuda.Event()               | env default 0        |

The defaults apply only when the server runs on CPU and in P/D mode (:func:`apply_cpu_defaults`,
from the plugin's flag processing in the launcher, so scheduler subprocesses inherit the env).
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

PD_MODES = ("prefill", "decode")
EARLY_SEND_ENV = "SGLANG_DISAGG_PREFILL_EARLY_SEND_CACHED_PREFIX"
HOST_IP_ENV = "SGLANG_HOST_IP"
LOOPBACK = ("127.0.0.1", "localhost")


def pd_mode(server_args: Any) -> str | None:
    mode = getattr(server_args, "disaggregation_mode", None)
    return mode if mode in PD_MODES else None


def on_cpu(server_args: Any) -> bool:
    device = getattr(server_args, "device", None)
    if device:
        return str(device).startswith("cpu")
    import torch  # NOTE: late import; only reached for a P/D server

    return not torch.cuda.is_available()


def apply_cpu_defaults(server_args: Any) -> None:
    """Fill the CPU P/D settings the user left unset (see the module table)."""
    mode = pd_mode(server_args)
    if mode is None or not on_cpu(server_args):
        return
    backup = "disaggregation_decode_retraction_backup"
    if mode == "decode" and getattr(server_args, backup, "") is None:
        setattr(server_args, backup, "cpu_tensor")
    os.environ.setdefault(EARLY_SEND_ENV, "0")
    host = str(getattr(server_args, "host", "") or "")
    if host in LOOPBACK:
        # NOTE: the bootstrap server and Mooncake advertise this address to the peer; without it
        # SGLang guesses a NIC address, unreachable in a loopback-only network namespace.
        os.environ.setdefault(HOST_IP_ENV, "127.0.0.1")


def after_create_sender(result: bool, queue: Any, req: Any, *args: Any, **kwargs: Any) -> bool:
    """AFTER ``PrefillBootstrapQueue.create_sender``: on CPU, the request's KV sender sends its
    indices as plain arrays (the host-tensor path pins memory and records a CUDA event).

    NOTE: hooked here rather than on ``MooncakeKVSender``: importing the Mooncake module at
    plugin load imports prometheus_client before SGLang sets ``PROMETHEUS_MULTIPROC_DIR``, and
    the plugin's own counters then vanish from ``/metrics``."""
    import torch

    sender = getattr(req, "disagg_kv_sender", None)
    if result and sender is not None and not torch.cuda.is_available():
        sender.supports_host_tensor_indices = False
    return result
