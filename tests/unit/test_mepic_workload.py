"""The MEPIC benchmark's workload generator: seeded, sized by the tokenizer, well-formed."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.mepic_workload import (
    Renderer,
    WorkloadConfig,
    contains,
    f1,
    make_docs,
    make_requests,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_path: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_path)


def test_workload_is_seeded_and_well_formed(tokenizer) -> None:  # type: ignore[no-untyped-def]
    cfg = WorkloadConfig(n_docs=12, n_requests=30, chunks=(2, 6), chunk_tokens=(100, 160),
                         qps=2.0, seed=3)  # fmt: skip

    def count(t: str) -> int:
        return len(tokenizer.encode(t, add_special_tokens=False))

    docs = make_docs(cfg, count)
    assert docs == make_docs(cfg, count), "same seed, same documents"
    assert len({d.country for d in docs} | {d.capital for d in docs}) == 2 * len(docs)
    for d in docs:
        assert f"The capital of {d.country} is {d.capital}." in d.text
        assert 100 - 24 <= count(d.text) <= 160 + 40
    reqs = make_requests(cfg, docs)
    assert reqs == make_requests(cfg, docs)
    arrivals = [r.arrival for r in reqs]
    assert arrivals == sorted(arrivals) and arrivals[0] == 0.0
    for r in reqs:
        assert 2 <= len(r.docs) <= 6 and len(set(r.docs)) == len(r.docs)
        assert r.target in r.docs and r.answer == docs[r.target].capital
    # Zipf: the most popular document is drawn more often than the least popular
    uses = [sum(i in r.docs for r in reqs) for i in range(len(docs))]
    assert uses[0] > uses[-1]
    renderer = Renderer(tokenizer, cfg.system_prompt)
    r = reqs[0]
    segs = renderer.segments(r, docs)
    assert "".join(s.get("text") or s["chunk"] for s in segs) == renderer.plain(r, docs)
    assert sum("chunk" in s for s in segs) == len(r.docs) and r.question in renderer.plain(r, docs)


def test_answer_scores() -> None:
    assert f1("Quintar", "Quintar") == 1.0
    assert f1("The capital is Quintar.\nMore text", "Quintar") == pytest.approx(2 * 0.25 / 1.25)
    assert f1("", "Quintar") == 0.0 and f1("Toskel", "Quintar") == 0.0
    assert contains("It is quintar.", "Quintar") and not contains("no\nQuintar", "Quintar")
