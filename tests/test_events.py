"""Events: the streams' parsing (pure), ``on()`` callbacks (sync and asyncio), ``events()`` and
``registry events [--follow]``.

Delivery is awaited with timeouts (the condition is polled while the follower runs: a thread,
or the asyncio task during ``runner.run``); nothing is asserted after a bare sleep. That an
event did *not* reach a callback is asserted once a later event reached every callback: one
follower delivers in order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis

import registry.cli.events as cli_events
from registry import AsyncRegistry, ConfigError, Registry, RegistryError
from registry._core import Commands
from registry.catalog.snapshot import Snapshot
from registry.cli.output import Output
from registry.events import (
    BUDGET_THRESHOLD,
    CATALOG_CHANGED,
    USAGE_RECORDED,
    Event,
    Follower,
    check_event_type,
    event_types,
    merge_events,
    parse_budget,
    parse_catalog,
    parse_entry,
    parse_usage,
    read_events,
    source_of,
    stream_keys,
)
from registry.keys import Keys
from tests.conftest import ROOT, SyncFacade, model

KEYS = Keys()
WAIT = 10.0

# model(): 30 and 60 per 1M tokens: 1000 in + 200 out cost 0.03 + 0.012 = 0.042 USD
COST_UNITS = 42_000_000


def _inner(reg: Any) -> Any:
    return reg._target if isinstance(reg, SyncFacade) else reg


def until(reg: Any, condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait until ``condition()`` holds, letting an async client's follower task run meanwhile."""

    async def wait_async() -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    if isinstance(reg, SyncFacade):
        ok = reg._runner.run(wait_async())
    else:
        deadline = time.monotonic() + timeout
        while not (ok := condition()) and time.monotonic() < deadline:
            time.sleep(0.005)
    assert ok, f"timed out after {timeout}s waiting for {condition}"


