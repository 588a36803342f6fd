"""Weights from a running instance (D2D): safe on CPU, bounded in time, disk when the source fails.

A new instance started with ``--load-format remote_instance`` reads its weights from a running
"seed" instance (SGLang's ``RemoteInstanceModelLoader``; on CPU the Mooncake transfer engine over
TCP, on GPU RDMA or NCCL). SGLang 0.5.23 gives such an instance no way back: a dead seed is a
``RuntimeError`` and the instance exits, and a hung seed hangs it (the weight-info request has no
timeout). The plugin adds:

| step (new instance)         | SGLang 0.5.23               | with the plugin                    |
|-----------------------------|-----------------------------|------------------------------------|
| register params with the TE | v2: CUDA allocator snapshot | CPU: v1, one region per param      |
| fetch weight info, read     | no timeout; failure = exit  | bounded by --mepic-d2d-timeout-s   |
| source failed or too slow   | instance exits / hangs      | load from disk (same checkpoint)   |

What happened is reported in ``/server_info`` (``internal_states[i].mepic_sglang.weights``):
``source`` (``disk``, ``remote_instance`` or ``disk_fallback``), ``load_s``, the fallback reason,
and with ``--mepic-weights-digest`` a SHA-256 over every parameter (name, dtype, shape, bytes),
so two instances can prove they hold bit-identical weights.
"""

from __future__ import annotations

import contextvars
import copy
import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from mepic_sglang.flags import PluginArgs, get_plugin_args

logger = logging.getLogger(__name__)


_state: dict[str, Any] = {"source": None, "load_s": None, "fallback_reason": None, "sha256": None}


def weights_state() -> dict[str, Any]:
    """This process's weight-load report (the ``weights`` entry of ``/server_info``)."""
    return dict(_state)


def weights_digest(named_params: Any) -> str:
    """SHA-256 over ``(name, dtype, shape, bytes)`` of every parameter, in name order."""
    import torch

    h = hashlib.sha256()
    for name, p in sorted(named_params, key=lambda item: item[0]):
        t = p.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _server_args() -> Any:
    from sglang.srt.runtime_context import get_server_args

    return get_server_args()


def around_register_memory_region(
    orig: Callable[..., Any], model: Any, transfer_engine: Any
) -> Any:
    """AROUND ``register_memory_region`` (both importers): on CPU, register each parameter as its
    own region (v1); SGLang's v2 merges regions from the CUDA allocator's snapshot."""
    import torch

    if torch.cuda.is_available():
        return orig(model, transfer_engine)
    from sglang.srt.model_loader.remote_instance_weight_loader_utils import (
        register_memory_region_v1,
    )

    return register_memory_region_v1(model, transfer_engine)


def around_remote_load_model(
    orig: Callable[..., Any], loader: Any, *, model_config: Any, device_config: Any
) -> Any:
    """AROUND ``RemoteInstanceModelLoader.load_model``: the remote load, bounded by
    ``--mepic-d2d-timeout-s``; on any failure or timeout, the same model from disk."""
    try:
        timeout_s = get_plugin_args(_server_args()).mepic_d2d_timeout_s
    except ValueError:  # NOTE: no published server args (not a scheduler): the flag's default
        timeout_s = PluginArgs().mepic_d2d_timeout_s
    # NOTE: the attempt runs on a copy: an abandoned attempt that finishes late cannot hand its
    # (half-filled) model's registered addresses to the real loader, which SGLang would publish
    attempt = copy.copy(loader)
    try:
        model = _call_with_deadline(
            lambda: orig(attempt, model_config=model_config, device_config=device_config),
            timeout_s,
            device_config,
        )
        loader.remote_instance_transfer_engine_weight_info = (
            attempt.remote_instance_transfer_engine_weight_info
        )
        _state["source"] = "remote_instance"
        return model
    except Exception as exc:  # NOTE: any failure of the source means: load from disk instead
        reason = f"{type(exc).__name__}: {exc}"
    # NOTE: None makes SGLang register (and, on a seed, publish) the model loaded from disk
    loader.remote_instance_transfer_engine_weight_info = None
    logger.warning(
        "mepic-sglang: weights from the remote instance failed (%s); loading from disk", reason
    )
    from sglang.srt.configs.load_config import LoadFormat
    from sglang.srt.model_loader.loader import get_model_loader

    disk = get_model_loader(
        dataclasses.replace(loader.load_config, load_format=LoadFormat.AUTO), model_config
    )
    model = disk.load_model(model_config=model_config, device_config=device_config)
    _state["source"] = "disk_fallback"
    _state["fallback_reason"] = reason
    return model


def around_publish_weight_info(orig: Callable[..., Any], transporter: Any) -> None:
    """AROUND ``RemoteInstanceWeightTransporter.maybe_register_and_publish_weight_info``: a seed
    whose weights came from another instance publishes them too. SGLang publishes only what it
    registers here, and an instance loaded from a seed registered its weights while loading, so
    it would never serve them: a chain of scale-outs would end at the first instance."""
    already_registered = transporter.weight_info is not None
    orig(transporter)
    if already_registered and transporter.engine is not None and _is_seed():
        transporter._register_to_engine_info_bootstrap()


def _is_seed() -> bool:
    from sglang.srt.runtime_context import get_model

    return bool(get_model().remote_instance_weight_loader_start_seed_via_transfer_engine)


def _call_with_deadline(fn: Callable[[], Any], timeout_s: float, device_config: Any) -> Any:
    """``fn()`` on a worker thread; raise ``TimeoutError`` if it has not returned in time.

    NOTE: a timed-out worker is abandoned, not killed (a transfer in C cannot be interrupted). It
    keeps its own, half-filled model alive, so a late write from the transfer engine lands in
    memory nobody else uses; the fallback builds a new model. The cost is that model's memory.
    NOTE: SGLang builds the model under a process-wide default dtype (``set_default_torch_dtype``);
    a deadline that fires while the worker is still building it (seconds, far below the 300 s
    default) would race the disk load on that setting."""
    box: dict[str, Any] = {}
    ctx = contextvars.copy_context()  # SGLang's runtime context lives in ContextVars
    gpu_id = getattr(device_config, "gpu_id", None)
    cuda = str(getattr(device_config, "device", "cpu")).startswith("cuda")

    def run() -> None:
        try:
            if cuda and gpu_id is not None:
                import torch

                torch.cuda.set_device(gpu_id)  # the current device is per thread
            box["value"] = ctx.run(fn)
        except BaseException as exc:  # NOTE: handed to the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=run, name="mepic-d2d-load", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise TimeoutError(f"no weights from the remote instance within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def around_model_runner_load_model(orig: Callable[..., Any], runner: Any) -> Any:
    """AROUND ``ModelRunner.load_model``: time the load and, when asked, digest the weights
    (the target model only, not a speculative draft model)."""
    if getattr(runner, "is_draft_worker", False):
        return orig(runner)
    t0 = time.perf_counter()
    result = orig(runner)
    _state["load_s"] = round(time.perf_counter() - t0, 4)
    if _state["source"] is None:  # not set by the remote-instance hook: SGLang's own format
        _state["source"] = str(runner.server_args.load_format)
    if get_plugin_args(runner.server_args).mepic_weights_digest:
        _state["sha256"] = weights_digest(runner.model.named_parameters())
    return result
