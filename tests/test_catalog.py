"""Catalog writes and reads through both clients, against the private Redis."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from registry import (
    ConfigError,
    ModelExistsError,
    ModelNotFoundError,
    ModelSpec,
    Registry,
    RevisionConflictError,
    ScriptError,
)
from registry._base import connect
from registry.catalog.codec import decode_entry
from registry.keys import Keys
from tests.conftest import model


def dump(r: redis.Redis) -> dict[str, Any]:
    """Everything in Redis, by key, for before/after comparisons."""
    out: dict[str, Any] = {}
    for key in sorted(r.keys("*")):
        kind = r.type(key)
        if kind == "hash":
            out[key] = r.hgetall(key)
        elif kind == "zset":
            out[key] = r.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            out[key] = r.xrange(key)
        elif kind == "set":
            out[key] = r.smembers(key)
        else:
            out[key] = r.get(key)
    return out


def test_register_get_and_revision(reg: Any, r: redis.Redis) -> None:
    entry = reg.register_model(model())
    assert entry.revision == 1
    assert reg.get_model("openai:gpt-4").cost.input == Decimal(30)
    assert reg.get_entry("openai:gpt-4").revision == 1
    assert reg.revision == 1
    second = reg.register_model(ModelSpec.model_validate(model(id="gpt-4o")))
    assert second.revision == 2
    assert r.hget(Keys().meta, "revision") == "2"


def test_the_hash_layout_is_readable_by_other_tools(reg: Any, r: redis.Redis) -> None:
    reg.register_model(model(rate_limit={"requests_per_minute": 500}, tags=["x"], metadata={"endpoint": "e"}))
    fields = r.hgetall("{registry:catalog}:model:openai:gpt-4")
    assert fields["provider"] == "openai"
    assert fields["id"] == "gpt-4"
    assert fields["context_window"] == "8192"
    assert fields["status"] == "active"
    assert fields["_revision"] == "1"
    assert int(fields["_updated_ms"]) > 1_700_000_000_000
    assert '"input":"30"' in fields["cost"]
    assert '"requests_per_minute":500' in fields["rate_limit"]
    assert fields["tags"] == '["x"]'
    assert "max_output_tokens" not in fields


def test_input_and_output_token_limits_are_stored_only_when_set(reg: Any, r: redis.Redis) -> None:
    """A model without them is stored as before they existed, so a client that predates them
    (its RateLimit refuses unknown fields) still reads it; one with them round-trips."""
    reg.register_models(
        [
            model(rate_limit={"tokens_per_minute": 500}, tenant_limits={"*": {"requests_per_minute": 5}}),
            model(
                "anthropic",
                "claude",
                rate_limit={"input_tokens_per_minute": 30_000, "output_tokens_per_minute": 8_000},
                tenant_limits={"acme": {"output_tokens_per_minute": 100}},
            ),
        ]
    )
    plain = r.hgetall("{registry:catalog}:model:openai:gpt-4")
    assert json.loads(plain["rate_limit"]) == {
        "requests_per_minute": None,
        "tokens_per_minute": 500,
        "requests_per_day": None,
        "note": None,
    }
    assert "input_tokens_per_minute" not in plain["tenant_limits"]
    split = r.hgetall("{registry:catalog}:model:anthropic:claude")
    assert json.loads(split["rate_limit"])["output_tokens_per_minute"] == 8_000
    assert '"output_tokens_per_minute":100' in split["tenant_limits"]
    assert '"input_tokens_per_minute"' not in split["tenant_limits"]
    got = decode_entry(split).model
    assert (got.rate_limit.input_tokens_per_minute, got.rate_limit.tokens_per_minute) == (30_000, None)
    assert got.tenant_limits["acme"].output_tokens_per_minute == 100
    assert got == reg.get_model("anthropic:claude")
    assert decode_entry(plain).model.rate_limit.input_tokens_per_minute is None


def test_every_catalog_key_shares_one_cluster_slot(reg: Any, r: redis.Redis) -> None:
    reg.register_models([model(id=f"m{i}") for i in range(20)])
    slots = {key_slot(k.encode()) for k in r.keys("*")}
    assert len(slots) == 1
    assert key_slot(Keys().changes_channel.encode()) in slots


def test_namespaces_do_not_share_keys(make_registry: Any) -> None:
    a = make_registry(namespace="team-a")
    b = make_registry(namespace="team-b")
    a.register_model(model())
    assert b.list_models() == []
    with pytest.raises(ModelNotFoundError):
        b.get_model("openai:gpt-4")
    with pytest.raises(ConfigError, match="namespace"):
        make_registry(namespace="bad{ns}")


def test_register_existing_refuses_unless_replace(reg: Any, r: redis.Redis) -> None:
    reg.register_model(model())
    before = dump(r)
    with pytest.raises(ModelExistsError, match="openai:gpt-4"):
        reg.register_model(model(context_window=1))
    assert dump(r) == before
    reg.register_model(model(context_window=1), replace=True)
    assert reg.get_model("openai:gpt-4").context_window == 1


def test_batch_register_is_all_or_nothing(reg: Any, r: redis.Redis) -> None:
    reg.register_model(model(id="taken"))
    before = dump(r)
    with pytest.raises(ModelExistsError, match="openai:taken"):
        reg.register_models([model(id="new-1"), model(id="taken"), model(id="new-2")])
    assert dump(r) == before
    with pytest.raises(ConfigError, match=r"models\[1\].*cost\.input"):
        reg.register_models([model(id="new-1"), model(id="new-2", cost={"input": -1, "output": 1})])
    assert dump(r) == before
    with pytest.raises(ConfigError, match="twice"):
        reg.register_models([model(id="dup"), model(id="dup")])
    assert dump(r) == before
    with pytest.raises(ConfigError, match="nothing to write"):
        reg.register_models([])
    with pytest.raises(ConfigError, match="list of models"):
        reg.register_models(model())
    revision = reg.register_models([model(id=f"new-{i}") for i in range(3)])
    assert revision == 2
    assert [m.id for m in reg.list_models()] == ["new-0", "new-1", "new-2", "taken"]


def test_update_merges_and_compare_and_set(reg: Any, r: redis.Redis) -> None:
    reg.register_model(model(rate_limit={"requests_per_minute": 10}))
    entry = reg.update_model("openai:gpt-4", {"cost": {"input": "25"}, "tags": ["legacy"]})
    assert entry.revision == 2
    updated = reg.get_model("openai:gpt-4")
    assert (updated.cost.input, updated.cost.output, updated.tags) == (Decimal(25), Decimal(60), ("legacy",))
    assert updated.rate_limit.requests_per_minute == 10
    before = dump(r)
    with pytest.raises(RevisionConflictError) as info:
        reg.update_model("openai:gpt-4", {"context_window": 1}, expected_revision=1)
    assert (info.value.expected, info.value.actual) == (1, 2)
    assert dump(r) == before
    reg.update_model("openai:gpt-4", {"context_window": 1}, expected_revision=2)
    assert reg.get_entry("openai:gpt-4").revision == 3
    with pytest.raises(ModelNotFoundError):
        reg.update_model("openai:nope", {"context_window": 1})
    with pytest.raises(ConfigError, match="context_window"):
        reg.update_model("openai:gpt-4", {"context_window": -1})
    assert reg.get_model("openai:gpt-4").context_window == 1


def test_delete(reg: Any, r: redis.Redis) -> None:
    reg.register_models([model(), model(id="gpt-4o")])
    assert reg.delete_model("openai:gpt-4") is True
    assert reg.delete_model("openai:gpt-4") is False
    assert [m.key for m in reg.list_models()] == ["openai:gpt-4o"]
    assert r.exists("{registry:catalog}:model:openai:gpt-4") == 0
    assert r.zrange(Keys().models, 0, -1) == ["openai:gpt-4o"]
    with pytest.raises(RevisionConflictError, match="expected revision 5, Redis holds revision 1"):
        reg.delete_model("openai:gpt-4o", expected_revision=5)
    with pytest.raises(RevisionConflictError, match="Redis holds no model"):
        reg.delete_model("openai:gpt-4", expected_revision=3)
    assert reg.delete_model("openai:gpt-4o", expected_revision=1) is True


def test_writes_log_events_and_publish(reg: Any, r: redis.Redis) -> None:
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(Keys().changes_channel)
    reg.register_models([model(), model(id="gpt-4o")])
    reg.delete_model("openai:gpt-4")
    events = r.xrange(Keys().events)
    assert [e[0] for e in events] == ["1-0", "2-0"]
    assert events[0][1] == {"put": "openai:gpt-4\nopenai:gpt-4o", "deleted": "", "ms": events[0][1]["ms"]}
    assert events[1][1] == {"put": "", "deleted": "openai:gpt-4", "ms": events[1][1]["ms"]}
    assert 0 < int(events[0][1]["ms"]) <= int(events[1][1]["ms"])
    seen = []
    deadline = time.monotonic() + 10
    while len(seen) < 2 and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1)
        if message is not None:
            seen.append(message["data"])
    assert seen == ["1", "2"]
    pubsub.close()


def test_another_client_sees_writes_on_its_next_read(make_registry: Any) -> None:
    writer, reader = make_registry(), make_registry()
    assert reader.list_models() == []
    writer.register_model(model())
    assert reader.get_model("openai:gpt-4").context_window == 8192
    writer.update_model("openai:gpt-4", {"context_window": 100})
    assert reader.get_model("openai:gpt-4").context_window == 100
    writer.delete_model("openai:gpt-4")
    with pytest.raises(ModelNotFoundError):
        reader.get_model("openai:gpt-4")


def test_catch_up_after_the_event_stream_was_trimmed(make_registry: Any, r: redis.Redis) -> None:
    writer, reader = make_registry(), make_registry()
    writer.register_models([model(id="a"), model(id="b")])
    assert len(reader.list_models()) == 2
    writer.delete_model("openai:a")
    writer.register_model(model(id="c"))
    r.xtrim(Keys().events, maxlen=0)  # the reader can no longer replay: it must reload
    assert [m.id for m in reader.list_models()] == ["b", "c"]


def test_a_reset_catalog_is_reloaded(make_registry: Any, r: redis.Redis) -> None:
    writer, reader = make_registry(), make_registry()
    writer.register_models([model(id="a"), model(id="b")])
    assert len(reader.list_models()) == 2
    r.flushall()
    writer.register_model(model(id="z"))
    assert [m.id for m in reader.list_models()] == ["z"]


def test_a_lost_revision_counter_heals_from_the_stream(reg: Any, r: redis.Redis) -> None:
    reg.register_models([model(id="a")])
    reg.register_models([model(id="b")])
    r.delete(Keys().meta)
    assert reg.register_model(model(id="c")).revision == 3
    assert r.hget(Keys().meta, "revision") == "3"


def test_a_corrupt_hash_is_reported_not_served(reg: Any, r: redis.Redis) -> None:
    reg.register_model(model())
    r.hset("{registry:catalog}:model:openai:gpt-4", "cost", "{not json")
    r.hincrby(Keys().meta, "revision", 1)
    r.xadd(Keys().events, {"put": "openai:gpt-4", "deleted": ""}, id="2-0")
    with pytest.raises(ScriptError, match="malformed catalog hash for openai:gpt-4"):
        reg.get_model("openai:gpt-4")


def test_scripts_reload_after_script_flush(reg: Any, r: redis.Redis) -> None:
    reg.register_model(model(id="a"))
    r.script_flush()
    reg.register_model(model(id="b"))
    assert len(reg.list_models()) == 2


def test_a_client_without_decoded_responses(redis_url: str) -> None:
    raw = connect(redis_url, decode_responses=False)  # bytes replies
    reg = Registry(raw, watch=False)
    reg.register_models([model(id="a"), model(id="b")])
    other = Registry(connect(redis_url, decode_responses=False), watch=False)
    assert [m.id for m in other.list_models()] == ["a", "b"]
    reg.delete_model("openai:a")
    assert [m.id for m in other.list_models()] == ["b"]
    other.close()
    reg.close()
    raw.close()


def test_bad_keys_and_options(make_registry: Any) -> None:
    reg = make_registry()
    with pytest.raises(ConfigError, match="provider:id"):
        reg.get_model("no-colon")
    with pytest.raises(ConfigError, match="must be a string"):
        reg.get_model(42)
    with pytest.raises(ConfigError, match="refresh_interval"):
        make_registry(refresh_interval=0)
    with pytest.raises(ConfigError, match="Redis URL"):
        Registry.from_url("http://localhost")