class Inbox:
    """A callback that keeps what it receives (thread-safe enough: list.append)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.events: list[Event] = []
        self.calls = 0
        self.fail_first = fail_first

    def __call__(self, event: Event) -> None:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise RuntimeError("callback bug")
        self.events.append(event)

    def types(self) -> list[str]:
        return [e.type for e in self.events]


def _follower_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("registry-events-") and t.is_alive()]


# -- pure parsing ---------------------------------------------------------------------------------


def test_event_types_are_checked() -> None:
    assert check_event_type("budget.threshold") == BUDGET_THRESHOLD
    assert event_types("*") == {CATALOG_CHANGED, USAGE_RECORDED, BUDGET_THRESHOLD}
    assert event_types(["usage.recorded"]) == {USAGE_RECORDED}
    for bad in ("budget", "", None, "catalog.*"):
        with pytest.raises(ConfigError, match="event type"):
            check_event_type(bad)
    with pytest.raises(ConfigError, match="at least one"):
        event_types([])


def test_parse_usage_entry() -> None:
    stream = KEYS.usage_events("openai:gpt-4")
    fields = {
        "type": "usage.recorded",
        "request_id": "r-1",
        "tenant": "acme",
        "requests": "1",
        "successes": "1",
        "input_tokens": "1000",
        "output_tokens": "200",
        "cost_units": str(COST_UNITS),
        "latency_us_sum": "250000",
        "latency_count": "1",
        "lat_le_250": "1",
    }
    event = parse_entry(KEYS, stream, "1700000000123-4", fields, None)
    assert event == parse_usage(stream, "1700000000123-4", fields, "openai:gpt-4")
    assert (event.type, event.model, event.tenant, event.id) == (
        USAGE_RECORDED,
        "openai:gpt-4",
        "acme",
        "1700000000123-4",
    )
    assert event.time == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert event.data == {
        "requests": 1,
        "successes": 1,
        "failures": 0,
        "throttled": 0,  # counters the entry leaves out (it writes none that is 0) are 0
        "input_tokens": 1000,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "output_tokens": 200,
        "cost_units": COST_UNITS,
        "cost": Decimal("0.042"),
        "currency": None,  # no snapshot to say in which currency the model is priced
        "latency_us_sum": 250000,
        "latency_count": 1,
        "lat_le_250": 1,
        "request_id": "r-1",
    }
    assert str(event.data["cost"]) == "0.042000000"  # exact, from integer nano-units
    bare = parse_usage(stream, "5-0", {"type": "usage.recorded", "request_id": "", "tenant": ""}, "openai:gpt-4")
    assert (bare.tenant, bare.data["request_id"], bare.data["cost"]) == (None, None, Decimal(0))


def test_a_usage_entrys_429_and_cache_counts() -> None:
    """``throttled`` and the cache counters, as the scripts write them (only when not 0), parse
    as integers; the printed line shows them when they are not 0."""
    stream = KEYS.usage_events("openai:gpt-4")
    counted = {"type": "usage.recorded", "request_id": "r-2", "tenant": "", "requests": "1", "successes": "1"}
    cached = {**counted, "input_tokens": "1200", "cached_input_tokens": "1024", "cache_write_tokens": "100"}
    cached |= {"output_tokens": "90", "cost_units": "2185200"}
    event = parse_usage(stream, "1700000000000-0", cached, "openai:gpt-4")
    data = event.data
    assert (data["input_tokens"], data["cached_input_tokens"], data["cache_write_tokens"]) == (1200, 1024, 100)
    assert (data["throttled"], data["failures"], data["cost"]) == (0, 0, Decimal("0.0021852"))
    assert cli_events.event_line(event) == (
        "2023-11-14T22:13:20.000Z usage.recorded openai:gpt-4 in=1200 cached=1024 cache_write=100 out=90 cost=0.0021852"
    )
    refused = {**counted, "successes": "0", "failures": "1", "throttled": "1"}
    event = parse_usage(stream, "1700000000000-1", refused, "openai:gpt-4")
    assert (event.data["throttled"], event.data["cached_input_tokens"], event.data["cost"]) == (1, 0, Decimal(0))
    assert cli_events.event_line(event) == (
        "2023-11-14T22:13:20.000Z usage.recorded openai:gpt-4 in=0 out=0 cost=0 failed throttled"
    )


def test_parse_budget_entry() -> None:
    stream = KEYS.budget_events("acme")
    fields = {
        "type": "budget.threshold",
        "tenant": "acme",
        "scope": "*",
        "period": "day",
        "index": "19700",
        "threshold": "80",
        "amount_units": "10000000000",
        "spent_units": "8000000001",
        "currency": "USD",
    }
    event = parse_entry(KEYS, stream, "1700000000000-0", fields, None)
    assert event == parse_budget(stream, "1700000000000-0", fields, "acme")
    assert (event.type, event.tenant, event.model) == (BUDGET_THRESHOLD, "acme", None)
    assert event.data == {
        "scope": "*",
        "period": "day",
        "index": 19700,
        "threshold": 80,
        "amount_units": 10_000_000_000,
        "spent_units": 8_000_000_001,
        "currency": "USD",
        "amount": Decimal("10"),
        "spent": Decimal("8.000000001"),
    }
    line = cli_events.event_line(event)
    assert line == "2023-11-14T22:13:20.000Z budget.threshold acme */day 80% spent 8.000000001 of 10.00 USD"


def test_parse_catalog_entry() -> None:
    fields = {"put": "openai:a\n@budget:acme\nopenai:b", "deleted": "x:y\n@budget:gone"}
    event = parse_entry(KEYS, KEYS.events, "12-0", fields, None)
    assert event == parse_catalog(KEYS.events, "12-0", fields)
    assert (event.type, event.time) == (CATALOG_CHANGED, None)  # the id is a revision, not a time
    assert event.data == {
        "revision": 12,
        "put": ["openai:a", "openai:b"],
        "budgets_put": ["acme"],
        "deleted": ["x:y"],
        "budgets_deleted": ["gone"],
    }
    assert cli_events.event_line(event) == (
        "-                        catalog.changed rev 12 put openai:a,openai:b deleted x:y "
        "budgets acme budgets deleted gone"
    )
    empty = parse_catalog(KEYS.events, "3-0", {"put": "", "deleted": ""})
    assert empty.data["put"] == empty.data["deleted"] == []
    with pytest.raises(ConfigError, match="not an events stream"):
        parse_entry(KEYS, "elsewhere", "1-0", {}, None)
    with pytest.raises(ConfigError, match="stream id"):
        parse_catalog(KEYS.events, "12-x", {})


def test_streams_of_a_snapshot_and_back() -> None:
    keys = Keys("ns")
    snapshot = dataclasses.replace(Snapshot(), budgets={"acme": ()})
    assert stream_keys(keys, snapshot, {CATALOG_CHANGED}) == ["{ns:catalog}:events"]
    assert source_of(keys, "{ns:catalog}:events") == (CATALOG_CHANGED, None)
    assert source_of(keys, keys.usage_events("openai:gpt-4o:2024")) == (USAGE_RECORDED, "openai:gpt-4o:2024")
    assert source_of(keys, keys.budget_events("acme")) == (BUDGET_THRESHOLD, "acme")
    assert source_of(keys, "{other:adm:openai:x}:events") is None
    assert source_of(keys, "{ns:adm:}:events") is None
    assert stream_keys(keys, snapshot, {BUDGET_THRESHOLD}) == [keys.budget_events("acme")]


def test_merge_orders_by_time_and_places_catalog_events_without_one() -> None:
    at = datetime(2025, 1, 1, tzinfo=UTC)
    usage = [Event(USAGE_RECORDED, "u", f"{i}-0", at + timedelta(seconds=i)) for i in (1, 3, 5)]
    timed = Event(CATALOG_CHANGED, "c", "7-0", at + timedelta(seconds=2))
    before = Event(CATALOG_CHANGED, "c", "1-0", None)  # before revision 7: by 2s at the latest
    after = Event(CATALOG_CHANGED, "c", "8-0", None)  # nothing known after it: last
    merged = merge_events([after, *usage, timed, before])
    assert [(e.stream, e.id) for e in merged] == [
        ("u", "1-0"),
        ("c", "1-0"),
        ("c", "7-0"),
        ("u", "3-0"),
        ("u", "5-0"),
        ("c", "8-0"),
    ]
    same_ms = Event(USAGE_RECORDED, "a", "9-0", at + timedelta(seconds=2))
    assert [e.type for e in merge_events([same_ms, timed])] == [CATALOG_CHANGED, USAGE_RECORDED]


def test_read_events_flow_shapes_and_positions() -> None:
    """The XREAD request, and both reply shapes redis-py gives (RESP2 list, RESP3 dict)."""
    streams = {"a": "0-0", "b": "5-0"}
    flow = read_events(streams, 1000, 10)
    request = next(flow)
    assert request == Commands((("XREAD", "COUNT", 10, "BLOCK", 1000, "STREAMS", "a", "b", "0-0", "5-0"),), False)
    with pytest.raises(StopIteration) as stop:
        flow.send([[["a", [("1-0", {"k": "v"}), ("2-0", {"k": "w"})]], ["b", [("6-0", {})]]]])
    assert stop.value.value == [("a", "1-0", {"k": "v"}), ("a", "2-0", {"k": "w"}), ("b", "6-0", {})]
    assert streams == {"a": "2-0", "b": "6-0"}
    flow = read_events(streams, None, 5)
    assert "BLOCK" not in next(flow).commands[0]
    with pytest.raises(StopIteration) as stop:
        flow.send([{b"a": [[(b"3-0", [b"k", b"x"])]]}])  # RESP3, undecoded, fields flat
    assert stop.value.value == [("a", "3-0", {"k": "x"})]
    flow = read_events(streams, 1000, 10)
    next(flow)
    with pytest.raises(StopIteration) as stop:
        flow.send([None])  # timed out
    assert stop.value.value == []
    assert list(read_events({}, 1000, 10)) == []  # nothing to read: no request


# -- on(): callbacks ------------------------------------------------------------------------------


def test_a_catalog_write_is_one_event(make_registry: Any) -> None:
    reg, writer = make_registry(), make_registry()
    writer.register_model(model(id="old"))
    inbox = Inbox()
    subscription = reg.on("catalog.changed", inbox)
    assert subscription.active
    assert subscription.event_type == CATALOG_CHANGED
    writer.register_models([model(id="a"), model(id="b")])
    writer.delete_model("openai:old")
    until(reg, lambda: len(inbox.events) >= 2)
    writer.update_model("openai:a", {"context_window": 100})
    until(reg, lambda: len(inbox.events) >= 3)
    put, deleted, updated = inbox.events
    assert (put.data["put"], put.data["deleted"]) == (["openai:a", "openai:b"], [])
    assert (deleted.data["put"], deleted.data["deleted"]) == ([], ["openai:old"])
    assert updated.data["put"] == ["openai:a"]
    revision = writer.refresh()
    assert [e.data["revision"] for e in inbox.events] == [revision - 2, revision - 1, revision]
    assert [e.id for e in inbox.events] == [f"{r}-0" for r in range(revision - 2, revision + 1)]
    assert put.time is not None
    assert abs(put.time - datetime.now(UTC)) < timedelta(minutes=1)
    assert deleted.time is not None  # the stream entry carries the write's server time
    assert put.time <= deleted.time
    assert len(inbox.events) == 3  # one event per write, no more


def test_usage_events_reach_another_client_with_exact_values(make_registry: Any) -> None:
    reg = make_registry()
    writer = make_registry(usage_event_rate=1.0)
    writer.register_model(model(id="known"))
    inbox = Inbox()
    reg.on("usage.recorded", inbox)
    writer.record_usage("openai:known", 1000, 200, latency_ms=250, tenant="acme", request_id="r-1")
    until(reg, lambda: len(inbox.events) >= 1)
    # a model registered after the subscription: its stream is followed from then on
    writer.register_model(model(id="new", cost={"input": "1", "output": "2", "currency": "EUR"}))
    writer.record_usage("openai:new", 3, 4, success=False)
    until(reg, lambda: len(inbox.events) >= 2)
    known, new = inbox.events
    assert (known.type, known.model, known.tenant) == (USAGE_RECORDED, "openai:known", "acme")
    assert known.stream == KEYS.usage_events("openai:known")
    assert known.data == {
        "requests": 1,
        "successes": 1,
        "failures": 0,
        "throttled": 0,
        "input_tokens": 1000,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "output_tokens": 200,
        "cost_units": COST_UNITS,
        "cost": Decimal("0.042"),
        "currency": "USD",
        "latency_us_sum": 250_000,
        "latency_count": 1,
        "lat_le_250": 1,
        "request_id": "r-1",
    }
    assert isinstance(known.data["cost"], Decimal)
    assert known.time is not None
    assert abs(known.time - datetime.now(UTC)) < timedelta(minutes=1)
    assert (new.model, new.tenant, new.data["failures"], new.data["successes"]) == ("openai:new", None, 1, 0)
    assert (new.data["cost"], new.data["currency"]) == (Decimal("0.000011"), "EUR")  # (3 + 8) / 1M


def test_events_before_the_subscription_are_not_delivered(make_registry: Any) -> None:
    reg = make_registry()
    writer = make_registry(usage_event_rate=1.0)
    writer.register_model(model())
    writer.record_usage("openai:gpt-4", 1, 1, request_id="before")
    inbox = Inbox()
    reg.on("*", inbox)
    writer.record_usage("openai:gpt-4", 1, 1, request_id="after")
    until(reg, lambda: len(inbox.events) >= 1)
    writer.register_model(model(id="sentinel"))
    until(reg, lambda: CATALOG_CHANGED in inbox.types())
    assert [e.data.get("request_id") for e in inbox.events] == ["after", None]


def test_callbacks_get_only_their_type_and_a_raising_one_is_logged(
    make_registry: Any, caplog: pytest.LogCaptureFixture
) -> None:
    reg = make_registry()
    writer = make_registry(usage_event_rate=1.0)
    writer.register_model(model())
    usage, catalog, everything, broken = Inbox(), Inbox(), Inbox(), Inbox(fail_first=1)
    reg.on("usage.recorded", usage)
    reg.on("catalog.changed", broken)
    reg.on("catalog.changed", catalog)
    reg.on("*", everything)
    with caplog.at_level(logging.ERROR, logger="registry"):
        writer.update_model("openai:gpt-4", {"context_window": 1})
        until(reg, lambda: len(everything.events) >= 1)
        writer.record_usage("openai:gpt-4", 10, 1)
        until(reg, lambda: len(everything.events) >= 2)
        writer.update_model("openai:gpt-4", {"context_window": 2})
        until(reg, lambda: len(everything.events) >= 3)
    assert everything.types() == [CATALOG_CHANGED, USAGE_RECORDED, CATALOG_CHANGED]
    assert usage.types() == [USAGE_RECORDED]
    assert catalog.types() == [CATALOG_CHANGED, CATALOG_CHANGED]
    assert (broken.calls, broken.types()) == (2, [CATALOG_CHANGED])  # raised once, kept getting events
    failures = [r for r in caplog.records if "event callback" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert "callback bug" in caplog.text


def test_unsubscribe(make_registry: Any) -> None:
    reg, writer = make_registry(), make_registry()
    gone, sentinel = Inbox(), Inbox()
    subscription = reg.on("catalog.changed", gone)
    reg.on("catalog.changed", sentinel)
    writer.register_model(model(id="a"))
    until(reg, lambda: len(gone.events) == 1)
    assert subscription() is True
    assert not subscription.active
    assert subscription.cancel() is False  # idempotent
    assert "cancelled" in repr(subscription)
    writer.register_model(model(id="b"))
    until(reg, lambda: len(sentinel.events) == 2)
    assert len(gone.events) == 1


def test_on_checks_its_arguments(reg: Any) -> None:
    with pytest.raises(ConfigError, match="event type 'usage'"):
        reg.on("usage", print)
    with pytest.raises(ConfigError, match="callable"):
        reg.on("*", "not a function")


def test_close_stops_the_follower(redis_url: str) -> None:
    reg = Registry.from_url(redis_url, watch=False)
    reg.on("*", Inbox())
    assert len(_follower_threads()) == 1
    started = time.monotonic()
    reg.close()
    assert time.monotonic() - started < 3  # one blocking read at most
    assert _follower_threads() == []
    with pytest.raises(RegistryError, match="closed"):
        reg.on("*", Inbox())


def test_close_from_a_callback(make_registry: Any) -> None:
    reg, writer = make_registry(), make_registry()
    client = _inner(reg)
    closed = threading.Event()

    async def aclose() -> None:
        await client.aclose()
        closed.set()

    def callback(event: Event) -> Any:
        if isinstance(client, AsyncRegistry):
            return aclose()  # a coroutine: the follower task awaits it
        client.close()
        closed.set()
        return None

    reg.on("catalog.changed", callback)
    task = getattr(client, "_follower_task", None)
    writer.register_model(model())
    until(reg, closed.is_set)
    until(reg, lambda: not _follower_threads() and (task is None or task.done()))


def test_the_follower_survives_a_failing_read(make_registry: Any, caplog: pytest.LogCaptureFixture) -> None:
    reg, writer = make_registry(), make_registry()
    inbox = Inbox()
    reg.on("catalog.changed", inbox)
    follower = _inner(reg)._follower
    real_poll = follower.poll
    failed: list[bool] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if not failed:
            failed.append(True)
            raise RegistryError("Redis went away")
        return real_poll(*args, **kwargs)

    with caplog.at_level(logging.WARNING, logger="registry"):
        follower.poll = flaky
        until(reg, lambda: "event follower: Redis went away" in caplog.text)
        writer.register_model(model())
        until(reg, lambda: len(inbox.events) == 1)
    assert inbox.events[0].data["put"] == ["openai:gpt-4"]


def test_the_follower_survives_a_wiped_catalog(make_registry: Any, r: redis.Redis) -> None:
    """Redis restarted without persistence: the catalog's revisions start over, and are followed."""
    reg, writer = make_registry(), make_registry()
    inbox = Inbox()
    reg.on("catalog.changed", inbox)
    for name in ("a", "b", "c"):
        writer.register_model(model(id=name))
    until(reg, lambda: len(inbox.events) == 3)
    r.flushall()
    writer.register_model(model(id="d"))
    until(reg, lambda: len(inbox.events) == 4)
    assert [(e.data["revision"], e.data["put"]) for e in inbox.events] == [
        (1, ["openai:a"]),
        (2, ["openai:b"]),
        (3, ["openai:c"]),
        (1, ["openai:d"]),
    ]


