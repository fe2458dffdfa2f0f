"""Recording usage: exact counters, idempotency by request id, one clock, no overflow."""

from __future__ import annotations

import multiprocessing as mp
import random
from decimal import Decimal
from typing import Any

import pytest
import redis

from registry import BackendError, ConfigError, Registry
from registry.keys import Keys
from registry.ledger.money import from_units, to_units
from registry.pricing import estimate
from tests.conftest import model
from tests.test_catalog import dump

K = Keys()
TOTAL = K.ledger("openai:gpt-4", "total")


def counters(r: redis.Redis, key: str) -> dict[str, int]:
    return {k: int(v) for k, v in r.hgetall(key).items()}


def test_a_record_adds_hand_computed_counters(reg: Any, r: redis.Redis) -> None:
    reg.register_model(model())  # $30 / $60 per M
    first = reg.record_usage("openai:gpt-4", 1000, 500, latency_ms=820.5, tenant="acme")
    # 1,000 x 30/M + 500 x 60/M = 0.03 + 0.03 = $0.06 = 60,000,000 nano-dollars
    assert (first.recorded, first.cost, first.cost_units) == (True, Decimal("0.06"), 60_000_000)
    reg.record_usage("openai:gpt-4", 10, 0, success=False, latency_ms=70_000)
    reg.record_usage("openai:gpt-4", 1, 1)  # no latency
    expected = {
        "requests": 3,
        "successes": 2,
        "failures": 1,
        "input_tokens": 1011,
        "output_tokens": 501,
        # $0.06 + 10 x $30/M ($0.0003) + 1 x $30/M + 1 x $60/M ($0.00009), in nano-dollars
        "cost_units": 60_000_000 + 300_000 + 90_000,
        "latency_us_sum": 820_500 + 70_000_000,
        "latency_count": 2,
        "lat_le_1000": 1,
        "lat_le_inf": 1,
    }
    assert counters(r, TOTAL) == expected
    tenant = counters(r, K.ledger("openai:gpt-4", "total", tenant="acme"))
    assert tenant["requests"] == 1
    assert tenant["cost_units"] == 60_000_000
    buckets = [k for k in r.keys("*:l:*") if ":l:m:" in k or ":l:h:" in k or ":l:d:" in k]
    assert len(buckets) == 6  # minute, hour and day, for the model and for acme
    assert all(r.pttl(k) > 0 for k in buckets)
    assert r.pttl(TOTAL) == -1  # all-time totals are kept


def test_sampled_usage_events_and_the_tenant_set_are_written_with_the_counters(
    make_registry: Any, r: redis.Redis
) -> None:
    quiet = make_registry()
    quiet.register_model(model())
    quiet.record_usage("openai:gpt-4", 10, 5, tenant="acme")
    assert not r.exists(K.usage_events("openai:gpt-4"))  # sampling is off by default
    assert r.smembers(K.ledger_tenants("openai:gpt-4")) == {"acme"}

    loud = make_registry(usage_event_rate=1.0)
    loud.record_usage("openai:gpt-4", 1000, 500, tenant="beta", request_id="r-1", latency_ms=42)
    assert loud.record_usage("openai:gpt-4", 1000, 500, tenant="beta", request_id="r-1").duplicate
    loud.record_usage("openai:gpt-4", 3, 4, success=False)
    held = loud.acquire("openai:gpt-4", 100, 100, tenant="gamma", request_id="res-9").reservation
    loud.settle(held, 100, 20)
    events = [fields for _, fields in r.xrange(K.usage_events("openai:gpt-4"))]
    assert events == [  # one per recorded request; the duplicate added none
        {
            "type": "usage.recorded",
            "request_id": "r-1",
            "tenant": "beta",
            "requests": "1",
            "successes": "1",
            "input_tokens": "1000",
            "output_tokens": "500",
            "cost_units": "60000000",
            "latency_us_sum": "42000",
            "latency_count": "1",
            "lat_le_50": "1",
        },
        {
            "type": "usage.recorded",
            "request_id": "",
            "tenant": "",
            "requests": "1",
            "failures": "1",
            "input_tokens": "3",
            "output_tokens": "4",
            "cost_units": "330000",
        },
        {
            "type": "usage.recorded",
            "request_id": "res-9",
            "tenant": "gamma",
            "requests": "1",
            "successes": "1",
            "input_tokens": "100",
            "output_tokens": "20",
            "cost_units": "4200000",
        },
    ]
    assert r.smembers(K.ledger_tenants("openai:gpt-4")) == {"acme", "beta", "gamma"}
    with pytest.raises(ConfigError, match="usage_event_rate"):
        make_registry(usage_event_rate=1.5)


