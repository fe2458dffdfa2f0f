"""``RateLimitMiddleware``: fleet-wide admission and exact settlement for an LLM gateway.

A pure ASGI middleware (no framework import: it runs under Starlette, FastAPI, or any ASGI
server). For each ``POST`` to a chat path (``/v1/chat/completions`` in OpenAI's format and
``/v1/messages`` in Anthropic's, by default) it reads the JSON body, acquires the model's
limits (and the tenant's) on an :class:`~registry.AsyncRegistry`, hands the body to the app
byte for byte, and settles the reservation with the usage the app's response reports::

    app.add_middleware(RateLimitMiddleware, registry=reg, tenant="x-tenant")

What it answers itself, in the provider's error format (see ``docs/asgi.md``):

- **429** when a limit (or a budget) refuses, with ``Retry-After`` (whole seconds, rounded
  up, at least 1), ``retry-after-ms`` and the ``x-ratelimit-*`` headers below; the SDKs of
  both providers retry on it after that delay.
- **413** when the request alone is bigger than a limit (:class:`RequestTooLargeError`):
  waiting never admits it, and no SDK retries a 413 (they would retry a 429 forever).
- **400** for a tenant name the registry refuses (a ``:``, whitespace, braces).
- **404** for a model the catalog lacks, only with ``require_known_models=True``; by
  default such a request goes to the app untouched, unmetered.

Anything else (other paths or methods, bodies that are not a JSON object naming a
``model``) passes through untouched.

Every admitted response carries ``x-ratelimit-limit-requests``,
``x-ratelimit-remaining-requests``, ``x-ratelimit-limit-tokens`` and
``x-ratelimit-remaining-tokens`` (replacing the app's own, if any): for each kind, the limit
that applies to this request (the model's RPM and RPD and the tenant's, for requests; the
model's TPM, ITPM and OTPM and the tenant's, for tokens) with the **least left** after it, that is the one
that will refuse first. A kind without a limit has no headers.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from registry.admission.types import Decision, LimitSpec, Reservation, applicable_limits, check_tenant
from registry.errors import ConfigError, ModelNotFoundError, RequestTooLargeError
from registry.integrations.common import ModelMap, TokenCounter, estimate_input_tokens, model_key
from registry.integrations.usage import Reported, StreamUsage, Style, usage_from_body

if TYPE_CHECKING:
    from registry.aio import AsyncRegistry

__all__ = ["DEFAULT_PATHS", "RateLimitMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
TenantOption = str | Callable[[Scope], "str | Awaitable[str | None] | None"] | None

DEFAULT_PATHS: Mapping[str, Style] = {"/v1/chat/completions": "openai", "/v1/messages": "anthropic"}
MAX_BUFFERED_RESPONSE = 8 * 2**20  # a JSON response longer than this keeps its estimate

_log = logging.getLogger(__name__)
_RATE_HEADERS = frozenset(
    f"x-ratelimit-{what}-{kind}".encode() for what in ("limit", "remaining", "reset") for kind in ("requests", "tokens")
)
# kind -> (HTTP status, OpenAI's error type, OpenAI's code, Anthropic's error type)
_ERRORS: dict[str, tuple[int, str, str | None, str]] = {
    "rate_limit": (429, "rate_limit_exceeded", "rate_limit_exceeded", "rate_limit_error"),
    "budget": (429, "insufficient_quota", "insufficient_quota", "rate_limit_error"),
    "too_large": (413, "invalid_request_error", "request_too_large", "request_too_large"),
    "invalid": (400, "invalid_request_error", None, "invalid_request_error"),
    "unknown_model": (404, "invalid_request_error", "model_not_found", "not_found_error"),
}


class RateLimitMiddleware:
    """Admit chat requests against the fleet's limits and settle them with their real usage.

    ``registry``: the :class:`~registry.AsyncRegistry` to admit on; use it from one event loop
    (the server's): create it in the app's lifespan, or before the server starts.
    ``tenant``: a header name (``"x-tenant"``) or a function of the ASGI scope returning the
    tenant (or an awaitable of it); None or a missing header: the model's limits only.
    ``model_map``: from the request's ``model`` to a catalog key (a mapping, whose missing
    names fall back to the default, or a function); default ``<style>:<model>``, the style
    being the path's (``openai:gpt-4o``, ``anthropic:claude-sonnet-4-5``).
    ``token_counter``: the request body's input-token estimate (the reservation until the
    response says); :func:`~registry.integrations.common.estimate_input_tokens` by default.
    ``paths``: which paths to meter, and the wire format of each (``"openai"`` or ``"anthropic"``).
    ``require_known_models``: answer 404 for a model the catalog lacks instead of passing it on.
    """

    def __init__(
        self,
        app: ASGIApp,
        registry: AsyncRegistry,
        *,
        tenant: TenantOption = None,
        model_map: ModelMap = None,
        token_counter: TokenCounter = estimate_input_tokens,
        paths: Mapping[str, Style] = DEFAULT_PATHS,
        require_known_models: bool = False,
    ) -> None:
        for path, style in paths.items():
            if style not in ("openai", "anthropic"):
                raise ConfigError(f"paths[{path!r}] must be 'openai' or 'anthropic', got {style!r}")
        if not (tenant is None or callable(tenant) or isinstance(tenant, str)):
            raise ConfigError(f"tenant must be a header name, a function or None, got {tenant!r}")
        self.app = app
        self.registry = registry
        self.tenant = tenant.lower().encode("latin-1") if isinstance(tenant, str) else tenant
        self.model_map = model_map
        self.token_counter = token_counter
        self.paths = dict(paths)
        self.require_known_models = require_known_models
        self._settling: set[asyncio.Task[Any]] = set()  # strong references until done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        style = self.paths.get(scope.get("path", "")) if scope["type"] == "http" else None
        if style is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(style, receive)
        await exchange.read_request()
        request = _json_object(exchange.body)
        name = request.get("model") if request is not None else None
        if exchange.disconnected or request is None or not isinstance(name, str):
            await self.app(scope, exchange.receive, send)
            return
        key = model_key(style, name, self.model_map)
        try:
            tenant = check_tenant(await self._tenant(scope))
        except ConfigError as exc:
            await _error(send, style, "invalid", str(exc))
            return
        try:
            spec = await self.registry.get_model(key)
        except (ModelNotFoundError, ConfigError):
            if self.require_known_models:
                await _error(send, style, "unknown_model", f"The model {name!r} does not exist ({key} is not known).")
            else:
                await self.app(scope, exchange.receive, send)
            return
        try:
            decision = await self.registry.acquire(key, self.token_counter(request), _max_output(request), tenant)
        except RequestTooLargeError as exc:
            await _error(send, style, "too_large", f"Request too large: {exc}; make it smaller.")
            return
        except ConfigError as exc:
            await _error(send, style, "invalid", str(exc))
            return
        limits = applicable_limits(spec, tenant)
        headers = _rate_headers(decision.remaining, limits)
        if not decision.allowed:
            await _refuse(send, style, key, decision, headers, limits)
            return
        assert decision.reservation is not None
        exchange.headers = headers
        started = time.perf_counter()
        try:
            await self.app(scope, exchange.receive, exchange.send_to(send))
        except BaseException:
            try:
                await self._settle(decision.reservation, exchange, started)
            except Exception:
                _log.exception("settling %s after the app failed", key)
            raise
        await self._settle(decision.reservation, exchange, started)

    async def _tenant(self, scope: Scope) -> str | None:
        if self.tenant is None:
            return None
        if isinstance(self.tenant, bytes):
            for header, value in scope.get("headers", ()):
                if header.lower() == self.tenant:
                    return value.decode("latin-1") or None
            return None
        found = self.tenant(scope)
        return await found if inspect.isawaitable(found) else found

    async def _settle(self, reservation: Reservation, exchange: _Exchange, started: float) -> None:
        used, success = exchange.outcome(reservation)
        latency_ms = (time.perf_counter() - started) * 1000
        throttled = exchange.complete and exchange.status == 429  # the upstream's own limit refused
        settle = self.registry.settle(
            reservation,
            used.input_tokens,
            used.output_tokens,
            success,
            latency_ms,
            throttled=throttled,
            cached_input_tokens=used.cached_input_tokens,
            cache_write_tokens=used.cache_write_tokens,
        )
        # Shielded (in a task held here): a cancelled request still settles what it used.
        task = asyncio.ensure_future(settle)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        await asyncio.shield(task)


@dataclass(eq=False)
class _Exchange:
    """One metered request: its body, and what the app's response has shown so far."""

    style: Style
    upstream: Receive
    body: bytes = b""
    disconnected: bool = False  # while the body was arriving
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # ours, added to the response
    status: int | None = None
    complete: bool = False  # the last body message was sent
    stream: StreamUsage | None = None
    buffered: list[bytes] | None = None  # a JSON response's body, kept to read its usage
    _size: int = 0
    _replay: list[Message] = field(default_factory=list)

    async def read_request(self) -> None:
        chunks = []
        while True:
            message = await self.upstream()
            if message["type"] != "http.request":
                self.disconnected = True
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        self.body = b"".join(chunks)
        self._replay = [{"type": "http.request", "body": self.body, "more_body": False}]
        if self.disconnected:
            self._replay.append(message)

    async def receive(self) -> Message:
        """The app's ``receive``: the buffered body, then the server's own messages."""
        return self._replay.pop(0) if self._replay else await self.upstream()

    def send_to(self, send: Send) -> Send:
        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = self._start(message)
            elif message["type"] == "http.response.body":
                self._chunk(message.get("body", b""))
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.complete = True

        return watched

    def _start(self, message: Message) -> Message:
        self.status = message["status"]
        headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in _RATE_HEADERS]
        content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"").lower()
        if content_type.startswith(b"text/event-stream"):
            self.stream = StreamUsage(self.style)
        elif b"json" in content_type:
            self.buffered = []
        return {**message, "headers": headers + self.headers}

    def _chunk(self, data: bytes) -> None:
        if self.stream is not None:
            self.stream.feed(data)
        elif self.buffered is not None:
            self._size += len(data)
            if self._size > MAX_BUFFERED_RESPONSE:
                self.buffered = None
            else:
                self.buffered.append(data)

    def outcome(self, reservation: Reservation) -> tuple[Reported, bool]:
        """(the usage, success) to settle with.

        - A response sent in full with a status below 400: the usage it reports; where it
          says nothing, the prompt's estimate and, for a stream, the output counted from
          its text, else the reserved output (nothing says it used less).
        - A response sent in full with an error status: failed, with the usage it reports,
          else nothing (the provider bills no tokens for an error).
        - Anything cut short (the client hung up, the app raised or stopped before the last
          byte): failed, with the usage seen so far, else the prompt's estimate and the
          output counted so far.

        A reported input comes with its cache reads and writes; an estimated one has none.
        """
        (reported_in, cached, written), output_tokens, counted = self._usage()
        failed = self.complete and self.status is not None and self.status >= 400
        used_in = reported_in if reported_in is not None else 0 if failed else reservation.input_tokens
        if not self.complete:
            return Reported(used_in, max(output_tokens or 0, counted), cached, written), False
        if failed:
            return Reported(used_in, output_tokens or 0, cached, written), False
        if output_tokens is None:
            output_tokens = counted if self.stream is not None and self.stream.events else reservation.max_output_tokens
        return Reported(used_in, output_tokens, cached, written), True

    def _usage(self) -> tuple[tuple[int | None, int, int], int | None, int]:
        """((input or None, its cache reads, its cache writes), output or None, output counted)."""
        if self.stream is not None:
            stream = self.stream
            stream.close()
            split = (stream.input_tokens, stream.cached_input_tokens, stream.cache_write_tokens)
            return split, stream.output_tokens, stream.counted_output
        body = _json_object(b"".join(self.buffered)) if self.complete and self.buffered is not None else None
        found = usage_from_body(self.style, body) if body is not None else None
        if found is None:
            return (None, 0, 0), None, 0
        return (found.input_tokens, found.cached_input_tokens, found.cache_write_tokens), found.output_tokens, 0


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