def test_on_an_unreachable_redis_raises(make_registry: Any) -> None:
    from registry import BackendUnavailable
    from registry.embedded import free_port

    reg = Registry.from_url(f"redis://127.0.0.1:{free_port()}/0", watch=False, socket_connect_timeout=0.5)
    with pytest.raises(BackendUnavailable):
        reg.on("*", Inbox())
    assert _follower_threads() == []
    reg.close()


def test_async_callbacks_are_awaited(redis_url: str) -> None:
    async def main() -> None:
        reg = AsyncRegistry.from_url(redis_url, watch=False)
        writer = AsyncRegistry.from_url(redis_url, watch=False)
        got: asyncio.Queue[Event] = asyncio.Queue()
        plain = Inbox()

        async def coroutine(event: Event) -> None:
            await asyncio.sleep(0)
            await got.put(event)

        async def broken(event: Event) -> None:
            raise RuntimeError("async callback bug")

        await reg.on("catalog.changed", broken)
        await reg.on("catalog.changed", coroutine)
        await reg.on("catalog.changed", plain)
        await writer.register_model(model())
        event = await asyncio.wait_for(got.get(), WAIT)
        assert event.data["put"] == ["openai:gpt-4"]
        await writer.register_model(model(id="b"))
        assert (await asyncio.wait_for(got.get(), WAIT)).data["put"] == ["openai:b"]
        assert len(plain.events) == 2
        task = reg._follower_task
        assert task is not None
        await reg.aclose()
        assert task.done()
        assert reg._follower_task is None
        with pytest.raises(RegistryError, match="closed"):
            await reg.on("*", plain)
        await writer.aclose()

    asyncio.run(main())


