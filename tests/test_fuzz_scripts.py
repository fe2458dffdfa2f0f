"""Every Lua script called directly with malformed KEYS and ARGV (hypothesis).

Each example builds some state with well-formed calls, sometimes leaves keys of the wrong type
(a string where a hash goes, a list, a set, a zset, a stream, a hash with foreign fields) under
the names a script takes, then calls the script with good calls broken in one to three ways:
an argument replaced by a hostile value (a number in a spelling Lua almost reads, NaN, inf,
2^53, 2^64, binary junk, a keyword of the wrong place, a 70 kB string), an argument added or
dropped, a key added or dropped, a key swapped for one outside the namespace.

Whatever the call, either

* it fails with the script's own error (``ERR_ARGS ...``, ``ERR_OVERFLOW ...``) or Redis'
  ``WRONGTYPE`` for a key of the wrong type, never a Lua runtime error, and Redis is exactly
  as before (every key's DUMP and TTL), or
* it succeeds and has written only keys it was given in KEYS,

within the client's socket timeout (no script loops on what it is given).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from registry import scripts
from tests.fuzzing import TIMEOUT, RedisState, as_bytes, fuzz_settings, hostile_arg

pytestmark = TIMEOUT

NOW = 1_700_000_123_456
DAY = 86_400_000
HOUR = 3_600_000
ALLOWED = ("ERR_ARGS ", "ERR_OVERFLOW ", "WRONGTYPE ")

A = "{fz:adm:openai:m}"  # a model's admission tag
DENIED, EVENTS, TENANTS = f"{A}:l:denied", f"{A}:events", f"{A}:l:tenants"
LIMITS = [  # name, window key, window ms, bucket ms
    ("requests_per_minute", f"{A}:w:rpm", 60_000, 1_000),
    ("tokens_per_minute", f"{A}:w:tpm", 60_000, 1_000),
    ("requests_per_day", f"{A}:w:rpd", DAY, 900_000),
    ("tenant.tokens_per_minute", f"{A}:t:acme:w:tpm", 60_000, 1_000),
]
TTLS = st.integers(10_000, HOUR)  # long enough not to expire during an example (real time)
TOKENS = st.sampled_from(["t1", "t2", "t3"])
IDS = st.sampled_from(["id1", "id2"])
C = "{fz:catalog}"
MODELS = ["openai:a", "openai:b", "bedrock:x.y-v1:0"]
B = "{fz:bud:acme}"
SPENDS = [f"{B}:s:*:day:0", f"{B}:s:*:week:0", f"{B}:s:openai:a:day:0"]
FIELDS = ["requests", "successes", "failures", "input_tokens", "output_tokens", "cost_units", "latency_count"]

# Where a key of a call may be sent instead: outside every namespace, or in another's slot.
OUTSIDE = ["plain", "{other}:w:rpm", "", "registry:catalog:meta", "\xff", "{fz:adm:openai:m}"]
Call = tuple[list[str], list[Any]]


def _now(data: st.DataObject) -> int | str:
    """The testing clock hook's value, or "" for the server's TIME."""
    return data.draw(st.one_of(st.just(""), st.integers(NOW, NOW + 2 * DAY)), label="now")


def _indexes(now: int | str) -> list[int]:
    at = NOW if now == "" else int(now)
    return [at // 60_000, at // HOUR, at // DAY]


def good_acquire(data: st.DataObject) -> Call:
    limits = data.draw(st.lists(st.sampled_from(LIMITS), unique=True, max_size=4), label="limits")
    m = data.draw(st.integers(1, 3), label="m")
    mode = data.draw(st.sampled_from(["acquire", "acquire", "shadow", "peek"]), label="mode")
    keys = [key for _, key, _, _ in limits] + [DENIED]
    args: list[Any] = [_now(data), mode, data.draw(TTLS), len(limits), m]
    for name, _, window, bucket in limits:
        args += [name, data.draw(st.integers(0, 30)), window, bucket]
    for _ in range(m):
        token = data.draw(TOKENS)
        keys.append(f"{A}:r:{token}" if data.draw(st.booleans()) else f"{A}:r:{data.draw(IDS)}")
        args += [token, *(data.draw(st.integers(0, 40)) for _ in limits)]
    return keys, args


def _pairs(data: st.DataObject) -> list[Any]:
    chosen = data.draw(st.lists(st.sampled_from(FIELDS), unique=True, min_size=1, max_size=4))
    return [part for name in chosen for part in (name, data.draw(st.integers(1, 10**6)))]


def _ledger(now: int | str, tenant: str) -> tuple[list[str], list[int]]:
    """A usage record's ledger keys (named after ``now``'s buckets, or NOW's) and indexes."""
    minute, hour, day = indexes = _indexes(now)
    periods = ("total", f"m:{minute}", f"h:{hour}", f"d:{day}")
    keys = [f"{A}:l:{p}" for p in periods]
    if tenant:
        keys += [*(f"{A}:t:{tenant}:l:{p}" for p in periods), TENANTS]
    return keys, indexes


