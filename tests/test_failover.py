"""Faults under load: a cluster primary killed and failed over, a single Redis restarted, and
SCRIPT FLUSH, while many threads acquire and record usage under request ids.

What each test holds the library to (see docs/guarantees.md):

* the clients recover by themselves: the same client objects go on working once Redis is back
  (MOVED/ASK and a new slot map, NOSCRIPT reload, reconnect), with no error reaching a caller
  but ``BackendUnavailable``/``BackendError`` while Redis is really away;
* nothing is charged twice: a caller that retries under the same request id (as the spool
  does) is counted once, so after every acknowledged record is sent once more the ledger
  equals the set of distinct request ids exactly;
* acknowledged writes that a failover loses (replication is asynchronous) are counted and
  reported, not hidden: the replay above is what restores them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio.cluster as acluster
from redis.crc import key_slot
from redis.exceptions import MovedError

from registry import AsyncRegistry, BackendError, BackendUnavailable, Decision, Registry
from registry import _base as registry_base
from registry._core import Script
from registry.embedded_cluster import EmbeddedCluster, RedisProcess, start_cluster
from registry.faults import FaultPolicy
from registry.keys import Keys
from registry.testing import FakeClock, use_clock
from tests.conftest import _in_ci, client_factory, model

THREADS = 8
PER_THREAD = 60
MODEL = "openai:gpt-4"
RETRY_FOR_S = 60.0  # how long a caller keeps retrying one call before the test gives up


def _needs_servers() -> None:
    import shutil

    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        if _in_ci():
            pytest.fail("CI=true but redis-server/redis-cli are missing")
        pytest.skip("needs redis-server and redis-cli")


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[EmbeddedCluster]:
    """A cluster of this module's own: its primaries get killed."""
    _needs_servers()
    cluster = start_cluster(primaries=3, replicas=1)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def lone_primaries() -> Iterator[EmbeddedCluster]:
    """Three primaries without replicas, serving their slots while one of them is down
    (``cluster-require-full-coverage no``): a dead node stays dead, nothing fails over."""
    _needs_servers()
    cluster = start_cluster(primaries=3, replicas=0)
    for node in cluster.nodes:
        with node.client() as client:
            client.config_set("cluster-require-full-coverage", "no")
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sync", "async"])
def on_cluster(request: pytest.FixtureRequest, lone_primaries: EmbeddedCluster) -> Iterator[Callable[..., Any]]:
    """A factory of clients of ``lone_primaries`` (sync, or async behind SyncFacade), on a fake
    clock for their breakers, every node up."""
    for node in lone_primaries.nodes:
        if node.process is None:
            node.start()
    lone_primaries.wait_ok()
    lone_primaries.flushall()
    with client_factory(request.param) as connect:

        def make(policy: FaultPolicy | None = None, **options: Any) -> Any:
            options = {"namespace": "per-node", "watch": False, "fault_policy": policy, **options}
            reg = connect(lone_primaries.url, **options)
            use_clock(reg, FakeClock(int(time.time() * 1000)))
            return reg

        yield make


def _model_on(cluster: EmbeddedCluster, node: RedisProcess, prefix: str) -> str:
    """The id of a model (provider openai) whose keys live on ``node``."""
    keys = Keys("per-node")
    return next(
        f"{prefix}{i}" for i in range(1000) if cluster.node_of(keys.window(f"openai:{prefix}{i}", "rpm")) is node
    )