def test_a_request_id_counts_once(reg: Any, r: redis.Redis) -> None:
    reg.register_model(model())
    assert reg.record_usage("openai:gpt-4", 100, 100, request_id="req-7").recorded
    before = dump(r)
    again = reg.record_usage("openai:gpt-4", 100, 100, request_id="req-7")
    assert again.duplicate
    assert dump(r) == before
    assert 0 < r.pttl(K.usage_marker("openai:gpt-4", "req-7")) <= 24 * 3_600_000


def test_a_providers_429_is_counted_as_throttled(reg: Any, r: redis.Redis) -> None:
    """``throttled=True`` (the provider refused for its own rate limit): a failure, counted apart
    as well, by settle and by record_usage alike; its tokens (usually none) as given."""
    reg.register_model(model(rate_limit={"requests_per_minute": 10}))
    decision = reg.acquire("openai:gpt-4", 100, 50, tenant="acme")
    assert reg.settle(decision.reservation, 0, 0, success=True, throttled=True)
    reg.record_usage("openai:gpt-4", 0, 0, throttled=True, tenant="acme")
    reg.record_usage("openai:gpt-4", 10, 5)
    assert counters(r, TOTAL) == {
        "requests": 3,
        "successes": 1,
        "failures": 2,
        "throttled": 2,
        "input_tokens": 10,
        "output_tokens": 5,
        "cost_units": to_units(estimate(reg.get_model("openai:gpt-4").cost, 10, 5)),
    }
    totals = reg.get_statistics(model="openai:gpt-4")
    assert (totals.throttled, totals.failures, totals.successes) == (2, 2, 1)
    assert reg.get_statistics(model="openai:gpt-4", tenant="acme").throttled == 2


# $30 / $60 per million, a cache read $3 (a tenth), a cache write $37.5 (1.25 times the input)
CACHED_PRICES = {"input": "30", "output": "60", "cached_input": "3", "cache_write": "37.5", "per": 1_000_000}


