"""The dispatcher's pure parts: instances, pools, dispatch policies, P/D body rewriting."""

from __future__ import annotations

import pytest

from disagg.dispatcher import batch_size, main, pd_body
from disagg.instances import Instance, LeastLoaded, Pool, RoundRobin
from disagg.launcher import InstanceSpec

P = Instance("http://127.0.0.1:9001", "prefill", 9998)
D = Instance("http://127.0.0.1:9002", "decode")


def test_instance_parse_and_errors() -> None:
    assert Instance.parse("http://127.0.0.1:9001,9998", "prefill") == P
    assert Instance.parse("http://127.0.0.1:9002/", "decode") == D
    with pytest.raises(ValueError, match="URL,BOOTSTRAP_PORT"):
        Instance.parse("http://127.0.0.1:9001", "prefill")
    with pytest.raises(ValueError, match="only prefill"):
        Instance.parse("http://127.0.0.1:9002,1", "decode")
    with pytest.raises(ValueError, match="integer"):
        Instance.parse("http://127.0.0.1:9001,x", "prefill")
    with pytest.raises(ValueError, match="HOST:PORT"):
        Instance("127.0.0.1:9001", "decode")


def test_pool_rules() -> None:
    with pytest.raises(ValueError, match="no instances"):
        Pool([])
    with pytest.raises(ValueError, match="AND"):
        Pool([P])
    with pytest.raises(ValueError, match="twice"):
        Pool([P, D, D])
    with pytest.raises(ValueError, match="either"):
        Pool([P, D, Instance("http://127.0.0.1:9003", "collocated")])


def test_least_loaded_pairs_and_counts() -> None:
    d2 = Instance("http://127.0.0.1:9003", "decode")
    pool = Pool([P, D, d2], LeastLoaded())
    first = pool.route()
    assert first == (P, D)
    pool.begin(first)
    second = pool.route()
    assert second == (P, d2)  # D is busier now
    pool.begin(second)
    pool.end(first)
    assert pool.route() == (P, D)
    pool.end(second)
    pool.check_integrity()
    assert set(pool.in_flight.values()) == {0}
    pool.end(second)
    with pytest.raises(AssertionError, match="negative"):
        pool.check_integrity()


def test_pool_add_keeps_the_rules() -> None:
    pool = Pool([P, D])
    with pytest.raises(ValueError, match="either"):
        pool.add(Instance("http://127.0.0.1:9005", "collocated"))
    with pytest.raises(ValueError, match="port number"):
        pool.add(Instance("http://127.0.0.1:9006", "prefill", 70000))
    pool.add(Instance("http://127.0.0.1:9007", "prefill", 9997))
    assert len(pool.of("prefill")) == 2


def test_round_robin_collocated() -> None:
    a, b = (Instance(f"http://127.0.0.1:{p}", "collocated") for p in (9101, 9102))
    pool = Pool([a, b], RoundRobin())
    assert [pool.route() for _ in range(3)] == [(a,), (b,), (a,)]
    assert not pool.disaggregated


def test_pd_body_single_and_batch() -> None:
    single = pd_body({"text": "hi", "sampling_params": {}}, P, None)
    assert single["bootstrap_host"] == "127.0.0.1" and single["bootstrap_port"] == 9998
    assert 0 <= single["bootstrap_room"] < 2**63 and isinstance(single["rid"], str)
    keep = pd_body({"text": "hi", "rid": "mine"}, P, None)
    assert keep["rid"] == "mine"
    body = {"text": ["a", "b", "c"]}
    n = batch_size("/generate", body)
    assert n == 3
    batch = pd_body(body, P, n)
    assert batch["bootstrap_host"] == ["127.0.0.1"] * 3 and len(set(batch["bootstrap_room"])) == 3
    assert len(set(batch["rid"])) == 3  # so a failed leg can abort each of them
    assert "bootstrap_room" not in body  # the client's body is untouched
    assert batch_size("/generate", {"input_ids": [[1, 2], [3]]}) == 2
    assert batch_size("/generate", {"input_ids": [1, 2]}) is None
    assert batch_size("/v1/completions", {"prompt": ["a", "b"]}) is None


def test_launcher_command_for_each_role() -> None:
    p = InstanceSpec("M", "prefill", 9001, 9998, 9011, extra_args=("--dtype", "float32"))
    cmd = p.command()
    assert cmd[cmd.index("--disaggregation-mode") + 1] == "prefill"
    assert cmd[cmd.index("--disaggregation-transfer-backend") + 1] == "mooncake_tcp"
    assert cmd[cmd.index("--disaggregation-bootstrap-port") + 1] == "9998"
    assert cmd[-2:] == ["--dtype", "float32"] and p.instance() == Instance(p.url, "prefill", 9998)
    c = InstanceSpec("M", "collocated", 9003).command()
    assert "--disaggregation-mode" not in c and "--nccl-port" not in c