def test_one_dead_primary_refuses_only_the_models_it_serves(
    lone_primaries: EmbeddedCluster, on_cluster: Callable[..., Any]
) -> None:
    """A cluster client keeps a breaker per primary: with one primary dead, the models of the
    others are admitted exactly as before, while the dead one's fail closed (or, under
    admission="open", from the local emergency cap), and its usage is spooled and replayed."""
    cluster = lone_primaries
    catalog = cluster.node_of(Keys("per-node").meta)
    victim, third = (n for n in cluster.nodes if n is not catalog)
    healthy, doomed = f"openai:{_model_on(cluster, third, 'h')}", f"openai:{_model_on(cluster, victim, 'd')}"
    strict = on_cluster()
    lenient = on_cluster(FaultPolicy(admission="open", emergency_share=0.5, failures_to_open=1))
    burst = on_cluster(watch=True)  # no catalog read before each call: concurrent calls share pipelines
    strict.register_models(
        [
            model(id=healthy.split(":")[1], rate_limit={"requests_per_minute": 30}),
            model(id=doomed.split(":")[1], rate_limit={"requests_per_minute": 10}),
        ]
    )
    for reg in (strict, lenient, burst):
        assert reg.acquire(doomed, 1, 1).allowed  # the slot map is learnt (the async client's first call)
    victim.kill()
    # Calls for both nodes at once, pipelined together: the healthy node's are all admitted.
    outcomes = _at_once(burst, [healthy, doomed] * 10)
    assert all(isinstance(o, Decision) and o.allowed and not o.degraded for o in outcomes[::2])
    assert all(isinstance(o, BackendUnavailable) for o in outcomes[1::2])
    assert (burst.faults.breakers[third.address], burst.faults.breakers[victim.address]) == ("closed", "open")
    allowed = refused = 0
    errors = []
    for _ in range(25):
        with pytest.raises(BackendUnavailable) as info:
            strict.acquire(doomed, 1, 1)
        errors.append(str(info.value))
        decision = strict.acquire(healthy, 1, 1)  # Redis decides, exactly: 20 of 25
        assert not decision.degraded
        allowed += decision.allowed
        refused += decision.denied_by == "requests_per_minute"
    assert (allowed, refused) == (20, 5)  # 30 a minute: 10 in the burst, 20 here
    assert all(e.startswith("Redis unavailable") for e in errors[:3])  # sent, and refused by the dead node
    assert all(e.startswith(f"circuit open: Redis Cluster node {victim.address} failed 3") for e in errors[3:])
    stats = strict.faults
    assert stats.breakers[victim.address] == "open"
    assert {n: st for n, st in stats.breakers.items() if n != victim.address} == {
        "*": "closed",
        catalog.address: "closed",
        third.address: "closed",
    }
    assert (stats.breaker, stats.breaker_opens, stats.fail_closed_refusals) == ("open", 1, 25)
    # Admission failing open: the dead node's model from the local cap (0.5 of 10, one taken
    # before), the others' from Redis as ever.
    decisions = [lenient.acquire(doomed, 1, 1) for _ in range(8)]
    assert all(d.degraded for d in decisions)
    assert sum(d.allowed for d in decisions) == 5
    assert not lenient.acquire(healthy, 1, 1).degraded
    # Usage: the dead node's is spooled, the others' written; the node's breaker closing (its
    # probe answered) replays the spool.
    for i in range(3):
        assert strict.record_usage(doomed, 10, 5, request_id=f"d{i}").recorded
        assert strict.record_usage(healthy, 10, 5, request_id=f"h{i}").recorded
    assert (strict.faults.spool_depth, strict.get_statistics(healthy).requests) == (3, 3)
    victim.start()
    cluster.wait_ok()
    getattr(strict, "_target", strict)._test_clock.advance(1.0)  # the breaker's probe is due
    assert strict.acquire(doomed, 1, 1).allowed  # the probe: the node is back (empty: it had no persistence)
    assert strict.faults.breaker == "closed"
    strict.flush_spool()  # waits for the replay the close started, then sends what is left
    assert (strict.faults.replayed, strict.faults.spool_depth) == (3, 0)
    assert strict.get_statistics(doomed).requests == 3


