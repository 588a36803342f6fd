"""Which models and attention backends MEPIC's RoPE-in-attention supports (checked at start-up).

MEPIC rotates keys inside attention, so it must know the model's rotary embedding exactly. We
support the default RoPE of the Llama family and Qwen2/Qwen3; anything else (scaled RoPE such as
llama3/yarn/dynamic, M-RoPE, other architectures) is refused before the model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MEPIC_ATTENTION_BACKEND = "mepic"
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
_BACKEND_FIELDS = ("attention_backend", "prefill_attention_backend", "decode_attention_backend")


def uses_mepic_attention(server_args: Any) -> bool:
    """True when any of the attention-backend flags selects the MEPIC backend."""
    return any(getattr(server_args, f, None) == MEPIC_ATTENTION_BACKEND for f in _BACKEND_FIELDS)


def backend_problems(server_args: Any) -> list[str]:
    """Prefill and decode must both use MEPIC attention, or the pool mixes NoPE and RoPE keys."""
    if not uses_mepic_attention(server_args):
        return []
    return [
        f"argument --{name.replace('_', '-')}: {value!r} cannot be mixed with "
        f"--attention-backend {MEPIC_ATTENTION_BACKEND} (keys in the pool are stored without RoPE)"
        for name in _BACKEND_FIELDS
        if (value := getattr(server_args, name, None)) not in (None, MEPIC_ATTENTION_BACKEND)
    ]


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
