"""The ``admit`` context manager: acquire on entry, settle on exit with what was really used.

::

    with reg.admit("openai:gpt-4o", input_tokens=1200, max_output_tokens=800) as ticket:
        for chunk in client.chat.completions.create(..., stream=True):
            ticket.add_output(count_tokens(chunk))          # counted as they arrive
        ticket.usage(input_tokens=1187, output_tokens=412)  # exact, when the provider says

On a normal exit the reservation is settled with the usage given (or, if none was given, kept
at its estimate: nothing says it used less). On an exception or a cancellation (a client that
hung up mid-stream, ``asyncio.CancelledError``) it is settled as failed with the prompt and the
output counted so far, so cut-off streams are charged for what they produced, not $0. Call
:meth:`Ticket.release` inside the block when the request was never sent.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

from registry.admission.types import Decision, Reservation
from registry.errors import ConfigError, RateLimitedError

__all__ = ["AsyncTicket", "Ticket"]


class _Usage:
    """Token counting shared by both tickets."""

    def __init__(self, decision: Decision) -> None:
        assert decision.reservation is not None
        self.decision = decision
        self.reservation: Reservation = decision.reservation
        self._input: int | None = None
        self._output = 0
        self._reported = False
        self._closed = False

    def add_output(self, tokens: int) -> None:
        """Count output tokens as they arrive (streaming)."""
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise ConfigError(f"tokens must be an integer >= 0, got {tokens!r}")
        self._output += tokens
        self._reported = True

    def usage(self, *, input_tokens: int | None = None, output_tokens: int | None = None) -> None:
        """The request's real counts (replaces what :meth:`add_output` counted)."""
        if input_tokens is not None:
            self._input = input_tokens
        if output_tokens is not None:
            self._output = output_tokens
        self._reported = True

    def _counts(self, failed: bool) -> tuple[int, int]:
        held = self.reservation
        if not self._reported and not failed:
            return held.input_tokens, held.max_output_tokens  # nothing said: keep the estimate
        return (held.input_tokens if self._input is None else self._input), self._output

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

    def _settle(self, failed: bool) -> None:
        if not self._closed:
            self._closed = True
            input_tokens, output_tokens = self._counts(failed)
            self._registry.settle(self.reservation, input_tokens, output_tokens, not failed)


class AsyncTicket(_Usage):
    """An admitted request of the asyncio client; see the module docstring."""

    def __init__(self, registry: Any, decision: Decision) -> None:
        super().__init__(decision)
        self._registry = registry

    async def release(self) -> bool:
        """The request was never sent: give everything back now."""
        self._closed = True
        return bool(await self._registry.release(self.reservation))

    async def _settle(self, failed: bool) -> None:
        if not self._closed:
            self._closed = True
            input_tokens, output_tokens = self._counts(failed)
            # Shielded: a cancelled task still settles what it used.
            await asyncio.shield(self._registry.settle(self.reservation, input_tokens, output_tokens, not failed))


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
        self._ticket._settle(failed=exc_type is not None)


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
        await self._ticket._settle(failed=exc_type is not None)