def test_budget_threshold_events_reach_a_subscriber_once(make_registry: Any, r: redis.Redis) -> None:
    """A budget set after subscribing (another client) is followed: its thresholds, crossed by
    real spend, arrive once each, with exact amounts; other tenants' streams are not read."""
    writer = make_registry()
    writer.register_model(model(cost={"input": "30", "output": "60"}))
    reg = make_registry()
    inbox, usage_only = Inbox(), Inbox()
    reg.on("budget.threshold", inbox)
    reg.on("usage.recorded", usage_only)
    writer.set_budget("acme", "0.1", "day")  # marks: 50 % = $0.05, 80 % = $0.08, 100 %
    r.xadd(KEYS.budget_events("other"), {"type": "budget.threshold", "tenant": "other"})  # no budget
    held = writer.acquire("openai:gpt-4", 1000, 1000, tenant="acme").reservation
    writer.settle(held, 1000, 1000)  # $0.03 + $0.06 = $0.09: 90 %, past 50 and 80
    until(reg, lambda: len(inbox.events) == 2)
    assert [(e.type, e.tenant, e.data["threshold"]) for e in inbox.events] == [
        (BUDGET_THRESHOLD, "acme", 50),
        (BUDGET_THRESHOLD, "acme", 80),
    ]
    assert {(e.data["scope"], e.data["period"]) for e in inbox.events} == {("*", "day")}
    assert [(e.data["spent"], e.data["amount"]) for e in inbox.events] == [(Decimal("0.09"), Decimal("0.1"))] * 2
    assert inbox.events[0].stream == KEYS.budget_events("acme")
    assert usage_only.events == []


