"""The blocking and asyncio drivers of a metered call, its streams, and installing them on a client.

Each driver acquires, sends and settles around a :class:`~registry.integrations._calls.Call`;
the two differ only in awaiting. :func:`instrument` copies an SDK client and replaces the
methods its provider module names with metered ones; :func:`wrapper` makes a provider
module's ``wrap`` from its SDK's client classes, its dialect and what to patch.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from registry.errors import ConfigError
from registry.integrations._calls import Call, Dialect, Options, Settlement
from registry.integrations.common import ModelMap, TokenCounter, estimate_input_tokens

if TYPE_CHECKING:
    from registry.aio import AsyncRegistry
    from registry.client import Registry

__all__ = [
    "AsyncMeteredStream",
    "AsyncMeteredStreamManager",
    "Meter",
    "MeteredStream",
    "MeteredStreamManager",
    "Wrap",
    "instrument",
    "wrapper",
]

_log = logging.getLogger("registry.integrations")


# -- blocking ----------------------------------------------------------------------------------


def _settle(registry: Any, call: Call, settlement: Settlement | None) -> None:
    if settlement is not None:
        assert call.reservation is not None
        registry.settle(call.reservation, **settlement.kwargs())


def _settle_quietly(registry: Any, call: Call, settlement: Settlement | None) -> None:
    """On the way out with another exception: that one is the caller's to see."""
    try:
        _settle(registry, call, settlement)
    except Exception:
        _log.warning("could not settle a failed %s call", call.model_key, exc_info=True)


def _admit(registry: Any, call: Call, options: Options) -> None:
    call.admitted(registry.acquire(*call.acquire_args(), wait=options.wait, timeout=options.timeout))


def _deliver(registry: Any, call: Call, response: Any) -> Any:
    if call.mode == "stream":
        return MeteredStream(response, call, registry)
    if call.mode == "opaque":
        _settle(registry, call, call.unread())
        return response
    call.read(response.parse() if call.mode == "raw" else response)
    _settle(registry, call, call.ended())
    return response


def _events(inner: Any, call: Call, registry: Any) -> Iterator[Any]:
    # A function, not a method: a generator holding its stream would form a cycle with it, and a
    # dropped stream would then wait for the garbage collector to be settled.
    try:
        for event in inner:
            if call.observe(event):
                yield event
    except BaseException:  # GeneratorExit (closed early) too
        _settle_quietly(registry, call, call.ended())
        raise
    _settle(registry, call, call.ended())


def _dropped(registry: Any, call: Call, inner: Any) -> None:
    """A stream garbage collected unfinished: its connection is closed and it is settled."""
    try:
        inner.close()
    finally:
        _settle_quietly(registry, call, call.ended())


class MeteredStream:
    """The SDK's stream, metered: iterate it, ``with`` it and ``close()`` it as the SDK's own;
    other attributes (``response``...) are the SDK stream's. Settled when it ends, when it is
    closed, or when it is dropped unfinished (garbage collected)."""

    def __init__(self, inner: Any, call: Call, registry: Any) -> None:
        self._inner, self._call, self._registry = inner, call, registry
        self._iterator = _events(inner, call, registry)
        weakref.finalize(self, _dropped, registry, call, inner).atexit = False

    def __iter__(self) -> MeteredStream:
        return self  # not the generator: a loop over create(...) keeps the stream (and its finalizer) alive

    def __next__(self) -> Any:
        return next(self._iterator)

    def __enter__(self) -> MeteredStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._iterator.close()
            self._inner.close()
        finally:
            _settle(self._registry, self._call, self._call.ended())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class MeteredStreamManager:
    """Anthropic's ``messages.stream(...)`` helper, metered: acquires on entry, and hands out the
    SDK's own ``MessageStream`` reading a :class:`MeteredStream` of the raw events.

    The SDK's manager is made only once admitted: the asyncio one holds its request as a
    coroutine from the start, which a refusal would leave never awaited."""

    def __init__(self, open_stream: Callable[[], Any], call: Call, registry: Any, options: Options) -> None:
        self._open, self._call, self._registry, self._options = open_stream, call, registry, options
        self._manager: Any = None

    def __enter__(self) -> Any:
        _admit(self._registry, self._call, self._options)
        try:
            self._manager = self._open()
            stream = self._manager.__enter__()
        except BaseException as exc:
            _settle_quietly(self._registry, self._call, self._call.failed(exc))
            raise
        stream._raw_stream = MeteredStream(stream._raw_stream, self._call, self._registry)
        return stream

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._manager.__exit__(exc_type, exc, tb)


