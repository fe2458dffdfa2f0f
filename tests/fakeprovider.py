"""Driving the SDKs' asyncio clients from blocking test code (:func:`blocking`), so that one test
body serves both clients; :class:`Kit`, one test's registry and clients, and the fixtures and
helpers the SDK wrappers' test modules share. The fake provider itself is
:mod:`registry.fake_provider`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from registry.errors import ConfigError
from registry.fake_provider import FakeProvider, Reply, Seen, serve

__all__ = [
    "Blocking",
    "FakeProvider",
    "Kit",
    "Reply",
    "Sdk",
    "Seen",
    "blocking",
    "drain",
    "fixed",
    "fixtures",
    "ledger",
    "room",
    "serve",
]


# -- driving the SDKs' clients from tests --------------------------------------------------------


async def _await(value: Any) -> Any:
    return await value


async def _anext(target: Any) -> Any:
    return await target.__anext__()


class Blocking:
    """An asyncio stream, stream manager or message stream, used from blocking test code:
    ``for``, ``with``, ``close()`` and any method run on the test's event loop."""

    def __init__(self, target: Any, runner: asyncio.Runner) -> None:
        self.target, self._runner = target, runner

    def __iter__(self) -> Blocking:
        return self

    def __next__(self) -> Any:
        try:
            return self._runner.run(_anext(self.target))
        except StopAsyncIteration:
            raise StopIteration from None

    def __enter__(self) -> Any:
        return blocking(self._runner.run(_await(self.target.__aenter__())), self._runner)

    def __exit__(self, *exc: Any) -> None:
        self._runner.run(_await(self.target.__aexit__(*exc)))

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.target, name)
        if callable(value):
            return lambda *args, **kwargs: blocking(value(*args, **kwargs), self._runner)
        return blocking(value, self._runner)


def blocking(value: Any, runner: asyncio.Runner) -> Any:
    """``value`` awaited if it is awaitable, and wrapped in :class:`Blocking` if it is asyncio's."""
    if inspect.isawaitable(value):
        value = runner.run(_await(value))
    if hasattr(value, "__anext__") or hasattr(value, "__aenter__"):
        return Blocking(value, runner)
    return value