def test_follower_state_without_redis() -> None:
    """The follower keeps following the catalog after the last unsubscribe, and drops the rest."""
    follower = Follower(KEYS)
    snapshot = Snapshot.build(3, "e", {})
    flow = follower.subscribe("usage.recorded", print, snapshot)
    request = next(flow)
    assert request == Commands((("TIME",), ("XREVRANGE", KEYS.events, "+", "-", "COUNT", 1)), False)
    request = flow.send([(1700000000, 500000), [("3-0", {"put": "", "deleted": ""})]])
    assert request.commands[0] == ("HMGET", KEYS.meta, "revision", "epoch")
    request = flow.send([["3", "e"], []])  # the catalog is still at revision 3
    assert request.commands == (("TIME",),)  # no model, no usage stream yet
    with pytest.raises(StopIteration) as stop:
        flow.send([(1700000000, 600000)])
    subscription = stop.value.value
    assert follower.positions == {KEYS.events: "3-0"}
    assert follower.subscribed
    subscription()
    assert not follower.subscribed
    assert follower.positions == {KEYS.events: "3-0"}


# -- events(): history ----------------------------------------------------------------------------


def test_recent_events(make_registry: Any, r: redis.Redis) -> None:
    reg = make_registry(usage_event_rate=1.0)
    assert reg.events() == []
    reg.register_model(model())  # revision 1
    for i in range(3):
        reg.record_usage("openai:gpt-4", 100 + i, 1)
    reg.register_model(model(id="b"))  # revision 2
    everything = reg.events()
    assert everything[0].type == CATALOG_CHANGED  # at the same ms as a record, a change comes first
    assert [e.data["revision"] for e in everything if e.type == CATALOG_CHANGED] == [1, 2]
    assert [e.data["input_tokens"] for e in everything if e.type == USAGE_RECORDED] == [100, 101, 102]
    assert [e.data["input_tokens"] for e in reg.events("usage.recorded", last=2)] == [101, 102]
    assert [e.type for e in reg.events(["catalog.changed", "budget.threshold"])] == [CATALOG_CHANGED] * 2
    first_usage = next(e for e in everything if e.type == USAGE_RECORDED)
    after = reg.events("usage.recorded", since_id=first_usage.id)
    assert [e.data["input_tokens"] for e in after] == [101, 102]
    assert [e.data["revision"] for e in reg.events("catalog.changed", since_id="1-0")] == [2]
    assert [e.data["revision"] for e in reg.events("catalog.changed", since_id="0", last=1)] == [1]
    reg.delete_model("openai:gpt-4")  # its records outlive it
    assert [e.data["input_tokens"] for e in reg.events("usage.recorded")] == [100, 101, 102]
    with pytest.raises(ConfigError, match="last"):
        reg.events(last=0)
    with pytest.raises(ConfigError, match="stream id"):
        reg.events(since_id="yesterday")
    with pytest.raises(ConfigError, match="event type"):
        reg.events("nope")


