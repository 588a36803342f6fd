"""Plugin flags: parsed by SGLang's own CLI path, validated, carried to subprocesses."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from mepic_sglang.flags import ATTR, PluginArgError, PluginArgs, get_plugin_args
from mepic_sglang.sglang import compat
from mepic_sglang.sglang.server_args import attach_plugin_args


@pytest.fixture(scope="module")
def prepare(smollm2_path: Path):  # type: ignore[no-untyped-def]
    """SGLang's real ``prepare_server_args`` with the plugin loaded in this process."""
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args

    load_plugins()

    def _prepare(*argv: str):  # type: ignore[no-untyped-def]
        return prepare_server_args(["--model-path", str(smollm2_path), *argv])

    return _prepare


def test_no_flags_gives_defaults(prepare) -> None:  # type: ignore[no-untyped-def]
    assert get_plugin_args(prepare()) == PluginArgs()
    assert not PluginArgs().any_feature_enabled


def test_flags_parse_and_survive_pickling(prepare) -> None:  # type: ignore[no-untyped-def]
    server_args = prepare("--enable-mepic", "--mepic-compat-check", "warn")
    want = PluginArgs(enable_mepic=True, mepic_compat_check="warn")
    assert get_plugin_args(server_args) == want
    # SGLang pickles ServerArgs into the scheduler/detokenizer processes (spawn).
    assert get_plugin_args(pickle.loads(pickle.dumps(server_args))) == want
    assert ATTR.startswith("_"), "ServerArgs only accepts _-prefixed extras after resolution"


def test_conflicting_flags_stop_startup(prepare) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as err:
        prepare("--enable-mepic", "--disable-radix-cache")
    assert "--enable-mepic" in str(err.value) and "--disable-radix-cache" in str(err.value)


def test_strict_compat_refuses_features_on_unsupported_sglang() -> None:
    def drift() -> list[str]:
        return ["sglang 9.9 is installed, mepic-sglang needs 0.5.23"]

    class Record:  # backends already defaulted to mepic by apply_defaults
        attention_backend = "mepic"
        radix_cache_backend = "mepic"

    strict = PluginArgs(enable_mepic=True)
    assert any("--mepic-compat-check" in p for p in strict.problems(Record(), drift))
    warn = PluginArgs(enable_mepic=True, mepic_compat_check="warn")
    assert warn.problems(Record(), drift) == []
    # Without plugin features the plugin must not stop a stock SGLang from starting.
    assert PluginArgs().problems(object(), drift) == []


def test_attach_plugin_args_for_engine_users() -> None:
    class FakeRecord:  # stands in for ServerArgs: only attribute access matters here
        disable_radix_cache = False
        attention_backend: str | None = None

    record = attach_plugin_args(FakeRecord(), enable_mepic=True)
    assert get_plugin_args(record).enable_mepic
    assert record.attention_backend == "mepic", "--enable-mepic selects MEPIC attention"
    with pytest.raises(PluginArgError, match="unknown"):
        attach_plugin_args(FakeRecord(), enable_mepik=True)
    bad = FakeRecord()
    bad.disable_radix_cache = True
    with pytest.raises(PluginArgError, match="--enable-mepic"):
        attach_plugin_args(bad, enable_mepic=True)
    with pytest.raises(PluginArgError, match="--mepic-compat-check"):
        attach_plugin_args(FakeRecord(), mepic_compat_check="loose")


def test_enable_mepic_selects_the_chunk_cache(prepare) -> None:  # type: ignore[no-untyped-def]
    args = prepare("--enable-mepic")
    assert args.radix_cache_backend == "mepic" and args.page_size == 16
    assert get_plugin_args(args).mepic_recompute == "first-page"
    picked = prepare(
        "--enable-mepic", "--mepic-recompute", "first-k-tokens", "--mepic-recompute-k", "5"
    )
    assert get_plugin_args(picked).mepic_recompute_k == 5
    with pytest.raises(SystemExit, match="argument --radix-cache-backend"):
        prepare("--enable-mepic", "--radix-cache-backend", "other")
    with pytest.raises(SystemExit, match="argument --enable-mixed-chunk: not supported"):
        prepare("--enable-mepic", "--enable-mixed-chunk")
    with pytest.raises(SystemExit, match="argument --mepic-recompute-k"):
        prepare("--enable-mepic", "--mepic-recompute-k", "0")


