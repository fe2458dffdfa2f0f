"""Admission under a fleet: many real processes against one Redis, counted exactly.

Also: clients with skewed clocks, workers killed between acquire and settle (every key
they leave expires), memory per limit, and one round trip per acquire and per settle.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import random
import time
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from registry import AsyncRegistry, Registry
from registry._base import connect
from registry.admission.types import Reservation
from registry.testing import FakeClock, use_clock
from tests.conftest import model

PROCS = 16
pytestmark = pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
CTX = mp.get_context("fork")


def _fleet(target: Any, *args: Any, procs: int = PROCS) -> list[Any]:
    barrier, results = CTX.Barrier(procs), CTX.Queue()
    workers = [CTX.Process(target=target, args=(i, *args, barrier, results)) for i in range(procs)]
    for w in workers:
        w.start()
    out = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    results.close()
    results.join_thread()
    return out


def _hammer(i: int, url: str, attempts: int, skew: float, barrier: Any, results: Any) -> None:
    if skew:
        real = time.time
        time.time = lambda: real() + skew * (1 if i % 2 else -1)  # minutes apart, both ways
    reg = Registry.from_url(url, watch=False)
    reg.get_model("openai:gpt-4")
    barrier.wait()
    admitted = sum(reg.acquire("openai:gpt-4", 1, 0).allowed for _ in range(attempts))
    reg.close()
    results.put(admitted)


def test_sixteen_processes_admit_exactly_the_rpm(redis_url: str) -> None:
    reg = Registry.from_url(redis_url, watch=False)
    reg.register_model(model(rate_limit={"requests_per_minute": 1000}))
    admitted = _fleet(_hammer, redis_url, 150, 0.0)  # 2,400 attempts as fast as they go
    assert sum(admitted) == 1000
    assert reg.check_rate_limit("openai:gpt-4").remaining["requests_per_minute"] == 0
    reg.close()


def test_clients_with_skewed_clocks_admit_as_one(redis_url: str) -> None:
    reg = Registry.from_url(redis_url, watch=False)
    reg.register_model(model(rate_limit={"requests_per_minute": 300}))
    admitted = _fleet(_hammer, redis_url, 60, 300.0, procs=8)  # clocks 10 minutes apart
    assert sum(admitted) == 300
    reg.close()


def _weighted(i: int, url: str, now_ms: int, phase: int, barrier: Any, results: Any) -> None:
    reg = Registry.from_url(url, watch=False)
    use_clock(reg, FakeClock(now_ms))  # the same frozen instant for the whole fleet
    rng = random.Random(i * 7919 + phase)
    reg.get_model("openai:gpt-4")
    barrier.wait()
    held = []
    for _ in range(60):
        size = (rng.randint(100, 4000), rng.randint(0, 2000)) if phase == 1 else (1, 0)
        decision = reg.acquire("openai:gpt-4", *size)
        if decision.allowed:
            held.append(decision.reservation.dumps())
    reg.close()
    results.put(held)


def test_weighted_tokens_never_exceed_the_tpm_and_refunds_are_admitted_again(redis_url: str) -> None:
    limit = 200_000
    reg = Registry.from_url(redis_url, watch=False)
    reg.register_model(model(rate_limit={"tokens_per_minute": limit}))
    now = 1_700_000_000_000
    use_clock(reg, FakeClock(now))
    held = [Reservation.loads(text) for batch in _fleet(_weighted, redis_url, now, 1) for text in batch]
    reserved = sum(h.input_tokens + h.max_output_tokens for h in held)
    assert 0 < reserved <= limit
    assert reg.check_rate_limit("openai:gpt-4").remaining["tokens_per_minute"] == limit - reserved
    real = 0
    for h in held:  # every request used less than it reserved
        output = h.max_output_tokens // 3
        assert reg.settle(h, input_tokens=h.input_tokens, output_tokens=output)
        real += h.input_tokens + output
    assert reg.check_rate_limit("openai:gpt-4").remaining["tokens_per_minute"] == limit - real
    # Phase 2: one-token requests from the whole fleet take exactly the refunded capacity.
    again = sum(len(batch) for batch in _fleet(_weighted, redis_url, now, 2, procs=PROCS))
    if limit - real <= PROCS * 60:
        assert again == limit - real
    assert reg.check_rate_limit("openai:gpt-4").remaining["tokens_per_minute"] == limit - real - again
    reg.close()


def _die_midway(i: int, url: str, barrier: Any, results: Any) -> None:
    reg = Registry.from_url(url, watch=False)
    barrier.wait()
    held = [reg.acquire("openai:gpt-4", 100, 100, tenant=f"t{i % 3}").reservation for _ in range(5)]
    if i % 4 == 0:
        reg.settle(held[0], 100, 10)
    if i % 4 == 1:
        reg.release(held[1])
    results.put(i)
    results.close()
    results.join_thread()  # the report must reach the parent before the process dies
    os._exit(0)  # killed between acquire and settle: no cleanup, no close


def test_killed_workers_leave_no_key_without_a_ttl(redis_url: str, r: redis.Redis) -> None:
    reg = Registry.from_url(redis_url, watch=False)
    reg.register_model(
        model(
            rate_limit={"requests_per_minute": 10_000, "tokens_per_minute": 10**7, "requests_per_day": 10**6},
            tenant_limits={"*": {"requests_per_minute": 1000, "tokens_per_minute": 10**6}},
        )
    )
    _fleet(_die_midway, redis_url, procs=8)
    model_keys = set(r.scan_iter(match="{registry:adm:*", count=1000))
    # What is meant to last: the catalog, and the ledger's all-time totals of settled requests.
    totals = {k for k in model_keys if k.endswith((":l:total", ":l:tenants"))}
    assert totals == {"{registry:adm:openai:gpt-4}:l:total", "{registry:adm:openai:gpt-4}:l:tenants"} | {
        f"{{registry:adm:openai:gpt-4}}:t:t{i}:l:total"
        for i in (0, 1)
        if any(j % 4 == 0 and j % 3 == i for j in range(8))
    }
    admission = model_keys - totals
    # The model's 3 windows and each tenant's 2, a marker per settled or released acquire (no
    # record for acquires without a request id), and the ledger's buckets.
    assert len([k for k in admission if ":w:" in k]) == 3 + 3 * 2
    assert len([k for k in admission if ":s:" in k]) == len([i for i in range(8) if i % 4 in (0, 1)])
    assert not [k for k in admission if ":r:" in k]
    assert all(r.pttl(k) > 0 for k in admission), [k for k in admission if r.pttl(k) <= 0]
    everything = set(r.scan_iter(count=1000))
    catalog = {k for k in everything if k.startswith("{registry:catalog}")}
    assert everything == catalog | model_keys
    reg.close()


def test_memory_per_limit_stays_small_at_a_million_tpm(redis_url: str, r: redis.Redis) -> None:
    reg = Registry.from_url(redis_url, watch=False)
    reg.register_model(model(rate_limit={"tokens_per_minute": 1_000_000, "requests_per_day": 10_000}))
    clock = FakeClock(1_700_000_000_000)
    use_clock(reg, clock)
    for _ in range(60 * 4):  # a full minute window: every bucket holds something
        assert reg.acquire("openai:gpt-4", 4000, 0).allowed
        clock.advance(0.25)
    tpm = r.memory_usage("{registry:adm:openai:gpt-4}:w:tpm")
    assert r.hlen("{registry:adm:openai:gpt-4}:w:tpm") == 60 + 2  # buckets, _sum and _low
    assert tpm < 2048, tpm
    for _ in range(96):  # a full day window: 96 buckets of 15 minutes
        reg.acquire("openai:gpt-4", 1, 0)
        clock.advance(900)
    assert r.hlen("{registry:adm:openai:gpt-4}:w:rpd") == 96 + 2
    assert r.memory_usage("{registry:adm:openai:gpt-4}:w:rpd") < 4096
    reg.close()


class _Counting(redis.Connection):
    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sent += 1
        super().send_packed_command(command, check_health)


class _AsyncCounting:
    """Counts every asyncio connection's writes (the asyncio cluster client takes no
    ``connection_class``, so the method is patched on the class for the test)."""

    sent = 0
    original = aredis.Connection.send_packed_command

    @staticmethod
    async def send_packed_command(conn: aredis.Connection, command: Any, check_health: bool = True) -> None:
        _AsyncCounting.sent += 1
        await _AsyncCounting.original(conn, command, check_health)


def test_one_round_trip_per_acquire_and_per_settle(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the catalog copy local (the default), acquire and settle each send one command.

    The watcher that keeps the copy current is replaced by an idle stand-in, so that only
    the calls under test are counted; with ``watch=False`` every read, acquire included,
    first asks Redis for catalog changes (one more round trip).
    """
    import threading

    client = connect(redis_url, connection_class=_Counting)
    reg = Registry(client, watch=True)
    stand_in = threading.Thread(target=lambda: None)
    stand_in.start()
    reg._watcher, reg._watcher_pid = stand_in, os.getpid()
    reg.register_model(
        model(
            rate_limit={"requests_per_minute": 100, "tokens_per_minute": 10**6},
            tenant_limits={"*": {"requests_per_minute": 10}},
        )
    )
    reg.settle(reg.acquire("openai:gpt-4", 1, 1, tenant="a").reservation, 1, 1)  # copy and scripts loaded
    for tenant in (None, "a"):
        before = _Counting.sent
        held = reg.acquire("openai:gpt-4", 10, 10, tenant=tenant).reservation
        assert _Counting.sent - before == 1
        before = _Counting.sent
        assert reg.settle(held, 10, 5)
        assert _Counting.sent - before == 1
    reg.close()
    client.close()

    async def main() -> None:
        monkeypatch.setattr(aredis.Connection, "send_packed_command", _AsyncCounting.send_packed_command)
        aclient = connect(redis_url, asyncio=True)
        areg = AsyncRegistry(aclient, watch=True)
        idle = asyncio.create_task(asyncio.sleep(3600))
        areg._watcher = idle
        await areg.settle((await areg.acquire("openai:gpt-4", 1, 1)).reservation, 1, 1)
        before = _AsyncCounting.sent
        held = (await areg.acquire("openai:gpt-4", 10, 10)).reservation
        assert _AsyncCounting.sent - before == 1
        before = _AsyncCounting.sent
        assert await areg.settle(held, 10, 5)
        assert _AsyncCounting.sent - before == 1
        await areg.aclose()
        await aclient.aclose()

    asyncio.run(main())