def _at_once(reg: Any, models: list[str]) -> list[Any]:
    """An acquire of each of ``models`` at the same time (tasks, or threads): their outcomes.

    Each under a request id, so that a call sent twice counts once: redis-py's asyncio cluster
    pipeline, before each retry of the dead node's commands, closes every connection of the
    client, and a healthy node's pipeline caught in flight is sent again."""
    target = getattr(reg, "_target", reg)
    if isinstance(target, AsyncRegistry):

        async def gathered() -> list[Any]:
            calls = (target.acquire(m, 1, 1, request_id=f"burst-{i}") for i, m in enumerate(models))
            return await asyncio.gather(*calls, return_exceptions=True)

        return reg._runner.run(gathered())  # type: ignore[no-any-return]
    outcomes: list[Any] = [None] * len(models)
    start = threading.Barrier(len(models))

    def one(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = reg.acquire(models[i], 1, 1, request_id=f"burst-{i}")
        except BackendError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(models))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_async_lone_calls_skip_pipelines_and_a_dead_primary_spares_calls_in_flight(
    lone_primaries: EmbeddedCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The asyncio client sends a lone script call on a cluster by ``execute_command``, not as
    a one-call pipeline: redis-py's asyncio cluster pipeline, before each retry after a
    connection error, closes every connection of the client and sleeps 0.25 s. So a call to a
    dead primary closes nothing of the client's (counted: no ``aclose`` before the end), and a
    healthy node's call in flight at the same time is neither failed nor sent twice (20 of a
    20 RPM limit admitted, the 21st refused). Its time is measured in benchmarks/async_cluster.py."""
    cluster = lone_primaries
    for node in cluster.nodes:
        if node.process is None:
            node.start()
    cluster.wait_ok()
    cluster.flushall()
    catalog = cluster.node_of(Keys("per-node").meta)
    victim, third = (n for n in cluster.nodes if n is not catalog)
    healthy, doomed = f"openai:{_model_on(cluster, third, 'h')}", f"openai:{_model_on(cluster, victim, 'd')}"
    piped: list[Any] = []
    pipe_command = acluster.ClusterPipeline.execute_command

    def spy(pipe: Any, *args: Any, **kwargs: Any) -> Any:
        piped.append(args[0])
        return pipe_command(pipe, *args, **kwargs)

    monkeypatch.setattr(acluster.ClusterPipeline, "execute_command", spy)
    closes: list[int] = []
    close = acluster.RedisCluster.aclose

    async def counted_close(client: Any) -> None:
        closes.append(1)
        await close(client)

    monkeypatch.setattr(acluster.RedisCluster, "aclose", counted_close)
    policy = FaultPolicy(failures_to_open=1000)  # every call to the dead node is sent

    async def main() -> tuple[list[Any], int, Decision]:
        reg = AsyncRegistry.from_url(cluster.url, namespace="per-node", watch=False, fault_policy=policy)
        use_clock(reg, FakeClock(int(time.time() * 1000)))
        try:
            await reg.register_models(
                [
                    model(id=healthy.split(":")[1], rate_limit={"requests_per_minute": 20}),
                    model(id=doomed.split(":")[1], rate_limit={"requests_per_minute": 1000}),
                ]
            )
            assert (await reg.acquire(doomed, 1, 1)).allowed  # the slot map is learnt
            assert piped  # catalog reads are pipelined
            assert "EVALSHA" not in piped  # scripts are not
            victim.kill()
            outcomes: list[Any] = []
            for _ in range(20):
                pair = await asyncio.gather(
                    reg.acquire(healthy, 1, 1), reg.acquire(doomed, 1, 1), return_exceptions=True
                )
                outcomes.extend(pair)
            return outcomes, len(closes), await reg.acquire(healthy, 1, 1)
        finally:
            await reg.aclose()

    try:
        outcomes, closed, last = asyncio.run(main())
    finally:
        if victim.process is None:
            victim.start()
        cluster.wait_ok()
    assert all(isinstance(o, Decision) and o.allowed for o in outcomes[::2]), outcomes[::2]
    assert all(isinstance(o, BackendUnavailable) for o in outcomes[1::2])
    assert (last.allowed, last.denied_by) == (False, "requests_per_minute")  # none was counted twice
    assert "EVALSHA" not in piped
    assert closed == 0  # the dead node's failures closed no connection of the client's


def test_a_slot_moved_to_another_node_is_guarded_by_that_nodes_breaker(
    lone_primaries: EmbeddedCluster, on_cluster: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The breaker of a request follows redis-py's slot map: a MOVED (what a failover or a
    resharding answers) takes the slot, and so its requests, to the new owner's breaker."""
    reg = on_cluster()
    target = getattr(reg, "_target", reg)
    faults = target._faults
    key = target.keys.window("openai:moved", "rpm")
    request = Script("acquire", (key,), ())
    owner = lone_primaries.node_of(key)
    other = next(n for n in lone_primaries.nodes if n is not owner)
    if isinstance(target, AsyncRegistry):
        assert faults.guard_for(request) is faults.breaker  # no slot map before the first call: "*"
    reg.refresh()
    before = faults.guard_for(request)
    assert before.node == owner.address
    assert (
        faults.guard_for(Script("acquire", (target.keys.meta,), ())).node
        == lone_primaries.node_of(target.keys.meta).address
    )
    slot = key_slot(key.encode())

    def move(to: RedisProcess) -> None:
        moved = target.redis.nodes_manager.move_slot(MovedError(f"{slot} {to.address}"))
        if asyncio.iscoroutine(moved):
            reg._runner.run(moved)

    move(other)
    assert faults.guard_for(request).node == other.address
    move(owner)
    assert faults.guard_for(request) is before  # kept: the node's breaker, with its history
    # The slots of scripts' first keys are remembered, a bounded few (a usage marker's key
    # holds a request id): when full, forgotten.
    monkeypatch.setattr(registry_base, "_MAX_KEY_SLOTS", 2)
    for name in ("a", "b", "c"):
        faults.guard_for(Script("acquire", (target.keys.window(f"openai:{name}", "rpm"),), ()))
    assert len(target._key_slots) == 1


