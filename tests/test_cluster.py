"""Cluster plumbing: URLs, key listings across nodes, split stream reads, and the CLI on a cluster.

The behaviour of the catalog, admission, ledger, budgets and events on a cluster is tested by
their own modules, which run against both backends (see CLUSTER_MODULES in conftest.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from registry import AsyncRegistry, BackendUnavailable, ConfigError, Registry
from registry._base import cluster_commands, cluster_replies, connect, is_cluster_url, one_slot, request_slot
from registry._core import Commands, Scan, Script
from registry.batching import ScriptBatcher, ThreadBatcher, by_node
from registry.cli import main
from registry.cli.context import redact
from registry.keys import Keys
from tests.conftest import model


def test_cluster_urls_name_one_or_more_seed_nodes(cluster: Any) -> None:
    first, second = cluster.nodes[0].address, cluster.nodes[1].address
    for url in (cluster.url, f"redis+cluster://{first},{second}", f"redis+cluster://{second},{first}/0"):
        client = connect(url)
        assert isinstance(client, RedisCluster)
        assert client.ping()
        client.close()
    with pytest.raises(ConfigError, match="host:port"):
        connect(f"redis+cluster://{first},no-port")
    with pytest.raises(ConfigError, match="at least one node"):
        connect("redis+cluster:///0")
    with pytest.raises(ConfigError, match="expected one of"):
        connect("http://127.0.0.1:6379")
    assert is_cluster_url("rediss+cluster://h:1")
    assert not is_cluster_url("rediss://h:1")


def test_both_clients_spread_models_over_the_cluster_nodes(cluster: Any) -> None:
    cluster.wait_ok()
    cluster.flushall()
    keys = Keys()
    models = [model(id=f"m{i}", rate_limit={"requests_per_minute": 5}) for i in range(12)]
    with Registry.from_url(cluster.url, watch=False) as reg:
        reg.register_models(models)
        for m in models:
            assert reg.acquire(f"openai:{m['id']}", 1, 1).allowed
    owners = {cluster.node_of(keys.window(f"openai:{m['id']}", "rpm")).port for m in models}
    assert len(owners) > 1  # the windows live on more than one primary

    async def main_async() -> list[bool]:
        async with AsyncRegistry.from_url(cluster.url, watch=False) as areg:
            return [(await areg.acquire(f"openai:{m['id']}", 1, 1)).allowed for m in models]

    assert asyncio.run(main_async()) == [True] * len(models)
    with Registry.from_url(cluster.url, watch=False) as reg:
        assert reg.get_statistics().requests == 0  # acquires alone record no usage
        assert all(reg.acquire(f"openai:{m['id']}", 1, 1).remaining["requests_per_minute"] == 2 for m in models)


def test_an_xread_over_several_slots_is_split_per_slot_and_folded_back() -> None:
    a, b, c = "{x}:events", "{y}:events", "{x}:other"
    assert key_slot(a.encode()) == key_slot(c.encode()) != key_slot(b.encode())
    commands, counts, wait_s = cluster_commands(
        [("HMGET", "{x}:meta", "r"), ("XREAD", "COUNT", 10, "BLOCK", 5000, "STREAMS", a, b, c, "1-0", "2-0", "3-0")]
    )
    assert counts == [1, 2]
    assert wait_s == pytest.approx(0.1)  # BLOCK becomes a short wait between polls
    assert commands[0] == ("HMGET", "{x}:meta", "r")
    assert sorted(commands[1:]) == [
        ("XREAD", "COUNT", 10, "STREAMS", a, c, "1-0", "3-0"),
        ("XREAD", "COUNT", 10, "STREAMS", b, "2-0"),
    ]
    entries = [("5-0", {"f": "v"})]
    folded, idle = cluster_replies(["meta", {a: entries}, [[b, entries]]], counts)
    assert folded == ["meta", [(a, entries), [b, entries]]]
    assert not idle
    folded, idle = cluster_replies(["meta", None, []], counts)
    assert folded == ["meta", []]
    assert idle
    # One slot: left as it is, BLOCK included.
    same = ("XREAD", "COUNT", 1, "BLOCK", 50, "STREAMS", a, c, "0-0", "0-0")
    assert cluster_commands([same]) == ([same], [1], 0.0)
    assert one_slot([("HGET", a, "f"), ("HGET", c, "f")])
    assert not one_slot([("HGET", a, "f"), ("HGET", b, "f")])


def test_a_requests_slot_is_its_keys_one_slot_or_none() -> None:
    """What picks a cluster client's breaker (see registry.breakers): the one slot of a request."""
    a, b, c = "{x}:events", "{y}:events", "{x}:other"
    x = key_slot(b"x")
    assert request_slot(Script("acquire", (a, c), (1,))) == x  # a script's keys share one tag
    assert request_slot(Script("keyless", (), ())) is None  # redis-py picks a node: no one node
    assert request_slot(Commands((("HGETALL", a), ("XRANGE", c, "-", "+")))) == x
    assert request_slot(Commands((("HGETALL", a), ("HGETALL", b)))) is None  # two slots
    assert request_slot(Commands((("TIME",), ("XREVRANGE", a, "+", "-")))) is None  # TIME: any node
    assert request_slot(Commands((("XREAD", "COUNT", 5, "BLOCK", 9, "STREAMS", a, c, "0-0", "0-0"),))) == x
    assert request_slot(Commands((("XREAD", "COUNT", 5, "STREAMS", a, b, "0-0", "0-0"),))) is None
    assert request_slot(Scan("*")) is None  # every primary


