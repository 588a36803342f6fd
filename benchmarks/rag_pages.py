"""KV pages and answers of a small RAG run: stock SGLang (radix prefix cache) vs MEPIC.

Workload: ``--docs`` documents, each with one fact ("The capital of X is Y.") among filler
sentences; ``--requests`` requests, each a system prompt, ``--per-request`` documents in a random
order and a question about one of them (chat template of the model).

Three modes, one server per family (the plugin is loaded in both; the stock server has no flags):

- ``stock``        plain text prompt (documents joined by newlines), SGLang's radix cache;
- ``stock-padded`` the MEPIC page layout sent as plain ``input_ids`` to the stock server (the
                   accuracy cost of padding alone);
- ``mepic:<policy>`` the same documents marked as chunks (``mepic_segments``), ``--enable-mepic
                   --mepic-recompute <policy>`` (``--policies``; ``first-k-tokens`` uses
                   ``--recompute-k``).

Per mode: accuracy (the answer contains the capital) on a first pass, then a memory pass in which
all requests run together (``ignore_eos``) while ``/server_info`` is polled: pages held by
running requests = total - available - evictable (locked radix prefixes, referenced chunk pages,
scratch and private pages). Prints a table, writes JSON and a plot.

    python -m benchmarks.rag_pages            # CPU, SmolLM2, ~5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from benchmarks.common import (
    add_common_args,
    resolve_common_args,
    start_server,
    stop_tree,
)
from disagg import server_info

PAGE = 16
PLACES = [
    ("Zorblat", "Quintar"), ("Meravia", "Toskel"), ("Brunholm", "Varnis"), ("Oskadia", "Pellor"),
    ("Trevania", "Lumiq"), ("Galdorn", "Harrow"), ("Veskin", "Ombra"), ("Pyrelund", "Castel"),
]  # fmt: skip
FILLER = [
    "Its winters are long and its summers are short and bright.",
    "Most people work in fishing, farming or the wool trade.",
    "A railway line crosses the country from the coast to the mountains.",
    "The national dish is a stew of barley, onions and smoked fish.",
    "Children learn two languages at school from the age of six.",
    "The oldest bridge in the country was built of grey stone four centuries ago.",
]
SYSTEM = (
    "<|im_start|>system\nAnswer the question using the documents.<|im_end|>\n<|im_start|>user\n"
)


def document(i: int, rng: random.Random) -> str:
    country, capital = PLACES[i]
    body = rng.sample(FILLER, 4)
    body.insert(rng.randint(0, 4), f"The capital of {country} is {capital}.")
    return f"{country} is a small country. " + " ".join(body)


def workload(args: argparse.Namespace) -> list[dict[str, Any]]:
    rng = random.Random(args.seed)
    docs = [document(i, rng) for i in range(args.docs)]
    out = []
    for _ in range(args.requests):
        picked = rng.sample(range(args.docs), args.per_request)
        target = rng.choice(picked)
        question = (
            f"Question: What is the capital of {PLACES[target][0]}?<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        segments = [{"text": SYSTEM}, *({"chunk": docs[i]} for i in picked), {"text": question}]
        text = SYSTEM + "\n".join(docs[i] for i in picked) + "\n" + question
        out.append({"segments": segments, "text": text, "answer": PLACES[target][1]})
    return out


def layout_ids(tokenizer: Any, segments: list[dict[str, str]]) -> list[int]:
    from mepic_sglang.chunks.segments import parse_segments
    from mepic_sglang.sglang.request_api import layout_segments

    return list(layout_segments(tokenizer, parse_segments(segments), page_size=PAGE).token_ids)


def body_for(mode: str, item: dict[str, Any], sampling: dict[str, Any]) -> dict[str, Any]:
    if mode == "stock":
        return {"text": item["text"], "sampling_params": sampling}
    if mode == "stock-padded":
        return {"input_ids": item["ids"], "sampling_params": sampling}
    assert mode.startswith("mepic")
    return {"text": "", "mepic_segments": item["segments"], "sampling_params": sampling}


def run_mode(url: str, mode: str, items: list[dict[str, Any]], new_tokens: int) -> dict[str, Any]:
    def post(item: dict[str, Any], sampling: dict[str, Any]) -> Any:
        r = requests.post(f"{url}/generate", json=body_for(mode, item, sampling), timeout=1200)
        r.raise_for_status()
        return r.json()

    greedy = {"temperature": 0, "max_new_tokens": 24}
    answers = [post(item, greedy) for item in items]  # accuracy pass, one at a time
    correct = sum(item["answer"] in a["text"] for item, a in zip(items, answers, strict=True))
    peak: dict[str, Any] = {"held_tokens": 0}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            state = server_info.fetch(url)
            pool = state["pool"]
            held = pool["total_tokens"] - pool["available_tokens"] - pool["evictable_tokens"]
            if pool["running_requests"] == len(items) and held >= peak["held_tokens"]:
                peak.update(held_tokens=held, pool=pool, chunks=state.get("chunks"))
            time.sleep(0.02)

    watcher = threading.Thread(target=poll)
    watcher.start()
    long = {"temperature": 0, "max_new_tokens": new_tokens, "ignore_eos": True}
    with ThreadPoolExecutor(len(items)) as pool:
        outs = list(pool.map(lambda it: post(it, long), items))
    done.set()
    watcher.join()
    prompt_tokens = sum(o["meta_info"]["prompt_tokens"] for o in outs)
    cached = sum(o["meta_info"]["cached_tokens"] for o in outs)
    return {
        "mode": mode,
        "accuracy": correct / len(items),
        "correct": correct,
        "answers": [a["text"] for a in answers],
        "peak_held_pages": peak["held_tokens"] // PAGE,
        "snapshot": peak,
        "prompt_tokens": prompt_tokens,
        "cached_tokens_memory_pass": cached,
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    names = [r["mode"] for r in results]
    colors = ["#888" if n.startswith("stock") else "#2a7" for n in names]
    ax1.bar(names, [r["peak_held_pages"] for r in results], color=colors)
    ax1.set_ylabel("KV pages held by running requests")
    ax2.bar(names, [100 * r["accuracy"] for r in results], color=colors)
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax2.set_ylabel("answers with the right capital (%)")
    fig.suptitle("RAG run, SmolLM2-135M, CPU (page = 16 tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, port=31400)
    parser.add_argument("--docs", type=int, default=8)
    parser.add_argument("--per-request", type=int, default=4)
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--policies", default="first-page", help="comma-separated")
    parser.add_argument("--recompute-k", type=int, default=48)
    args = parser.parse_args(argv)
    resolve_common_args(args)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    items = workload(args)
    for item in items:
        item["ids"] = layout_ids(tokenizer, item["segments"])
    results = []
    runs: list[tuple[str, list[str], list[str]]] = [("stock", [], ["stock", "stock-padded"])]
    for policy in args.policies.split(","):
        flags = ["--enable-mepic", "--mepic-recompute", policy]
        flags += ["--mepic-recompute-k", str(args.recompute_k)]
        runs.append((f"mepic-{policy}", flags, [f"mepic:{policy}"]))
    for family, flags, modes in runs:
        proc, root, url = start_server(args.model, args.port, flags, args.out / f"rag-{family}.log")
        try:
            for mode in modes:
                results.append(run_mode(url, mode, items, args.new_tokens))
                print(f"{mode}: done", flush=True)
        finally:
            stop_tree(proc, root)
    print(f"\n{'mode':24} {'accuracy':>9} {'peak pages held':>16} {'prompt tokens':>14}")
    for r in results:
        acc = f"{r['correct']}/{len(items)}"
        print(f"{r['mode']:24} {acc:>9} {r['peak_held_pages']:>16} {r['prompt_tokens']:>14}")
    for r in results:
        chunks = r["snapshot"].get("chunks") or {}
        if chunks.get("pages"):
            print(f"{r['mode']} pages by state at the peak: {chunks['pages']}")
    (args.out / "rag_pages.json").write_text(json.dumps(results, indent=1))
    plot(results, args.out / "rag_pages.png")
    print(f"\nwrote {args.out / 'rag_pages.json'} and {args.out / 'rag_pages.png'}")


if __name__ == "__main__":
    main()
