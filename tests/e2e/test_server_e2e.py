"""End to end: stock ``python -m sglang.launch_server`` serving SmolLM2 on CPU with the plugin.

One server for the whole module; the last test shuts it down and checks that every process of
the server is gone.
"""

from __future__ import annotations

import psutil
import pytest
import requests

from tests.helpers.server_utils import ServerHandle

pytestmark = pytest.mark.server

ZORBLAT = (
    "The capital of Zorblat is Quintar. Zorblat is famous for its blue salt mines and its "
    "long winters. What is the capital of Zorblat?"
)


def test_openai_chat_answers_from_context(smollm2_server: ServerHandle) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{smollm2_server.url}/v1", api_key="unused")
    model = client.models.list().data[0].id
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": ZORBLAT}],
        temperature=0,
        max_tokens=32,
    )
    answer = reply.choices[0].message.content or ""
    assert "Quintar" in answer, answer
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_generate_endpoint(smollm2_server: ServerHandle) -> None:
    body = {
        # Longer than a 16-token page (--enable-mepic defaults --page-size 16), so it is cached.
        "text": "Paris, Rome, Madrid, Lisbon, Vienna and Berlin are among the largest cities of "
        "Europe. The capital of France is",
        "sampling_params": {"temperature": 0, "max_new_tokens": 8},
    }
    out = requests.post(f"{smollm2_server.url}/generate", json=body, timeout=300).json()
    assert "Paris" in out["text"], out
    assert out["meta_info"]["completion_tokens"] == 8
    assert out["meta_info"]["finish_reason"]["type"] == "length"
    # Same prompt again: SGLang's radix prefix cache still works with the plugin loaded.
    again = requests.post(f"{smollm2_server.url}/generate", json=body, timeout=300).json()
    assert again["text"] == out["text"]
    assert again["meta_info"]["cached_tokens"] > 0


def test_out_of_vocabulary_ids_get_400_and_the_server_keeps_serving(
    smollm2_server: ServerHandle,
) -> None:
    body = {"input_ids": [1, 2, 10**6], "sampling_params": {"max_new_tokens": 2}}
    r = requests.post(f"{smollm2_server.url}/generate", json=body, timeout=120)
    assert r.status_code == 400 and "token id 1000000" in r.text, r.text
    body["input_ids"] = [[5, 6], [-1]]
    r = requests.post(f"{smollm2_server.url}/generate", json=body, timeout=120)
    assert r.status_code == 400 and "token id -1" in r.text, r.text
    body["input_ids"] = [1, 2, 3]
    assert requests.post(f"{smollm2_server.url}/generate", json=body, timeout=120).ok


def test_frontend_program(smollm2_server: ServerHandle) -> None:
    import sglang as sgl

    @sgl.function
    def qa(s, context, questions):  # type: ignore[no-untyped-def]
        s += "Context: " + context + "\n"
        for i, question in enumerate(questions):
            s += "Question: " + question + "\nAnswer:"
            s += sgl.gen(f"answer{i}", max_tokens=16, stop="\n", temperature=0) + "\n"

    state = qa.run(
        context="The capital of Zorblat is Quintar. The river of Zorblat is the Moss.",
        questions=["What is the capital of Zorblat?", "What is the river of Zorblat?"],
        backend=sgl.RuntimeEndpoint(smollm2_server.url),
    )
    assert "Quintar" in state["answer0"], state.text()
    assert "Moss" in state["answer1"], state.text()


def test_plugin_runs_in_scheduler_subprocess(smollm2_server: ServerHandle) -> None:
    info = requests.get(f"{smollm2_server.url}/server_info", timeout=60).json()
    (state,) = info["internal_states"]
    plugin = state["mepic_sglang"]
    launcher = psutil.Process(smollm2_server.proc.pid)
    children = {p.pid for p in launcher.children(recursive=True)}
    assert plugin["pid"] != launcher.pid and plugin["pid"] in children
    # The CLI value crossed the process boundary.
    assert plugin["args"]["enable_mepic"] is True
    assert plugin["compat_problems"] == []
    # --enable-mepic selected RoPE-in-attention: every layer stores keys without RoPE.
    assert state["attention_backend"] == "mepic"
    assert plugin["nope_attention_layers"] == 30
    log = smollm2_server.log_path.read_text(errors="replace")
    assert f"mepic-sglang 0.1.0 active in scheduler pid {plugin['pid']}" in log


def test_zz_server_shuts_down_cleanly(smollm2_server: ServerHandle) -> None:
    assert len(smollm2_server.tree) >= 3, "launcher, scheduler and detokenizer expected"
    leftover = smollm2_server.stop()
    assert leftover == [], f"processes still alive 60 s after SIGTERM: {leftover}"
    assert smollm2_server.proc.returncode is not None