def _max_output(request: Mapping[str, Any]) -> int | None:
    """The request's output cap (None: the model's default), as either provider names it."""
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = request.get(name)
        if type(value) is int and value >= 0:
            return value
    return None


def _family(spec: LimitSpec) -> str:
    """The header family of a limit: ``requests``, or ``tokens`` for all three token limits
    (tokens, input tokens and output tokens per minute), as OpenAI's headers have no others."""
    return "requests" if spec.counts == "requests" else "tokens"


def _rate_headers(remaining: Mapping[str, int], limits: list[LimitSpec]) -> list[tuple[bytes, bytes]]:
    """``x-ratelimit-{limit,remaining}-{requests,tokens}``: per family, the limit with least left."""
    headers = []
    for kind in ("requests", "tokens"):
        held = [(remaining[s.name], s.limit) for s in limits if _family(s) == kind and s.name in remaining]
        if held:
            left, limit = min(held, key=lambda pair: pair[0])  # the first of equals: the shortest window
            headers += [
                (f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
                (f"x-ratelimit-remaining-{kind}".encode(), str(max(left, 0)).encode()),
            ]
    return headers


async def _refuse(
    send: Send,
    style: Style,
    key: str,
    decision: Decision,
    headers: list[tuple[bytes, bytes]],
    limits: list[LimitSpec],
) -> None:
    """429, with when to retry: ``retry_after`` rounded up, to whole ms and to whole seconds."""
    wait_ms = max(1, math.ceil(decision.retry_after * 1000 - 1e-6))  # retry_after is a whole ms count / 1000
    seconds = -(-wait_ms // 1000)
    by = decision.denied_by or "a limit"
    headers = [*headers, (b"retry-after", str(seconds).encode()), (b"retry-after-ms", str(wait_ms).encode())]
    for spec in limits:
        if spec.name == by:  # a window refused (not a budget): when its kind frees up
            headers.append((f"x-ratelimit-reset-{_family(spec)}".encode(), f"{seconds}s".encode()))
    kind = "budget" if by.startswith("budget:") else "rate_limit"
    message = f"Rate limit reached for {key} ({by}). Please try again in {wait_ms / 1000:.3f}s."
    await _error(send, style, kind, message, headers)


async def _error(
    send: Send, style: Style, kind: str, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """An error response in the provider's format (OpenAI's ``{"error": {...}}``, Anthropic's
    ``{"type": "error", "error": {...}}``), which its SDK turns into its own exception."""
    status, openai_type, code, anthropic_type = _ERRORS[kind]
    if style == "anthropic":
        payload: dict[str, Any] = {"type": "error", "error": {"type": anthropic_type, "message": message}}
    else:
        payload = {"error": {"message": message, "type": openai_type, "param": None, "code": code}}
    body = msgspec.json.encode(payload)
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": start + (headers or [])})
    await send({"type": "http.response.body", "body": body, "more_body": False})