def test_a_batch_for_several_nodes_fails_only_the_callers_of_a_node_that_is_down() -> None:
    """redis-py fails a cluster pipeline whole when one node is down: the batchers keep the other
    nodes' callers out of it (asyncio: one pipeline per node; threads: sent again per node)."""

    def node_of(request: Any) -> str:
        return str(request.keys[0][0])  # the node is the key's first letter

    requests = [Script("s", (key,), ()) for key in ("a1", "b1", "a2")]
    sent: list[list[str]] = []

    def answer(batch: list[Script]) -> list[Any]:
        keys = [request.keys[0] for request in batch]
        sent.append(keys)
        if any(key.startswith("b") for key in keys):
            raise BackendUnavailable("b is down")
        if any(key.startswith("c") for key in keys):
            raise asyncio.CancelledError
        return keys

    async def apipeline(batch: list[Script]) -> list[Any]:
        return answer(batch)

    batcher = ScriptBatcher(aredis.Redis(), node_of=node_of)
    batcher._pipeline = apipeline  # type: ignore[method-assign]
    a1, b1, a2 = asyncio.run(batcher._send(requests))
    assert (a1, a2, isinstance(b1, BackendUnavailable)) == ("a1", "a2", True)
    assert sent == [["a1", "a2"], ["b1"]]  # one pipeline per node, from the start
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(batcher._send([Script("s", ("c1",), ()), *requests]))
    threads = ThreadBatcher(lambda request: None, redis.Redis(), node_of=node_of)
    threads._pipeline = answer  # type: ignore[method-assign]
    sent.clear()
    a1, b1, a2 = threads._send(requests)
    assert (a1, a2, isinstance(b1, BackendUnavailable)) == ("a1", "a2", True)
    assert sent == [["a1", "b1", "a2"], ["a1", "a2"], ["b1"]]  # one pipeline, then per node
    with pytest.raises(BackendUnavailable):  # one node only: nothing to split
        threads._send([requests[1], requests[1]])
    assert by_node(requests, None) is None
    assert by_node(requests, node_of) == [[0, 2], [1]]


def test_the_cli_works_on_a_cluster_and_hides_its_password(
    cluster: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.wait_ok()
    cluster.flushall()
    config = tmp_path / "models.json"
    config.write_text(json.dumps({"models": [model(id="a"), model(id="b")]}))
    assert main(["--redis-url", cluster.url, "sync", str(config)]) == 0
    capsys.readouterr()
    assert main(["--redis-url", cluster.url, "--json", "models", "list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [m["id"] for m in (listed["models"] if isinstance(listed, dict) else listed)] == ["a", "b"]
    assert redact("redis+cluster://user:secret@h1:1,h2:2/0") == "redis+cluster://user:***@h1:1,h2:2/0"
