"""The fault policy (registry/faults.py): breaker, fail closed / open, emergency cap, usage spool.

The outage tests run against a private redis-server of their own on a fixed port, which they
stop (``SAVE``, then SIGTERM), freeze (``SIGSTOP``: a Redis that accepts connections and never
answers) and start again on the same port with the same data. No assertion depends on timing:
"without waiting for a timeout" is checked by counting the connections the client asks its
pool for, and the breaker's clock is the testing clock.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry
from prometheus_client.registry import REGISTRY

from registry import AsyncRegistry, BackendUnavailable, ConfigError, Registry, RequestTooLargeError, ScriptError, _core
from registry import faults as faults_module
from registry._core import Script
from registry.admission.types import LimitSpec
from registry.embedded import free_port, redis_server_path
from registry.faults import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_SOCKET_TIMEOUT,
    CircuitBreaker,
    FaultCollector,
    FaultPolicy,
    Faults,
    LocalWindows,
    Spool,
    Spooled,
    with_timeouts,
)
from registry.testing import FakeClock, use_clock
from tests.conftest import SyncFacade, model

# -- the parts, without Redis ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"admission": "ajar"}, "admission must be 'closed' or 'open'"),
        ({"budgets": "maybe"}, "budgets must be 'closed' or 'open'"),
        ({"usage": "drop"}, "usage must be 'spool' or 'raise'"),
        ({"emergency_share": 1.5}, "emergency_share must be a fraction"),
        ({"emergency_share": True}, "emergency_share must be a fraction"),
        ({"failures_to_open": 0}, "failures_to_open must be an integer >= 1"),
        ({"open_seconds": 0}, "open_seconds must be from 0"),
        ({"open_seconds": "1"}, "open_seconds must be from 0"),
        ({"spool_max": 0}, "spool_max must be an integer >= 1"),
    ],
)
def test_a_bad_policy_is_refused_saying_what_is_wrong(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FaultPolicy(**fields)


def test_the_default_policy_fails_closed_and_spools_usage() -> None:
    policy = FaultPolicy()
    assert (policy.admission, policy.budgets, policy.usage) == ("closed", "closed", "spool")
    assert (policy.emergency_share, policy.failures_to_open, policy.open_seconds, policy.spool_max) == (
        0.1,
        3,
        1.0,
        10_000,
    )
    with pytest.raises(ConfigError, match="must be a FaultPolicy"):
        Registry(redis.Redis(), watch=False, fault_policy={"admission": "open"})  # type: ignore[arg-type]


class Transitions:
    def __init__(self) -> None:
        self.opened: list[int] = []
        self.closed: list[float] = []


def _breaker(clock: FakeClock, seen: Transitions) -> CircuitBreaker:
    return CircuitBreaker(3, 1.0, clock=lambda: clock() / 1000, on_open=seen.opened.append, on_close=seen.closed.append)


def test_the_breaker_opens_after_n_failures_in_a_row_and_probes_once_after_open_seconds() -> None:
    clock, seen = FakeClock(10_000), Transitions()
    breaker = _breaker(clock, seen)
    down = BackendUnavailable("refused")
    breaker.outcome(down)
    breaker.outcome(down)
    breaker.outcome(None)  # an answer in between: the count starts again
    assert (breaker.state, breaker.failures) == ("closed", 0)
    for _ in range(3):
        breaker.outcome(down)
    assert (breaker.state, breaker.tripped, seen.opened) == ("open", True, [3])
    refused = breaker.refuse()
    assert isinstance(refused, BackendUnavailable)
    assert "circuit open" in str(refused)
    assert "next probe in 1.000s" in str(refused)
    clock.advance(0.999)
    assert breaker.refuse() is not None
    clock.advance(0.001)
    assert breaker.refuse() is None  # the probe goes
    assert breaker.state == "half-open"
    assert "a probe is in flight" in str(breaker.refuse())  # the others do not
    breaker.outcome(down)  # the probe failed: open for another second
    assert breaker.state == "open"
    assert breaker.opens == 1  # one outage
    clock.advance(1.0)
    assert breaker.refuse() is None
    breaker.outcome(ScriptError("ERR_ARGS"))  # Redis answered, if with an error: it is back
    assert (breaker.state, breaker.failures, breaker.closes) == ("closed", 0, 1)
    assert seen.closed == [2.0]
    assert breaker.refuse() is None  # closed: nothing to refuse


def test_a_cancelled_probe_leaves_the_next_call_to_probe() -> None:
    clock, seen = FakeClock(0), Transitions()
    breaker = _breaker(clock, seen)
    for _ in range(3):
        breaker.outcome(BackendUnavailable("refused"))
    clock.advance(1.0)
    assert breaker.refuse() is None
    breaker.outcome(asyncio.CancelledError())  # no verdict
    assert breaker.state == "open"
    assert breaker.refuse() is None  # the next call is the probe
    breaker.outcome(None)
    assert breaker.state == "closed"
    breaker.outcome(BackendUnavailable("a late failure of a call sent before"))
    assert (breaker.state, breaker.failures) == ("closed", 1)


def _limits(*specs: tuple[str, str, int]) -> list[LimitSpec]:
    return [LimitSpec(name, counts, limit, 60_000, 1_000) for name, counts, limit in specs]  # type: ignore[arg-type]


def test_local_windows_admit_exactly_the_share_and_say_when_it_frees() -> None:
    clock = FakeClock(1_000_000)
    windows = LocalWindows(0.1, clock)
    limits = _limits(("requests_per_minute", "requests", 25), ("tokens_per_minute", "tokens", 1_000))
    assert windows.cap(25) == 2  # rounded down
    assert windows.take("m:x", limits, [1, 30]) == (None, 0.0)
    clock.advance(10)
    assert windows.take("m:x", limits, [1, 30]) == (None, 0.0)
    assert windows.take("m:x", limits, [1, 30], consume=False) == ("requests_per_minute", 50.0)
    assert windows.take("m:x", limits, [1, 30]) == ("requests_per_minute", 50.0)  # the first leaves at t=60s
    assert windows.take("m:x", limits, [0, 101]) == ("tokens_per_minute", None)  # never fits the cap of 100
    assert (windows.admits, windows.denials) == (2, 2)
    clock.advance(50)
    assert windows.take("m:x", limits, [1, 30]) == (None, 0.0)
    assert windows.take("m:y", _limits(("requests_per_day", "requests", 5)), [1]) == ("requests_per_day", None)


def test_the_local_cap_refuses_by_the_limit_that_frees_last() -> None:
    clock = FakeClock(0)
    windows = LocalWindows(0.5, clock)
    limits = _limits(("requests_per_minute", "requests", 4), ("tokens_per_minute", "tokens", 100))
    for tokens in (20, 20):
        assert windows.take("m:x", limits, [1, tokens]) == (None, 0.0)
        clock.advance(1)
    assert windows.take("m:x", limits, [1, 10], consume=False) == ("requests_per_minute", 58.0)
    assert windows.take("m:x", limits, [1, 20]) == ("requests_per_minute", 58.0)  # both: the same wait
    assert windows.take("m:x", limits, [0, 45]) == ("tokens_per_minute", 59.0)  # needs both entries gone
    assert windows.take("m:x", limits, [1, 45]) == ("tokens_per_minute", 59.0)  # the later of the two
    assert windows.take("m:x", limits, [1, 60]) == ("tokens_per_minute", None)
    assert windows.take("m:y", limits, [1, 10], consume=False) == (None, 0.0)
    assert windows.admits == 2


def test_a_breaker_needs_no_callbacks() -> None:
    clock = FakeClock(0)
    breaker = CircuitBreaker(1, 0.5, clock=lambda: clock() / 1000)
    breaker.outcome(BackendUnavailable("down"))
    assert breaker.state == "open"
    clock.advance(0.5)
    assert breaker.refuse() is None
    breaker.outcome(None)
    assert breaker.state == "closed"


def _faults(spool_max: int) -> Faults:
    return Faults(FaultPolicy(spool_max=spool_max), namespace="unit", clock=lambda: 0.0, on_close=lambda: None)


def _send(name: str) -> Any:
    yield Script(name, (), ())


def test_a_replay_that_fails_keeps_its_record_unless_the_spool_filled_up() -> None:
    faults = _faults(2)
    faults.spool.put(Spooled("settle", "a", lambda: _send("a")))

    def refill_then_fail(request: Script) -> Any:  # new records arrive while the replay waits
        faults.spool.put(Spooled("settle", "b", lambda: _send("b")))
        faults.spool.put(Spooled("settle", "c", lambda: _send("c")))
        raise BackendUnavailable("down again")

    assert _core.run(faults.replay(), refill_then_fail) == 0
    assert [faults.spool.take().key for _ in range(2)] == ["b", "c"]  # type: ignore[union-attr]
    assert faults.dropped == 1
    faults.spool.put(Spooled("settle", "d", lambda: _send("d")))

    def interrupted(request: Script) -> Any:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _core.run(faults.replay(), interrupted)
    assert faults.spool.take().key == "d"  # type: ignore[union-attr]
    faults.spool.put(Spooled("settle", "e", lambda: _send("e")))

    def interrupted_when_full(request: Script) -> Any:
        faults.spool.put(Spooled("settle", "f", lambda: _send("f")))
        faults.spool.put(Spooled("settle", "g", lambda: _send("g")))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _core.run(faults.replay(), interrupted_when_full)
    assert faults.dropped == 2
    assert len(faults.spool) == 2


def _falls_back() -> Any:
    """A flow that answers "fallback" when its first request fails, after a second request."""
    try:
        return (yield Script("first", (), ()))
    except BackendUnavailable:
        return ("fallback", (yield Script("second", (), ())))


class RefusesOnce:
    """A guard that refuses the first request (sending nothing) and lets the rest go."""

    def __init__(self) -> None:
        self.tripped, self.failures = True, 0
        self.outcomes: list[BaseException | None] = []

    def refuse(self) -> BackendUnavailable | None:
        self.tripped = False
        return BackendUnavailable("circuit open")

    def outcome(self, error: BaseException | None) -> None:
        self.outcomes.append(error)


def test_the_drivers_throw_errors_into_the_flow_and_send_nothing_the_guard_refuses() -> None:
    sent: list[str] = []

    def execute(request: Script) -> str:
        sent.append(request.name)
        return "reply"

    async def aexecute(request: Script) -> str:
        return execute(request)

    assert _core.run(_falls_back(), execute, RefusesOnce()) == ("fallback", "reply")
    assert asyncio.run(_core.arun(_falls_back(), aexecute, RefusesOnce())) == ("fallback", "reply")
    assert sent == ["second", "second"]  # the refused first requests never went out
    assert asyncio.run(_core.arun(_falls_back(), aexecute)) == "reply"

    async def down(request: Script) -> str:
        if request.name == "first":
            raise BackendUnavailable("down")
        return "second reply"

    assert asyncio.run(_core.arun(_falls_back(), down)) == ("fallback", "second reply")

    async def cancelled(request: Script) -> str:
        raise asyncio.CancelledError

    guard = RefusesOnce()
    with pytest.raises(asyncio.CancelledError):  # not the flow's business: raised as it is
        asyncio.run(_core.arun(_falls_back(), cancelled, guard))
    assert [type(e) for e in guard.outcomes] == [asyncio.CancelledError]


def test_the_spool_keeps_the_newest_when_full() -> None:
    spool = Spool(2)
    items = [Spooled("settle", str(i), lambda: iter(())) for i in range(3)]  # type: ignore[arg-type, misc]
    assert spool.put(items[0]) is None
    assert spool.put(items[1]) is None
    assert spool.put(items[2]) is items[0]
    assert spool.take() is items[1]
    assert spool.put_back(items[1])
    assert spool.put(items[0]) is items[1]
    assert not spool.put_back(items[1])  # full: it cannot go back
    assert len(spool) == 2


def test_from_url_gets_short_socket_timeouts_unless_told_otherwise() -> None:
    assert with_timeouts({}) == {"socket_timeout": DEFAULT_SOCKET_TIMEOUT, "socket_connect_timeout": 0.5}
    assert with_timeouts({"socket_timeout": 9})["socket_timeout"] == 9
    reg = Registry.from_url("redis://127.0.0.1:1/0", watch=False)
    kwargs = reg.redis.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (2.0, DEFAULT_CONNECT_TIMEOUT)
    reg.close()
    reg = Registry.from_url("redis://127.0.0.1:1/0?socket_timeout=7", watch=False, socket_connect_timeout=3)
    kwargs = reg.redis.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (7.0, 3)
    reg.close()
    areg = AsyncRegistry.from_url("redis://127.0.0.1:1/0", watch=False)
    assert areg.redis.connection_pool.connection_kwargs["socket_timeout"] == DEFAULT_SOCKET_TIMEOUT
    asyncio.run(areg.aclose())


def test_the_prometheus_collector_is_registered_once_and_sums_per_namespace() -> None:
    faults_module._ensure_collector()
    faults_module._ensure_collector()  # once per registry, however many clients
    own = CollectorRegistry(auto_describe=True)  # as the default one: it knows the names
    own.register(FaultCollector())
    faults_module._ensure_collector(own)  # the names are taken there: said, not raised
    a = Registry(redis.Redis(), namespace="metrics-a", watch=False)
    b = Registry(redis.Redis(), namespace="metrics-a", watch=False)
    for _ in range(3):
        a._faults.breaker.outcome(BackendUnavailable("down"))
    assert own.get_sample_value("registry_breaker_opens_total", {"namespace": "metrics-a"}) == 1
    assert own.get_sample_value("registry_breaker_open", {"namespace": "metrics-a"}) == 1
    assert REGISTRY.get_sample_value("registry_spool_depth", {"namespace": "metrics-a"}) == 0
    del b


def test_a_cluster_client_has_a_breaker_per_node_and_follows_the_slot_map(caplog: pytest.LogCaptureFixture) -> None:
    """One node failing opens its breaker only: requests for the other nodes still go, and a
    request whose slot has moved to another node (a failover) asks that node's breaker."""
    clock = FakeClock(0)
    ns = f"per-node-{os.urandom(4).hex()}"  # its own: the collector reads every live client of a namespace
    owner = {"m1": "10.0.0.1:7000", "m2": "10.0.0.2:7000"}  # a model's slot -> its primary now
    replays: list[int] = []
    faults = Faults(
        FaultPolicy(),
        namespace=ns,
        clock=lambda: clock() / 1000,
        on_close=lambda: replays.append(1),
        node_of=lambda request: owner.get(request.name) if isinstance(request, Script) else None,
    )
    assert faults.guard is None
    assert faults.guard_for is faults.nodes
    sent: list[str] = []
    down = {"10.0.0.1:7000"}

    def execute(request: Any) -> str:
        sent.append(request.name)
        if owner.get(request.name) in down:
            raise BackendUnavailable("refused")
        return "reply"

    def ask(name: str) -> Any:
        return (yield Script(name, (), ()))

    def call(name: str) -> str:
        return _core.run(ask(name), execute, faults.guard, faults.guard_for)

    with caplog.at_level(logging.INFO, logger="registry"):
        for _ in range(3):
            with pytest.raises(BackendUnavailable, match="refused"):
                call("m1")
            assert call("m2") == "reply"  # the healthy node's answers do not reset m1's count
        with pytest.raises(BackendUnavailable, match=r"circuit open: Redis Cluster node 10\.0\.0\.1:7000 failed 3"):
            call("m1")
        assert sent.count("m1") == 3  # the fourth went nowhere
        assert call("m2") == "reply"
        stats = faults.stats()
        assert (stats.breaker, stats.breaker_opens, stats.consecutive_failures) == ("open", 1, 3)
        assert dict(stats.breakers) == {"*": "closed", "10.0.0.1:7000": "open", "10.0.0.2:7000": "closed"}
        own = CollectorRegistry()
        own.register(FaultCollector())
        assert own.get_sample_value("registry_breaker_open", {"namespace": ns}) == 1
        node_open = "registry_breaker_node_open"
        assert own.get_sample_value(node_open, {"namespace": ns, "node": "10.0.0.1:7000"}) == 1
        assert own.get_sample_value(node_open, {"namespace": ns, "node": "10.0.0.2:7000"}) == 0
        # Requests no single node serves (here: Scan) pass the cluster-wide breaker, apart.
        assert faults.nodes is not None
        assert faults.nodes(_core.Scan("*")) is faults.breaker is not faults.nodes(Script("m1", (), ()))
        # A failover: m1's slot is served by a replica promoted on another address, whose
        # breaker (closed) lets it go at once, while the dead node's stays open.
        owner["m1"] = "10.0.0.3:7000"
        assert call("m1") == "reply"
        assert dict(faults.stats().breakers)["10.0.0.1:7000"] == "open"
        # The old primary comes back and serves m1 again: its own breaker, which probes.
        owner["m1"], down = "10.0.0.1:7000", set()
        faults.spool.put(Spooled("settle", "x", lambda: _send("m1")))
        clock.advance(1.0)
        assert call("m1") == "reply"
        assert faults.stats().breaker == "closed"
        assert (faults.stats().breaker_closes, replays) == (1, [1])  # the close asked for a replay
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Redis Cluster node 10.0.0.1:7000 unavailable (3 failures") for m in messages)
    assert any(m.startswith("Redis Cluster node 10.0.0.1:7000 answers again after 1.000s") for m in messages)
    assert not any("10.0.0.2:7000" in m for m in messages)


def test_cluster_wide_requests_open_their_own_breaker_only() -> None:
    faults = Faults(
        FaultPolicy(failures_to_open=1),
        namespace="wide",
        clock=lambda: 0.0,
        on_close=lambda: None,
        node_of=lambda request: None if isinstance(request, _core.Scan) else "10.0.0.1:7000",
    )
    nodes = faults.nodes
    assert nodes is not None
    nodes(_core.Scan("*")).outcome(BackendUnavailable("down"))
    assert "Redis Cluster (requests spanning several nodes) failed 1 times" in str(nodes(_core.Scan("*")).refuse())
    assert nodes(Script("any", (), ())).refuse() is None  # a node's breaker: made on first use, closed
    assert dict(faults.stats().breakers) == {"*": "open", "10.0.0.1:7000": "closed"}


# -- against a Redis that goes away ---------------------------------------------------------------


class OwnRedis:
    """A redis-server on a fixed port that can be stopped (data saved), frozen, and started again."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        executable = redis_server_path()
        assert executable is not None
        args = [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.dir), "--dbfilename", "dump.rdb", "--logfile", str(self.dir / "redis.log")]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 20
        while True:  # ready when it answers (it may be loading the saved data)
            try:
                client.ping()
                break
            except (redis.ConnectionError, redis.BusyLoadingError):
                assert self.process.poll() is None, "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        """Save the data and exit: the next start on this port has it all."""
        assert self.process is not None
        client = redis.Redis(port=self.port)
        client.save()
        client.close()
        self.process.terminate()
        self.process.wait(timeout=20)
        self.process = None

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def own(tmp_path: Path) -> Iterator[OwnRedis]:
    if redis_server_path() is None:
        pytest.skip("needs redis-server on PATH (an outage of fakeredis proves nothing)")
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture(params=["sync", "async"])
def make(request: pytest.FixtureRequest, own: OwnRedis) -> Iterator[Callable[..., Any]]:
    """A factory of clients of ``own`` (sync, or async behind SyncFacade) on a fake clock."""
    made: list[Any] = []
    runner = asyncio.Runner()

    def make(policy: FaultPolicy | None = None, **kwargs: Any) -> Any:
        kwargs.setdefault("watch", False)
        kwargs.setdefault("socket_timeout", 0.25)  # a frozen server costs the tests little
        kwargs.setdefault("namespace", f"faults-{request.param}")
        if request.param == "sync":
            reg: Any = Registry.from_url(own.url, fault_policy=policy, **kwargs)
        else:
            reg = SyncFacade(AsyncRegistry.from_url(own.url, fault_policy=policy, **kwargs), runner)
        use_clock(reg, FakeClock(int(time.time() * 1000)))
        made.append(reg)
        return reg

    yield make
    for reg in made:
        target = getattr(reg, "_target", reg)
        target._faults.spool = Spool(1)  # nothing to replay at close: the server may be gone
        if isinstance(reg, SyncFacade):
            reg.aclose()
        else:
            reg.close()
    runner.close()


def clock_of(reg: Any) -> FakeClock:
    clock = getattr(reg, "_target", reg)._test_clock
    assert isinstance(clock, FakeClock)
    return clock


def connections(reg: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A counter of the connections ``reg`` takes from its pool: every round trip takes one."""
    pool = getattr(reg, "_target", reg).redis.connection_pool
    original = pool.get_connection
    count = [0]
    if inspect.iscoroutinefunction(original):

        async def counted_async(*args: Any, **kwargs: Any) -> Any:
            count[0] += 1
            return await original(*args, **kwargs)

        monkeypatch.setattr(pool, "get_connection", counted_async)
    else:

        def counted(*args: Any, **kwargs: Any) -> Any:
            count[0] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(pool, "get_connection", counted)
    return count


LIMITED = model(id="limited", rate_limit={"requests_per_minute": 100, "tokens_per_minute": 1_000_000})


def test_fail_closed_raises_and_the_open_breaker_then_fails_calls_without_the_network(
    make: Callable[..., Any], own: OwnRedis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    reg = make()
    reg.register_model(LIMITED)
    assert reg.acquire("openai:limited", 10, 10).allowed
    own.stop()
    sent = connections(reg, monkeypatch)
    with caplog.at_level(logging.INFO, logger="registry"):
        # Two round trips, two failures: the catalog refresh (the local copy serves) and the acquire.
        with pytest.raises(BackendUnavailable, match="Redis unavailable") as info:
            reg.acquire("openai:limited", 10, 10)
        assert isinstance(info.value.__cause__, redis.ConnectionError)
        assert (sent[0], reg.faults.breaker) == (2, "closed")
        with pytest.raises(BackendUnavailable, match="circuit open"):  # the refresh was the third
            reg.acquire("openai:limited", 10, 10)
        assert (sent[0], reg.faults.breaker) == (3, "open")
        for _ in range(50):
            with pytest.raises(BackendUnavailable, match="circuit open"):
                reg.acquire("openai:limited", 10, 10)
        assert sent[0] == 3  # none of those 50 touched the network
        assert reg.get_model("openai:limited").key == "openai:limited"  # reads serve the local copy
        with pytest.raises(BackendUnavailable):
            reg.check_rate_limit("openai:limited")  # a peek is no admission: not counted
        stats = reg.faults
        assert (stats.fail_closed_refusals, stats.breaker_opens, stats.fail_open_admits) == (52, 1, 0)
        clock_of(reg).advance(1.0)
        with pytest.raises(BackendUnavailable, match="circuit open"):
            reg.acquire("openai:limited", 10, 10)
        assert sent[0] == 4  # the refresh was the probe, and failed; the acquire after it went nowhere
        own.start()
        clock_of(reg).advance(1.0)
        assert reg.acquire("openai:limited", 10, 10).allowed  # the probe answers: closed
        assert reg.faults.breaker == "closed"
        assert reg.faults.breaker_closes == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "circuit open" in r.getMessage()]
    assert len(warnings) == 1
    assert "admission fails closed" in warnings[0].getMessage()
    assert any(r.levelno == logging.INFO and "circuit closed" in r.getMessage() for r in caplog.records)


def test_a_frozen_redis_times_out_into_backend_unavailable(make: Callable[..., Any], own: OwnRedis) -> None:
    reg = make()
    reg.register_model(LIMITED)
    own.freeze()
    try:
        with pytest.raises(BackendUnavailable) as info:
            reg.acquire("openai:limited", 10, 10)
        assert isinstance(info.value.__cause__, redis.TimeoutError)
    finally:
        own.thaw()


def test_fail_open_admits_exactly_the_emergency_share(make: Callable[..., Any], own: OwnRedis) -> None:
    reg = make(FaultPolicy(admission="open", emergency_share=0.1))
    reg.register_model(LIMITED)
    reg.check_rate_limit("openai:limited")
    own.stop()
    peek = reg.check_rate_limit("openai:limited")  # nothing taken yet: it would admit
    assert (peek.allowed, peek.degraded) == (True, True)
    target = getattr(reg, "_target", reg)
    if isinstance(target, AsyncRegistry):

        async def burst() -> list[Any]:
            return await asyncio.gather(*(target.acquire("openai:limited", 10, 10) for _ in range(40)))

        decisions = reg._runner.run(burst())
    else:
        decisions, lock = [], threading.Lock()

        def one() -> None:
            decision = reg.acquire("openai:limited", 10, 10)
            with lock:
                decisions.append(decision)

        threads = [threading.Thread(target=one) for _ in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 10  # 0.1 of 100 requests per minute
    assert all(d.degraded for d in decisions)
    refused = [d for d in decisions if not d.allowed]
    assert {d.denied_by for d in refused} == {"requests_per_minute"}
    assert all(d.retry_after == 60.0 for d in refused)  # all admitted at the same fake instant
    assert len({d.reservation.token for d in allowed}) == 10
    peek = reg.check_rate_limit("openai:limited")
    assert (peek.allowed, peek.degraded) == (False, True)
    stats = reg.faults
    assert (stats.fail_open_admits, stats.fail_open_denials, stats.fail_closed_refusals) == (10, 30, 0)
    clock_of(reg).advance(60)  # the local window slides on
    assert reg.acquire("openai:limited", 10, 10).allowed
    with pytest.raises(RequestTooLargeError):  # bigger than the limit itself: never, as with Redis
        reg.acquire("openai:limited", 2_000_000, 0)


def test_fail_open_counts_input_and_output_tokens_apart(make: Callable[..., Any], own: OwnRedis) -> None:
    reg = make(FaultPolicy(admission="open", emergency_share=0.1))
    reg.register_model(
        model(id="split", rate_limit={"input_tokens_per_minute": 100_000, "output_tokens_per_minute": 1_000})
    )
    reg.check_rate_limit("openai:split")
    own.stop()
    first = reg.acquire("openai:split", 9_000, 60)  # of the shares: 9,000 of 10,000 input, 60 of 100 output
    assert (first.allowed, first.degraded) == (True, True)
    refused = reg.acquire("openai:split", 10, 50)
    assert (refused.allowed, refused.denied_by, refused.retry_after) == (False, "output_tokens_per_minute", 60.0)
    assert reg.acquire("openai:split", 1_000, 40).allowed  # each part fills its share exactly
    assert reg.acquire("openai:split", 1, 0).denied_by == "input_tokens_per_minute"
    with pytest.raises(RequestTooLargeError, match="output_tokens_per_minute"):  # more than the limit itself
        reg.acquire("openai:split", 0, 1_001)


def test_budgets_fail_closed_even_when_admission_fails_open(make: Callable[..., Any], own: OwnRedis) -> None:
    strict = make(FaultPolicy(admission="open"))
    lenient = make(FaultPolicy(admission="open", budgets="open"))
    strict.register_model(LIMITED)
    strict.set_budget("acme", "100")
    for reg in (strict, lenient):
        reg.refresh()
    own.stop()
    with pytest.raises(BackendUnavailable):
        strict.acquire("openai:limited", 10, 10, tenant="acme")
    assert strict.acquire("openai:limited", 10, 10, tenant="other").degraded  # no budget: the share
    assert strict.faults.fail_closed_refusals == 1
    decision = lenient.acquire("openai:limited", 10, 10, tenant="acme")
    assert (decision.allowed, decision.degraded) == (True, True)


def test_route_fails_open_to_the_next_model_when_the_cheapest_share_is_used(
    make: Callable[..., Any], own: OwnRedis
) -> None:
    reg = make(FaultPolicy(admission="open", emergency_share=0.5))
    cheap = model(id="cheap", cost={"input": "1", "output": "1"}, rate_limit={"requests_per_minute": 2})
    dear = model(id="dear", cost={"input": "9", "output": "9"}, rate_limit={"requests_per_minute": 4})
    reg.register_models([cheap, dear])
    reg.refresh()  # a local copy of the catalog to serve during the outage
    own.stop()
    chosen = [reg.route(input_tokens=10, max_output_tokens=10, capability="chat").model_key for _ in range(4)]
    assert chosen == ["openai:cheap", "openai:dear", "openai:dear", None]


def test_usage_spooled_in_an_outage_is_replayed_once(make: Callable[..., Any], own: OwnRedis) -> None:
    reg = make()
    reg.register_model(LIMITED)
    held = [reg.acquire("openai:limited", 100, 50, tenant="acme").reservation for _ in range(3)]
    assert reg.record_usage("openai:limited", 1000, 100, request_id="before").recorded  # reached Redis
    assert reg.settle(held[0], 100, 10)
    own.stop()
    record = reg.record_usage("openai:limited", 1000, 100, request_id="before")  # sent again: spooled
    assert (record.recorded, record.cost) == (True, reg.estimate_cost("openai:limited", 1000, 100))
    reg.record_usage("openai:limited", 1000, 100)  # no id: one is made for the replay
    reg.record_usage("openai:limited", 2000, 200, tenant="acme", request_id="during")
    assert reg.settle(held[0], 100, 10)  # settled before the outage: the replay changes nothing
    assert reg.settle(held[1], 100, 20)
    assert reg.settle(held[1], 100, 20)  # a retry of the same settle: one
    assert reg.release(held[2])
    stats = reg.faults
    assert (stats.spooled, stats.spool_depth, stats.replayed) == (7, 7, 0)
    assert reg.flush_spool() == 0  # still down: everything stays
    assert reg.faults.spool_depth == 7
    own.start()
    clock_of(reg).advance(1.0)  # the breaker's probe is due
    assert reg.flush_spool() == 7
    assert reg.flush_spool() == 0
    assert reg.faults.spool_depth == 0
    totals = reg.get_statistics("openai:limited")
    # before: the record and held[0]; replayed: one new record, "during", held[1] (the release adds nothing)
    assert totals.requests == 5
    assert totals.input_tokens == 1000 + 100 + 1000 + 2000 + 100
    assert totals.output_tokens == 100 + 10 + 100 + 200 + 20
    assert reg.get_statistics("openai:limited", tenant="acme").requests == 3


def test_the_breaker_closing_replays_the_spool_by_itself(make: Callable[..., Any], own: OwnRedis) -> None:
    reg = make()
    reg.register_model(LIMITED)
    reg.refresh()  # a local copy of the catalog to serve during the outage
    own.stop()
    for i in range(5):
        reg.record_usage("openai:limited", 10, 10, request_id=f"r{i}")
    assert reg.faults.breaker == "open"
    own.start()
    clock_of(reg).advance(1.0)
    reg.refresh()  # the probe: the breaker closes and starts a replay (a thread, or a task)
    target = getattr(reg, "_target", reg)
    if isinstance(target, Registry):
        deadline = time.monotonic() + 30
        while reg.faults.replayed < 5 and time.monotonic() < deadline:
            time.sleep(0.01)  # wait for the replay thread (the count, not the clock, decides)
    reg.flush_spool()  # waits for a replay in progress, then sends what is left (nothing)
    assert (reg.faults.replayed, reg.faults.spool_depth) == (5, 0)
    assert reg.get_statistics("openai:limited").requests == 5


def test_a_full_spool_drops_the_oldest_and_says_so(
    make: Callable[..., Any], own: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    reg = make(FaultPolicy(spool_max=3))
    reg.register_model(LIMITED)
    reg.refresh()  # a local copy of the catalog to serve during the outage
    own.stop()
    with caplog.at_level(logging.WARNING, logger="registry"):
        for i in range(5):
            reg.record_usage("openai:limited", 10, i, request_id=f"r{i}")
    assert (reg.faults.spool_depth, reg.faults.dropped, reg.faults.spooled) == (3, 2, 5)
    assert any("dropped record_usage r0" in r.getMessage() for r in caplog.records)
    own.start()
    clock_of(reg).advance(1.0)  # the breaker's probe is due
    assert reg.flush_spool() == 3
    assert reg.get_statistics("openai:limited").output_tokens == 2 + 3 + 4  # the newest three


def test_usage_raise_raises_and_a_refused_replay_is_dropped(
    make: Callable[..., Any], own: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    strict = make(FaultPolicy(usage="raise"))
    reg = make()
    strict.register_model(LIMITED)
    reg.refresh()
    strict.refresh()
    own.stop()
    with pytest.raises(BackendUnavailable):
        strict.record_usage("openai:limited", 10, 10)
    reg.record_usage("openai:limited", 10, 10, request_id="kept")
    reg.record_usage("openai:limited", 10, 10, request_id="kept-too")
    own.start()
    clock_of(reg).advance(1.0)  # the breaker's probe is due
    redis.Redis(port=own.port).set(getattr(reg, "_target", reg).keys.ledger("openai:limited", "total"), "not a hash")
    with caplog.at_level(logging.WARNING, logger="registry"):
        assert reg.flush_spool() == 0  # WRONGTYPE: Redis refuses it for good
    assert (reg.faults.dropped, reg.faults.spool_depth) == (2, 0)
    assert any("refused on replay" in r.getMessage() for r in caplog.records)


def test_closing_with_a_spool_tries_once_more_then_counts_the_rest_lost(
    own: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    reg = Registry.from_url(own.url, watch=False, socket_timeout=0.25)
    reg.register_model(LIMITED)
    reg.refresh()  # a local copy of the catalog to serve during the outage
    own.stop()
    reg.record_usage("openai:limited", 10, 10, request_id="lost")
    with caplog.at_level(logging.WARNING, logger="registry"):
        reg.close()
    assert reg.faults.dropped == 1
    assert any("1 spooled usage records Redis never received" in r.getMessage() for r in caplog.records)


def test_closing_with_a_spool_after_redis_returned_writes_it(own: OwnRedis) -> None:
    async def main() -> int:
        reg = AsyncRegistry.from_url(own.url, watch=False, socket_timeout=0.25)
        await reg.register_model(LIMITED)
        await reg.refresh()
        own.stop()
        await reg.record_usage("openai:limited", 10, 10, request_id="kept")
        own.start()
        await reg.aclose()  # the breaker never opened (one failure): the last try writes it
        check = AsyncRegistry.from_url(own.url, watch=False)
        requests = (await check.get_statistics("openai:limited")).requests
        await check.aclose()
        return requests

    assert asyncio.run(main()) == 1
