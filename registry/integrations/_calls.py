"""One SDK call through a wrapper, from its plan to its settlement: no I/O.

A provider module describes its SDK as a :class:`Dialect` (where a response says its usage,
when a stream has finished, how to make a stream report its usage); :class:`Call` plans the
acquire from a method's keyword arguments and says what to settle for each outcome. The
blocking and asyncio drivers in :mod:`registry.integrations._meter` only acquire, send and
settle around it, as ``registry.client`` and ``registry.aio`` do around ``registry._core``.

What each outcome settles (see ``docs/integrations.md``):

- a response: the ``usage`` it reports (its cache reads and writes too), success;
- a stream: the usage it reported, else the prompt's estimate and the output counted from the
  deltas' text; success only if the provider said it finished (a cut-off stream, one the
  caller closed early or one that raised is a failure, charged what it produced);
- an exception before any response (an HTTP error, a dropped connection, a cancellation):
  0 input and 0 output tokens, failed, and throttled for a 429. The request may have reached
  the provider, so it is settled (it keeps its request slot), not released. The exception is
  re-raised unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any, Literal

from registry.admission.types import Decision, Reservation
from registry.errors import ConfigError, RateLimitedError
from registry.integrations.common import ModelMap, TokenCounter, estimate_input_tokens, model_key, tokens_for_bytes
from registry.integrations.usage import input_split, usage_counts

__all__ = ["RAW_RESPONSE_HEADER", "Call", "Dialect", "Options", "Settlement", "Tally", "integer", "sentinels"]

RAW_RESPONSE_HEADER = "x-stainless-raw-response"
"""Set by the SDKs' ``with_raw_response`` ("true" or "raw") and ``with_streaming_response`` ("stream")."""

Mode = Literal["plain", "stream", "raw", "opaque"]


def integer(value: Any) -> int | None:
    """``value`` if it is an int (not a bool), else None: a request's ``max_tokens``, ``n``..."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def sentinels(sdk: ModuleType) -> tuple[type, ...]:
    """The SDK's "not given" types (``NotGiven``, and ``Omit`` where it has one)."""
    return tuple(kind for kind in (sdk.NotGiven, getattr(sdk, "Omit", None)) if isinstance(kind, type))


@dataclass(frozen=True, slots=True)
class Options:
    """What ``wrap`` was given; see ``docs/integrations.md``."""

    tenant: str | None = None
    model_map: ModelMap = None
    token_counter: TokenCounter = estimate_input_tokens
    wait: bool = False
    timeout: float | None = None


@dataclass(slots=True)
class Tally:
    """What the provider has said so far about one request."""

    input_parts: dict[str, int] = field(default_factory=dict)  # the prompt's parts, as usage_counts names them
    output_tokens: int | None = None
    output_bytes: int = 0  # text of the output seen, for an estimate when no usage comes
    finished: bool = False  # the provider said the reply is complete
    pending: set[int] = field(default_factory=set)  # choices not finished yet (OpenAI's n > 1)

    @property
    def input_tokens(self) -> int | None:
        split = input_split(self.input_parts)
        return None if split is None else split[0]


class Dialect:
    """How one SDK's requests, responses and stream events read; one subclass per provider."""

    provider = ""
    sentinels: tuple[type, ...] = ()  # the SDK's "not given" values (NotGiven, Omit)

    def max_output(self, request: Mapping[str, Any]) -> int | None:
        """The most output tokens the request allows (None: the model's own maximum)."""
        raise NotImplementedError

    def read(self, response: Any, tally: Tally) -> None:
        """Take a whole response's usage (and its text, in case it has none) into ``tally``."""
        raise NotImplementedError

    def observe(self, event: Any, tally: Tally, hide: bool) -> bool:
        """Take one stream event into ``tally``; False keeps it from the caller."""
        raise NotImplementedError

    def ask_usage(self, forward: dict[str, Any]) -> bool:
        """Make a stream report its usage (editing the call's arguments); True if that adds
        events the caller did not ask for, which :meth:`observe` must then hide."""
        return False

    def take_usage(self, usage: Any, tally: Tally, output: bool = True) -> None:
        """Take an SDK's ``usage`` object (or None) into ``tally``, by the rule of
        :func:`~registry.integrations.usage.usage_counts`. Each count it gives replaces the one
        before (Anthropic's ``message_delta`` repeats them, cumulative); ``output`` False leaves
        its output count out (``message_start``'s is a placeholder)."""
        parts, count = usage_counts(self.provider, lambda name: getattr(usage, name, None))
        tally.input_parts.update(parts)
        if output and count is not None:
            tally.output_tokens = count


