"""The MEPIC attention backends by ``--attention-backend`` name (see :mod:`kernel_backend`'s table).

``mepic_sglang.model_support.MEPIC_ATTENTION_BACKENDS`` lists the same names (a test checks it);
``mepic_sglang.sglang.hooks`` registers every factory here with SGLang's attention registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flashinfer_ext.torch_backend import MepicTorchAttnBackend


def _on_cuda(model_runner: Any) -> bool:
    return str(model_runner.device).startswith("cuda")


def create_mepic(model_runner: Any) -> Any:
    """``mepic``: the torch reference on CPU; FlashInfer + Triton on CUDA."""
    if not _on_cuda(model_runner):
        return MepicTorchAttnBackend(model_runner)
    from flashinfer_ext.kernel_backend import MepicKernelAttnBackend

    return MepicKernelAttnBackend(model_runner, flashinfer="auto")


def create_torch(model_runner: Any) -> Any:
    """``mepic_torch``: the torch reference on any device."""
    return MepicTorchAttnBackend(model_runner)


def create_triton(model_runner: Any) -> Any:
    """``mepic_triton``: the Triton kernel for every batch (CPU: Triton's interpreter)."""
    from flashinfer_ext.kernel_backend import MepicKernelAttnBackend

    return MepicKernelAttnBackend(model_runner, flashinfer="off")


def create_flashinfer(model_runner: Any) -> Any:
    """``mepic_flashinfer``: FlashInfer where it fits (required to work), Triton elsewhere."""
    from flashinfer_ext.kernel_backend import MepicKernelAttnBackend

    return MepicKernelAttnBackend(model_runner, flashinfer="required")


FACTORIES: dict[str, Callable[[Any], Any]] = {
    "mepic": create_mepic,
    "mepic_torch": create_torch,
    "mepic_triton": create_triton,
    "mepic_flashinfer": create_flashinfer,
}