def test_cache_reads_and_writes_are_counted_apart_and_priced_as_estimate_cost(
    reg: Any, make_registry: Any, r: redis.Redis
) -> None:
    """``cached_input_tokens`` and ``cache_write_tokens`` are part of the input: the ledger keeps
    every input token in ``input_tokens``, the two parts in counters of their own (only when not
    zero), and the cost is exactly ``estimate_cost`` with them, by record_usage and settle alike."""
    reg.register_model(model(cost=CACHED_PRICES, rate_limit={"tokens_per_minute": 100_000}))
    plain = reg.record_usage("openai:gpt-4", 10, 5)
    assert plain.cost_units == 10 * 30_000 + 5 * 60_000
    assert "cached_input_tokens" not in counters(r, TOTAL)  # a zero adds no counter
    assert "cache_write_tokens" not in counters(r, TOTAL)

    recorded = reg.record_usage(
        "openai:gpt-4", 1000, 500, tenant="acme", cached_input_tokens=600, cache_write_tokens=300
    )
    # 100 plain x $30 + 600 read x $3 + 300 written x $37.5 + 500 out x $60, per million = $0.04605
    assert (recorded.cost, recorded.cost_units) == (Decimal("0.04605"), 46_050_000)
    assert recorded.cost == reg.estimate_cost(
        "openai:gpt-4", 1000, 500, cached_input_tokens=600, cache_write_tokens=300
    )
    held = reg.acquire("openai:gpt-4", 2000, 100, tenant="acme").reservation
    assert reg.settle(held, 2000, 100, latency_ms=120, cached_input_tokens=2000)  # all read from the cache
    settled = 2000 * 3_000 + 100 * 60_000
    assert to_units(reg.estimate_cost("openai:gpt-4", 2000, 100, cached_input_tokens=2000)) == settled
    assert not reg.settle(held, 2000, 100, cached_input_tokens=2000)  # once

    expected = {
        "requests": 3,
        "successes": 3,
        "input_tokens": 10 + 1000 + 2000,  # every prompt token, the cached ones included
        "cached_input_tokens": 600 + 2000,
        "cache_write_tokens": 300,
        "output_tokens": 5 + 500 + 100,
        "cost_units": plain.cost_units + 46_050_000 + settled,
        "latency_us_sum": 120_000,
        "latency_count": 1,
        "lat_le_250": 1,
    }
    assert counters(r, TOTAL) == expected
    acme = counters(r, K.ledger("openai:gpt-4", "total", tenant="acme"))
    acme_cache = (acme["cached_input_tokens"], acme["cache_write_tokens"], acme["cost_units"])
    assert acme_cache == (2600, 300, 46_050_000 + settled)

    stats = reg.get_statistics(model="openai:gpt-4")
    assert (stats.input_tokens, stats.cached_input_tokens, stats.cache_write_tokens) == (3010, 2600, 300)
    assert stats.total_cost == Decimal("0.05865")
    tenant = reg.get_statistics(tenant="acme").by_tenant["acme"]
    assert (tenant.cached_input_tokens, tenant.cache_write_tokens) == (2600, 300)
    assert reg.get_statistics(provider="openai").by_provider["openai"].cached_input_tokens == 2600
    now = recorded.server_ms / 1000
    series = reg.usage("openai:gpt-4", since=now - 86_400, until=now + 86_400, granularity="day")
    assert sum(p.totals.cached_input_tokens for p in series) == 2600

    loud = make_registry(usage_event_rate=1.0)
    loud.record_usage("openai:gpt-4", 40, 0, cached_input_tokens=30, cache_write_tokens=10)
    (event,) = [fields for _, fields in r.xrange(K.usage_events("openai:gpt-4"))]
    assert (event["input_tokens"], event["cached_input_tokens"], event["cache_write_tokens"]) == ("40", "30", "10")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cached_input_tokens": -1}, "cached_input_tokens must be between 0 and"),
        ({"cache_write_tokens": 2.0}, "cache_write_tokens must be an integer, got float"),
        ({"cached_input_tokens": True}, "cached_input_tokens must be an integer, got bool"),
        ({"cache_write_tokens": None}, "cache_write_tokens must be an integer, got NoneType"),
        (
            {"cached_input_tokens": 60, "cache_write_tokens": 41},
            r"cached_input_tokens \+ cache_write_tokens \(60 \+ 41\) exceed input_tokens \(100\)",
        ),
    ],
)
def test_bad_cache_counts_raise_a_config_error_and_write_nothing(
    reg: Any, r: redis.Redis, kwargs: dict[str, Any], message: str
) -> None:
    reg.register_model(model(cost=CACHED_PRICES, rate_limit={"input_tokens_per_minute": 10_000}))
    reg.set_budget("acme", "1", "day")  # a settle finishes the budgets first: it must not get that far
    held = reg.acquire("openai:gpt-4", 100, 50, tenant="acme").reservation
    before = dump(r)
    with pytest.raises(ConfigError, match=message):
        reg.record_usage("openai:gpt-4", 100, 50, tenant="acme", request_id="r-1", **kwargs)
    with pytest.raises(ConfigError, match=message):
        reg.settle(held, 100, 50, **kwargs)
    with pytest.raises(ConfigError, match=r"exceed input_tokens \(100\)"):
        reg.settle(held, output_tokens=50, cached_input_tokens=101)  # the reserved input, 100
    assert dump(r) == before
    assert reg.settle(held, 100, 50, cached_input_tokens=60, cache_write_tokens=40)  # all of the input: fine
    assert reg.record_usage("openai:gpt-4", 100, 50, tenant="acme", request_id="r-1", cache_write_tokens=100).recorded


