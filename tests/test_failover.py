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

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from registry import BackendError, Registry
from registry.embedded_cluster import EmbeddedCluster, RedisProcess, start_cluster
from tests.conftest import _in_ci, model

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
