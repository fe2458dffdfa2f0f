"""The benchmark harness (benchmarks/run.py) in miniature: its building blocks and one short run
of its sections against the test Redis, checking the JSON document's shape and that every
number is there and positive. Nothing here asserts a speed.

The peers (benchmarks/requirements.txt) are not dependencies of the package: without them the
peer rows are simply absent, and the tests that need them skip.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import redis

from benchmarks import floor, harness, ours, peers, rounds, run, work
from benchmarks import memory as memory_section

pytestmark = pytest.mark.usefixtures("real_redis")  # INFO commandstats, MEMORY USAGE


def test_time_loop_times_every_call(redis_url: str) -> None:
    bench = floor.ping_bench(redis_url)
    harness.warm(bench, 3)
    timing = harness.time_loop(bench, 0.05)
    row = harness.summarize([timing])
    assert timing.calls == len(timing.samples) > 0
    assert row["ops_per_s"] > 0
    assert 0 < row["p50_us"] <= row["p99_us"]
    assert bench.close is not None
    bench.close()


def test_time_loop_pauses_for_refills() -> None:
    pending: list[int] = []
    refills = []

    def refill() -> None:
        refills.append(1)
        pending.extend(range(10))

    timing = harness.time_loop(harness.Bench(pending.pop, due=lambda: not pending, refill=refill), 0.02)
    assert timing.calls > 10
    assert len(refills) >= timing.calls // 10


def test_measure_work_counts_scripts_inner_commands_and_round_trips(r: redis.Redis) -> None:
    script = r.register_script("redis.call('SET', KEYS[1], 1); redis.call('INCR', KEYS[1]); return 1")
    script(keys=["{t}:k"])
    work = harness.measure_work(r, lambda: script(keys=["{t}:k"]), 10, batch=4)
    assert work["calls"] == 10
    assert work["round_trips_per_op"] == 1
    assert work["scripts_per_op"] == 1
    assert work["top_level"] == {"evalsha": 1}
    assert work["inner"] == {"set": 1, "incr": 1}
    assert work["inner_per_op"] == 2
    assert work["server_us_per_op"] > 0
    assert work["client_cpu_us_per_op"] > 0


def test_run_procs_in_a_fresh_process(redis_url: str) -> None:
    row = harness.run_procs(floor.evalsha_bench, (redis_url,), 1, 0.05)
    assert row["calls"] > 0
    assert row["ops_per_s"] > 0
    row = harness.run_procs(floor.async_evalsha_bench, (redis_url,), 1, 0.05, tasks=4)
    assert row["calls"] > 0


def test_run_procs_reports_a_worker_failure(redis_url: str) -> None:
    with pytest.raises(RuntimeError, match="benchmark worker failed"):
        harness.run_procs(ours.bench, (redis_url, "no such operation"), 1, 0.05)


@pytest.mark.parametrize("operation", list(ours.OPERATIONS))
def test_every_operation_of_ours_runs(redis_url: str, operation: str) -> None:
    ours.setup(redis_url)
    bench = ours.bench(redis_url, operation)
    harness.warm(bench, 3)
    assert harness.time_loop(bench, 0.02).calls > 0
    assert bench.close is not None
    bench.close()


def test_async_operations_run(redis_url: str) -> None:
    ours.setup(redis_url)

    async def go() -> int:
        total = 0
        for operation in ours.ASYNC_OPERATIONS:
            bench = await ours.async_bench(redis_url, operation)
            await harness.warm_async(bench, 4, rounds=1)
            total += (await harness.time_loop_async(bench, 0.02, 4)).calls
            assert bench.close is not None
            await bench.close()
        return total

    assert asyncio.run(go()) > 0


def test_peers_run_when_installed(redis_url: str) -> None:
    pytest.importorskip("limits")
    pytest.importorskip("throttled")
    for strategy in (peers.LIMITS_MW, peers.LIMITS_SWC):
        for rpm in (None, 10**6):
            assert peers.limits_bench(redis_url, strategy, 10**6, 500, rpm=rpm).call()
    for algorithm in (peers.THROTTLED_SW, peers.THROTTLED_GCRA):
        assert not peers.throttled_bench(redis_url, algorithm, 10**6, 500).call().limited
    r = redis.Redis.from_url(redis_url)
    key = peers.limits_key(redis_url, peers.LIMITS_MW, 1000, "full")
    assert peers.limits_mw_full(r, key, 1000, expired=100) == 1000
    # the full list admits exactly the hits whose cost fits in what has expired
    assert peers.limits_bench(redis_url, peers.LIMITS_MW, 1000, 50, identifier="full").call()
    peers.clear(redis_url)
    assert not list(r.scan_iter(match="LIMITS:*"))
    r.close()


def test_memory_section(redis_url: str) -> None:
    report = harness.Report()
    report.section("memory", "memory", "memory")
    out = memory_section.run_memory(report, redis_url, per_step=2)
    assert out["model"]["bytes"] == out["rpm"]["bytes"] + out["tpm"]["bytes"] > 0
    assert out["rpd"]["bytes"] > 0
    # Every key measured takes room; a reservation without a request id is no key at all.
    assert all(row["bytes"] > 0 for row in report.rows if "without a request id" not in row["operation"])
    assert out["settle marker"]["bytes"] > 0


def _positive(row: dict[str, Any], *fields: str) -> None:
    for name in fields:
        assert row[name] > 0, (row["operation"], name, row[name])


def test_one_short_run_writes_the_json_document(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    args = ["--redis-url", redis_url, "--quick", "--seconds", "0.05", "--round-seconds", "0.02", "--rounds", "1"]
    args += ["--procs", "1", "--calls", "20", "--reps", "1", "--models", "200", "--json", str(path)]
    args += ["--only", "floor", "rounds", "catalog", "work", "sweeps"]  # async: above, memory: below
    doc = run.main(args)
    assert json.loads(path.read_text()) == json.loads(json.dumps(doc, default=str))

    meta = doc["meta"]
    for name in ("date", "cpu_count", "redis_server", "python", "redis_py", "hiredis", "peers", "git_commit"):
        assert name in meta
    assert meta["cpu_count"] > 0

    sections = {row["section"] for row in doc["rows"]}
    assert sections == {"floor", "rounds", "catalog", "work", "sweeps"}
    for row in doc["rows"]:
        if row["kind"] == "throughput":
            _positive(row, "ops_per_s", "p50_us", "p99_us", "calls")
            assert "×" in row["clients"]
        elif row["kind"] == "work":
            _positive(row, "round_trips_per_op", "client_cpu_us_per_op")
            if row["operation"] != "floor: PING":  # a PING's server time may round to 0 µs
                _positive(row, "scripts_per_op", "server_us_per_op")
            assert "NOT ALL ADMITTED" not in row.get("note", ""), row

    floor_row = next(r for r in doc["rows"] if r["section"] == "rounds" and r["operation"] == rounds.FLOOR)
    assert floor_row["ratio"] == 1.0
    acquire = next(r for r in doc["rows"] if r["operation"] == "acquire RPM+TPM+RPD, full windows")
    assert acquire["round_trips_per_op"] == 1
    assert acquire["scripts_per_op"] == 1
    for name in ("get_model (sync)", "estimate_cost (12,000 in / 800 out) (sync)"):
        read = next(r for r in doc["rows"] if r["operation"] == name)
        assert read["redis_commands"] == 0  # served from the local copy
    sweeps = [r for r in doc["rows"] if r["section"] == "sweeps" and r["operation"].startswith("acquire")]
    assert len(sweeps) == len(work.LIMIT_SWEEP) + len(work.WEIGHT_SWEEP)

    statuses = {t["target"]: t["status"] for t in doc["targets"]}
    assert set(statuses.values()) <= {"PASS", "MISS", "NOT RUN", "NOT BUILT", "NOT MEASURED"}
    assert statuses["memory per limited model < 2 KB at 1,000,000 TPM after a full window"] == "NOT RUN"
    item7 = next(status for target, status in statuses.items() if target.startswith("item 7"))
    assert item7 == "NOT RUN"  # the async section was left out
