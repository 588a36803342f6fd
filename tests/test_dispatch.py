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
    assert "rid" not in batch and "bootstrap_room" not in body  # the client's body is untouched
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
