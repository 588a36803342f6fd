"""P/D hook functions that need no server (the P/D runs are in tests/e2e/test_pd_e2e.py)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from mepic_sglang.sglang import pd_hooks


def test_decode_first_token_time_is_when_the_prebuilt_batch_ran() -> None:
    stats = SimpleNamespace(prefill_finished_time=0.0, decode_prebuilt_finish_time=12.5)
    pd_hooks.after_decode_prebuilt(None, stats)
    assert stats.prefill_finished_time == 12.5
    stats = SimpleNamespace(prefill_finished_time=3.0, decode_prebuilt_finish_time=12.5)
    pd_hooks.after_decode_prebuilt(None, stats)
    assert stats.prefill_finished_time == 3.0  # a time SGLang set is kept


def test_cpu_defaults_for_a_decode_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in (pd_hooks.PROTOCOL_ENV, pd_hooks.HOST_IP_ENV, pd_hooks.EARLY_SEND_ENV):
        monkeypatch.setenv(env, "x")  # NOTE: recorded, so the test's writes are undone after it
        monkeypatch.delenv(env)
    args = SimpleNamespace(device="cpu", host="localhost", disaggregation_mode="decode",
                           disaggregation_decode_retraction_backup=None)  # fmt: skip
    pd_hooks.apply_cpu_defaults(args)
    assert args.disaggregation_decode_retraction_backup == "cpu_tensor"
    assert os.environ[pd_hooks.EARLY_SEND_ENV] == "0"
    assert os.environ[pd_hooks.HOST_IP_ENV] == "127.0.0.1"
    assert pd_hooks.PROTOCOL_ENV not in os.environ  # no weight transfer asked for


def test_no_defaults_for_a_plain_or_a_gpu_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pd_hooks.EARLY_SEND_ENV, "x")
    monkeypatch.delenv(pd_hooks.EARLY_SEND_ENV)
    pd_hooks.apply_cpu_defaults(SimpleNamespace(device="cpu", host="127.0.0.1"))
    gpu = SimpleNamespace(device="cuda", host="127.0.0.1", disaggregation_mode="prefill")
    pd_hooks.apply_cpu_defaults(gpu)
    assert pd_hooks.EARLY_SEND_ENV not in os.environ
