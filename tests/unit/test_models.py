"""Local model folders: built offline, idempotently, loadable by transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mepic_sglang import models


def test_tiny_model_builds_once_and_loads(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first = models.ensure_tiny("qwen2", tmp_path, vocab=512, hidden=64, layers=1)
    stamp = (first / "config.json").stat().st_mtime_ns
    again = models.ensure_tiny("qwen2", tmp_path, vocab=512, hidden=64, layers=1)
    assert again == first and (first / "config.json").stat().st_mtime_ns == stamp
    tok = AutoTokenizer.from_pretrained(first)
    model = AutoModelForCausalLM.from_pretrained(first)
    assert model.config.model_type == "qwen2" and len(tok) == model.config.vocab_size
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    leftovers = [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")]
    assert leftovers == [first.name], "no temporary folders left"


def test_interrupted_build_is_redone(tmp_path: Path) -> None:
    def boom(out: Path) -> None:
        (out / "partial").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        models._build_once(tmp_path / "m", boom)
    assert not (tmp_path / "m").exists()
    assert [p.name for p in tmp_path.iterdir()] == [".m.lock"], "no temporary folders left"
    built = models._build_once(tmp_path / "m", lambda out: (out / "w").write_text("ok"))
    assert (built / "w").read_text() == "ok"


def test_unknown_tiny_arch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mistral"):
        models.ensure_tiny("mistral", tmp_path)


def test_smollm2_checkpoint(smollm2_path: Path) -> None:
    weights = smollm2_path / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert models.ensure_smollm2(smollm2_path.parent) == smollm2_path
    assert weights.stat().st_mtime_ns == stamp, "a finished build must not be redone"
    config = json.loads((smollm2_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_key_value_heads"]) == (
        30,
        576,
        3,
    )
    assert config["dtype"] == "float32" and "quantization_config" not in config
    assert weights.stat().st_size > 500e6
    assert "<|im_start|>" in (smollm2_path / "chat_template.jinja").read_text()
