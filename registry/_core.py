"""The I/O-free core shared by :class:`Registry` and :class:`AsyncRegistry`.

An operation is written once, as a generator (a *flow*) that yields what it needs from Redis
(:class:`Script` or :class:`Commands`) and receives the reply; the sync and asyncio clients
only differ in how they carry a request to Redis (:func:`run` and :func:`arun`). This is the
sans-I/O style of httpx's auth flows, and it keeps multi-step operations (read, merge,
compare-and-set, retry) in one copy.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from registry.errors import BackendUnavailable, ConfigError

__all__ = ["Commands", "Flow", "Guard", "Scan", "Script", "arun", "fields", "format_validation_error", "run", "text"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Script:
    """Run ``lua/<name>.lua`` with these KEYS and ARGV (EVALSHA, loading it on NOSCRIPT)."""

    name: str
    keys: tuple[str, ...]
    args: tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Commands:
    """Send these commands in one round trip; ``transaction`` wraps them in MULTI/EXEC."""

    commands: tuple[tuple[Any, ...], ...]
    transaction: bool = True


@dataclass(frozen=True, slots=True)
class Scan:
    """Every key matching ``pattern`` (SCAN in pages; on a cluster, on every primary)."""

    pattern: str


Request = Script | Commands | Scan
Flow = Generator[Request, Any, T]


class Guard(Protocol):
    """What the drivers ask before and tell after each request: a circuit breaker
    (:class:`registry.breakers.CircuitBreaker`). ``tripped`` and ``failures`` are read on every
    request, so a healthy client pays two attribute reads."""

    tripped: bool
    failures: int

    def refuse(self) -> BackendUnavailable | None: ...

    def outcome(self, error: BaseException | None) -> None: ...


# What both drivers do around a request, written once: ask its guard, report the outcome.


def _refused(g: Guard | None) -> BackendUnavailable | None:
    """The error of an open guard, which sends nothing; None to send."""
    return g.refuse() if g is not None and g.tripped else None


def _failed(flow: Flow[Any], g: Guard | None, exc: BaseException) -> Request | None:
    """Tell the guard; throw the error into the flow. None for a cancellation or an interrupt,
    which is not the flow's business: the driver raises it (from its own frame, so that the
    traceback holds no reference to the flow, which is closed as the driver's frame ends)."""
    if g is not None:
        g.outcome(exc)
    return flow.throw(exc) if isinstance(exc, Exception) else None


def _replied(flow: Flow[Any], g: Guard | None, reply: Any) -> Request:
    if g is not None and g.failures:
        g.outcome(None)
    return flow.send(reply)


def run(
    flow: Flow[T],
    execute: Callable[[Request], Any],
    guard: Guard | None = None,
    guard_for: Callable[[Request], Guard | None] | None = None,
) -> T:
    """Drive ``flow`` to its result, sending each request with the blocking ``execute``.

    An error of ``execute`` is thrown into the flow (where it propagates from the ``yield``, so a
    flow that does not catch it raises it unchanged), as is the :class:`BackendUnavailable` of an
    open guard, which sends nothing: a flow may fall back (see :mod:`registry.faults`).

    The guard of a request is ``guard`` (one for all: a single Redis), or, when given,
    ``guard_for(request)`` (a cluster: the breaker of the node serving the request's slot, see
    :class:`registry.breakers.NodeBreakers`); the request's outcome goes to the guard it asked.
    """
    try:
        request = next(flow)
        while True:
            g = guard if guard_for is None else guard_for(request)
            if (refused := _refused(g)) is not None:
                request = flow.throw(refused)
                continue
            try:
                reply = execute(request)
            except BaseException as exc:
                if (thrown := _failed(flow, g, exc)) is None:
                    raise
                request = thrown
                continue
            request = _replied(flow, g, reply)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def arun(
    flow: Flow[T],
    execute: Callable[[Request], Awaitable[Any]],
    guard: Guard | None = None,
    guard_for: Callable[[Request], Guard | None] | None = None,
) -> T:
    """Drive ``flow`` to its result, awaiting each request with ``execute`` (as :func:`run`)."""
    try:
        request = next(flow)
        while True:
            g = guard if guard_for is None else guard_for(request)
            if (refused := _refused(g)) is not None:
                request = flow.throw(refused)
                continue
            try:
                reply = await execute(request)
            except BaseException as exc:
                if (thrown := _failed(flow, g, exc)) is None:
                    raise
                request = thrown
                continue
            request = _replied(flow, g, reply)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def text(value: Any) -> str:
    """A reply value as ``str``, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else str(value)


def fields(raw: Any) -> dict[str, str]:
    """A hash or stream entry's fields as ``{str: str}``, from whichever shape redis-py gave: a
    dict, or the flat ``[field, value, ...]`` list a cluster's MULTI replies carry unparsed."""
    if isinstance(raw, Mapping):
        return {text(k): text(v) for k, v in raw.items()}
    items = list(raw or [])
    return {text(items[i]): text(items[i + 1]) for i in range(0, len(items) - 1, 2)}


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


def format_validation_error(exc: ValidationError, *, where: str = "", labels: Mapping[int, str] | None = None) -> str:
    """One line per problem: ``where: field.path: message (got value)``.

    ``labels`` names list entries (``models[3]`` gets ``(openai:gpt-4)`` appended) so that a
    config error says which model is wrong, not only at which index.
    """
    lines = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        path = _path(loc)
        if labels and len(loc) >= 2 and isinstance(loc[1], int) and loc[1] in labels:
            path = f"{_path(loc[:2])} ({labels[loc[1]]}){_path(loc[2:]) and '.' + _path(loc[2:])}"
        message = error["msg"].removeprefix("Value error, ")
        got = error.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        lines.append(f"{where + ': ' if where else ''}{path}: {message}{shown}")
    return "\n".join(lines)


def validation_error(exc: ValidationError, **kwargs: Any) -> ConfigError:
    """A :class:`ConfigError` carrying :func:`format_validation_error`'s text."""
    return ConfigError(format_validation_error(exc, **kwargs))
