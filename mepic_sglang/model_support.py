"""Which models and attention backends MEPIC's RoPE-in-attention supports (checked at start-up).

MEPIC rotates keys inside attention, so it must know the model's rotary embedding exactly. We
support the default RoPE of the Llama family and Qwen2/Qwen3; anything else (scaled RoPE such as
llama3/yarn/dynamic, M-RoPE, other architectures) is refused before the model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MEPIC_ATTENTION_BACKEND = "mepic"  # the default with --enable-mepic: torch on CPU, GPU kernels
# Every backend that stores NoPE keys (flashinfer_ext.backends.FACTORIES has the same names).
MEPIC_ATTENTION_BACKENDS = ("mepic", "mepic_torch", "mepic_triton", "mepic_flashinfer")
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
_BACKEND_FIELDS = ("attention_backend", "prefill_attention_backend", "decode_attention_backend")


def uses_mepic_attention(server_args: Any) -> bool:
    """True when any of the attention-backend flags selects the MEPIC backend."""
    return any(getattr(server_args, f, None) in MEPIC_ATTENTION_BACKENDS for f in _BACKEND_FIELDS)


def selected_backends(server_args: Any) -> set[str]:
    """The MEPIC attention backends named by any attention-backend flag."""
    values = {getattr(server_args, f, None) for f in _BACKEND_FIELDS}
    return {v for v in values if v in MEPIC_ATTENTION_BACKENDS}


def backend_problems(server_args: Any) -> list[str]:
    """Prefill and decode must both use MEPIC attention, or the pool mixes NoPE and RoPE keys."""
    if not uses_mepic_attention(server_args):
        return []
    return [
        f"argument --{name.replace('_', '-')}: {value!r} cannot be mixed with "
        f"--attention-backend {'/'.join(MEPIC_ATTENTION_BACKENDS)} (keys in the pool are stored "
        "without RoPE)"
        for name in _BACKEND_FIELDS
        if (value := getattr(server_args, name, None)) not in (None, *MEPIC_ATTENTION_BACKENDS)
    ]


def device_problems(
    server_args: Any, cuda: bool, triton_interpret: bool, flashinfer: bool
) -> list[str]:
    """Backends that cannot run on this machine (``cuda``: a CUDA device will be used)."""
    out = []
    chosen = selected_backends(server_args)
    if "mepic_triton" in chosen and not cuda and not triton_interpret:
        out.append(
            "argument --attention-backend: mepic_triton needs a CUDA GPU (on CPU only with "
            "TRITON_INTERPRET=1, Triton's slow interpreter, for tests); use mepic on CPU"
        )
    if "mepic_flashinfer" in chosen and not (cuda and flashinfer):
        out.append(
            "argument --attention-backend: mepic_flashinfer needs a CUDA GPU and the flashinfer "
            "package; use mepic (it uses FlashInfer when it can)"
        )
    return out


def rope_type(config: dict[str, Any]) -> str:
    """The config's RoPE variant; ``default`` for plain RoPE (both transformers 4 and 5 layouts)."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    return str(params.get("rope_type") or params.get("type") or "default")


def model_problems(model_path: str | Path) -> list[str]:
    """Reasons the model at ``model_path`` cannot run with MEPIC attention.

    Only local checkpoints are inspected here; others are checked when the model loads.
    """
    config_file = Path(model_path) / "config.json"
    if not config_file.is_file():
        return []
    config = json.loads(config_file.read_text())
    out = []
    archs = config.get("architectures") or []
    if not set(archs) & set(SUPPORTED_ARCHITECTURES):
        out.append(
            f"MEPIC attention supports {', '.join(SUPPORTED_ARCHITECTURES)}; "
            f"{model_path} is {', '.join(archs) or 'of unknown architecture'}"
        )
    if (kind := rope_type(config)) != "default":
        out.append(f"MEPIC attention supports default RoPE only; {model_path} uses {kind!r}")
    return out