# -- the command line -----------------------------------------------------------------------------


@pytest.fixture
def history(redis_url: str) -> Iterator[Registry]:
    """Two catalog writes around three sampled usage records."""
    with Registry.from_url(redis_url, watch=False, usage_event_rate=1.0) as reg:
        # History is ordered by server time in ms, and these writes take well under a ms each:
        # a 2 ms pause between them gives each its own millisecond, so the order is defined.
        reg.register_models([model(id="gpt-4o", cost={"input": "2.50", "output": "10.00"}), model(id="old")])
        time.sleep(0.002)
        reg.record_usage("openai:gpt-4o", 1000, 200, tenant="acme", latency_ms=120.5)
        reg.record_usage("openai:gpt-4o", 10, 0, success=False)
        reg.record_usage("openai:gpt-4o", 1, 1)
        time.sleep(0.002)
        reg.delete_model("openai:old")
        yield reg


TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def test_cli_events_last(run: Any, history: Registry) -> None:
    code, out, err = run("events", "--last", "4")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 4
    assert re.fullmatch(
        TIME + r" usage\.recorded openai:gpt-4o tenant=acme in=1000 out=200 cost=0\.0045 USD latency=120\.5ms",
        lines[0],
    ), lines[0]
    assert re.fullmatch(TIME + r" usage\.recorded openai:gpt-4o in=10 out=0 cost=0\.000025 USD failed", lines[1])
    assert re.fullmatch(TIME + r" catalog\.changed rev 2 deleted openai:old", lines[3]), lines[3]
    code, out, _ = run("events", "--type", "catalog.changed")
    assert [line.split(" ", 1)[1].strip() for line in out.splitlines()] == [
        "catalog.changed rev 1 put openai:gpt-4o,openai:old",
        "catalog.changed rev 2 deleted openai:old",
    ]
    assert re.match(TIME, out)
    assert run("events", "--type", "budget.threshold")[1] == "(no events)\n"
    code, out, _ = run("events", "--type", "catalog.changed", "--since-id", "1-0")
    assert out.count("\n") == 1
    assert "rev 2" in out