def test_a_skewed_client_clock_still_lands_in_the_servers_buckets(redis_url: str, r: redis.Redis) -> None:
    reg = Registry.from_url(redis_url, watch=False)
    reg.register_model(model())
    reg._offset_ms = -10 * 60_000  # this client believes it is 10 minutes earlier
    record = reg.record_usage("openai:gpt-4", 1, 1)
    minute = record.server_ms // 60_000
    assert counters(r, K.ledger("openai:gpt-4", "m", minute))["requests"] == 1
    assert abs(reg._offset_ms) < 60_000  # learned from the reply
    assert not r.exists(K.ledger("openai:gpt-4", "m", minute - 10))
    reg.close()


def test_counters_near_2_to_the_63_fail_cleanly_and_near_2_to_the_53_stay_exact(reg: Any, r: redis.Redis) -> None:
    reg.register_model(model())
    near53 = 2**53 + 1  # a double cannot hold this; Redis' integers can
    r.hset(TOTAL, mapping={"cost_units": near53, "input_tokens": 0})
    record = reg.record_usage("openai:gpt-4", 1000, 0)
    assert int(r.hget(TOTAL, "cost_units")) == near53 + record.cost_units
    r.hset(TOTAL, "cost_units", 2**63 - 10)
    before = dump(r)
    with pytest.raises(BackendError, match="would overflow; nothing recorded"):
        reg.record_usage("openai:gpt-4", 1000, 0, request_id="big")
    assert dump(r) == before  # every counter undone, and the id is free to be sent again


def test_bad_arguments(reg: Any) -> None:
    from registry import ConfigError

    reg.register_model(model())
    for kwargs in ({"latency_ms": -1}, {"request_id": ""}, {"tenant": "a b"}):
        with pytest.raises(ConfigError):
            reg.record_usage("openai:gpt-4", 1, 1, **kwargs)
    with pytest.raises(ConfigError, match="input_tokens"):
        reg.record_usage("openai:gpt-4", -1, 1)


MODELS = [
    model(id="gpt-4"),
    model(provider="anthropic", id="claude", cost={"input": "3", "output": "15"}),
    model(provider="x", id="tiny", cost={"input": "1.0000000000000001e-07", "output": "3e-07", "per": 1}),
]
TENANTS = [None, "acme", "beta"]


