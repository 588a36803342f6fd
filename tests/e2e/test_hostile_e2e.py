"""A client must never crash, stall or spy on the server (issue 17): the exact reproductions of a
hostile-input run as regression tests, a pool-pressure test, and a property-based hostile-input
suite, all against one real MEPIC server with a small pool (``--max-total-tokens 4096``, as in the
run that found them) and an admin API key.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from disagg import server_info
from mepic_sglang.chunks.segments import parse_segments
from mepic_sglang.sglang.request_api import layout_segments
from tests.helpers.server_utils import ServerHandle, start_server

pytestmark = pytest.mark.server
POOL = 4096
PAGE = 16
VOCAB = 49152  # SmolLM2
ADMIN_KEY = "admin-secret-for-tests"
# NOTE: ~0.3 s an example on 2 CPU cores; MEPIC_FUZZ_EXAMPLES=2000 for a longer local run
FUZZ_EXAMPLES = int(os.environ.get("MEPIC_FUZZ_EXAMPLES", "300"))
OUTCOMES: Counter[str] = Counter()  # filled by the hostile-input suite, checked at the end


@pytest.fixture(scope="module")
def server(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    handle = start_server(
        smollm2_path,
        ["--enable-mepic", "--max-total-tokens", str(POOL), "--admin-api-key", ADMIN_KEY],
        log_path=tmp_path_factory.mktemp("hostile-server") / "server.log",
    )
    yield handle
    assert handle.stop() == []


@pytest.fixture(scope="module")
def tokenizer(smollm2_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


def post(server: ServerHandle, body: Any, path: str = "/generate", **kw: Any) -> requests.Response:
    return requests.post(f"{server.url}{path}", json=body, timeout=kw.pop("timeout", 300), **kw)


SP8 = {"max_new_tokens": 8, "temperature": 0}


def gen(server: ServerHandle, text: str, n: int) -> requests.Response:
    return post(server, {"text": text, "sampling_params": {"max_new_tokens": n, "temperature": 0}})


def healthy(server: ServerHandle) -> bool:
    return requests.get(f"{server.url}/health_generate", timeout=120).status_code == 200


def plugin_state(server: ServerHandle, admin: bool = False) -> Any:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"} if admin else {}
    info = requests.get(f"{server.url}/server_info", headers=headers, timeout=60).json()
    return info, server_info.plugin_section(info)


def laid_out_len(tokenizer: Any, segments: list[dict[str, Any]]) -> int:
    return len(layout_segments(tokenizer, parse_segments(segments), page_size=PAGE).token_ids)


def wait_clean(server: ServerHandle, timeout_s: float = 120) -> Any:
    """Idle: no request holds KV, no chunk is referenced; returns the chunk state."""
    deadline = time.monotonic() + timeout_s
    while True:
        chunks = plugin_state(server)[1]["chunks"]
        idle = not chunks["running"] and chunks["store"]["referenced_chunks"] == 0
        if idle or time.monotonic() > deadline:
            return chunks
        time.sleep(0.3)


def assert_pool_clean(server: ServerHandle) -> None:
    chunks = wait_clean(server)
    assert chunks["integrity"] == "ok", chunks["integrity"]
    pages = chunks["pages"]
    assert pages["private"] == 0 and pages["scratch"] == 0, pages
    assert pages["free"] + pages["radix"] + pages["shared"] == POOL // PAGE, pages


VOCAB_WORDS = "amber basalt cedar delta ember fjord garnet harbor indigo juniper kelp lagoon"


def words(seed: int, n: int) -> str:
    vocab = VOCAB_WORDS.split()
    return " ".join(f"{vocab[(seed * 7 + i * 5) % len(vocab)]}{i % 17}" for i in range(n))


class Stream:
    """A streaming /generate held open in a thread: ``first`` is set at its first token."""

    def __init__(self, server: ServerHandle, body: dict[str, Any]) -> None:
        self.first = threading.Event()
        self.events: list[Any] = []
        self.status: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(server, body), daemon=True)
        self._thread.start()

    def _run(self, server: ServerHandle, body: dict[str, Any]) -> None:
        with requests.post(
            f"{server.url}/generate", json={**body, "stream": True}, stream=True, timeout=600
        ) as r:
            self.status = r.status_code
            for line in r.iter_lines():
                if line.startswith(b"data: {"):
                    self.events.append(json.loads(line[6:]))
                    self.first.set()
                if self._stop.is_set():
                    break  # closing the connection aborts the request

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


# ---- 1. crashes: ids outside the vocabulary, huge ids, a list as cache_salt -------------------
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (  # killed every server process (IndexError in the scheduler, then SIGQUIT)
            {"mepic_segments": [{"chunk_ids": [5, VOCAB]}, {"text": "Q?"}]},
            f"mepic_segments[0].chunk_ids: token id {VOCAB} at index 1",
        ),
        ({"mepic_segments": [{"text_ids": [1000000]}]}, "text_ids: token id 1000000 at index 0"),
        (  # HTTP 500 (OverflowError in SGLang's array("q", ...))
            {"mepic_segments": [{"chunk_ids": [5, 2**63]}, {"text": "Q?"}]},
            "chunk_ids: token id 9223372036854775808 at index 1",
        ),
        (  # HTTP 500 (the chunk key hashed the salt as a string)
            {"mepic_segments": [{"chunk": "A doc."}, {"text": "Q?"}], "cache_salt": ["a"]},
            "cache_salt: expected a string, got ['a']",
        ),
        ({"input_ids": [1, 2, VOCAB]}, f"input_ids: token id {VOCAB} at index 2"),
        ({"input_ids": [[1, 2], [3, -4]]}, "input_ids: token id -4 at index 1"),
        ({"input_ids": [2**63 - 1]}, "input_ids: token id 9223372036854775807 at index 0"),
        # found by the hostile-input suite: a 0-token forward killed the server (stock SGLang too)
        ({"text": ""}, "the prompt is empty"),
        ({"text": ["Hi", ""]}, "the prompt is empty"),
    ],
)
def test_hostile_ids_get_400_and_the_server_keeps_serving(
    server: ServerHandle, body: dict[str, Any], message: str
) -> None:
    r = post(server, {**body, "sampling_params": {"max_new_tokens": 2}})
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"]
    assert healthy(server)


def test_openai_token_prompt_outside_the_vocabulary_gets_400(server: ServerHandle) -> None:
    body = {"model": "m", "prompt": [1, 2, 70000], "max_tokens": 2}
    r = post(server, body, "/v1/completions")
    assert r.status_code == 400 and "token id 70000 at index 2" in r.text, r.text
    assert healthy(server)


def test_a_rejected_streaming_request_logs_no_traceback(server: ServerHandle) -> None:
    start = server.log_path.stat().st_size
    body = {
        "mepic_segments": [{"chunk": "A doc."}],
        "stream": True,
        "sampling_params": {"max_new_tokens": 2, "custom_params": {"mepic_x": 1}},
    }
    r = post(server, body)
    assert r.status_code == 200 and "reserved for the plugin" in r.text, r.text
    time.sleep(3)  # SGLang's background abort task runs 2 s after the response
    with server.log_path.open("rb") as log:
        log.seek(start)
        tail = log.read().decode(errors="replace")
    assert "is_single" not in tail and "Traceback" not in tail, tail[-2000:]


# ---- 2. stalls: chunked requests whose extra KV could never fit the pool -------------------
def test_two_long_chunks_with_a_long_output_do_not_stall_the_queue(
    server: ServerHandle, tokenizer: Any
) -> None:
    """Repro: two ~1,000-token chunks with max_new_tokens 3000 on a 4,096-token pool were never
    admitted, and every request behind them waited (the same prompt unsegmented: 2.6 s)."""
    segments = [{"chunk": words(1, 400)}, {"chunk": words(2, 400)}, {"text": "Summarise."}]
    length = laid_out_len(tokenizer, segments)
    # SGLang caps max_new_tokens so that prompt + output fill the pool: no room for scratch heads
    assert length > 1800 and length + 3000 > POOL
    before = wait_clean(server)["store"]
    big = Stream(server, {"mepic_segments": segments, "sampling_params": {"max_new_tokens": 3000}})
    try:
        assert big.first.wait(120), "the chunked request was never admitted"
        t0 = time.monotonic()
        small = gen(server, "The capital of France is", 4)
        assert small.status_code == 200 and time.monotonic() - t0 < 60
    finally:
        big.close()
    assert big.status == 200 and "error" not in big.events[0]
    after = wait_clean(server)["store"]
    assert after["in_context"] - before["in_context"] == 2  # computed in context, not published
    assert_pool_clean(server)


def test_many_small_cold_chunks_do_not_stall_the_queue(
    server: ServerHandle, tokenizer: Any
) -> None:
    """Repro: 84 small cold chunks with max_new_tokens 8 (plain: served in 5.2 s) were never
    admitted: their scratch heads pushed the request past the pool."""
    segments = [{"text": "Facts, one per line, each with its code word. " + words(3, 12) + "\n"}]
    facts = [
        f"Fact {i}: the code word number {i} is w{i * 7919 % 10007}, keep it." for i in range(84)
    ]
    # every chunk spans two pages: one recomputed head page, one shared page (scratch: one page)
    assert all(PAGE < len(tokenizer.encode(f, add_special_tokens=False)) <= 2 * PAGE for f in facts)
    segments += [{"chunk": f} for f in facts] + [{"text": "\nWhat is code word 3?"}]
    length = laid_out_len(tokenizer, segments)
    old_need = length + 84 * PAGE + 8 + 2 * PAGE + 1  # laid out + scratch heads + output + slack
    assert old_need > POOL >= length + 8 + 2 * PAGE + 1, (length, old_need)
    with ThreadPoolExecutor(2) as pool:
        big = pool.submit(post, server, {"mepic_segments": segments, "sampling_params": SP8})
        time.sleep(0.5)
        small = pool.submit(gen, server, "Hello", 4)
        assert small.result().status_code == 200
        out = big.result()
    assert out.status_code == 200, out.text
    assert out.json()["meta_info"]["mepic"]["chunks"] == 84
    assert_pool_clean(server)


def test_pool_pressure_requests_that_fit_are_served(server: ServerHandle, tokenizer: Any) -> None:
    """Next to a chunked request that can never fit as asked (served with cold chunks computed in
    context) and one longer than the pool (refused at once), small chunked and plain requests are
    all served, and the pool ends clean."""
    never = [{"chunk": words(4, 400)}, {"chunk": words(5, 400)}, {"text": "Go on."}]
    too_long = [{"chunk": words(6, 900)} for _ in range(3)] + [{"text": "?"}]
    assert laid_out_len(tokenizer, too_long) > POOL
    shared = {"chunk": "The lighthouse on Quill Point was built in 1871 by Mara Vell."}
    smalls = [
        {"mepic_segments": [{"text": "Doc:\n"}, shared, {"text": f"\nQuestion {i}: who built it?"}]}
        for i in range(3)
    ] + [{"text": f"Count to {i}:"} for i in range(3)]
    big = Stream(server, {"mepic_segments": never, "sampling_params": {"max_new_tokens": 3000}})
    try:
        assert big.first.wait(120)
        refused = post(server, {"mepic_segments": too_long, "sampling_params": SP8})
        assert refused.status_code == 400, refused.text
        t0 = time.monotonic()
        with ThreadPoolExecutor(6) as pool:
            outs = list(
                pool.map(
                    lambda b: post(server, {**b, "sampling_params": {"max_new_tokens": 6}}), smalls
                )
            )
        assert [o.status_code for o in outs] == [200] * 6, [o.text[:200] for o in outs]
        assert time.monotonic() - t0 < 90
    finally:
        big.close()
    assert_pool_clean(server)


# ---- 3. tenant isolation: no request ids and no secrets in /server_info --------------------
def test_server_info_shows_request_ids_only_to_the_admin_and_no_secrets(
    server: ServerHandle,
) -> None:
    long = {"max_new_tokens": 400, "ignore_eos": True}
    held = Stream(server, {"text": "Tell a long story:", "sampling_params": long})
    try:
        assert held.first.wait(60)
        info, anonymous = plugin_state(server)
        _, admin = plugin_state(server, admin=True)
    finally:
        held.close()
    assert anonymous["chunks"]["running"] and admin["chunks"]["running"]
    assert all("rid" not in r for r in anonymous["chunks"]["running"])
    assert all(isinstance(r["rid"], str) for r in admin["chunks"]["running"])
    text = json.dumps(info)
    assert ADMIN_KEY not in text, "the admin key leaked through /server_info"
    assert info["admin_api_key"] == "<redacted>"
    wrong = requests.get(
        f"{server.url}/server_info", headers={"Authorization": "Bearer guess"}, timeout=60
    ).json()
    running = server_info.plugin_section(wrong)["chunks"]["running"]
    assert all("rid" not in r for r in running)


# ---- 4. the hostile-input suite --------------------------------------------------------------
_TOKEN = st.one_of(
    st.integers(0, VOCAB - 1),
    st.sampled_from([VOCAB, VOCAB + 1, 10**6, 2**31, 2**63 - 1, 2**63, 2**64, -1, -(2**63)]),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=3),
    st.none(),
)
_IDS = st.lists(_TOKEN, max_size=6)
_TEXT = st.text(max_size=40)
_ITEM = st.one_of(
    st.builds(lambda t: {"text": t}, _TEXT),
    st.builds(lambda t: {"chunk": t}, _TEXT),
    st.builds(lambda t: {"chunk": t}, st.sampled_from([words(7, 60), words(8, 60)])),  # reused
    st.builds(lambda v: {"chunk_ids": v}, _IDS),
    st.builds(lambda v: {"text_ids": v}, _IDS),
    st.dictionaries(
        st.sampled_from(["text", "chunk", "chunk_ids", "text_ids", "doc"]),
        st.one_of(_TEXT, _IDS, st.integers()),
        max_size=2,
    ),
    _TEXT,
    st.integers(),
    st.none(),
)
_SEGMENTS = st.one_of(st.lists(_ITEM, max_size=6), st.lists(_ITEM, max_size=1), _TEXT, st.none())
_VALUE = st.one_of(
    st.none(),
    st.floats(-1e9, 1e12, allow_nan=False),
    st.integers(-10, 10**12),
    _TEXT,
    st.booleans(),
    st.lists(st.integers(0, 5), max_size=2),
)
_CUSTOM = st.one_of(
    st.none(),
    _TEXT,
    st.dictionaries(
        st.sampled_from(
            ["slo_ttft_ms", "slo_tpot_ms", "slo_class", "slo_arrival", "mepic_regions", "user"]
        ),
        _VALUE,
        max_size=3,
    ),
)
# NOTE: no spaces: an HTTP client refuses a header value with leading whitespace
_HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=12)
_HEADERS = st.dictionaries(
    st.sampled_from(["x-slo-ttft-ms", "x-slo-tpot-ms", "x-slo-class"]), _HEADER_TEXT, max_size=2
)
_SALT = st.one_of(
    st.none(),
    _TEXT,
    st.sampled_from(["tenant-a", "tenant-b"]),
    st.lists(_TEXT, max_size=2),
    st.integers(),
    st.dictionaries(_TEXT, _TEXT, max_size=1),
)


def _hostile(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "mepic_segments": _SEGMENTS,
                "text": _TEXT,
                "input_ids": _IDS,
                "cache_salt": _SALT,
                "stream": st.booleans(),
                "priority": st.one_of(st.integers(-5, 5), _TEXT),
            },
        )
    )
    sampling: dict[str, Any] = {"max_new_tokens": draw(st.integers(0, 3)), "temperature": 0}
    custom = draw(_CUSTOM)
    if custom is not None:
        sampling["custom_params"] = custom
    body["sampling_params"] = sampling
    return body


_DOCS = [words(k, 50) for k in range(6)]  # reused across examples: warm chunks, evictions
_GOOD_ITEM = st.one_of(
    st.builds(lambda k: {"chunk": _DOCS[k]}, st.integers(0, len(_DOCS) - 1)),
    st.builds(lambda t: {"text": t}, st.sampled_from(["Context:\n", "\nQ: what is listed?", "Hi"])),
    st.builds(
        lambda v: {"chunk_ids": v}, st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=40)
    ),
    st.builds(
        lambda v: {"text_ids": v}, st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=5)
    ),
)


def _valid(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.integers(0, 3)):
        body: dict[str, Any] = {
            "mepic_segments": draw(st.lists(_GOOD_ITEM, min_size=1, max_size=5))
        }
    else:
        body = {"text": draw(st.sampled_from(["The capital of France is", "Once upon a time"]))}
    salt = draw(st.sampled_from([None, "tenant-a", "tenant-b"]))
    if salt is not None:
        body["cache_salt"] = salt
    body["stream"] = draw(st.booleans())
    sampling: dict[str, Any] = {"max_new_tokens": draw(st.integers(1, 4)), "temperature": 0}
    if draw(st.booleans()):
        sampling["custom_params"] = {"slo_ttft_ms": draw(st.floats(1, 1e6)), "user": "x"}
    body["sampling_params"] = sampling
    return body


def _break_one_field(draw: st.DrawFn, body: dict[str, Any]) -> dict[str, Any]:
    """A valid request with one field made hostile."""
    field = draw(st.sampled_from(["segment", "salt", "slo", "ids"]))
    if field == "segment" and "mepic_segments" in body:
        segs = list(body["mepic_segments"])
        segs[draw(st.integers(0, len(segs) - 1))] = draw(_ITEM)
        return {**body, "mepic_segments": segs}
    if field == "salt":
        return {**body, "cache_salt": draw(_SALT.filter(lambda v: not isinstance(v, str)))}
    if field == "slo":
        return {
            **body,
            "sampling_params": {**body["sampling_params"], "custom_params": draw(_CUSTOM)},
        }
    bad = draw(st.sampled_from([VOCAB, -1, 2**63, 1.5, "7"]))
    return {**body, "input_ids": [1, 2, bad], "text": None, "mepic_segments": None}


@st.composite
def requests_to_try(draw: st.DrawFn) -> tuple[str, dict[str, Any], dict[str, str], bool]:
    """(kind, body, headers, abort after the first streamed event)."""
    kind = draw(st.sampled_from(["valid", "valid", "near", "hostile"]))
    if kind == "hostile":
        return kind, _hostile(draw), draw(_HEADERS), False
    body = _valid(draw)
    if kind == "near":
        return kind, _break_one_field(draw, body), draw(_HEADERS), False
    return kind, body, {}, bool(body["stream"]) and draw(st.booleans())


def _chunk_count(body: dict[str, Any]) -> int | None:
    segs = body.get("mepic_segments")
    if not isinstance(segs, list):
        return None
    return sum(1 for s in segs if isinstance(s, dict) and ("chunk" in s or "chunk_ids" in s))


def _check_reply(body: dict[str, Any], r: requests.Response) -> str:
    assert r.status_code < 500, (body, r.status_code, r.text[:500])
    if r.status_code >= 400:
        assert len(r.text) > 10, (body, r.text)  # a message, not an empty error
        return f"{r.status_code}"
    if body.get("stream"):
        events = [ln for ln in r.text.splitlines() if ln.startswith("data: ")]
        assert events and events[-1] == "data: [DONE]", (body, r.text[:500])
        payloads = [json.loads(e[6:]) for e in events[:-1]]
        errors = [p["error"] for p in payloads if "error" in p]
        if errors:
            assert all(e["message"] and int(e["code"]) < 500 for e in errors), (body, errors)
            return "stream-4xx"
        out = payloads[-1]
    else:
        out = r.json()
    assert isinstance(out["text"], str), (body, out)
    meta = out["meta_info"]
    assert meta["completion_tokens"] <= body["sampling_params"]["max_new_tokens"] or (
        body["sampling_params"]["max_new_tokens"] == 0 and meta["completion_tokens"] <= 1
    ), (body, meta)
    if (n := _chunk_count(body)) is not None and "mepic" in meta:
        assert meta["mepic"]["chunks"] == n, (body, meta["mepic"])
    return "200"


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("MEPIC_FUZZ_RANDOM"),  # the same inputs on every CI run
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(attempt=requests_to_try())
def test_hostile_inputs_get_an_answer_or_a_4xx(
    server: ServerHandle, attempt: tuple[str, dict[str, Any], dict[str, str], bool]
) -> None:
    kind, body, headers, abort_early = attempt
    if abort_early:  # a client that leaves mid-stream: the request is aborted
        with requests.post(
            f"{server.url}/generate", json=body, headers=headers, stream=True, timeout=120
        ) as r:
            assert r.status_code == 200
            next(r.iter_lines(), None)
        OUTCOMES["aborted"] += 1
    else:
        r = post(server, body, headers=headers, timeout=120)
        outcome = _check_reply(body, r)
        if kind == "valid":
            assert outcome == "200", (body, r.text[:500])  # a valid request is served
        OUTCOMES[outcome] += 1
    # after every input: the scheduler answers and its pool passes the integrity check
    chunks = plugin_state(server)[1]["chunks"]
    assert chunks["integrity"] == "ok", (body, chunks["integrity"])


def test_after_the_hostile_inputs_the_server_serves_and_the_pool_is_clean(
    server: ServerHandle,
) -> None:
    if OUTCOMES:  # NOTE: empty when this test runs without the suite (-k)
        assert sum(OUTCOMES.values()) >= FUZZ_EXAMPLES, OUTCOMES
        assert OUTCOMES["200"] >= FUZZ_EXAMPLES // 4, OUTCOMES
        assert OUTCOMES["400"] >= FUZZ_EXAMPLES // 10, OUTCOMES
        print(f"hostile-input outcomes: {dict(OUTCOMES)}")
    assert healthy(server)
    out = gen(server, "The capital of France is", 4)
    assert out.status_code == 200 and "Paris" in out.json()["text"], out.text
    assert_pool_clean(server)
