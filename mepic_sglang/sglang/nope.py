"""Model side of NoPE keys: attention modules rotate q only; the backend rotates keys.

Active in a scheduler process when its attention backend is ``mepic`` (``--enable-mepic`` selects
it). An AFTER hook on each supported model's attention ``__init__`` (rows in ``hooks.py``)

1. replaces ``self.rotary_emb`` by :class:`QueryOnlyRope`, which rotates q with the model's own
   rotary embedding and returns k untouched, so ``set_kv_buffer`` stores keys without RoPE;
2. attaches the real rotary embedding to the layer's ``RadixAttention`` as ``mepic_rope`` (a plain
   attribute, not a submodule: no weights, no state-dict change), which the backend reads.

Only SGLang's default ``RotaryEmbedding`` is supported (exact type); scaled or multimodal RoPE
variants are refused at model load with a clear error (and earlier, at start-up, from the model's
config: :mod:`mepic_sglang.model_support`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mepic_sglang import model_support

_wrapped_layers = 0  # attention modules switched to NoPE keys in this process


def wrapped_layers() -> int:
    """How many attention modules in this process store NoPE keys (0 unless MEPIC attention)."""
    return _wrapped_layers


class UnsupportedRopeError(RuntimeError):
    """The model's rotary embedding cannot be applied inside MEPIC attention."""


class QueryOnlyRope(nn.Module):
    """Drop-in for a rotary embedding: ``(positions, q, k) -> (rope(q), k)``."""

    def __init__(self, rope: nn.Module) -> None:
        super().__init__()
        self.rope = rope

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # NOTE: the real rope may rotate in place (CUDA kernel), so it gets a scratch key.
        q_rot, _ = self.rope(positions, q, k.clone(), *args, **kwargs)
        return q_rot, k


def nope_mode_active() -> bool:
    """True in a process whose published server args select the MEPIC attention backend."""
    from sglang.srt.runtime_context import get_server_args

    try:
        server_args = get_server_args()
    except ValueError:  # "Global server args is not set yet!": not inside a scheduler
        return False
    return model_support.uses_mepic_attention(server_args)


def after_attention_init(result: None, module: Any, *args: Any, **kwargs: Any) -> None:
    """AFTER ``LlamaAttention`` / ``Qwen2Attention`` / ``Qwen3Attention`` ``__init__``."""
    global _wrapped_layers
    if not nope_mode_active():
        return
    from sglang.srt.layers.rotary_embedding.base import RotaryEmbedding

    rope = module.rotary_emb
    if type(rope) is not RotaryEmbedding:
        raise UnsupportedRopeError(
            f"--attention-backend mepic supports default RoPE only; {type(module).__name__} "
            f"uses {type(rope).__name__}"
        )
    module.rotary_emb = QueryOnlyRope(rope)
    object.__setattr__(module.attn, "mepic_rope", rope)
    _wrapped_layers += 1
    # Qwen3 fuses qk-norm + RoPE (+ KV write) on some GPUs; those kernels rotate k.
    for fused in ("use_fused_qk_norm_rope", "use_fused_qk_norm_mrope"):
        if hasattr(module, fused):
            setattr(module, fused, False)