def _records(seed: int, count: int) -> list[tuple[str, int, int, str | None, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        m = rng.choice(MODELS)
        out.append(
            (
                f"{m['provider']}:{m['id']}",
                rng.randint(0, 50_000),
                rng.randint(0, 8_000),
                rng.choice(TENANTS),
                f"{seed}-{i}",
            )
        )
    return out


def _writer(seed: int, url: str, count: int, results: Any) -> None:
    reg = Registry.from_url(url)  # a watched local catalog: one round trip per record
    rng = random.Random(seed + 1)
    for key, inp, out, tenant, rid in _records(seed, count):
        reg.record_usage(key, inp, out, tenant=tenant, request_id=rid)
        if rng.random() < 0.1:  # a retry of the same request
            assert reg.record_usage(key, inp, out, tenant=tenant, request_id=rid).duplicate
    reg.close()
    results.put(seed)


def _fleet_records(redis_url: str, r: redis.Redis, records: int) -> None:
    """16 processes record ``records`` requests (10 % of them sent twice); totals are exact."""
    reg = Registry.from_url(redis_url, watch=False)
    reg.register_models(MODELS)
    procs = 16
    count = records // procs
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    workers = [ctx.Process(target=_writer, args=(seed, redis_url, count, results)) for seed in range(procs)]
    for w in workers:
        w.start()
    assert sorted(results.get(timeout=1200) for _ in workers) == list(range(procs))
    for w in workers:
        w.join(60)
    results.close()
    results.join_thread()
    rows_by_model: dict[str, list[Any]] = {}
    for seed in range(procs):
        for rec in _records(seed, count):
            rows_by_model.setdefault(rec[0], []).append(rec)
    today = int(r.time()[0]) // 86_400
    for key, rows in rows_by_model.items():
        spec = reg.get_model(key)
        costs = [estimate(spec.cost, i, o) for _, i, o, _, _ in rows]
        total = counters(r, K.ledger(key, "total"))
        assert total["requests"] == len(rows)
        assert total["input_tokens"] == sum(i for _, i, _, _, _ in rows)
        assert total["output_tokens"] == sum(o for _, _, o, _, _ in rows)
        assert total["cost_units"] == sum(to_units(c) for c in costs)  # each record rounded once
        assert abs(from_units(total["cost_units"]) - sum(costs, Decimal(0))) <= Decimal(len(rows)) / 2 / 10**9
        days = [counters(r, K.ledger(key, "d", d)) for d in (today - 1, today)]  # a run may span midnight
        assert sum(d.get("cost_units", 0) for d in days) == total["cost_units"]
        for tenant in ("acme", "beta"):
            mine = [c for rec, c in zip(rows, costs, strict=True) if rec[3] == tenant]
            got = counters(r, K.ledger(key, "total", tenant=tenant))
            assert got.get("requests", 0) == len(mine)
            assert got.get("cost_units", 0) == sum(to_units(c) for c in mine)
    reg.close()


@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
@pytest.mark.timeout(600)
def test_sixteen_processes_record_100_000_exact_totals(redis_url: str, r: redis.Redis, real_redis: None) -> None:
    _fleet_records(redis_url, r, 100_000)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
@pytest.mark.timeout(3600)
def test_sixteen_processes_record_a_million_exact_totals(redis_url: str, r: redis.Redis, real_redis: None) -> None:
    _fleet_records(redis_url, r, 1_000_000)


def test_statistics_match_hand_computed_totals(reg: Any) -> None:
    from registry.testing import FakeClock, use_clock

    reg.register_models(
        [
            model(),  # $30 / $60 per M
            model(provider="anthropic", id="claude", cost={"input": "3", "output": "15"}),
            model(provider="custom", id="eur", cost={"input": "1", "output": "1", "currency": "EUR"}),
        ]
    )
    day = 20_000 * 86_400  # a UTC midnight, in seconds
    clock = FakeClock()
    clock.set(day + 10 * 3600)
    use_clock(reg, clock)
    reg.record_usage("openai:gpt-4", 1000, 500, tenant="acme", latency_ms=400)  # $0.06
    reg.record_usage("anthropic:claude", 2000, 1000, success=False, tenant="beta", latency_ms=1200)  # $0.021
    reg.record_usage("custom:eur", 1000, 1000)  # EUR 0.002
    clock.advance(86_400)
    reg.record_usage("openai:gpt-4", 100, 100, tenant="acme")  # $0.003 + $0.006

    stats = reg.get_statistics()
    assert (stats.currency, stats.total_cost) == ("USD", Decimal("0.090"))
    assert (stats.requests, stats.successes, stats.failures) == (3, 2, 1)
    assert (stats.input_tokens, stats.output_tokens) == (3100, 1600)
    assert stats.mean_latency_ms == 800.0
    assert stats.success_rate == 2 / 3
    assert stats.by_model["custom:eur"].total_cost == Decimal("0.002")
    assert stats.by_model["custom:eur"].currency == "EUR"
    assert stats.by_model["openai:gpt-4"].requests == 2
    assert reg.get_statistics(currency="eur").total_cost == Decimal("0.002")
    assert reg.get_statistics(tenant="acme").total_cost == Decimal("0.069")
    assert reg.get_statistics(model="openai:gpt-4").total_cost == Decimal("0.069")
    assert reg.get_statistics(provider="anthropic").total_cost == Decimal("0.021")
    first_day = reg.get_statistics(since=day, until=day + 86_399)
    assert (first_day.total_cost, first_day.requests) == (Decimal("0.081"), 2)
    morning = reg.get_statistics(since=day + 10 * 3600, until=day + 10 * 3600 + 60)
    assert morning.total_cost == Decimal("0.081")
    long_range = reg.get_statistics(since=day - 200 * 86_400, until=day + 2 * 86_400)  # day buckets
    assert long_range.total_cost == Decimal("0.090")
    from registry import ConfigError

    with pytest.raises(ConfigError, match="both since and until"):
        reg.get_statistics(since=day)
    with pytest.raises(ConfigError, match="before since"):
        reg.get_statistics(since=day, until=day - 1)


def test_settle_records_the_real_usage_once_and_release_records_nothing(reg: Any, r: redis.Redis) -> None:
    reg.register_model(model(rate_limit={"tokens_per_minute": 100_000}))
    held = reg.acquire("openai:gpt-4", 1000, 4000, tenant="acme").reservation
    assert reg.settle(held, input_tokens=1000, output_tokens=500, success=True, latency_ms=300)
    assert not reg.settle(held, input_tokens=1000, output_tokens=500)  # a retry: nothing more
    total = counters(r, TOTAL)
    assert (total["requests"], total["output_tokens"], total["cost_units"]) == (1, 500, 60_000_000)
    assert total["lat_le_500"] == 1
    assert counters(r, K.ledger("openai:gpt-4", "total", tenant="acme"))["cost_units"] == 60_000_000
    failed = reg.acquire("openai:gpt-4", 10, 10).reservation
    reg.settle(failed, 10, 0, success=False)
    assert counters(r, TOTAL)["failures"] == 1
    reg.release(reg.acquire("openai:gpt-4", 10, 10).reservation)
    assert counters(r, TOTAL)["requests"] == 2  # a released request was never sent: not in the ledger
    stats = reg.get_statistics(tenant="acme")
    assert (stats.requests, stats.total_cost) == (1, Decimal("0.06"))


def test_a_skewed_settle_still_lands_in_the_servers_buckets(redis_url: str, r: redis.Redis) -> None:
    reg = Registry.from_url(redis_url, watch=False)
    reg.register_model(model())
    reg._offset_ms = 3 * 3_600_000  # three hours ahead
    held = reg.acquire("openai:gpt-4", 100, 100).reservation
    assert reg.settle(held, 100, 50)
    hour = int(r.time()[0]) // 3600
    assert counters(r, K.ledger("openai:gpt-4", "h", hour))["requests"] == 1
    assert not r.exists(K.ledger("openai:gpt-4", "h", hour + 3))
    reg.close()


def test_usage_series_and_model_performance(reg: Any) -> None:
    from registry import ConfigError
    from registry.testing import FakeClock, use_clock

    reg.register_model(model())
    hour0 = 500_000 * 3600  # a UTC hour, in seconds
    clock = FakeClock()
    clock.set(hour0 + 60)
    use_clock(reg, clock)
    # 20 requests in hour 0 (latencies 10, 20, ... 200 ms), none in hour 1, 1 in hour 2 (90 s)
    for i in range(1, 21):
        reg.record_usage("openai:gpt-4", 100, 50, latency_ms=10 * i, success=i != 20)
    clock.set(hour0 + 2 * 3600 + 5)
    reg.record_usage("openai:gpt-4", 100, 50, latency_ms=90_000)
    series = reg.usage("openai:gpt-4", hour0, hour0 + 2 * 3600 + 59, granularity="hour")
    assert [(p.start - hour0, p.totals.requests) for p in series] == [(0, 20), (3600, 0), (7200, 1)]
    minutes = reg.usage("openai:gpt-4", hour0, hour0 + 119, granularity="minute")
    assert [p.totals.requests for p in minutes] == [0, 20]
    perf = reg.model_performance("openai:gpt-4")
    assert perf.requests == 21
    assert perf.success_rate == 20 / 21
    # histogram: <=50: 5, <=100: 5, <=250: 10, inf: 1 -> p50 at the 11th of 21: 250 ms; p95 (20th): 250; p99: inf
    assert (perf.p50_ms, perf.p95_ms, perf.p99_ms) == (250.0, 250.0, float("inf"))
    # latency: (10 + ... + 200) ms = 2,100 ms, plus 90,000 ms; 21 x 50 output tokens
    assert perf.mean_latency_ms == (2100 + 90_000) / 21
    assert perf.output_tokens_per_second == 21 * 50 / 92.1
    with pytest.raises(ConfigError, match="granularity"):
        reg.usage("openai:gpt-4", hour0, hour0 + 1, granularity="week")
    with pytest.raises(ConfigError, match="at most 10,000 points"):
        reg.usage("openai:gpt-4", 0, hour0, granularity="minute")


def test_export_then_restore_into_a_fresh_namespace_reproduces_every_counter(
    make_registry: Any, r: redis.Redis
) -> None:
    import json

    from registry import ConfigError

    source = make_registry(namespace="books")
    source.register_models([model(rate_limit={"tokens_per_minute": 10**6}), MODELS[1]])
    for i in range(30):
        source.record_usage("openai:gpt-4", 100 + i, 7 * i, tenant=["acme", None][i % 2], latency_ms=i * 40)
    source.set_budget("beta", "5", "week", thresholds=[1, 50])
    source.set_budget("beta", "2", "day", model="anthropic:claude")
    held = source.acquire("anthropic:claude", 500, 500, tenant="beta").reservation
    source.settle(held, 500, 123, success=False, latency_ms=2000)
    in_flight = source.acquire("anthropic:claude", 10, 10, tenant="beta").reservation  # a hold: not books
    document = json.loads(json.dumps(source.export()))  # it survives JSON
    assert document["format"] == "registry-export/1"
    assert len(document["catalog"]) == 2
    assert [(b["tenant"], b["period"]) for b in document["budgets"]] == [("beta", "week"), ("beta", "day")]
    spends = {k: v["counters"] for k, v in document["ledger"].items() if k.startswith("bud:")}
    assert len(spends) == 2
    assert all(set(c) <= {"spent", "t:1"} and c["spent"] > 0 for c in spends.values())
    assert in_flight is not None

    target = make_registry(namespace="copy")
    assert target.restore(document) == len(document["ledger"])

    def ledger(ns: str) -> dict[str, Any]:
        found = {}
        for key in r.scan_iter(match=f"{{{ns}:adm:*:l:*"):
            if key.endswith(":l:tenants"):
                found[key.removeprefix(f"{{{ns}:")] = (r.smembers(key), r.pttl(key) > 0)
            elif ":l:id:" not in key:
                found[key.removeprefix(f"{{{ns}:")] = (counters(r, key), r.pttl(key) > 0)
        return found

    assert ledger("copy") == ledger("books")
    # gpt-4 and acme on it; claude and beta on it; each model's tenant set
    assert len(ledger("books")) == 2 * 4 + 4 + 4 + 2
    assert ledger("books")["adm:openai:gpt-4}:l:tenants"] == ({"acme"}, False)
    assert target.get_statistics() == source.get_statistics()
    assert target.get_budgets() == source.get_budgets()
    assert [(s.spent, s.thresholds_reached) for s in target.budget_status("beta")] == [
        (s.spent, s.thresholds_reached) for s in source.budget_status("beta")
    ]
    assert target.budget_status("beta")[0].held == 0 < source.budget_status("beta")[0].held
    assert [m.key for m in target.list_models()] == [m.key for m in source.list_models()]
    before = dump(r)
    with pytest.raises(ConfigError, match="already has a ledger"):
        target.restore(document)
    assert dump(r) == before
    with pytest.raises(ConfigError, match="registry-export/1"):
        target.restore({"format": "other"})
