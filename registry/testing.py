"""Testing hooks. Nothing in the library calls these; production code has no reason to.

:func:`use_clock` makes a client pass its own time to the admission scripts instead of
letting them read Redis' ``TIME``, and makes ``acquire(..., wait=True)`` sleep on that clock,
so that tests can put requests at t = 59.9 s and t = 60.1 s exactly::

    clock = FakeClock(start_ms=1_000_000)
    use_clock(reg, clock)
    reg.acquire("openai:gpt-4o", 100)
    clock.advance(0.5)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["FakeClock", "use_clock"]


@dataclass
class FakeClock:
    """A clock in integer milliseconds that moves only when told (or when a client sleeps)."""

    now_ms: int = 0

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> None:
        self.now_ms += round(seconds * 1000)

    def set(self, seconds: float) -> None:
        self.now_ms = round(seconds * 1000)

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        self.advance(seconds)


def use_clock(registry: Any, clock: FakeClock | None) -> None:
    """Drive ``registry``'s admission from ``clock`` (None: back to Redis' TIME and real sleep)."""
    import asyncio
    import time

    target = getattr(registry, "_target", registry)  # the tests' async facade
    target._test_clock = clock
    target._sleep = clock.sleep if clock is not None else time.sleep
    target._asleep = clock.asleep if clock is not None else asyncio.sleep
