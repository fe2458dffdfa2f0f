"""Errors from Redis reach the caller as the library's own, and the embedded servers work."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from registry import BackendError, BackendUnavailable, Registry, ScriptError, embedded
from registry.catalog import ops
from registry.errors import RegistryError, map_redis_errors
from registry.keys import Keys
from tests.conftest import model


def test_an_unreachable_redis_is_backend_unavailable(make_registry: Any) -> None:
    reg = Registry.from_url(f"redis://127.0.0.1:{embedded.free_port()}/0", watch=False, socket_connect_timeout=0.5)
    with pytest.raises(BackendUnavailable, match="Redis unavailable"):
        reg.ping()
    with pytest.raises(BackendUnavailable):
        reg.list_models()
    with pytest.raises(BackendUnavailable):
        reg.register_model(model())
    reg.close()


def test_a_wrong_type_is_a_backend_error(reg: Any, r: redis.Redis) -> None:
    r.set(Keys().meta, "not a hash")
    with pytest.raises(BackendError, match="WRONGTYPE") as info:
        reg.list_models()
    assert not isinstance(info.value, ScriptError)
    assert isinstance(info.value.__cause__, redis.ResponseError)


def test_a_script_refusing_its_arguments_is_a_script_error(reg: Any) -> None:
    flow = ops.write(Keys(), [ops.Write("bogus", "openai:x", None, None)])  # type: ignore[arg-type]
    with pytest.raises(ScriptError, match="unknown op"):
        reg._run(flow) if not hasattr(reg, "_runner") else reg._runner.run(reg._target._run(flow))


def test_a_malformed_script_reply_is_a_script_error() -> None:
    flow = ops.write(Keys(), [ops.Write("put", "openai:x", None, None)])
    next(flow)
    with pytest.raises(ScriptError, match="malformed reply"):
        flow.send(["not", "numbers"])
    flow = ops.write(Keys(), [ops.Write("put", "openai:x", None, None)])
    next(flow)
    with pytest.raises(ScriptError, match="unknown status"):
        flow.send([9, 1])


def test_other_redis_errors_are_backend_errors() -> None:
    with pytest.raises(BackendError), map_redis_errors():
        raise redis.exceptions.DataError("bad data")
    with pytest.raises(RegistryError), map_redis_errors():
        raise redis.exceptions.TimeoutError("slow")


@pytest.mark.parametrize(
    "exc",
    [
        redis.exceptions.ClusterDownError("CLUSTERDOWN The cluster is down"),
        redis.exceptions.MasterDownError("MASTERDOWN Link with MASTER is down"),
        redis.exceptions.TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
        redis.exceptions.SlotNotCoveredError("Command # 1 (EVALSHA) has no node for slot 5"),  # not a RedisError
    ],
    ids=["clusterdown", "masterdown", "tryagain", "slot-not-covered"],
)
def test_a_cluster_that_cannot_serve_a_slot_now_is_backend_unavailable(exc: Exception) -> None:
    """So the breaker counts it and the fault policy applies, as to a refused connection."""
    with pytest.raises(BackendUnavailable, match="Redis Cluster unavailable") as raised, map_redis_errors():
        raise exc
    assert raised.value.__cause__ is exc


def test_other_cluster_client_errors_are_backend_errors() -> None:
    with pytest.raises(BackendError) as raised, map_redis_errors():
        raise redis.exceptions.RedisClusterException("Cluster mode is not enabled on this node")
    assert not isinstance(raised.value, BackendUnavailable)


def test_the_fakeredis_fallback_runs_the_catalog() -> None:
    """What a machine without redis-server uses: the same scripts, through fakeredis and lupa."""
    server = embedded.start(prefer="fakeredis")
    try:
        assert server.kind == "fakeredis"
        assert "fakeredis" in server.description
        reg = Registry.from_url(server.url, watch=False)
        reg.register_models([model(), model(id="gpt-4o")])
        reg.update_model("openai:gpt-4", {"context_window": 100})
        other = Registry.from_url(server.url, watch=False)
        assert [m.context_window for m in other.list_models()] == [100, 8192]
        reg.close()
        other.close()
    finally:
        server.stop()
        server.stop()  # idempotent


def test_a_private_redis_server_starts_and_stops() -> None:
    if embedded.redis_server_path() is None:
        pytest.skip("redis-server is not on PATH")
    with embedded.start() as server:
        assert server.kind == "redis-server"
        assert server.version.count(".") == 2
        assert "private redis-server" in server.description
        client = redis.Redis.from_url(server.url, decode_responses=True)
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        client.close()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(server.url, socket_connect_timeout=0.2).ping()


def test_no_redis_server_binary(tmp_path: Any) -> None:
    with pytest.raises(FileNotFoundError):
        embedded.start_redis_server(executable=None) if embedded.redis_server_path() is None else (
            embedded.start_redis_server(executable=str(tmp_path / "missing"))
        )
    broken = tmp_path / "redis-server"
    broken.write_text("#!/bin/sh\nexit 3\n")
    broken.chmod(0o755)
    with pytest.raises(RuntimeError, match="could not start redis-server"):
        embedded.start_redis_server(executable=str(broken), timeout=2)


def test_keys_round_trip_and_refuse_foreign_keys() -> None:
    keys = Keys("ns")
    assert keys.model_key_of(keys.model("bedrock:a.b:0")) == "bedrock:a.b:0"
    with pytest.raises(ValueError, match="not a model key"):
        keys.model_key_of("{other:catalog}:model:x:y")
