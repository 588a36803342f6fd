"""MEPIC chunk caching on the real server (SmolLM2, CPU): sharing, exactness, accounting, fuzz.

One module server: ``--enable-mepic`` with a small pool (evictions happen), Prometheus metrics,
and SGLang's strict pool-invariant check on every busy step
(``SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY``), so a leaked or double-counted page anywhere in
these tests fails the scheduler. Every test uses its own ``cache_salt``, so chunk entries made
by one test never serve another.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from disagg import server_info
from mepic_sglang.chunks.segments import parse_segments
from mepic_sglang.sglang.request_api import layout_segments
from tests.helpers.server_utils import ServerHandle, start_server

pytestmark = pytest.mark.server
PAGE = 16
POOL_TOKENS = 2048
CHUNKED_PREFILL = 1024
DOCS = {
    "zorblat": "Zorblat is a small island nation in the northern sea. Its capital city is "
    "Quintar, a harbour town known for its blue roofs and its annual kite festival.",
    "lighthouse": "The old lighthouse on the cliff was built in 1887 by the engineer Mara Vell. "
    "It is painted red and white and its lamp can be seen from thirty kilometres away.",
    "mills": "The river winds past old stone mills and quiet orchards in the late autumn light, "
    "where farmers press apples into cider and sell it at the Saturday market.",
    "comet": "A bright comet was seen over the southern hills last winter. Astronomers at the "
    "valley observatory tracked it for six weeks before it faded from view.",
    "bakery": "The corner bakery opens at five every morning. Its rye loaves and cinnamon rolls "
    "sell out before nine, and the queue often reaches the end of the street.",
    "glacier": "The glacier above the village has retreated two kilometres in a century. Guides "
    "now lead visitors across the moraine to the new blue ice caves.",
}
SYSTEM = (
    "<|im_start|>system\nAnswer the question using the documents.<|im_end|>\n<|im_start|>user\n"
)
QUESTION = "Question: What is the capital of Zorblat?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def server(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    handle = start_server(
        smollm2_path,
        [
            "--enable-mepic",
            "--enable-metrics",
            "--max-total-tokens",
            str(POOL_TOKENS),
            "--chunked-prefill-size",
            str(CHUNKED_PREFILL),
        ],  # fmt: skip
        log_path=tmp_path_factory.mktemp("mepic-chunk-server") / "server.log",
        env={"SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY": "1"},
    )
    yield handle
    assert handle.stop() == []


@pytest.fixture(scope="module")
def tokenizer(smollm2_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


def segs(*chunks: str, system: str = SYSTEM, question: str = QUESTION) -> list[dict[str, str]]:
    out = [{"text": system}] if system else []
    return out + [{"chunk": DOCS[c]} for c in chunks] + [{"text": question}]


def generate(server: ServerHandle, segments: Any, salt: str, n: int = 12, **extra: Any) -> Any:
    body = {
        "text": "",
        "mepic_segments": segments,
        "cache_salt": salt,
        "sampling_params": {"temperature": 0, "max_new_tokens": n, **extra.pop("sp", {})},
        "return_logprob": True,
        **extra,
    }
    r = requests.post(f"{server.url}/generate", json=body, timeout=600)
    assert r.status_code == 200, r.text
    return r.json()


def plain(server: ServerHandle, ids: list[int], n: int = 12) -> Any:
    body = {
        "input_ids": ids,
        "sampling_params": {"temperature": 0, "max_new_tokens": n},
        "return_logprob": True,
    }
    r = requests.post(f"{server.url}/generate", json=body, timeout=600)
    assert r.status_code == 200, r.text
    return r.json()


def layout_ids(tokenizer: Any, segments: Any) -> list[int]:
    return list(layout_segments(tokenizer, parse_segments(segments), page_size=PAGE).token_ids)


def tokens(out: Any) -> list[int]:
    return [t[1] for t in out["meta_info"]["output_token_logprobs"]]


def logprobs(out: Any) -> list[float]:
    return [t[0] for t in out["meta_info"]["output_token_logprobs"]]


def shared_pages_of(tokenizer: Any, name: str) -> int:
    """Pages of a chunk that are shared under first-page recompute."""
    n = len(tokenizer.encode(DOCS[name], add_special_tokens=False))
    return -(-n // PAGE) - 1


def chunk_state(server: ServerHandle) -> Any:
    info = requests.get(f"{server.url}/server_info", timeout=60).json()
    return server_info.plugin_section(info)["chunks"]


def wait_idle(server: ServerHandle, timeout_s: float = 120) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = chunk_state(server)
        if not state["running"]:
            return state
        time.sleep(0.2)
    raise TimeoutError(state)


def test_chunk_first_request_equals_plain_prefill(server: ServerHandle, tokenizer: Any) -> None:
    """Nothing precedes the chunk, so MEPIC (cold and warm) must equal a plain prefill."""
    s = segs("lighthouse", system="")
    ids = layout_ids(tokenizer, s)
    ref = plain(server, ids)
    cold = generate(server, s, "first")
    warm = generate(server, s, "first")
    assert cold["meta_info"]["mepic"]["shared_tokens"] == 0
    assert warm["meta_info"]["mepic"]["shared_tokens"] == PAGE * shared_pages_of(
        tokenizer, "lighthouse"
    )
    assert tokens(cold) == tokens(warm) == tokens(ref)
    for out in (cold, warm):
        assert max(abs(a - b) for a, b in zip(logprobs(out), logprobs(ref), strict=True)) < 1e-3


def test_shared_pages_are_the_chunk_encoded_alone(server: ServerHandle, tokenizer: Any) -> None:
    """Pages published by a request where the chunk sits after other text (and beside another
    cold chunk) serve a chunk-first request exactly as a plain prefill of that request would."""
    generate(server, segs("mills", "lighthouse"), "alone")  # both chunks cold, at offsets
    s = segs("lighthouse", system="")
    warm = generate(server, s, "alone")
    assert warm["meta_info"]["mepic"]["shared_tokens"] > 0
    ref = plain(server, layout_ids(tokenizer, s))
    assert tokens(warm) == tokens(ref)
    assert max(abs(a - b) for a, b in zip(logprobs(warm), logprobs(ref), strict=True)) < 1e-3


def test_cache_state_and_batch_never_change_the_answer(server: ServerHandle) -> None:
    s = segs("comet", "zorblat", "mills")
    cold = generate(server, s, "state")
    warm = generate(server, s, "state")
    assert cold["meta_info"]["mepic"]["shared_tokens"] == 0
    assert warm["meta_info"]["mepic"]["shared_tokens"] > 0
    assert tokens(cold) == tokens(warm)
    others = [segs("mills", "comet"), segs("zorblat"), segs("bakery", "comet", "zorblat")]
    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(generate, server, x, "state") for x in [s, *others]]
        plain_future = pool.submit(plain, server, list(range(200, 260)))
        batched = [f.result() for f in futures]
    assert tokens(batched[0]) == tokens(cold)
    # a plain request batched with chunked ones carries none of the plugin's keys
    assert not [k for k in plain_future.result()["meta_info"] if k.startswith("mepic")]


def test_reordered_chunks_reuse_pages_and_match_a_cold_run(
    server: ServerHandle, tokenizer: Any
) -> None:
    generate(server, segs("zorblat", "glacier"), "order")
    before = chunk_state(server)["store"]
    swapped = generate(server, segs("glacier", "zorblat"), "order")
    after = chunk_state(server)["store"]
    expect = PAGE * (shared_pages_of(tokenizer, "zorblat") + shared_pages_of(tokenizer, "glacier"))
    assert swapped["meta_info"]["mepic"]["shared_tokens"] == expect
    assert after["hits"] - before["hits"] == 2 and after["published"] == before["published"]
    cold = generate(server, segs("glacier", "zorblat"), "order-cold")  # another salt: cold
    assert cold["meta_info"]["mepic"]["shared_tokens"] == 0
    assert tokens(swapped) == tokens(cold)
    # extra_key (e.g. a LoRA adapter) namespaces chunk pages like the radix tree
    other = generate(server, segs("glacier", "zorblat"), "order", extra_key="adapter-b")
    assert other["meta_info"]["mepic"]["shared_tokens"] == 0


def test_system_prompt_before_the_first_chunk_uses_the_radix_cache(
    server: ServerHandle, tokenizer: Any
) -> None:
    system = -(-len(tokenizer.encode(SYSTEM, add_special_tokens=False)) // PAGE) * PAGE
    first = generate(server, segs("glacier"), "sys")  # inserts the system prompt when it ends
    again = generate(server, segs("bakery"), "sys")  # another, cold chunk after the same prompt
    assert first["meta_info"]["cached_tokens"] == 0
    assert again["meta_info"]["cached_tokens"] == system
    assert again["meta_info"]["mepic"]["prefix_tokens"] == system
    cold = generate(server, segs("bakery"), "sys-cold")  # nothing cached under this salt
    assert cold["meta_info"]["cached_tokens"] == 0 and tokens(cold) == tokens(again)


def test_qa_needle_at_any_position(server: ServerHandle) -> None:
    for order in (("zorblat", "mills", "comet"), ("mills", "zorblat", "comet"),
                  ("mills", "comet", "zorblat")):  # fmt: skip
        for _ in range(2):  # cold, then warm
            out = generate(server, segs(*order), "needle", n=16)
            assert "Quintar" in out["text"], (order, out["text"])


def test_page_accounting_is_exact(server: ServerHandle, tokenizer: Any) -> None:
    """While N requests over K chunks run, the pool holds exactly one copy of every chunk's
    shared pages plus each request's private pages (and stock SGLang would need more)."""
    orders = [("bakery", "glacier"), ("glacier", "bakery"), ("comet", "bakery"), ("glacier",)]
    for o in orders:
        generate(server, segs(*o), "acct", n=1)  # publish every chunk first
    wait_idle(server)
    results: list[Any] = []

    def run(o: tuple[str, ...]) -> None:
        results.append(generate(server, segs(*o), "acct", n=96, sp={"ignore_eos": True}))

    threads = [threading.Thread(target=run, args=(o,)) for o in orders]
    for t in threads:
        t.start()
    snap = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        state = chunk_state(server)
        if len(state["running"]) == len(orders):
            snap = state
            break
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert snap is not None, "the requests never ran together"
    assert snap["integrity"] == "ok", snap["integrity"]
    pages = snap["pages"]
    system = -(-len(tokenizer.encode(SYSTEM, add_special_tokens=False)) // PAGE) * PAGE
    shared_of = {o: PAGE * sum(shared_pages_of(tokenizer, c) for c in o) for o in orders}
    # protected = the system prompt from the radix tree + the shared chunk pages it reads
    want = sorted(system + v for v in shared_of.values())
    assert sorted(r["protected_tokens"] for r in snap["running"]) == want
    private = sum(-(-r["allocated_tokens"] // PAGE) - r["protected_tokens"] // PAGE
                  for r in snap["running"])  # fmt: skip
    assert pages["private"] == private
    assert pages["shared"] == snap["store"]["shared_pages"]
    total = POOL_TOKENS // PAGE
    assert sum(pages.values()) == total
    distinct = {c for o in orders for c in o}
    chunk_pages = sum(shared_pages_of(tokenizer, c) for c in distinct)
    used_by_requests = private + chunk_pages + system // PAGE
    stock = sum(-(-r["allocated_tokens"] // PAGE) for r in snap["running"])
    assert used_by_requests < stock
    assert all(r["meta_info"]["mepic"]["shared_tokens"] > 0 for r in results)


def test_fuzz_with_aborts_and_evictions_ends_clean(server: ServerHandle) -> None:
    rng = random.Random(1234)
    # 24 chunks of ~7 shared pages each: more than the pool's 128 pages, so chunks get evicted.
    words = [
        "harbour",
        "kite",
        "lamp",
        "cider",
        "comet",
        "glacier",
        "bread",
        "river",
        "orchard",
        "mill",
        "cliff",
        "queue",
    ]
    docs = [f"Record {k}: " + " ".join(rng.choices(words, k=100)) for k in range(24)]

    def one(i: int) -> None:
        chunks = [{"chunk": d} for d in rng.sample(docs, rng.randint(1, 3))]
        salt = f"fuzz{rng.randint(0, 1)}"
        body = {
            "text": "",
            "mepic_segments": [{"text": SYSTEM}, *chunks, {"text": QUESTION}],
            "cache_salt": salt,
            "sampling_params": {"temperature": 0, "max_new_tokens": rng.randint(1, 40)},
            "stream": True,
        }
        abort_after = rng.choice([None, None, 1, 3])
        with requests.post(f"{server.url}/generate", json=body, stream=True, timeout=600) as r:
            assert r.status_code == 200, r.text
            for n, _ in enumerate(r.iter_lines()):
                if abort_after is not None and n >= abort_after:
                    break  # closing the stream aborts the request

    before = chunk_state(server)["store"]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(one, range(40)))
    state = wait_idle(server)
    deadline = time.monotonic() + 60
    while state["store"]["referenced_chunks"] and time.monotonic() < deadline:
        time.sleep(0.5)
        state = chunk_state(server)
    assert state["integrity"] == "ok", state["integrity"]
    pages = state["pages"]
    assert pages["private"] == 0 and pages["scratch"] == 0
    assert pages["free"] + pages["radix"] + pages["shared"] == POOL_TOKENS // PAGE
    assert state["store"]["referenced_chunks"] == 0
    assert state["store"]["evictions"] > before["evictions"], "the pool never filled up"
    health = requests.get(f"{server.url}/health_generate", timeout=120)
    assert health.status_code == 200


def test_metrics_and_server_info(server: ServerHandle) -> None:
    generate(server, segs("zorblat"), "metrics")
    generate(server, segs("zorblat"), "metrics")
    text = requests.get(f"{server.url}/metrics", timeout=60).text
    for name in ("sglang:mepic_hits_total", "sglang:mepic_misses_total", "sglang:mepic_chunks",
                 "sglang:mepic_shared_pages", "sglang:mepic_evictions_total"):  # fmt: skip
        assert name in text, name
    state = chunk_state(server)
    assert state["policy"] == "first-page" and state["store"]["hits"] >= 1


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"sampling_params": {"custom_params": {"mepic_regions": [0]}}}, "reserved"),
        ({"return_logprob": True, "logprob_start_len": 0}, "input-token logprobs"),
        ({"mepic_segments": [{"chunk": DOCS["mills"] * 40}, {"text": "?"}]}, "chunked-prefill"),
    ],
)
def test_bad_chunked_requests_get_400(
    server: ServerHandle, extra: dict[str, Any], needle: str
) -> None:
    body: dict[str, Any] = {"text": "", "mepic_segments": segs("mills")}
    body.update(extra)
    body.setdefault("sampling_params", {"max_new_tokens": 2})
    r = requests.post(f"{server.url}/generate", json=body, timeout=120)
    assert r.status_code == 400, r.text
    assert needle in r.text
    assert requests.get(f"{server.url}/health_generate", timeout=120).status_code == 200


