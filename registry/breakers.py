"""Circuit breakers: one per client on a single Redis, one per primary on a Redis Cluster.

A :class:`CircuitBreaker` stops a client from sending to a Redis that keeps failing: after
``failures_to_open`` consecutive :class:`BackendUnavailable` errors it *opens*, and every call
fails at once with ``BackendUnavailable("circuit open ...")`` without touching the network, so a
fleet's callers do not each wait out a socket timeout (what Envoy's ratelimit did while failing
open, envoyproxy/ratelimit#462). After ``open_seconds`` one call goes through as a probe
(*half-open*): an answer closes the breaker, a failure opens it again.

On a cluster one dead primary must not stop the others: :class:`NodeBreakers` keeps a breaker
per primary and picks, for each request, the breaker of the node that serves its slot (every
script's keys share one hash tag, so a script has one slot; so does a ``Commands`` request
whose keys all hash to one slot). A request that is not tied to one node (keys in several
slots, a command without a key, a ``Scan`` of every primary, or a slot the client has not
mapped yet) passes the breaker named :data:`WIDE` (``"*"``): its failures never open a node's
breaker, and a node's open breaker never refuses it (it fails, and counts, on its own).

The flow driver (:func:`registry._core.run`) consults the breaker before each request and
reports how it ended; see :class:`registry._core.Guard`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

from registry._core import Request
from registry.errors import BackendUnavailable, RegistryError

__all__ = ["WIDE", "CircuitBreaker", "NodeBreakers", "State", "describe", "worst"]

WIDE = "*"  # the breaker of a cluster's requests that no single node serves
State = Literal["closed", "open", "half-open"]
_RANK: dict[State, int] = {"closed": 0, "half-open": 1, "open": 2}


def describe(node: str) -> str:
    """What a breaker guards, for messages: ``"Redis"`` (a single Redis, ``node == ""``), a
    cluster node, or the cluster's requests spanning several nodes (:data:`WIDE`)."""
    if not node:
        return "Redis"
    if node == WIDE:
        return "Redis Cluster (requests spanning several nodes)"
    return f"Redis Cluster node {node}"


def worst(states: list[State]) -> State:
    """The most open of ``states``: ``"open"`` if any is, else ``"half-open"`` if any is."""
    return max(states, key=_RANK.__getitem__, default="closed")


class CircuitBreaker:
    """Closed -> open after ``failures_to_open`` consecutive unavailable errors; open -> one
    probe after ``open_seconds`` (half-open); an answer closes it, a failure opens it again.

    The flow driver reads two attributes on the hot path: ``tripped`` (open or half-open: ask
    :meth:`refuse` before sending) and ``failures`` (after a reply: report it while > 0).
    ``node`` names what it guards (empty on a single Redis). Thread-safe; ``clock`` (seconds)
    is injectable so tests need no sleeps.
    """

    def __init__(
        self,
        failures_to_open: int = 3,
        open_seconds: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_open: Callable[[int], None] | None = None,
        on_close: Callable[[float], None] | None = None,
        node: str = "",
    ) -> None:
        self.failures_to_open = failures_to_open
        self.open_seconds = open_seconds
        self.node = node
        self.tripped = False
        self.failures = 0
        self.opens = 0
        self.closes = 0
        self._clock = clock
        self._on_open = on_open
        self._on_close = on_close
        self._opened_at = 0.0  # when it last opened (or re-opened after a failed probe)
        self._first_opened_at = 0.0  # when this outage began, for the log
        self._probing = False
        self._lock = threading.Lock()

    @property
    def state(self) -> State:
        if not self.tripped:
            return "closed"
        return "half-open" if self._probing else "open"

    def refuse(self) -> BackendUnavailable | None:
        """While tripped: None if this call may go (it is the probe), else the error to raise."""
        with self._lock:
            if not self.tripped:
                return None
            left = self._opened_at + self.open_seconds - self._clock()
            if left <= 0 and not self._probing:
                self._probing = True
                return None
            wait = "a probe is in flight" if left <= 0 else f"next probe in {left:.3f}s"
            return BackendUnavailable(
                f"circuit open: {describe(self.node)} failed {self.failures} times in a row; {wait} (nothing was sent)"
            )

    def outcome(self, error: BaseException | None) -> None:
        """Report how a call that was sent ended: None (a reply) or the exception it raised."""
        if isinstance(error, BackendUnavailable):
            self._failed()
        elif error is None or isinstance(error, RegistryError):
            self._succeeded()  # Redis answered, if only with an error
        else:  # cancelled or interrupted: no verdict, but a probe must not stay claimed forever
            with self._lock:
                self._probing = False

    def _succeeded(self) -> None:
        with self._lock:
            was_tripped, self.tripped, self.failures, self._probing = self.tripped, False, 0, False
            if not was_tripped:
                return
            self.closes += 1
            down = self._clock() - self._first_opened_at
        if self._on_close is not None:
            self._on_close(down)

    def _failed(self) -> None:
        with self._lock:
            self.failures += 1
            if self.tripped:
                if self._probing:  # the probe failed: open again for another open_seconds
                    self._probing = False
                    self._opened_at = self._clock()
                return
            if self.failures < self.failures_to_open:
                return
            self.tripped, self.opens = True, self.opens + 1
            self._opened_at = self._first_opened_at = self._clock()
            failures = self.failures
        if self._on_open is not None:
            self._on_open(failures)


class NodeBreakers:
    """A cluster client's breakers: one per primary (by its ``host:port`` name) and :data:`WIDE`.

    Calling it with a request returns the breaker to consult (the driver's ``guard_for``).
    ``node_of(request)`` names the primary serving the request's slot now, or None (no single
    node): the client reads it from redis-py's own slot map, which redis-py updates on MOVED
    and on re-reading the cluster's slots after a connection error, so after a failover a slot
    is guarded by its new primary's breaker from the first request routed there. Breakers are
    made on first use and kept (a node that comes back finds its own).
    """

    def __init__(self, make: Callable[[str], CircuitBreaker], node_of: Callable[[Request], str | None]) -> None:
        self._make = make
        self._node_of = node_of
        self.wide = make(WIDE)
        self._by_node: dict[str, CircuitBreaker] = {WIDE: self.wide}
        self._lock = threading.Lock()

    def __call__(self, request: Request) -> CircuitBreaker:
        node = self._node_of(request)
        if node is None:
            return self.wide
        breaker = self._by_node.get(node)
        return breaker if breaker is not None else self._add(node)

    def _add(self, node: str) -> CircuitBreaker:
        with self._lock:
            breaker = self._by_node.get(node)
            if breaker is None:
                breaker = self._by_node[node] = self._make(node)
            return breaker

    def all(self) -> list[CircuitBreaker]:
        """Every breaker made so far, :data:`WIDE` first."""
        return list(self._by_node.values())