@dataclass(frozen=True, slots=True)
class Settlement:
    """The arguments of one ``settle``."""

    input_tokens: int
    output_tokens: int
    success: bool
    latency_ms: float
    throttled: bool = False
    cached_input_tokens: int = 0  # of input_tokens, read from the provider's prompt cache
    cache_write_tokens: int = 0  # of input_tokens, written to it

    def kwargs(self) -> dict[str, Any]:
        return asdict(self)


def _raw_mode(headers: Any) -> str | None:
    if not isinstance(headers, Mapping):
        return None
    for name, value in headers.items():
        if isinstance(name, str) and name.lower() == RAW_RESPONSE_HEADER and value:
            return str(value)
    return None


class Call:
    """One request through a wrapper, from its plan to its settlement. No I/O.

    Built from the keyword arguments of the wrapped method: removes the wrapper's own
    (``registry_tenant``, ``registry_request_id``), turns one-shot iterators (a generator of
    messages) into lists so that both the estimate and the SDK see them, and plans the
    acquire. ``forward`` is what goes to the SDK.
    """

    def __init__(self, dialect: Dialect, options: Options, kwargs: Mapping[str, Any], stream: bool | None) -> None:
        forward = {name: list(value) if isinstance(value, Iterator) else value for name, value in kwargs.items()}
        self.tenant: str | None = forward.pop("registry_tenant", options.tenant)
        self.request_id: str | None = forward.pop("registry_request_id", None)
        request = {name: value for name, value in forward.items() if not isinstance(value, dialect.sentinels)}
        model = request.get("model")
        if not isinstance(model, str):
            raise ConfigError(f"a {dialect.provider} request needs a model name (model=...), got {model!r}")
        self.dialect = dialect
        self.model_key = model_key(dialect.provider, model, options.model_map)
        self.input_estimate = options.token_counter(request)
        if isinstance(self.input_estimate, bool) or not isinstance(self.input_estimate, int) or self.input_estimate < 0:
            raise ConfigError(f"token_counter must return an integer >= 0, got {self.input_estimate!r}")
        self.max_output = dialect.max_output(request)
        streaming = request.get("stream") is True if stream is None else stream
        raw = _raw_mode(request.get("extra_headers"))
        self.mode: Mode = "stream" if streaming else "plain"
        if raw:  # the caller reads the response itself: a stream it reads cannot be watched
            self.mode = "opaque" if streaming or raw == "stream" else "raw"
        self.hide = dialect.ask_usage(forward) if self.mode == "stream" else False
        self.forward = forward
        self.tally = Tally()
        self.reservation: Reservation | None = None
        self._started = 0.0
        self._done = False

    def acquire_args(self) -> tuple[str, int, int | None, str | None, str | None]:
        return self.model_key, self.input_estimate, self.max_output, self.tenant, self.request_id

    def admitted(self, decision: Decision) -> None:
        """Raise :class:`RateLimitedError` for a refusal; else start the clock."""
        if not decision.allowed or decision.reservation is None:
            raise RateLimitedError(self.model_key, decision.denied_by, decision.retry_after)
        self.reservation = decision.reservation
        self._started = time.perf_counter()

    def observe(self, event: Any) -> bool:
        return self.dialect.observe(event, self.tally, self.hide)

    def read(self, response: Any) -> None:
        self.dialect.read(response, self.tally)
        self.tally.finished = True

    def _settlement(
        self, input_tokens: int, output_tokens: int, success: bool, throttled: bool, cached: int = 0, written: int = 0
    ) -> Settlement | None:
        if self._done:
            return None
        self._done = True
        latency_ms = (time.perf_counter() - self._started) * 1000
        return Settlement(input_tokens, output_tokens, success, latency_ms, throttled, cached, written)

    def failed(self, exc: BaseException) -> Settlement | None:
        """No response came: nothing was reported, so nothing is charged but the request."""
        return self._settlement(0, 0, False, getattr(exc, "status_code", None) == 429)

    def ended(self) -> Settlement | None:
        """What the response or stream said (estimates where it said nothing); once."""
        tally = self.tally
        # The input as reported, with its cache reads and writes; else the estimate, all plain.
        input_tokens, cached, written = input_split(tally.input_parts) or (self.input_estimate, 0, 0)
        output = tokens_for_bytes(tally.output_bytes) if tally.output_tokens is None else tally.output_tokens
        return self._settlement(input_tokens, output, tally.finished, False, cached, written)

    def unread(self) -> Settlement | None:
        """A response the caller reads itself (``with_streaming_response``): kept at the estimate."""
        assert self.reservation is not None
        return self._settlement(self.input_estimate, self.reservation.max_output_tokens, True, False)
