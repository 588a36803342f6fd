"""CPU attention paths end to end: stock ``torch_native`` vs the plugin's ``mepic`` backend.

    python -m benchmarks.attention_cpu [--prompt-tokens 4500] [--repeats 3]

One server per backend (SmolLM2-135M, float32, 2 cores), one request at a time, greedy:

* ``cold``: a long prompt, 1 new token (prefill; crosses SGLang's chunked-prefill boundary);
* ``warm``: the same prompt plus a short suffix, 1 new token (radix prefix-cache hit: an extend
  of a few tokens after thousands of cached ones);
* ``decode``: 64 new tokens after a short prompt (per-token time).

Stock ``torch_native`` pads each extend's query to the whole sequence (L x L attention); the
``mepic`` backend computes only the new query rows but rotates every cached key (NoPE storage).
Both must give the same tokens; the script checks that. Writes ``attention_cpu.json`` and
``attention_cpu.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import requests

from benchmarks.common import add_common_args, resolve_common_args, start_server, stop_tree

MODES = {"stock torch_native": [], "mepic (NoPE + RoPE in attention)": ["--enable-mepic"]}
FILLER = (
    "The river winds past old stone mills and quiet orchards, where farmers gather apples in "
    "the late autumn light. "
)


def _start(model: str, port: int, extra: list[str], log: Path) -> Any:
    return start_server(model, port, extra, log)


def _generate(url: str, text: str, new_tokens: int) -> tuple[float, dict[str, Any]]:
    body: dict[str, Any] = {
        "text": text,
        "sampling_params": {"temperature": 0, "max_new_tokens": new_tokens, "ignore_eos": True},
    }
    t0 = time.monotonic()
    out = requests.post(f"{url}/generate", json=body, timeout=900)
    out.raise_for_status()
    return time.monotonic() - t0, out.json()


def run_mode(
    model: str, port: int, extra: list[str], prompt: str, repeats: int, log: Path
) -> dict[str, Any]:
    proc, root, url = _start(model, port, extra, log)
    try:
        _generate(url, "Hello", 4)  # warm-up
        result: dict[str, Any] = {"cold": [], "warm": [], "decode_per_token": [], "tokens": []}
        for i in range(repeats):
            # A distinct first word per repeat makes every cold prompt a cache miss.
            cold_text = f"Note {i}. {prompt}"
            dt, cold = _generate(url, cold_text, 1)
            result["cold"].append(dt)
            dt, warm = _generate(url, cold_text + " What do the farmers gather?", 1)
            result["warm"].append(dt)
            result["cached"] = warm["meta_info"]["cached_tokens"]
            result["prompt_tokens"] = cold["meta_info"]["prompt_tokens"]
            dt, dec = _generate(url, f"Story {i}: once upon a time", 64)
            result["decode_per_token"].append(dt / 64)
            result["tokens"].append([cold["output_ids"], warm["output_ids"], dec["output_ids"]])
        return result
    finally:
        stop_tree(proc, root)


def _plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = ("cold", "warm")
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.38
    for k, (mode, res) in enumerate(results.items()):
        xs = [p + (k - 0.5) * width for p in range(len(phases))]
        ax.bar(xs, [statistics.median(res[p]) for p in phases], width, label=mode)
    ax.set_xticks(range(len(phases)), ["cold prefill", "warm (prefix hit)"])
    ax.set_ylabel("seconds for 1 new token (median)")
    ax.set_title("SmolLM2-135M, float32, 2 CPU cores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attention_cpu")
    parser.add_argument("--prompt-tokens", type=int, default=4500, help="approximate")
    parser.add_argument("--repeats", type=int, default=3)
    add_common_args(parser, port=30320)
    args = parser.parse_args(argv)
    resolve_common_args(args)
    prompt = FILLER * max(1, args.prompt_tokens // 22)  # ~22 tokens per filler sentence

    results = {
        mode: run_mode(
            args.model, args.port, extra, prompt, args.repeats, args.out / f"server-{i}.log"
        )
        for i, (mode, extra) in enumerate(MODES.items())
    }
    (stock, mepic) = results.values()
    same = stock["tokens"] == mepic["tokens"]
    print(f"\nprompt {stock['prompt_tokens']} tokens; warm requests reuse {stock['cached']} cached")
    print("| backend | cold prefill (s) | warm, prefix hit (s) | decode (ms/token) |")
    print("|---|---|---|---|")
    for mode, res in results.items():
        print(f"| {mode} | {statistics.median(res['cold']):.2f} | "
              f"{statistics.median(res['warm']):.2f} | "
              f"{1000 * statistics.median(res['decode_per_token']):.0f} |")  # fmt: skip
    print(f"same greedy tokens in both backends: {same}")
    (args.out / "attention_cpu.json").write_text(
        json.dumps({"results": results, "same_tokens": same}) + "\n"
    )
    _plot(results, args.out / "attention_cpu.png")
    print(f"wrote {args.out / 'attention_cpu.json'} and {args.out / 'attention_cpu.png'}")


if __name__ == "__main__":
    main()
