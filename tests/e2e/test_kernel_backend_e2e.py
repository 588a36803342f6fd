"""``--attention-backend mepic_triton`` inside a real SGLang server, against the torch reference.

Two servers on the tiny random Llama (2 layers, head 32, GQA 2): ``mepic`` (torch reference on
CPU) and ``mepic_triton`` with ``TRITON_INTERPRET=1`` (the Triton kernels run in Triton's
interpreter, through the same backend class a GPU uses: per-forward ragged metadata, decode
split-K, MEPIC scratch keys and groups). Both get the same requests; tokens must be equal and the
final hidden states and logprobs equal within float32 noise.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import torch

from disagg import server_info
from tests.helpers.server_utils import ServerHandle, start_server

pytestmark = pytest.mark.server
TOL = 1e-4  # float32; observed ~1e-6
ARGS = ["--enable-mepic", "--enable-return-hidden-states", "--max-total-tokens", "4096"]
DOC_A = "alpha beta gamma delta epsilon " * 9
DOC_B = "the mill stands by the river and grinds grain " * 5
DOC_C = "seven bridges cross the canal in the old town " * 4
DOC_D = "a lighthouse keeper counts ships at dawn " * 4
DOC_E = "bees carry pollen from the orchard to the hive " * 3


@pytest.fixture(scope="module")
def servers(
    tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServerHandle]]:
    logs = tmp_path_factory.mktemp("kernel-backend")
    specs = {
        "torch": (["--attention-backend", "mepic"], None),
        "triton": (["--attention-backend", "mepic_triton"], {"TRITON_INTERPRET": "1"}),
    }
    with ThreadPoolExecutor(2) as pool:
        futures = {
            name: pool.submit(
                start_server, tiny_llama_path, ARGS + extra, logs / f"{name}.log", env
            )
            for name, (extra, env) in specs.items()
        }
        started = {name: f.result() for name, f in futures.items()}
    yield started
    for s in started.values():
        s.stop()


def _generate(server: ServerHandle, body: dict[str, Any]) -> dict[str, Any]:
    full = {
        "sampling_params": {"temperature": 0, "max_new_tokens": 5},
        "return_logprob": True,
        "return_hidden_states": True,
        **body,
    }
    r = requests.post(f"{server.url}/generate", json=full, timeout=600)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def _segments(*docs: str, system: str = "You answer. ", question: str = " Which?") -> Any:
    head = [{"text": system}] if system else []
    return [*head, *({"chunk": d} for d in docs), {"text": question}]


REQUESTS: list[dict[str, Any]] = [
    {"text": "a plain prompt without chunks, served as stock SGLang would"},
    {"text": "", "mepic_segments": _segments(DOC_A)},  # cold chunk: scratch keys + groups
    {"text": "", "mepic_segments": _segments(DOC_B, DOC_A)},  # A warm at a new position
    {"text": "", "mepic_segments": _segments(DOC_A, DOC_B, question=" Why?")},  # both warm
    {"text": "", "mepic_segments": _segments(DOC_C, DOC_A, DOC_B, system="")},
    {"text": "", "mepic_segments": _segments(DOC_D, DOC_A, DOC_E)},  # two cold groups
]


def _compare(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["output_ids"] == b["output_ids"]
    la = torch.tensor([t[0] for t in a["meta_info"]["output_token_logprobs"]])
    lb = torch.tensor([t[0] for t in b["meta_info"]["output_token_logprobs"]])
    assert (la - lb).abs().max().item() <= TOL
    ha, hb = a["meta_info"]["hidden_states"], b["meta_info"]["hidden_states"]
    assert len(ha) == len(hb) > 1
    # NOTE: the prompt's entry covers the tokens this forward computed, which depends on what was
    # cached (batch order); its last row (the prompt's last token) and every decode step do not.
    for x, y in zip([ha[0][-1], *ha[1:]], [hb[0][-1], *hb[1:]], strict=True):
        diff = (torch.tensor(x) - torch.tensor(y)).abs().max().item()
        assert diff <= TOL * max(1.0, torch.tensor(x).abs().max().item()), diff


def test_triton_backend_matches_torch_reference(servers: dict[str, ServerHandle]) -> None:
    """One request at a time: cold and warm chunks, reordered, with and without system text."""
    for body in REQUESTS:
        got = {name: _generate(s, body) for name, s in servers.items()}
        _compare(got["torch"], got["triton"])
        chunks = sum("chunk" in seg for seg in body.get("mepic_segments", []))
        if chunks:
            assert got["triton"]["meta_info"]["mepic"]["chunks"] == chunks


def test_triton_backend_batched(servers: dict[str, ServerHandle]) -> None:
    """Concurrent requests: ragged extends mixing MEPIC and plain requests, batched decode."""
    bodies = [
        {"text": "", "mepic_segments": _segments(DOC_B, DOC_C), "cache_salt": "batch"},
        {"text": "another plain prompt, longer than the first one by a few words"},
        {"text": "", "mepic_segments": _segments(DOC_A, DOC_C), "cache_salt": "batch"},
        {"text": "", "mepic_segments": _segments(DOC_C), "cache_salt": "batch2"},
    ]
    got: dict[str, list[dict[str, Any]]] = {}
    for name, server in servers.items():
        with ThreadPoolExecutor(len(bodies)) as pool:
            got[name] = list(pool.map(lambda b, s=server: _generate(s, b), bodies))
    for a, b in zip(got["torch"], got["triton"], strict=True):
        _compare(a, b)
    info = requests.get(f"{servers['triton'].url}/server_info", timeout=60).json()
    state = server_info.plugin_section(info)
    assert state["chunks"]["integrity"] == "ok"
    forwards = state["attention"]["forwards"]
    assert state["attention"]["backend"] == "MepicKernelAttnBackend"
    assert forwards.get("triton", 0) > 0 and "flashinfer" not in forwards, forwards