def _meter(
    send: Callable[..., Any], registry: Any, dialect: Dialect, options: Options, stream: bool | None
) -> Callable[..., Any]:
    @functools.wraps(send)
    def metered(**kwargs: Any) -> Any:
        call = Call(dialect, options, kwargs, stream)
        _admit(registry, call, options)
        try:
            response = send(**call.forward)
        except BaseException as exc:
            _settle_quietly(registry, call, call.failed(exc))
            raise
        return _deliver(registry, call, response)

    return metered


# -- asyncio -----------------------------------------------------------------------------------


async def _asettle(registry: Any, call: Call, settlement: Settlement | None) -> None:
    if settlement is not None:
        assert call.reservation is not None
        # Shielded: a cancelled task still settles what it used.
        await asyncio.shield(registry.settle(call.reservation, **settlement.kwargs()))


async def _asettle_quietly(registry: Any, call: Call, settlement: Settlement | None) -> None:
    try:
        await _asettle(registry, call, settlement)
    except Exception:
        _log.warning("could not settle a failed %s call", call.model_key, exc_info=True)


async def _aadmit(registry: Any, call: Call, options: Options) -> None:
    call.admitted(await registry.acquire(*call.acquire_args(), wait=options.wait, timeout=options.timeout))


async def _adeliver(registry: Any, call: Call, response: Any) -> Any:
    if call.mode == "stream":
        return AsyncMeteredStream(response, call, registry)
    if call.mode == "opaque":
        await _asettle(registry, call, call.unread())
        return response
    if call.mode == "raw":
        parsed = response.parse()
        call.read(await parsed if inspect.isawaitable(parsed) else parsed)
    else:
        call.read(response)
    await _asettle(registry, call, call.ended())
    return response


async def _aevents(inner: Any, call: Call, registry: Any) -> AsyncIterator[Any]:
    try:
        async for event in inner:
            if call.observe(event):
                yield event
    except BaseException:
        await _asettle_quietly(registry, call, call.ended())
        raise
    await _asettle(registry, call, call.ended())


class AsyncMeteredStream:
    """The asyncio twin of :class:`MeteredStream` (``async for``, ``async with``, ``await close()``)."""

    def __init__(self, inner: Any, call: Call, registry: Any) -> None:
        self._inner, self._call, self._registry = inner, call, registry
        self._iterator = _aevents(inner, call, registry)

    def __aiter__(self) -> AsyncMeteredStream:
        return self

    async def __anext__(self) -> Any:
        return await self._iterator.__anext__()

    async def __aenter__(self) -> AsyncMeteredStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        try:
            await self._iterator.aclose()
            await self._inner.close()
        finally:
            await _asettle(self._registry, self._call, self._call.ended())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class AsyncMeteredStreamManager:
    """The asyncio twin of :class:`MeteredStreamManager`."""

    def __init__(self, open_stream: Callable[[], Any], call: Call, registry: Any, options: Options) -> None:
        self._open, self._call, self._registry, self._options = open_stream, call, registry, options
        self._manager: Any = None

    async def __aenter__(self) -> Any:
        await _aadmit(self._registry, self._call, self._options)
        try:
            self._manager = self._open()
            stream = await self._manager.__aenter__()
        except BaseException as exc:
            await _asettle_quietly(self._registry, self._call, self._call.failed(exc))
            raise
        stream._raw_stream = AsyncMeteredStream(stream._raw_stream, self._call, self._registry)
        return stream

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._manager.__aexit__(exc_type, exc, tb)


def _ameter(
    send: Callable[..., Any], registry: Any, dialect: Dialect, options: Options, stream: bool | None
) -> Callable[..., Any]:
    @functools.wraps(send)
    async def metered(**kwargs: Any) -> Any:
        call = Call(dialect, options, kwargs, stream)
        await _aadmit(registry, call, options)
        try:
            response = await send(**call.forward)
        except BaseException as exc:
            await _asettle_quietly(registry, call, call.failed(exc))
            raise
        return await _adeliver(registry, call, response)

    return metered


