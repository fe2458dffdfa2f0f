"""Test harness: a private Redis for the whole session, a clean one for each test.

The server is ``redis-server`` started on a free loopback port with no persistence. Without
``redis-server`` on PATH the suite falls back to fakeredis (with Lua) and says so in its
header, except under ``CI=true``, where a missing Redis fails the run.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

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


@pytest.fixture
def redis_url(server: embedded.EmbeddedRedis) -> Iterator[str]:
    """The private server's URL, emptied before the test."""
    client = redis.Redis.from_url(server.url)
    client.flushall()
    client.close()
    return server.url


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client (str replies) on the test server."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


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


@pytest.fixture(params=["sync", "async"])
def make_registry(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Any]:
    """A factory of clients of one kind (sync, or async behind :class:`SyncFacade`)."""
    made: list[Any] = []
    runner = asyncio.Runner()

    def make(**kwargs: Any) -> Any:
        kwargs.setdefault("watch", False)
        if request.param == "sync":
            reg: Any = Registry.from_url(redis_url, **kwargs)
        else:
            reg = SyncFacade(AsyncRegistry.from_url(redis_url, **kwargs), runner)
        made.append(reg)
        return reg

    yield make
    for reg in made:
        if isinstance(reg, SyncFacade):
            reg.aclose()
        else:
            reg.close()
    runner.close()


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