def test_cli_events_json(run: Any, history: Registry) -> None:
    history.register_model(model(id="mini"))
    history.record_usage("openai:gpt-4o", 1000, 200)
    code, out, _ = run("--json", "events", "--last", "2")
    assert code == 0
    documents = [json.loads(line) for line in out.splitlines()]
    catalog, usage = documents
    assert catalog["type"] == "catalog.changed"
    assert catalog["data"] == {
        "revision": 3,
        "put": ["openai:mini"],
        "deleted": [],
        "budgets_put": [],
        "budgets_deleted": [],
    }
    assert re.fullmatch(TIME, catalog["time"])
    assert usage["type"] == "usage.recorded"
    assert (usage["model"], usage["tenant"], usage["stream"]) == (
        "openai:gpt-4o",
        None,
        KEYS.usage_events("openai:gpt-4o"),
    )
    assert usage["data"]["cost"] == "0.004500000"  # exact, as a string
    assert usage["data"]["currency"] == "USD"
    assert usage["data"]["input_tokens"] == 1000


def test_cli_events_show_429s_and_cache_counts(run: Any, redis_url: str) -> None:
    cost = {"input": "3", "output": "15", "cached_input": "0.30", "cache_write": "3.75"}
    with Registry.from_url(redis_url, watch=False, usage_event_rate=1.0) as reg:
        reg.register_model(model(provider="anthropic", id="claude", cost=cost))
        reg.record_usage("anthropic:claude", 1200, 90, cached_input_tokens=1024)
        time.sleep(0.002)
        reg.record_usage("anthropic:claude", 0, 0, throttled=True, tenant="acme")
    code, out, _ = run("events", "--type", "usage.recorded")
    assert code == 0
    cached, throttled = out.splitlines()
    assert cached.endswith(" usage.recorded anthropic:claude in=1200 cached=1024 out=90 cost=0.0021852 USD"), cached
    assert throttled.endswith(" anthropic:claude tenant=acme in=0 out=0 cost=0 USD failed throttled"), throttled
    out = run("--json", "events", "--type", "usage.recorded")[1]
    cached_doc, throttled_doc = (json.loads(line)["data"] for line in out.splitlines())
    names = ("cached_input_tokens", "cache_write_tokens", "throttled", "failures")
    assert [cached_doc[name] for name in names] == [1024, 0, 0, 0]
    assert [throttled_doc[name] for name in names] == [0, 0, 1, 1]