def test_dispatcher_cli_names_the_bad_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--prefill", "http://127.0.0.1:1"])
    assert "--prefill" in capsys.readouterr().err


def test_slo_policy_ranks_by_prediction_and_counts_what_it_sent() -> None:
    from disagg.instances import SloAware
    from scheduler_patch.latency_model import LatencyModel

    p2 = Instance("http://127.0.0.1:9011", "prefill", 9999)
    pool = Pool([P, p2, D], SloAware())
    assert pool.route(100) == (P, D)  # no model anywhere yet: fewest in flight, then order
    model = LatencyModel(prefill_coef=[0.1, 1.0, 0.0], decode_coef=[0.02, 0.001, 0.01])
    pool.update(P.url, {"num_waiting_uncached_tokens": 2000}, model)
    pool.update(p2.url, {"num_waiting_uncached_tokens": 500}, model)
    pool.update(D.url, {"num_running_reqs": 3, "num_used_tokens": 1000}, model)
    assert pool.stats[P.url].predicted_s("prefill") == model.prefill(2000, 0.0)
    assert pool.stats[D.url].predicted_s("decode") == model.decode(4, 1000)
    assert pool.route(1000)[0] == p2  # 0.6 s of queue vs 2.1 s
    assert pool.stats[p2.url].sent_tokens == 1000  # counted until the next snapshot
    assert pool.route(1000)[0] == p2  # 1.6 s vs 2.1 s
    assert pool.route(1000)[0] == P  # 2.6 s vs 2.1 s: the other one now
    pool.update(p2.url, {"num_waiting_uncached_tokens": 0})  # a snapshot resets, keeps model
    assert pool.stats[p2.url].sent_tokens == 0 and pool.stats[p2.url].predicted_s("prefill") == 0


def test_prompt_token_estimate_and_model_parsing() -> None:
    from disagg.poller import model_of, prompt_tokens

    assert prompt_tokens({"input_ids": [1, 2, 3]}) == 3
    assert prompt_tokens({"input_ids": [[1, 2], [3]]}) == 3
    assert prompt_tokens({"text": "x" * 40}) == 10
    assert prompt_tokens({"prompt": ["x" * 8, "y" * 8]}) == 4
    assert prompt_tokens({"messages": [{"role": "user", "content": "x" * 12}]}) == 3
    info = {"internal_states": [{"mepic_sglang": {"slo": {"latency_model": {
        "prefill_coef": [0.1, 1.0, 0.0], "decode_coef": None}}}}]}  # fmt: skip
    model = model_of(info)
    assert model is not None and model.calibrated("prefill") and not model.calibrated("decode")
    assert model_of({"internal_states": [{"mepic_sglang": {}}]}) is None
    bad = {"internal_states": [{"mepic_sglang": {"slo": {"latency_model": {"prefill_coef": [1]}}}}]}
    assert model_of(bad) is None


def test_admin_api_adds_removes_and_refuses_bad_input() -> None:
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from disagg.dispatcher import make_app

    async def run() -> None:
        app = make_app([P, D])
        async with TestClient(TestServer(app)) as client:
            d2 = {"url": "http://127.0.0.1:9003/", "role": "decode"}
            assert (await client.post("/dispatcher/instances", json=d2)).status == 200
            again = await client.post("/dispatcher/instances", json=d2)
            assert again.status == 400 and "already" in (await again.text())
            bad = await client.post("/dispatcher/instances", json={"url": "x", "role": "boss"})
            assert bad.status == 400 and "role must be one of" in (await bad.text())
            state = await (await client.get("/dispatcher/state")).json()
            assert [r["role"] for r in state["instances"]] == ["prefill", "decode", "decode"]
            gone = await client.delete("/dispatcher/instances", params={"url": d2["url"]})
            assert gone.status == 200
            missing = await client.delete("/dispatcher/instances", params={"url": d2["url"]})
            assert missing.status == 404
            no_body = await client.post("/dispatcher/switch", data=b"nope")
            assert no_body.status == 400
            unknown = await client.post(
                "/dispatcher/switch", json={"url": "http://127.0.0.1:1", "new_role": "prefill"}
            )
            assert unknown.status == 404
            last = await client.post("/dispatcher/retire", json={"url": D.url})
            assert last.status == 409 and "last instance" in (await last.text())
            assert (await client.post("/dispatcher/instances", json=d2)).status == 200
            # nothing listens at D: the switch fails and D stays in the pool in its old role
            body = {"url": D.url, "new_role": "prefill", "bootstrap_port": 9997}
            failed = await client.post("/dispatcher/switch", json=body)
            report = await failed.json()
            assert failed.status == 409 and not report["success"] and "failed" in report["message"]
            roles = [
                (r["url"], r["role"])
                for r in (await (await client.get("/dispatcher/state")).json())["instances"]
            ]
            assert (D.url, "decode") in roles
            not_json = await client.post("/generate", data=b"{")
            assert not_json.status == 400 and "JSON" in (await not_json.text())

    asyncio.run(run())
