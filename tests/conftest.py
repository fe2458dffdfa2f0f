"""Test harness: a private Redis for the whole session, a clean one for each test.

The server is ``redis-server`` started on a free loopback port with no persistence. Without
``redis-server`` on PATH the suite falls back to fakeredis (with Lua) and says so in its
header, except under ``CI=true``, where a missing Redis fails the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from registry import AsyncRegistry, Registry, embedded

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
LITELLM_MAP = SHARED_DATA / "litellm_model_prices.json"

_server: embedded.EmbeddedRedis | None = None


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config: pytest.Config) -> None:
    global _server
    if hasattr(config, "workerinput"):  # pragma: no cover - no xdist today
        return
    if embedded.redis_server_path() is None and _in_ci():
        pytest.exit("CI=true but redis-server is not on PATH: install it (apt-get install redis-server)", 1)
    _server = embedded.start()
    os.environ["REGISTRY_TEST_REDIS_URL"] = _server.url


def pytest_unconfigure(config: pytest.Config) -> None:
    global _server
    if _server is not None:
        _server.stop()
        _server = None


def pytest_report_header(config: pytest.Config) -> str:
    if _server is None:  # pragma: no cover
        return "redis: none"
    if _server.kind == "fakeredis":
        return f"redis: FALLBACK to fakeredis {_server.version} (no redis-server on PATH)"
    return f"redis: {_server.description}"


@pytest.fixture(scope="session")
def server() -> embedded.EmbeddedRedis:
    assert _server is not None
    return _server


# The modules whose tests run against a single Redis and against a real Redis Cluster: every
# test in them that uses ``redis_url`` (directly or through ``r``, ``reg``, ``make_registry``)
# runs once per backend, as ``test[...-single]`` and ``test[...-cluster]``.
CLUSTER_MODULES = frozenset(
    {
        "test_catalog",
        "test_admission",
        "test_admission_fleet",
        "test_admission_model",
        "test_batching",
        "test_budgets",
        "test_ledger",
        "test_ledger_stats",
        "test_concurrency",
        "test_route",
        "test_view",
        "test_watch",
        "test_events",
    }
)

_cluster: Any = None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rpartition(".")[2]
    if module in CLUSTER_MODULES and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", ["single", "cluster"], indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """ "single" (the private redis-server) or "cluster" (the private cluster), by parameter."""
    return getattr(request, "param", "single")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Any]:
    """A private Redis Cluster (3 primaries, 3 replicas), started once, on first use."""
    global _cluster
    from registry import embedded_cluster

    if embedded.redis_server_path() is None or shutil.which("redis-cli") is None:
        if _in_ci():
            pytest.fail("CI=true but redis-server/redis-cli are not on PATH: no cluster can be started")
        pytest.skip("a cluster needs redis-server and redis-cli on PATH")
    _cluster = embedded_cluster.start_cluster(primaries=3, replicas=1)
    yield _cluster
    _cluster.stop()
    _cluster = None


@pytest.fixture
def redis_url(server: embedded.EmbeddedRedis, backend: str, request: pytest.FixtureRequest) -> str:
    """The URL of the test's Redis (single, or the cluster by parameter), emptied before the test."""
    if backend == "cluster":
        nodes = request.getfixturevalue("cluster")
        nodes.wait_ok()
        nodes.flushall()
        return str(nodes.url)
    client = redis.Redis.from_url(server.url)
    client.flushall()
    client.close()
    return server.url


@pytest.fixture
def r(redis_url: str) -> Iterator[Any]:
    """A plain redis-py client (str replies) on the test's Redis: a cluster client on the cluster."""
    from registry._base import connect, is_cluster_url

    client = connect(redis_url) if not is_cluster_url(redis_url) else _WholeCluster.from_url(redis_url)
    yield client
    client.close()


class _WholeCluster(RedisCluster):
    """A cluster client whose key listings cover every primary, as one server's would."""

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> _WholeCluster:  # type: ignore[override]
        from redis.cluster import ClusterNode

        seeds = url.split("://", 1)[1].split("/", 1)[0].split(",")
        nodes = [ClusterNode(host, int(port)) for host, _, port in (s.rpartition(":") for s in seeds)]
        return cls(startup_nodes=nodes, decode_responses=True, **kwargs)

    def keys(self, pattern: Any = "*", **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs.setdefault("target_nodes", RedisCluster.PRIMARIES)
        return super().keys(pattern, **kwargs)

    def dbsize(self, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs.setdefault("target_nodes", RedisCluster.PRIMARIES)
        return super().dbsize(**kwargs)


class SyncFacade:
    """Presents an :class:`AsyncRegistry` with blocking methods, so one test serves both clients."""

    def __init__(self, target: AsyncRegistry, runner: asyncio.Runner) -> None:
        self._target = target
        self._runner = runner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if inspect.iscoroutinefunction(attr):
            return lambda *a, **kw: self._runner.run(attr(*a, **kw))
        return attr


@contextlib.contextmanager
def client_factory(kind: str) -> Iterator[Callable[..., Any]]:
    """``make(url, **options)``: a Registry (``kind`` "sync"), or an AsyncRegistry behind
    :class:`SyncFacade` ("async"); every client made is closed at the end of the block."""
    made: list[Any] = []
    runner = asyncio.Runner()

    def make(url: str, **options: Any) -> Any:
        reg = (
            Registry.from_url(url, **options)
            if kind == "sync"
            else SyncFacade(AsyncRegistry.from_url(url, **options), runner)
        )
        made.append(reg)
        return reg

    try:
        yield make
    finally:
        for reg in made:
            if isinstance(reg, SyncFacade):
                reg.aclose()
            else:
                reg.close()
        runner.close()


@pytest.fixture(params=["sync", "async"])
def make_registry(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Any]:
    """A factory of clients of one kind (sync, or async behind :class:`SyncFacade`)."""
    with client_factory(request.param) as make:
        yield lambda **options: make(redis_url, **{"watch": False, **options})


@pytest.fixture
def reg(make_registry: Any) -> Any:
    """A client (sync or async, by parameter) with no background watcher: reads refresh first."""
    return make_registry()


@pytest.fixture
def litellm_map() -> Path:
    if not LITELLM_MAP.exists():
        pytest.skip(f"LiteLLM price map not found at {LITELLM_MAP} (../shared is absent)")
    return LITELLM_MAP


def model(provider: str = "openai", id: str = "gpt-4", **fields: Any) -> dict[str, Any]:
    """A valid model mapping; override any field."""
    data: dict[str, Any] = {
        "provider": provider,
        "id": id,
        "context_window": 8192,
        "cost": {"input": "30", "output": "60", "per": 1_000_000},
        "capabilities": ["chat"],
    }
    data.update(fields)
    return data


@pytest.fixture
def real_redis(server: embedded.EmbeddedRedis) -> None:
    """Skip on the fakeredis fallback: the test needs what only redis-server has (INFO, load)."""
    if server.kind != "redis-server":
        pytest.skip("needs a real redis-server (INFO commandstats, or a load fakeredis cannot carry)")


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], redis_url: str) -> Callable[..., tuple[int, str, str]]:
    """``run(*args)``: ``main(["--redis-url", <test redis>, *args])`` -> (code, stdout, stderr);
    ``url=None`` leaves the option out (the command's own default)."""
    from registry.cli import main

    def invoke(*args: str, url: str | None = redis_url) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main((["--redis-url", url] if url else []) + list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return invoke