def test_enable_mepic_selects_rope_in_attention(prepare) -> None:  # type: ignore[no-untyped-def]
    assert prepare("--enable-mepic").attention_backend == "mepic"
    assert prepare().attention_backend is None, "no plugin flag: SGLang picks as stock"
    with pytest.raises(SystemExit, match="argument --enable-mepic: needs RoPE applied inside"):
        prepare("--enable-mepic", "--attention-backend", "torch_native")
    with pytest.raises(SystemExit, match="argument --decode-attention-backend"):
        prepare("--attention-backend", "mepic", "--decode-attention-backend", "torch_native")


def test_gpu_attention_backends_are_selectable_and_checked(
    prepare, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Every MEPIC backend name parses; those this machine cannot run are refused by name."""
    from flashinfer_ext.backends import FACTORIES
    from mepic_sglang.model_support import MEPIC_ATTENTION_BACKENDS

    assert tuple(FACTORIES) == MEPIC_ATTENTION_BACKENDS
    assert prepare("--enable-mepic", "--attention-backend", "mepic_torch").attention_backend == (
        "mepic_torch"
    )
    # prefill and decode may use different MEPIC kernels (both read NoPE keys)
    prepare("--enable-mepic", "--prefill-attention-backend", "mepic_torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("the refusals below are for machines without CUDA")
    with pytest.raises(SystemExit, match="argument --attention-backend: mepic_flashinfer needs"):
        prepare("--enable-mepic", "--attention-backend", "mepic_flashinfer")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(SystemExit, match="argument --attention-backend: mepic_triton needs"):
        prepare("--enable-mepic", "--attention-backend", "mepic_triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert prepare("--enable-mepic", "--attention-backend", "mepic_triton").attention_backend == (
        "mepic_triton"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e5}}, "default RoPE only"),
        ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, "GPT2LMHeadModel"),
    ],
)
def test_unsupported_models_are_refused_at_startup(
    prepare, smollm2_path: Path, tmp_path: Path, change: dict, message: str
) -> None:  # type: ignore[no-untyped-def]
    config = json.loads((smollm2_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    from mepic_sglang.model_support import model_problems

    assert any(message in p for p in model_problems(tmp_path))
    assert model_problems(smollm2_path) == []


def test_compat_check_is_clean_on_the_pinned_sglang() -> None:
    assert compat.installed_sglang_version() == compat.PINNED_SGLANG
    assert compat.problems() == []


def test_slo_flags(prepare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    args = prepare("--schedule-policy", "multi-slo", "--slo-classes", "gold:ttft=200,priority=3")
    assert args.schedule_policy == "multi-slo" and args.enable_metrics  # time stats for SLOs
    classes = get_plugin_args(args).slo_defaults().classes
    assert classes is not None and classes["gold"].ttft_ms == 200
    assert not prepare().enable_metrics  # stock unless asked
    bad = [
        (("--schedule-policy", "multi-slo", "--enable-priority-scheduling"),
         "argument --enable-priority-scheduling: cannot be combined"),
        (("--slo-classes", "gold"), "argument --slo-classes: expected"),
        (("--schedule-policy", "multi-slo", "--tp-size", "2"), "argument --tp-size: --schedule"),
        (("--slo-default-ttft-ms", "-1"), "argument --slo-default-ttft-ms: must be in"),
        (("--slo-latency-profile", "p.json"), "needs --schedule-policy multi-slo"),
        (("--schedule-policy", "multi-slo", "--slo-latency-profile", str(tmp_path / "none.json")),
         "argument --slo-latency-profile: cannot read"),
    ]  # fmt: skip
    for argv, message in bad:
        with pytest.raises(SystemExit) as err:
            prepare(*argv)
        assert message in str(err.value), (argv, str(err.value))
    with pytest.raises(SystemExit):  # argparse: not a choice
        prepare("--slo-unattainable", "drop")
