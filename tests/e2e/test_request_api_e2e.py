"""MEPIC request API on the real server: chunk segments, separator mode, clear 400s.

Uses the module's own server (``--enable-mepic --mepic-chunk-separator " # # "``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from mepic_sglang.chunks.layout import build_layout
from tests.helpers.server_utils import ServerHandle, start_server

pytestmark = pytest.mark.server
SEP = " # # "
PAGE = 16
DOC_FACT = "The capital of Zorblat is Quintar. Zorblat is famous for its blue salt mines."
DOC_FILLER = "The river winds past old stone mills and quiet orchards in the late autumn light."
QUESTION = "\nQuestion: What is the capital of Zorblat?\nAnswer: The capital of Zorblat is"


@pytest.fixture(scope="module")
def server(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    handle = start_server(
        smollm2_path,
        ["--enable-mepic", "--mepic-chunk-separator", SEP],
        log_path=tmp_path_factory.mktemp("mepic-api-server") / "server.log",
    )
    yield handle
    assert handle.stop() == []


@pytest.fixture(scope="module")
def tokenizer(smollm2_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


def _generate(server: ServerHandle, **body: Any) -> requests.Response:
    body.setdefault("sampling_params", {"temperature": 0, "max_new_tokens": 8})
    return requests.post(f"{server.url}/generate", json=body, timeout=600)


SEGMENTS = [
    {"text": "Context:\n"},
    {"chunk": DOC_FILLER},
    {"chunk": DOC_FACT},
    {"text": QUESTION},
]


def _expected_ids(tokenizer: Any) -> list[int]:
    """The layout computed here, independently of the server's hook."""
    enc = [tokenizer.encode(next(iter(s.values())), add_special_tokens=False) for s in SEGMENTS]
    kinds = [next(iter(s)) for s in SEGMENTS]
    (pad,) = tokenizer.encode("\n", add_special_tokens=False)
    return list(
        build_layout(list(zip(kinds, enc, strict=True)), page_size=PAGE, pad_id=pad).token_ids
    )


def test_segments_are_laid_out_on_pages_and_answered(server: ServerHandle, tokenizer: Any) -> None:
    out = _generate(server, mepic_segments=SEGMENTS)
    assert out.status_code == 200, out.text
    data = out.json()
    expected = _expected_ids(tokenizer)
    meta = data["meta_info"]
    mepic = meta["mepic"]
    assert {k: mepic[k] for k in ("chunks", "page_size")} == {"chunks": 2, "page_size": 16}
    assert mepic["shared_tokens"] + mepic["prefix_tokens"] == meta["cached_tokens"]
    assert mepic["recomputed_tokens"] == len(expected) - meta["cached_tokens"]
    assert mepic["computed_tokens"] >= mepic["recomputed_tokens"]
    assert meta["prompt_tokens"] == len(expected)
    assert meta["mepic"]["pad_tokens"] == len(expected) - sum(
        len(tokenizer.encode(next(iter(s.values())), add_special_tokens=False)) for s in SEGMENTS
    )
    # NOTE: no answer-quality assertion here: padding changes what a 135M model reads (measured
    # in docs/benchmarks.md); this test checks that the server applies exactly this layout.
    # (Chunks are encoded on their own, so the answer is not that of a plain prefill of the same
    # ids; tests/e2e/test_chunk_cache_e2e.py checks the chunk cache.)


def test_separator_mode_in_openai_completions(server: ServerHandle, tokenizer: Any) -> None:
    prompt = "Context:\n" + SEP + DOC_FILLER + SEP + DOC_FACT + SEP + QUESTION
    body = {"model": "m", "prompt": prompt, "max_tokens": 8, "temperature": 0}
    out = requests.post(f"{server.url}/v1/completions", json=body, timeout=600)
    assert out.status_code == 200, out.text
    assert out.json()["usage"]["prompt_tokens"] == len(_expected_ids(tokenizer))
    # The same layout marked with mepic_segments gives the same answer (chunks cold or warm).
    segmented = _generate(server, mepic_segments=SEGMENTS).json()
    assert out.json()["choices"][0]["text"] == segmented["text"]


def test_segments_through_openai_extra_body(server: ServerHandle, tokenizer: Any) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    # The prompt repeats the segments' text: a server without MEPIC would serve it unsegmented.
    prompt = "".join(next(iter(s.values())) for s in SEGMENTS)
    reply = client.completions.create(
        model="m",
        prompt=prompt,
        max_tokens=8,
        temperature=0,
        extra_body={"mepic_segments": SEGMENTS},
    )
    assert reply.usage is not None and reply.usage.prompt_tokens == len(_expected_ids(tokenizer))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"mepic_segments": []}, "non-empty list"),
        ({"mepic_segments": [{"chunk": "a", "text": "b"}]}, "mepic_segments[0]: needs exactly one"),
        ({"mepic_segments": [{"chunk_ids": ["x"]}]}, "mepic_segments[0].chunk_ids: token id 'x'"),
        ({"mepic_segments": [{"chunk": "doc"}], "text": "other text"}, "exactly the concatenation"),
        ({"mepic_segments": [{"chunk_ids": [5]}], "text": "x"}, "exactly the concatenation"),
        ({"mepic_segments": [{"chunk": "doc"}], "input_ids": [1, 2]}, "no input_ids"),
        ({"text": "a # #  # # b"}, "empty chunk"),
    ],
)
def test_bad_segments_get_400_and_the_server_keeps_serving(
    server: ServerHandle, body: dict[str, Any], message: str
) -> None:
    out = _generate(server, **body)
    assert out.status_code == 400, out.text
    assert message in out.json()["error"]["message"]
    assert _generate(server, text="Hello").status_code == 200


def test_a_chunked_prompt_longer_than_the_default_prefill_step_gets_400(
    server: ServerHandle, tokenizer: Any
) -> None:
    # Issue 17: without --chunked-prefill-size the limit was read from an unset launcher-side
    # field, and such a prompt was served as a plain prompt with its padding and no sharing.
    info = requests.get(f"{server.url}/server_info", timeout=60).json()
    limit = int(info["chunked_prefill_size"])  # the value the scheduler resolved (CPU: 4096)
    assert "--chunked-prefill-size" not in info["launch_command"]
    doc = " ".join(f"Line {i} of the manual says to check valve {i * 7 % 97}." for i in range(60))
    per_chunk = len(tokenizer.encode(doc, add_special_tokens=False))
    n = limit // per_chunk + 2
    segments = [{"chunk": f"Part {i}. {doc}"} for i in range(n)] + [{"text": "\nSummary:"}]
    out = _generate(server, mepic_segments=segments)
    assert out.status_code == 400, out.text[:300]
    message = out.json()["error"]["message"]
    assert f"must fit --chunked-prefill-size ({limit})" in message, message
    assert _generate(server, mepic_segments=segments[-3:]).status_code == 200


def test_health_probe_and_warmup_pass_through_the_hook(server: ServerHandle) -> None:
    # /health_generate hands its GET request (no body) to generate_request.
    for _ in range(2):
        assert requests.get(f"{server.url}/health_generate", timeout=120).status_code == 200


def test_unmarked_prompts_are_untouched(server: ServerHandle, tokenizer: Any) -> None:
    data = _generate(server, text="The capital of France is").json()
    assert "mepic" not in data["meta_info"]
    assert data["meta_info"]["prompt_tokens"] == len(tokenizer.encode("The capital of France is"))