# -- installing --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Meter:
    """Makes metered versions of one client's methods (blocking or asyncio, as the client)."""

    registry: Any
    dialect: Dialect
    options: Options
    asynchronous: bool

    def method(self, send: Callable[..., Any], *, stream: bool | None = None) -> Callable[..., Any]:
        """``send`` (``create``, ``parse``), metered; ``stream`` None: as its ``stream=`` argument says."""
        make = _ameter if self.asynchronous else _meter
        return make(send, self.registry, self.dialect, self.options, stream)

    def manager(self, open_stream: Callable[..., Any]) -> Callable[..., Any]:
        """A stream helper that returns a context manager (Anthropic's ``messages.stream``), metered."""
        kind = AsyncMeteredStreamManager if self.asynchronous else MeteredStreamManager

        @functools.wraps(open_stream)
        def metered(**kwargs: Any) -> Any:
            call = Call(self.dialect, self.options, kwargs, True)
            return kind(functools.partial(open_stream, **call.forward), call, self.registry, self.options)

        return metered


_MARK = "_registry_meter"


def instrument(
    client: Any,
    registry: Any,
    options: Options,
    dialect: Dialect,
    kinds: tuple[type, type],
    patch: Callable[[Any, Meter], None],
    where: str,
) -> Any:
    """A copy of ``client`` whose methods ``patch`` replaced with metered ones.

    ``kinds`` is the SDK's (blocking, asyncio) client classes; an asyncio client needs an
    :class:`~registry.AsyncRegistry` and a blocking one a :class:`~registry.Registry`. The copy
    shares the client's connection pool; its ``with_options``/``copy`` return metered copies.
    """
    from registry.aio import AsyncRegistry
    from registry.client import Registry

    blocking, asynchronous = kinds
    if not isinstance(client, blocking | asynchronous):
        raise ConfigError(
            f"{where}: expected an {blocking.__name__} or {asynchronous.__name__} client, got {type(client).__name__}"
        )
    if getattr(client, _MARK, None) is not None:
        raise ConfigError(f"{where}: this client is already wrapped (wrap the original once)")
    is_async = isinstance(client, asynchronous)
    wanted = AsyncRegistry if is_async else Registry
    if not isinstance(registry, wanted):
        raise ConfigError(
            f"{where}: {type(client).__name__} needs {'an' if is_async else 'a'} {wanted.__name__}"
            f" ({'its calls are awaited' if is_async else 'its calls block'}), got {type(registry).__name__}"
        )
    meter = Meter(registry, dialect, options, is_async)

    def install(fresh: Any) -> Any:
        copy = fresh.copy

        @functools.wraps(copy)
        def metered_copy(**changes: Any) -> Any:
            return install(copy(**changes))

        patch(fresh, meter)
        fresh.copy = fresh.with_options = metered_copy
        setattr(fresh, _MARK, meter)
        return fresh

    return install(client.copy())


_Sync = TypeVar("_Sync")
_Async = TypeVar("_Async")


class Wrap(Protocol[_Sync, _Async]):
    """A provider module's ``wrap``: a blocking client goes with a ``Registry``, an asyncio one
    with an ``AsyncRegistry``; the copy it returns is of the client's class."""

    @overload
    def __call__(
        self,
        client: _Sync,
        registry: Registry,
        *,
        tenant: str | None = None,
        model_map: ModelMap = None,
        token_counter: TokenCounter = estimate_input_tokens,
        wait: bool = False,
        timeout: float | None = None,
    ) -> _Sync: ...

    @overload
    def __call__(
        self,
        client: _Async,
        registry: AsyncRegistry,
        *,
        tenant: str | None = None,
        model_map: ModelMap = None,
        token_counter: TokenCounter = estimate_input_tokens,
        wait: bool = False,
        timeout: float | None = None,
    ) -> _Async: ...


def wrapper(
    module: str, kinds: tuple[type[_Sync], type[_Async]], dialect: Dialect, patch: Callable[[Any, Meter], None]
) -> Wrap[_Sync, _Async]:
    """The ``wrap`` function of the provider module named ``module`` (its errors begin with
    ``module.wrap``; the module sets its docstring): ``kinds`` are the SDK's (blocking, asyncio)
    client classes, ``patch`` replaces a client copy's methods (see :func:`instrument`)."""
    name = f"{module}.wrap"

    def wrap(
        client: Any,
        registry: Any,
        *,
        tenant: str | None = None,
        model_map: ModelMap = None,
        token_counter: TokenCounter = estimate_input_tokens,
        wait: bool = False,
        timeout: float | None = None,
    ) -> Any:
        options = Options(tenant, model_map, token_counter, wait, timeout)
        return instrument(client, registry, options, dialect, kinds, patch, name)

    wrap.__module__, wrap.__qualname__ = module, "wrap"
    return wrap