class Load:
    """``THREADS`` threads, each doing ``PER_THREAD`` acquire + record_usage pairs under its own
    request ids, retrying a call that fails (same id) until it is acknowledged."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        self.acknowledged: list[str] = []  # request ids whose record_usage returned
        self.errors: list[BaseException] = []  # what reached callers (each retried)
        self.unexpected: list[BaseException] = []
        self.done = 0
        self._lock = threading.Lock()
        self.progress = threading.Event()

    def _retrying(self, call: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + RETRY_FOR_S
        while True:
            try:
                return call()
            except BackendError as exc:  # the documented error while Redis is away
                with self._lock:
                    self.errors.append(exc)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def worker(self, n: int) -> None:
        try:
            for i in range(PER_THREAD):
                rid = f"w{n}-{i}"
                decision = self._retrying(lambda rid=rid: self.reg.acquire(MODEL, 10, 5, request_id=rid))
                assert decision.allowed
                self._retrying(lambda rid=rid: self.reg.record_usage(MODEL, 10, 5, latency_ms=3, request_id=rid))
                with self._lock:
                    self.acknowledged.append(rid)
                    self.done += 1
                    if self.done >= THREADS * PER_THREAD // 4:
                        self.progress.set()
        except BaseException as exc:  # pragma: no cover - reported by run()
            with self._lock:
                self.unexpected.append(exc)

    def run(self, fault: Callable[[], None]) -> None:
        threads = [threading.Thread(target=self.worker, args=(n,)) for n in range(THREADS)]
        for t in threads:
            t.start()
        assert self.progress.wait(60), "the load never got going"
        fault()
        for t in threads:
            t.join(RETRY_FOR_S * 2)
        assert not any(t.is_alive() for t in threads), "a worker hung"
        assert not self.unexpected, self.unexpected[:3]
        assert len(self.acknowledged) == THREADS * PER_THREAD

    def replay_and_check(self) -> int:
        """Send every acknowledged record again (what a spool does after a fault), then the ledger
        must count each request id exactly once. Returns how many acknowledged records the fault
        had lost (the replay restored them)."""
        before = self.reg.get_statistics(MODEL).requests
        for rid in self.acknowledged:
            self._retrying(lambda rid=rid: self.reg.record_usage(MODEL, 10, 5, latency_ms=3, request_id=rid))
        totals = self.reg.get_statistics(MODEL)
        assert totals.requests == len(set(self.acknowledged)) == THREADS * PER_THREAD
        assert totals.input_tokens == 10 * totals.requests
        assert totals.output_tokens == 5 * totals.requests
        assert totals.cost_units == self.reg.get_statistics(MODEL).cost_units  # stable: nothing in flight
        return totals.requests - before


def _registry(url: str) -> Registry:
    reg = Registry.from_url(url, watch=False, socket_timeout=2, socket_connect_timeout=1)
    reg.register_model(model(rate_limit={"requests_per_minute": 10**6, "tokens_per_minute": 10**9}), replace=True)
    return reg


def test_a_killed_primary_fails_over_and_nothing_is_counted_twice(own_cluster: EmbeddedCluster) -> None:
    own_cluster.wait_ok()
    own_cluster.flushall()
    reg = _registry(own_cluster.url)
    victim = own_cluster.node_of(reg.keys.window(MODEL, "rpm"))
    load = Load(reg)

    def kill() -> None:
        victim.kill()

    load.run(kill)
    own_cluster.wait_ok(replicas=False)  # a replica took the dead primary's slots
    assert own_cluster.node_of(reg.keys.window(MODEL, "rpm")) is not victim
    lost = load.replay_and_check()
    # Replies to the fault, each retried: connection errors until the replica was promoted.
    assert all(isinstance(e, BackendError) for e in load.errors)
    print(f"failover: {len(load.errors)} retried errors, {lost} acknowledged records lost and replayed")
    # The dead node comes back as a replica of its old slots' new owner, and the cluster heals.
    victim.start()
    own_cluster.wait_ok()
    reg.close()


def test_a_restarted_redis_is_reconnected_and_scripts_reloaded(tmp_path: Path) -> None:
    """A single Redis with AOF (appendfsync always) stopped and started on the same port: the
    client reconnects and reloads its scripts by itself, and no acknowledged write is lost."""
    _needs_servers()
    server = RedisProcess.single(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    try:
        reg = _registry(server.url)
        load = Load(reg)

        def restart() -> None:
            server.stop()
            server.start()

        load.run(restart)
        assert load.replay_and_check() == 0  # AOF with fsync always: nothing acknowledged was lost
        assert all(isinstance(e, BackendError) for e in load.errors)
        reg.close()
    finally:
        server.stop()


@pytest.mark.parametrize("backend", ["single", "cluster"], indirect=True)
def test_script_flush_under_load_reaches_no_caller(redis_url: str, r: Any) -> None:
    reg = _registry(redis_url)
    load = Load(reg)
    stop = threading.Event()
    flushes = 0

    def flusher() -> None:
        nonlocal flushes
        while not stop.is_set():
            r.script_flush()
            flushes += 1
            time.sleep(0.01)

    flushing = threading.Thread(target=flusher)

    def start_flushing() -> None:
        flushing.start()

    try:
        load.run(start_flushing)
    finally:
        stop.set()
        flushing.join()
    assert flushes > 0
    assert load.errors == []  # NOSCRIPT is handled inside the client: no caller ever saw it
    assert load.replay_and_check() == 0
    reg.close()
