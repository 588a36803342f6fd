"""Measure this machine's step times and write a latency profile for ``--slo-latency-profile``.

    python -m benchmarks.slo_profile                         # start SmolLM2 on CPU, profile it
    python -m benchmarks.slo_profile --url http://HOST:PORT  # a running multi-slo server

The server (``--schedule-policy multi-slo``) times every step it runs and fits its latency model
online; this sends a sweep that spans the model's features (prefills of 32-1536 words, with and
without cached context; decode batches of 1-16 requests with short and long prompts), then saves
the fitted coefficients and prints the model's own prediction error over the sweep.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import platform
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm

from benchmarks.common import (
    add_common_args,
    resolve_common_args,
    start_server,
    stop_tree,
)
from disagg import server_info

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"]


def text(n_words: int, seed: int) -> str:
    return " ".join(WORDS[(seed + i * 7) % len(WORDS)] for i in range(n_words))


def post(url: str, prompt: str, max_new: int) -> None:
    body: dict[str, Any] = {
        "text": prompt,
        "sampling_params": {"max_new_tokens": max_new, "ignore_eos": True},
    }
    requests.post(f"{url}/generate", json=body, timeout=600).raise_for_status()


def sweep(url: str, prefill_words: list[int], batch_sizes: list[int]) -> None:
    """Prefills of every size (cold, and after a cached prefix), then decode batches of every
    size with short and long prompts, so the decode fit sees small and large KV."""
    decode_words = (24, max(prefill_words) // 2)
    jobs = len(prefill_words) * 2 + len(batch_sizes) * len(decode_words)
    with tqdm(total=jobs, desc="profile") as bar:
        for i, n in enumerate(prefill_words):
            prompt = text(n, i)
            post(url, prompt, 1)  # cold prefill
            post(url, prompt + " " + text(n // 4 + 8, i + 1), 1)  # prefill after a cached prefix
            bar.update(2)
        for bs in batch_sizes:
            for words in decode_words:
                with cf.ThreadPoolExecutor(bs) as pool:
                    list(pool.map(lambda j, w=words: post(url, text(w, 100 + j), 24), range(bs)))
                bar.update()


def profile_of(state: dict[str, Any], note: str) -> dict[str, Any]:
    model = state["slo"]["latency_model"]
    return {
        "version": 1,
        "note": note,
        "prefill": model["prefill_coef"],
        "decode": model["decode_coef"],
        "prefill_features": "1, new_tokens/1e3, attn_work/1e6",
        "decode_features": "1, batch_size, kv_tokens/1e3",
        "samples": model["samples"],
        "error": model["error"],
    }


def measure(
    url: str, prefill_words: list[int], batch_sizes: list[int], note: str
) -> dict[str, Any]:
    """Sweep a running multi-slo server and return its fitted profile (SystemExit if none)."""
    sweep(url, prefill_words, batch_sizes)
    profile = profile_of(server_info.fetch(url), note)
    if profile["prefill"] is None or profile["decode"] is None:
        raise SystemExit(
            f"the server fitted no model (samples: {profile['samples']}); is it multi-slo?"
        )
    return profile


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, port=30400)
    parser.add_argument("--url", default=None, help="profile a running multi-slo server instead")
    parser.add_argument("--profile", type=Path, default=None, help="default: OUT/slo_profile.json")
    parser.add_argument("--prefill-words", default="32,128,384,768,1536")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16")
    args = parser.parse_args()
    resolve_common_args(args)
    path = args.profile or args.out / "slo_profile.json"
    proc = root = None
    url = args.url
    if url is None:
        log = args.out / "slo_profile_server.log"
        proc, root, url = start_server(
            args.model, args.port, ["--schedule-policy", "multi-slo"], log
        )
    where = args.model if args.url is None else url
    machine = platform.processor() or platform.machine()
    note = f"{where} on {platform.node()} ({machine}), {datetime.date.today()}"
    try:
        profile = measure(
            url,
            [int(x) for x in args.prefill_words.split(",")],
            [int(x) for x in args.batch_sizes.split(",")],
            note,
        )
    finally:
        if proc is not None and root is not None:
            stop_tree(proc, root)
    path.write_text(json.dumps(profile, indent=1))
    print(json.dumps({k: profile[k] for k in ("prefill", "decode", "samples", "error")}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
