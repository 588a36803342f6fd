"""P/D disaggregation on CPU: what SGLang 0.5.23 needs to move KV with Mooncake over TCP.

SGLang's P/D runs on CPU with ``--disaggregation-transfer-backend mooncake_tcp`` (the
``mooncake-transfer-engine-non-cuda`` wheel) once three CUDA-only paths are avoided:

| SGLang 0.5.23 path                     | CUDA-only because                | here                 |
|----------------------------------------|----------------------------------|----------------------|
| decode KV: retraction backup host_pool | cudaHostRegister of a host pool  | default cpu_tensor   |
| prefill send: host-tensor KV indices   | pin_memory=True + cuda.Event     | hook (below)         |
| prefill: early send of cached prefix   | torch.cuda.Event()               | env default 0        |

Weights from a running instance (``--load-format remote_instance`` with the transfer-engine
backend, or a seed's ``--remote-instance-weight-loader-start-seed-via-transfer-engine``) use the
same Mooncake engine: on CPU only over TCP (``MOONCAKE_PROTOCOL=tcp``).

The defaults apply only when the server runs on CPU and uses P/D or weight transfer
(:func:`apply_cpu_defaults`, from the plugin's flag processing in the launcher, so scheduler
subprocesses inherit the env).
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

PD_MODES = ("prefill", "decode")
EARLY_SEND_ENV = "SGLANG_DISAGG_PREFILL_EARLY_SEND_CACHED_PREFIX"
HOST_IP_ENV = "SGLANG_HOST_IP"
PROTOCOL_ENV = "MOONCAKE_PROTOCOL"
LOOPBACK = ("127.0.0.1", "localhost")


def pd_mode(server_args: Any) -> str | None:
    mode = getattr(server_args, "disaggregation_mode", None)
    return mode if mode in PD_MODES else None


def transfers_weights(server_args: Any) -> bool:
    """Serves its weights to new instances, or loads them from one, with Mooncake (SGLang's
    own test: a seed, or ``--load-format remote_instance`` over the transfer engine)."""
    from sglang.srt.arg_groups.overrides import remote_instance_transfer_engine_of

    try:
        return bool(remote_instance_transfer_engine_of(server_args))
    except AttributeError:  # NOTE: a partial record (Engine users, tests): no weight fields
        return False


def on_cpu(server_args: Any) -> bool:
    device = getattr(server_args, "device", None)
    if device:
        return str(device).startswith("cpu")
    import torch  # NOTE: late import; only reached for a P/D server

    return not torch.cuda.is_available()


def apply_cpu_defaults(server_args: Any) -> None:
    """Fill the CPU P/D settings the user left unset (see the module table)."""
    mode = pd_mode(server_args)
    weights = transfers_weights(server_args)
    if (mode is None and not weights) or not on_cpu(server_args):
        return
    backup = "disaggregation_decode_retraction_backup"
    if mode == "decode" and getattr(server_args, backup, "") is None:
        setattr(server_args, backup, "cpu_tensor")
    if mode is not None:
        os.environ.setdefault(EARLY_SEND_ENV, "0")
    if weights:
        os.environ.setdefault(PROTOCOL_ENV, "tcp")  # NOTE: no RDMA device on a CPU host
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


def after_decode_prebuilt(result: None, stats: Any, *args: Any, **kwargs: Any) -> None:
    """AFTER ``SchedulerReqTimeStats.set_decode_prebuilt_finish_time``: on a decode instance the
    first token (computed by the prefill instance) is ready when its KV has arrived and the
    prebuilt batch ran. Record that as the request's prefill-finished time, which SGLang reports
    as a non-streaming request's first-token time; without it SGLang falls back to the time the
    whole answer arrived (first-token latency = end-to-end, TPOT 0)."""
    if not stats.prefill_finished_time:
        stats.prefill_finished_time = stats.decode_prebuilt_finish_time