NONCES = st.sampled_from(["n1", "n2", "A" * 32])  # a call's own: two calls may share one (a re-send)


def good_settle(data: st.DataObject) -> Call:
    token = data.draw(TOKENS)
    at = data.draw(st.integers(NOW - HOUR, NOW))
    now = data.draw(st.one_of(st.just(""), st.integers(at, at + 2 * HOUR)))
    charges = data.draw(st.lists(st.sampled_from(LIMITS), unique=True, max_size=4))
    res = f"{A}:r:{token}" if data.draw(st.booleans()) else f"{A}:r:{data.draw(IDS)}"
    keys = [f"{A}:s:{token}", res] + [key for _, key, _, _ in charges]
    args: list[Any] = [now, len(charges), token, at, data.draw(TTLS), data.draw(NONCES)]
    for name, _, window, bucket in charges:
        args += [name, at // bucket, data.draw(st.integers(0, 40)), window, bucket, data.draw(st.integers(0, 40))]
    if data.draw(st.booleans(), label="ledger"):
        tenant = data.draw(st.sampled_from(["", "acme"]))
        ledger_keys, indexes = _ledger(now, tenant)
        keys += [EVENTS, *ledger_keys]
        args += ["ledger", *indexes, data.draw(IDS), data.draw(st.integers(0, 5)), tenant, *_pairs(data)]
    return keys, args


def good_record_usage(data: st.DataObject) -> Call:
    now = _now(data)
    tenant = data.draw(st.sampled_from(["", "acme"]))
    request_id = data.draw(st.sampled_from(["", "id1", "id2"]))
    ledger_keys, indexes = _ledger(now, tenant)
    keys = [f"{A}:l:id:{request_id or '-'}", EVENTS, *ledger_keys]
    args = [now, *indexes, data.draw(st.integers(10_000, DAY)), data.draw(NONCES), request_id]
    args += [data.draw(st.integers(0, 5)), tenant]
    return keys, args + _pairs(data)


def good_catalog_write(data: st.DataObject) -> Call:
    chosen = data.draw(st.lists(st.sampled_from(MODELS), unique=True, min_size=1, max_size=3))
    keys = [f"{C}:meta", f"{C}:models", f"{C}:events", *(f"{C}:model:{m}" for m in chosen)]
    args: list[Any] = [data.draw(st.integers(1, 100)), f"{C}:changes", len(chosen)]
    for name in chosen:
        op = data.draw(st.sampled_from(["create", "put", "delete"]))
        expected = data.draw(st.sampled_from(["", "", "0", "1", "2", "3"]))
        fields = data.draw(
            st.dictionaries(st.sampled_from(["provider", "id", "cost"]), st.text(max_size=5), min_size=1)
        )
        args += [op, name, expected, "" if op == "delete" else json.dumps(fields)]
    return keys, args


def good_budget_reserve(data: st.DataObject) -> Call:
    spends = data.draw(st.lists(st.sampled_from(SPENDS), unique=True, min_size=1, max_size=3))
    mode = data.draw(st.sampled_from(["acquire", "acquire", "shadow", "peek"]))
    now = data.draw(st.one_of(st.just(""), st.integers(0, DAY - 1)))
    keys = [f"{B}:r:{data.draw(IDS)}", *spends]
    args: list[Any] = [now, mode, data.draw(TTLS), data.draw(TOKENS), data.draw(st.integers(0, 2_000))]
    args.append(len(spends))
    for _ in spends:
        args += [data.draw(st.integers(1, 5_000)), data.draw(st.integers(10_000, DAY)), 0, DAY]
    return keys, args


def good_budget_settle(data: st.DataObject) -> Call:
    spends = data.draw(st.lists(st.sampled_from(SPENDS), unique=True, min_size=1, max_size=3))
    mode = data.draw(st.sampled_from(["settle", "release", "spend"]))
    keys = [f"{B}:r:{data.draw(IDS)}", *spends, f"{B}:events"]
    args: list[Any] = [data.draw(st.one_of(st.just(""), st.integers(0, DAY - 1))), data.draw(TOKENS), mode]
    args += [data.draw(st.integers(0, 3_000)), len(spends), data.draw(st.integers(1, 100)), "acme", "USD", "id1"]
    for spend in spends:
        scope, period = spend.split(":s:")[1].rsplit(":", 2)[:2]
        amount = data.draw(st.sampled_from(["", "1000", "5000"]))
        marks = data.draw(st.sampled_from(["", "50:500 80:800", "100:1000"]))
        args += [scope, period, 0, amount, marks, data.draw(st.integers(10_000, DAY))]
    return keys, args


GOOD: dict[str, Callable[[st.DataObject], Call]] = {
    "acquire": good_acquire,
    "settle": good_settle,
    "record_usage": good_record_usage,
    "catalog_write": good_catalog_write,
    "budget_reserve": good_budget_reserve,
    "budget_settle": good_budget_settle,
}


def test_every_script_is_fuzzed() -> None:
    assert sorted(GOOD) == scripts.names()


def mutate(data: st.DataObject, call: Call) -> Call:
    """The call broken in one way: an argument replaced, added or dropped; a key added, dropped
    or swapped for one outside the namespace."""
    keys, args = list(call[0]), list(call[1])
    how = data.draw(st.sampled_from(["replace", "replace", "replace", "insert", "drop", "key", "drop key", "add key"]))
    if how == "replace" and args:
        args[data.draw(st.integers(0, len(args) - 1))] = data.draw(hostile_arg(), label="hostile")
    elif how == "insert":
        args.insert(data.draw(st.integers(0, len(args))), data.draw(hostile_arg(), label="hostile"))
    elif how == "drop" and args:
        del args[data.draw(st.integers(0, len(args) - 1))]
    elif how == "key" and keys:
        keys[data.draw(st.integers(0, len(keys) - 1))] = data.draw(st.sampled_from(OUTSIDE))
    elif how == "drop key" and keys:
        del keys[data.draw(st.integers(0, len(keys) - 1))]
    elif how == "add key":
        keys.insert(data.draw(st.integers(0, len(keys))), data.draw(st.sampled_from(OUTSIDE + keys)))
    return keys, args


def plant(client: redis.Redis, key: str, kind: str) -> None:
    """A key of ``kind`` where a script expects another (or a hash with fields it never writes)."""
    client.delete(key)
    if kind == "string":
        client.set(key, "junk")
    elif kind == "list":
        client.rpush(key, "junk")
    elif kind == "set":
        client.sadd(key, "junk")
    elif kind == "zset":
        client.zadd(key, {"junk": 1})
    elif kind == "stream":
        client.xadd(key, {"junk": "1"})
    else:
        client.hset(key, "junk", "x")


@pytest.fixture
def rb(redis_url: str) -> Iterator[redis.Redis]:
    """A client that keeps bytes (DUMP is binary) and gives up on a script after 10 s."""
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    for name in scripts.names():
        client.script_load(scripts.load(name).source)
    yield client
    client.close()


def call_checked(client: redis.Redis, name: str, call: Call) -> Any:
    """Call the script; assert the property above. The reply, or None after an error."""
    keys, args = call
    before = RedisState.of(client)
    try:
        reply = client.evalsha(scripts.load(name).sha, len(keys), *keys, *args)
    except redis.ResponseError as exc:
        message = str(exc)
        assert message.startswith(ALLOWED), f"{name}.lua failed with an error not its own: {message[:500]}"
        changed = before.changed(RedisState.of(client))
        assert not changed, f"{name}.lua failed ({message[:200]}) after writing {sorted(changed)}"
        return None
    changed = before.changed(RedisState.of(client))
    assert changed <= {as_bytes(k) for k in keys}, f"{name}.lua wrote keys it was not given: {changed}"
    return reply


@pytest.mark.parametrize("name", sorted(GOOD))
@fuzz_settings()
@given(data=st.data())
def test_a_malformed_call_fails_with_the_scripts_error_and_writes_nothing(
    rb: redis.Redis, name: str, data: st.DataObject
) -> None:
    rb.flushall()
    good = GOOD[name]
    universe = sorted({key for _ in range(3) for key in good(data)[0]})
    for key in data.draw(st.lists(st.sampled_from(universe), unique=True, max_size=2), label="planted"):
        plant(rb, key, data.draw(st.sampled_from(["string", "list", "set", "zset", "stream", "hash"])))
    for _ in range(data.draw(st.integers(0, 3), label="good calls first")):
        call_checked(rb, name, good(data))
    for _ in range(data.draw(st.integers(1, 3), label="malformed calls")):
        call = good(data)
        for _ in range(data.draw(st.integers(1, 3), label="breaks")):
            call = mutate(data, call)
        call_checked(rb, name, call)
        call_checked(rb, name, good(data))  # and what it left behind does not break a good call


# -- what the fuzzing found: each case once, by hand ----------------------------------------------


def refused(client: redis.Redis, name: str, keys: list[str], args: list[Any]) -> str:
    """The call fails, with Redis exactly as before; its message."""
    before = RedisState.of(client)
    with pytest.raises(redis.ResponseError) as failed:
        client.evalsha(scripts.load(name).sha, len(keys), *keys, *args)
    assert not before.changed(RedisState.of(client))
    return str(failed.value)


def test_acquire_reads_its_denial_counters_type_before_writing(rb: redis.Redis) -> None:
    """Two requests in one call, the first admitted and the second refused: the refusal count
    used to be written last, after the first request's window and record."""
    plant(rb, DENIED, "string")
    keys = [f"{A}:w:rpm", DENIED, f"{A}:r:id1", f"{A}:r:id2"]
    args = [NOW, "acquire", HOUR, 1, 2, "requests_per_minute", 1, 60_000, 1_000, "t1", 1, "t2", 1]
    assert refused(rb, "acquire", keys, args).startswith("WRONGTYPE")


@pytest.mark.parametrize("cap", ["1.5", "inf", "nan", "100000001"])
def test_catalog_write_refuses_a_stream_cap_xadd_would(rb: redis.Redis, cap: str) -> None:
    keys = [f"{C}:meta", f"{C}:models", f"{C}:events", f"{C}:model:openai:a"]
    args = [cap, "chan", 1, "put", "openai:a", "", '{"a": "b"}']
    assert "stream cap" in refused(rb, "catalog_write", keys, args)


@pytest.mark.parametrize("index", [1, 2], ids=["models", "events"])
def test_catalog_write_reads_its_index_and_stream_before_writing(rb: redis.Redis, index: int) -> None:
    keys = [f"{C}:meta", f"{C}:models", f"{C}:events", f"{C}:model:openai:a"]
    plant(rb, keys[index], "string")
    args = [100, "chan", 1, "put", "openai:a", "", '{"a": "b"}']
    assert refused(rb, "catalog_write", keys, args).startswith("WRONGTYPE")


def test_catalog_write_refuses_more_fields_than_it_can_write(rb: redis.Redis) -> None:
    keys = [f"{C}:meta", f"{C}:models", f"{C}:events", f"{C}:model:openai:a"]
    fields = json.dumps({f"f{i}": "x" for i in range(5_000)})
    assert "more than 1000 fields" in refused(
        rb, "catalog_write", keys, [100, "chan", 1, "put", "openai:a", "", fields]
    )


def _record(tenant: str = "acme", cap: int = 5, pairs: tuple[Any, ...] = ("requests", 1)) -> Call:
    ledger_keys, indexes = _ledger(NOW, tenant)
    keys = [f"{A}:l:id:id1", EVENTS, *ledger_keys]
    return keys, [NOW, *indexes, HOUR, "n1", "id1", cap, tenant, *pairs]


@pytest.mark.parametrize("planted", [EVENTS, TENANTS, f"{A}:t:acme:l:total"], ids=["events", "tenants", "ledger"])
def test_record_usage_fails_on_a_key_of_the_wrong_type_having_written_nothing(rb: redis.Redis, planted: str) -> None:
    """The usage stream and the tenant set used to be written after the counters."""
    plant(rb, planted, "string")
    message = refused(rb, "record_usage", *_record())
    assert message.startswith("WRONGTYPE"), message  # not "would overflow"


@pytest.mark.parametrize("by", ["007", "-0", "+1", "1.0", "0", "-5"])
def test_record_usage_refuses_an_increment_hincrby_would_or_that_takes_away(rb: redis.Redis, by: str) -> None:
    """HINCRBY refuses "007" and "-0": that failed the call as an "overflow". A counter that
    held 0 (a zero or negative increment left it so) was deleted by the undo of a failed call."""
    assert "must be a positive integer" in refused(rb, "record_usage", *_record(pairs=("requests", by)))


def test_record_usage_takes_at_most_64_counters(rb: redis.Redis) -> None:
    """unpack() of thousands of them into XADD failed after the counters were written."""
    many = tuple(part for i in range(5_000) for part in (f"f{i}", 1))
    assert "at most 64" in refused(rb, "record_usage", *_record(pairs=many))
    assert "at most 64" in refused(rb, "record_usage", *_record(pairs=many[:130]))
    keys, args = _record(pairs=many[:128])
    assert rb.evalsha(scripts.load("record_usage").sha, len(keys), *keys, *args)[0] == 1


@pytest.mark.parametrize("planted", [EVENTS, TENANTS])
def test_settle_reads_the_ledgers_stream_and_tenant_set_before_writing(rb: redis.Redis, planted: str) -> None:
    plant(rb, planted, "set" if planted == EVENTS else "string")
    ledger_keys, indexes = _ledger(NOW, "acme")
    keys = [f"{A}:s:t1", f"{A}:r:t1", f"{A}:w:rpm", EVENTS, *ledger_keys]
    args = [NOW, 1, "t1", NOW, HOUR, "n1", "requests_per_minute", NOW // 1_000, 1, 60_000, 1_000, 0]
    args += ["ledger", *indexes, "id1", 5, "acme", "requests", 1]
    assert refused(rb, "settle", keys, args).startswith("WRONGTYPE")


@pytest.mark.parametrize("estimate", [10, 900], ids=["held", "too large for the first"])
def test_budget_reserve_reads_every_spend_hash_before_writing(rb: redis.Redis, estimate: int) -> None:
    """The first budget's lapsed holds were released (or its refusal counted) before the second
    budget's hash was read."""
    rb.hset(SPENDS[0], mapping={"held": "5", "h:old": f"{NOW - 1} 5", "next": str(NOW - 1)})
    plant(rb, SPENDS[1], "string")
    args = [NOW, "acquire", HOUR, "t1", estimate, 2, 500, DAY, 0, NOW + DAY, 1_000, DAY, 0, NOW + DAY]
    assert refused(rb, "budget_reserve", [f"{B}:r:id1", SPENDS[0], SPENDS[1]], args).startswith("WRONGTYPE")


def test_budget_settle_reads_its_event_stream_before_writing(rb: redis.Redis) -> None:
    plant(rb, f"{B}:events", "string")
    keys = [f"{B}:r:id1", SPENDS[0], f"{B}:events"]
    args = [5, "-", "spend", 600, 1, 100, "acme", "USD", "id1", "*", "day", 0, 1000, "50:500", DAY]
    assert refused(rb, "budget_settle", keys, args).startswith("WRONGTYPE")


def test_acquire_drops_a_window_field_that_is_not_a_bucket(rb: redis.Redis) -> None:
    """A field no script writes made the recount fail with a Lua error ("attempt to perform
    arithmetic on local 'index'"); it counts for nothing and goes with the expired buckets."""
    rpm = f"{A}:w:rpm"
    rb.hset(rpm, mapping={"junk": "x", str(NOW // 1_000 - 1): "2", str(NOW // 1_000 - 2): "y"})
    keys, args = [rpm, DENIED, f"{A}:r:t1"], [NOW, "acquire", HOUR, 1, 1, "requests_per_minute", 5, 60_000, 1_000]
    reply = rb.evalsha(scripts.load("acquire").sha, len(keys), *keys, *args, "t1", 1)
    assert reply[1:6] == [1, 0, 0, b"", 2]  # admitted: 2 held before, 1 now, 5 allowed
    assert rb.hgetall(rpm) == {
        str(NOW // 1_000 - 1).encode(): b"2",
        str(NOW // 1_000).encode(): b"1",
        b"_sum": b"3",
        b"_low": str(NOW // 1_000 - 1).encode(),
    }


@pytest.mark.parametrize("name", ["record_usage", "settle", "catalog_write", "budget_reserve", "budget_settle"])
def test_a_key_given_in_two_roles_is_refused(rb: redis.Redis, name: str) -> None:
    """A key in two roles (the usage stream also as a ledger hash, the models index also as a
    model's hash) was written as one, then failed as the other, halfway through the writes.
    acquire.lua does not look (its hot path): it reads every key it writes before the first
    write, and its writes cannot fail on one another."""
    calls: dict[str, Call] = {
        "record_usage": (lambda keys, args: ([*keys[:2], keys[1], *keys[3:]], args))(*_record(tenant="")),
        "settle": (
            [f"{A}:s:t1", f"{A}:w:rpm", f"{A}:w:rpm"],
            [NOW, 1, "t1", NOW, HOUR, "n1", "requests_per_minute", NOW // 1_000, 1, 60_000, 1_000, 0],
        ),
        "catalog_write": (
            [f"{C}:meta", f"{C}:models", f"{C}:events", f"{C}:models"],
            [100, "chan", 1, "put", "openai:a", "", '{"a": "b"}'],
        ),
        "budget_reserve": (
            [f"{B}:r:id1", SPENDS[0], SPENDS[0]],
            [NOW, "acquire", HOUR, "t1", 1, 2, *[5, DAY, 0, 2 * NOW] * 2],
        ),
        "budget_settle": (
            [f"{B}:r:id1", SPENDS[0], SPENDS[0]],
            [NOW, "-", "spend", 1, 1, 100, "acme", "USD", "id1", "*", "day", 0, 5, "50:2", DAY],
        ),
    }
    keys, args = calls[name]
    assert "given twice" in refused(rb, name, keys, args)
