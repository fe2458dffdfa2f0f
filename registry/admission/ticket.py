"""The ``admit`` context manager: acquire on entry, settle on exit with what was really used.

::

    with reg.admit("openai:gpt-4o", input_tokens=1200, max_output_tokens=800) as ticket:
        for chunk in client.chat.completions.create(..., stream=True):
            ticket.add_output(count_tokens(chunk))          # counted as they arrive
        ticket.usage(input_tokens=1187, output_tokens=412, cached_input_tokens=1024)  # exact

On a normal exit the reservation is settled with the usage given (or, if none was given, kept
at its estimate: nothing says it used less). On an exception or a cancellation (a client that
hung up mid-stream, ``asyncio.CancelledError``) it is settled as failed with the prompt and the
output counted so far, so cut-off streams are charged for what they produced, not $0. Call
:meth:`Ticket.release` inside the block when the request was never sent.

A request the provider refused for its own rate limit (HTTP 429) is settled as failed and
``throttled`` (the ledger's ``throttled`` counter, ``registry_provider_throttled``): when the
block raises an exception whose ``status_code`` is 429 (the OpenAI and Anthropic SDKs'
``RateLimitError``, as the SDK wrappers tell it), or when the block called
:meth:`Ticket.mark_throttled` (a client that returns a 429 instead of raising it). The
provider processed nothing, so unless the block reported usage it is charged 0 tokens, as the
SDK wrappers settle it.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

from registry.admission.types import Decision, Reservation
from registry.errors import ConfigError, RateLimitedError
from registry.pricing import check_cache_tokens, check_tokens

__all__ = ["AsyncTicket", "Ticket"]


class _Usage:
    """Token counting shared by both tickets."""

    def __init__(self, decision: Decision) -> None:
        assert decision.reservation is not None
        self.decision = decision
        self.reservation: Reservation = decision.reservation
        self._input: int | None = None
        self._output = 0
        self._cached = 0
        self._written = 0
        self._reported = False
        self._throttled = False
        self._closed = False

    def add_output(self, tokens: int) -> None:
        """Count output tokens as they arrive (streaming)."""
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise ConfigError(f"tokens must be an integer >= 0, got {tokens!r}")
        self._output += tokens
        self._reported = True

    def usage(
        self,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cached_input_tokens: int | None = None,
        cache_write_tokens: int | None = None,
    ) -> None:
        """The request's real counts (replaces what :meth:`add_output` counted).

        ``cached_input_tokens`` and ``cache_write_tokens`` are the part of the input read from
        and written to the provider's prompt cache, settled as :meth:`Registry.settle` takes
        them: ``input_tokens`` counts every prompt token, cached ones included (OpenAI's
        ``prompt_tokens`` does; Anthropic reports ``cache_read_input_tokens`` and
        ``cache_creation_input_tokens`` apart from its ``input_tokens``: add them in). A count
        left out keeps its value (the input its estimate, the cache counts 0). A count that is
        not an integer >= 0, or cache counts above the input (given, else the estimate), raise
        :class:`ConfigError` here and change nothing.
        """
        used_in = self._input if input_tokens is None else check_tokens("input_tokens", input_tokens)
        used_out = self._output if output_tokens is None else check_tokens("output_tokens", output_tokens)
        cached, written = check_cache_tokens(
            self.reservation.input_tokens if used_in is None else used_in,
            self._cached if cached_input_tokens is None else cached_input_tokens,
            self._written if cache_write_tokens is None else cache_write_tokens,
        )
        self._input, self._output, self._cached, self._written = used_in, used_out, cached, written
        self._reported = True

    def mark_throttled(self) -> None:
        """The provider refused the request for its own rate limit (HTTP 429).

        The ticket settles as a failure counted in the ledger's ``throttled`` counter, even if
        the block exits normally, and, unless usage was reported, with 0 tokens: the provider
        processed nothing. An exception with ``status_code`` 429 does the same by itself.
        """
        self._throttled = True

    def _settlement(self, failed: bool, exc: BaseException | None) -> dict[str, Any]:
        """The keyword arguments of the ``settle`` on exit."""
        throttled = self._throttled or getattr(exc, "status_code", None) == 429
        held = self.reservation
        if self._reported:
            used_in = held.input_tokens if self._input is None else self._input
            used_out, cached, written = self._output, self._cached, self._written
        elif throttled:
            used_in, used_out, cached, written = 0, 0, 0, 0  # refused by the provider: it processed nothing
        elif failed:
            used_in, used_out, cached, written = held.input_tokens, 0, 0, 0  # the prompt went; nothing came back
        else:
            used_in, used_out, cached, written = held.input_tokens, held.max_output_tokens, 0, 0  # kept: the estimate
        return {
            "input_tokens": used_in,
            "output_tokens": used_out,
            "success": not (failed or throttled),
            "throttled": throttled,
            "cached_input_tokens": cached,
            "cache_write_tokens": written,
        }

    @staticmethod
    def _refused(model_key: str, decision: Decision) -> RateLimitedError:
        return RateLimitedError(model_key, decision.denied_by, decision.retry_after)


class Ticket(_Usage):
    """An admitted request of the blocking client; see the module docstring."""

    def __init__(self, registry: Any, decision: Decision) -> None:
        super().__init__(decision)
        self._registry = registry

    def release(self) -> bool:
        """The request was never sent: give everything back now."""
        self._closed = True
        return bool(self._registry.release(self.reservation))

    def _settle(self, failed: bool, exc: BaseException | None) -> None:
        if not self._closed:
            self._closed = True
            self._registry.settle(self.reservation, **self._settlement(failed, exc))


class AsyncTicket(_Usage):
    """An admitted request of the asyncio client; see the module docstring."""

    def __init__(self, registry: Any, decision: Decision) -> None:
        super().__init__(decision)
        self._registry = registry

    async def release(self) -> bool:
        """The request was never sent: give everything back now."""
        self._closed = True
        return bool(await self._registry.release(self.reservation))

    async def _settle(self, failed: bool, exc: BaseException | None) -> None:
        if not self._closed:
            self._closed = True
            # Shielded: a cancelled task still settles what it used.
            await asyncio.shield(self._registry.settle(self.reservation, **self._settlement(failed, exc)))


class Admit:
    """``with registry.admit(...) as ticket``: see the module docstring."""

    def __init__(self, registry: Any, model_key: str, kwargs: dict[str, Any]) -> None:
        self._registry, self._model_key, self._kwargs = registry, model_key, kwargs
        self._ticket: Ticket | None = None

    def __enter__(self) -> Ticket:
        decision = self._registry.acquire(self._model_key, **self._kwargs)
        if not decision.allowed:
            raise _Usage._refused(self._model_key, decision)
        self._ticket = Ticket(self._registry, decision)
        return self._ticket

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._ticket is not None
        self._ticket._settle(exc_type is not None, exc)


class AsyncAdmit:
    """``async with registry.admit(...) as ticket``: see the module docstring."""

    def __init__(self, registry: Any, model_key: str, kwargs: dict[str, Any]) -> None:
        self._registry, self._model_key, self._kwargs = registry, model_key, kwargs
        self._ticket: AsyncTicket | None = None

    async def __aenter__(self) -> AsyncTicket:
        decision = await self._registry.acquire(self._model_key, **self._kwargs)
        if not decision.allowed:
            raise _Usage._refused(self._model_key, decision)
        self._ticket = AsyncTicket(self._registry, decision)
        return self._ticket

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._ticket is not None
        await self._ticket._settle(exc_type is not None, exc)