@dataclass(frozen=True)
class Sdk:
    """One provider's SDK as the tests use it, and the model each test registers (``model``, a
    mapping for ``register_model``)."""

    sync: type
    asynchronous: type
    wrap: Callable[..., Any]
    base_url: Callable[[FakeProvider], str]
    model: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.model['provider']}:{self.model['id']}"

    def mismatches(self, redis_url: str, fake: FakeProvider, other: object) -> list[str]:
        """The ConfigErrors ``wrap`` raises for a blocking client with an AsyncRegistry, an
        asyncio client with a Registry, and ``other`` (no client) with a Registry."""
        from registry import AsyncRegistry, Registry

        sync_reg, async_reg = Registry.from_url(redis_url, watch=False), AsyncRegistry.from_url(redis_url, watch=False)
        client = self.sync(base_url=self.base_url(fake), api_key="sk-test")
        aclient = self.asynchronous(base_url=self.base_url(fake), api_key="sk-test")
        errors: list[str] = []
        try:
            for wrong in ((client, async_reg), (aclient, sync_reg), (other, sync_reg)):
                with pytest.raises(ConfigError) as raised:
                    self.wrap(*wrong)
                errors.append(str(raised.value))
        finally:
            client.close()
            asyncio.run(aclient.close())
            sync_reg.close()
            asyncio.run(async_reg.aclose())
        return errors

    def import_without_sdk(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Run the wrapper's module afresh as if the SDK's package were not installed."""
        package = self.sync.__module__.partition(".")[0]
        monkeypatch.setitem(sys.modules, package, None)
        spec = importlib.util.spec_from_file_location(
            f"hidden_{package}_wrapper", sys.modules[self.wrap.__module__].__file__
        )
        assert spec is not None
        assert spec.loader is not None
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


class Kit:
    """One test's registry and SDK clients, blocking or asyncio (``mode``), driven alike; the
    fake's script and log are cleared, and the SDK's model is registered.

    ``kit.reg`` is a blocking view of the registry (for asyncio, a ``SyncFacade`` on the same
    event loop); ``kit.client(**wrap_options)`` a wrapped client; ``kit.run(x)`` runs what a
    call of either client returned (awaits a coroutine, wraps an asyncio stream).
    """

    def __init__(self, mode: str, redis_url: str, fake: FakeProvider, sdk: Sdk) -> None:
        from registry import AsyncRegistry, Registry
        from tests.conftest import SyncFacade

        fake.reset()
        self.mode, self.fake, self.sdk = mode, fake, sdk
        self.runner = asyncio.Runner()
        self.registry: Any
        if mode == "sync":
            self.registry = Registry.from_url(redis_url, watch=False)
            self.reg: Any = self.registry
        else:
            self.registry = AsyncRegistry.from_url(redis_url, watch=False)
            self.reg = SyncFacade(self.registry, self.runner)
        self._clients: list[Any] = []
        self.reg.register_model(sdk.model)

    def raw_client(self, **kwargs: Any) -> Any:
        """An unwrapped client of the kit's kind, pointed at the fake."""
        kind = self.sdk.asynchronous if self.mode == "async" else self.sdk.sync
        kwargs.setdefault("max_retries", 0)
        client = kind(base_url=self.sdk.base_url(self.fake), api_key="sk-test", **kwargs)
        self._clients.append(client)
        return client

    def client(self, **options: Any) -> Any:
        return self.sdk.wrap(self.raw_client(), self.registry, **options)

    def run(self, value: Any) -> Any:
        return blocking(value, self.runner)

    def close(self) -> None:
        for client in self._clients:
            self.run(client.close())
        if self.mode == "sync":
            self.registry.close()
        else:
            self.runner.run(self.registry.aclose())
        self.runner.close()


# -- what the wrappers' test modules share --------------------------------------------------------


def fixtures(sdk: Sdk) -> tuple[Any, Any]:
    """A wrapper test module's fixtures, ``fake, kit = fixtures(SDK)``: ``fake``, one fake
    provider for the module, and ``kit``, a :class:`Kit` for each test, blocking then asyncio."""

    @pytest.fixture(scope="module")
    def fake() -> Iterator[FakeProvider]:
        with FakeProvider() as server:
            yield server

    @pytest.fixture(params=["sync", "async"])
    def kit(request: pytest.FixtureRequest, redis_url: str, fake: FakeProvider) -> Iterator[Kit]:
        made = Kit(request.param, redis_url, fake, sdk)
        yield made
        made.close()

    return fake, kit


def fixed(tokens: int) -> Any:
    """A ``token_counter`` that estimates every request at ``tokens``."""
    return lambda request: tokens


def ledger(kit: Kit, key: str | None = None) -> tuple[int, ...]:
    """(requests, successes, failures, throttled, input tokens, output tokens) in the ledger of
    ``key`` (the kit's model by default)."""
    s = kit.reg.get_statistics(model=key or kit.sdk.key)
    return s.requests, s.successes, s.failures, s.throttled, s.input_tokens, s.output_tokens


def cache_ledger(kit: Kit, key: str | None = None) -> tuple[int, int, int]:
    """(cached input tokens, cache write tokens, cost units) in the ledger of ``key`` (the kit's
    model by default)."""
    s = kit.reg.get_statistics(model=key or kit.sdk.key)
    return s.cached_input_tokens, s.cache_write_tokens, s.cost_units


def room(kit: Kit) -> tuple[int, int]:
    """(requests, tokens) left in the minute windows of the kit's model."""
    left = kit.reg.check_rate_limit(kit.sdk.key, 0).remaining
    return left["requests_per_minute"], left["tokens_per_minute"]


def drain(stream: Any) -> tuple[list[Any], Exception | None]:
    """What a stream gave before it ended, and the exception it ended with (None: it ran out)."""
    items: list[Any] = []
    try:
        for item in stream:
            items.append(item)
    except Exception as exc:
        return items, exc
    return items, None
