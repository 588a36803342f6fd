"""Run ``sglang.Engine`` in a fresh process and print one JSON line (used by test_engine.py).

A fresh process because SGLang loads plugins once per process and spawns its scheduler, which
needs this ``__main__`` guard.
"""

from __future__ import annotations

import argparse
import json

# Longer than two 16-token pages each, so the warm run hits the prefix cache at any page size.
PROMPTS = [
    "The capital of Zorblat is Quintar. Zorblat is famous for its blue salt mines and its long "
    "winters, and every spring the markets of the capital fill with traders. The capital of "
    "Zorblat is",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number, computed iteratively so that '
    'large n does not hit the recursion limit."""\n    a, b = 0, 1\n',
    "Once upon a time, in a village at the edge of a great forest, there lived an old clockmaker "
    "who had never once left the valley where he was born. One morning",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--enable-mepic", action="store_true")
    parser.add_argument("--attention-backend", default=None)
    args = parser.parse_args()

    import sglang as sgl
    from sglang.srt.server_args import ServerArgs

    server_args = ServerArgs(
        model_path=args.model,
        dtype="float32",
        max_total_tokens=4096,
        sleep_on_idle=True,
        attention_backend=args.attention_backend,
    )
    if args.enable_mepic:
        from mepic_sglang.sglang.server_args import attach_plugin_args

        attach_plugin_args(server_args, enable_mepic=True)
    engine = sgl.Engine(server_args=server_args)
    params = {"temperature": 0, "max_new_tokens": 12}
    try:
        # Twice: cold, then warm (radix prefix-cache hits make extends with a cached prefix).
        runs = [engine.generate(PROMPTS, params, return_logprob=True) for _ in range(2)]
        info = engine.get_server_info()
        result = {
            name: {
                "output_ids": [o["output_ids"] for o in outs],
                "logprobs": [[t[0] for t in o["meta_info"]["output_token_logprobs"]] for o in outs],
                "cached_tokens": [o["meta_info"]["cached_tokens"] for o in outs],
            }
            for name, outs in zip(("cold", "warm"), runs, strict=True)
        }
        result["plugin"] = info["internal_states"][0].get("mepic_sglang")
        result["attention_backend"] = info["internal_states"][0].get("attention_backend")
    finally:
        engine.shutdown()
    print("ENGINE_PROBE " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