def test_cli_events_bad_arguments(run: Any) -> None:
    assert run("events", "--type", "nope")[0] == 2
    assert run("events", "--last", "0")[0] == 2
    code, _, err = run("events", "--since-id", "soon")
    assert code == 2
    assert "stream id 'soon'" in err


def test_follow_events_prints_history_then_live_events(redis_url: str, history: Registry) -> None:
    stdout = io.StringIO()
    output = Output(json=True, stdout=stdout, stderr=io.StringIO())
    stop = threading.Event()
    done: queue.Queue[int] = queue.Queue()
    follower = Registry.from_url(redis_url, watch=False)

    def follow() -> None:
        done.put(cli_events.follow_events(follower, ["usage.recorded"], output, last=1, stop=stop))

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in stdout.getvalue().splitlines()]

    until(follower, lambda: len(lines()) == 1)  # the last recorded one
    until(follower, lambda: bool(follower._follower and follower._follower.subscribed))
    history.record_usage("openai:gpt-4o", 7, 7)
    until(follower, lambda: len(lines()) == 2)
    stop.set()
    assert done.get(timeout=WAIT) == 2
    thread.join(WAIT)
    assert [d["data"]["input_tokens"] for d in lines()] == [1, 7]
    assert not follower._follower.subscribed  # type: ignore[union-attr]
    follower.close()


def test_cli_events_follow_stops_on_ctrl_c(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_events, "follow_events", interrupted)
    code, out, err = run("events", "--follow")
    assert (code, out, err) == (0, "stopped\n", "")
    assert run("--json", "events", "--follow") == (0, "", "")


def test_registry_events_follow_in_a_process(redis_url: str) -> None:
    """``registry events --follow`` until SIGINT (Ctrl-C): exit 0."""
    child = subprocess.Popen(
        [sys.executable, "-m", "registry", "--redis-url", redis_url, "events", "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    assert child.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in child.stdout], daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        assert lines.get(timeout=WAIT).startswith("following catalog.changed, usage.recorded, budget.threshold")
        with Registry.from_url(redis_url, watch=False, usage_event_rate=1.0) as writer:
            writer.register_model(model())
            writer.record_usage("openai:gpt-4", 1000, 200, tenant="t1")
        first, second = lines.get(timeout=WAIT), lines.get(timeout=WAIT)
        assert "catalog.changed rev 1 put openai:gpt-4" in first
        assert "usage.recorded openai:gpt-4 tenant=t1 in=1000 out=200 cost=0.042 USD" in second
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=WAIT) == 0
        reader.join(WAIT)
        assert lines.get(timeout=WAIT) == "stopped\n"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for pipe in (child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()