def test_openai_chat_content_parts_mark_chunks(server: ServerHandle) -> None:
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    messages: Any = [
        {"role": "system", "content": "Answer the question using the documents."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": DOCS["lighthouse"], "mepic_chunk": True},
                {"type": "text", "text": DOCS["zorblat"], "mepic_chunk": True},
                {"type": "text", "text": "What is the capital of Zorblat?"},
            ],
        },
    ]
    outs = []
    for _ in range(2):  # cold, then warm
        reply = client.chat.completions.create(
            model="m",
            messages=messages,
            temperature=0,
            max_tokens=16,
            extra_body={"return_meta_info": True, "cache_salt": "chat"},
        )
        outs.append(reply.choices[0])
    metas = [o.meta_info["mepic"] for o in outs]  # type: ignore[attr-defined]
    assert [m["chunks"] for m in metas] == [2, 2]
    assert metas[0]["shared_tokens"] == 0 and metas[1]["shared_tokens"] > 0
    assert outs[0].message.content == outs[1].message.content
    assert "Quintar" in (outs[1].message.content or "")
    empty = {"type": "text", "text": "", "mepic_chunk": True}
    bad: Any = [{"role": "user", "content": [empty, {"type": "text", "text": "Hi"}]}]
    with pytest.raises(BadRequestError, match="expected a string"):
        client.chat.completions.create(model="m", messages=bad, max_tokens=2)
    with pytest.raises(BadRequestError, match="content parts"):
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=2,
            extra_body={"mepic_segments": [{"chunk": "doc"}, {"text": "Hi"}]},
        )


def test_plugin_custom_params_are_reserved_on_every_request(server: ServerHandle) -> None:
    """A plain request cannot forge a chunk layout (it would publish other tokens as a chunk)."""
    forged = {"mepic_regions": [1, 0, 0, 16, 16], "mepic_chunk_keys": ["0" * 64]}
    body = {"input_ids": list(range(100, 140)),
            "sampling_params": {"max_new_tokens": 2, "custom_params": forged}}  # fmt: skip
    r = requests.post(f"{server.url}/generate", json=body, timeout=120)
    assert r.status_code == 400 and "reserved" in r.text
