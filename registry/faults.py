"""What a client does when Redis is unreachable or too slow: the fault policy.

Three parts, each a plain object with no I/O of its own:

- :class:`~registry.breakers.CircuitBreaker` (:mod:`registry.breakers`): after
  ``failures_to_open`` consecutive :class:`BackendUnavailable` errors it *opens*, and every
  call fails at once with ``BackendUnavailable("circuit open ...")`` without touching the
  network, so a fleet's callers do not each wait out a socket timeout (what Envoy's ratelimit
  did while failing open, envoyproxy/ratelimit#462). After ``open_seconds`` one call goes
  through as a probe (*half-open*): an answer closes the breaker (and replays the spool), a
  failure opens it again. The clients' flow driver (:func:`registry._core.run`) consults it on
  every request: two attribute reads when closed. A single-Redis client has one; a cluster
  client one per primary, chosen by the slot of the request's keys, and one (``"*"``) for
  requests no single node serves (:class:`~registry.breakers.NodeBreakers`), so one dead
  primary stops only the models, tenants and catalog whose slots it serves.
- :class:`LocalWindows`: the *emergency cap* of a worker that fails open. Each model limit
  (RPM, TPM, ITPM, OTPM, RPD, and the tenant's) gets an exact in-process sliding window of
  ``emergency_share`` of the limit, so N workers failing open admit at most N times that
  share, never an unbounded flood.
- :class:`Spool`: settles, releases and usage records that could not be written, kept in
  order (at most ``spool_max``; when full the oldest is dropped, counted and logged) and
  replayed when the breaker closes or on ``flush_spool()``. Each carries its idempotency key
  (the reservation's token, the request id; ``record_usage`` without one gets one generated
  for its replays), so a replay that Redis already has changes nothing: nothing doubled.

:class:`Faults` ties them to one client and applies the :class:`FaultPolicy` as wrappers around
the operations' flows (:meth:`Faults.admitting`, :meth:`Faults.spooling`,
:meth:`Faults.replay`), written once for both clients. Its counters are ``reg.faults``
(:class:`FaultStats`) and Prometheus series (:class:`FaultCollector`, registered on
prometheus_client's default registry)::

    registry_fault_admits_total{namespace}      counter  admitted by the local emergency cap (fail open)
    registry_fault_denials_total{namespace}     counter  refused by the local emergency cap
    registry_fault_refusals_total{namespace}    counter  raised BackendUnavailable (fail closed)
    registry_breaker_opens_total{namespace}     counter  closed -> open (any breaker of a client)
    registry_breaker_closes_total{namespace}    counter  back to closed
    registry_breaker_open{namespace}            gauge    clients with a breaker open or half-open
    registry_breaker_node_open{namespace,node}  gauge    cluster clients whose breaker of that node
                                                         ("*": requests spanning nodes) is not closed
    registry_spool_spooled_total{namespace}     counter  usage operations put in the spool
    registry_spool_replayed_total{namespace}    counter  replayed to Redis
    registry_spool_dropped_total{namespace}     counter  dropped: spool full, refused on replay, or lost at close
    registry_spool_depth{namespace}             gauge    waiting in the spool now

Limits of what a worker alone can know: a request admitted blind holds nothing in Redis (its
settle records the usage in the ledger, not in the windows or the budgets); replayed usage lands
in the ledger's minute/hour/day buckets of when it is replayed; a settle replayed after its
reservation's hour records nothing (as any late settle). A ``record_usage`` without a
``request_id`` whose first send timed out *after* Redis applied it is counted again by its
replay (nothing tells the two apart): pass a ``request_id`` for exactly once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Literal, TypeVar

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, CollectorRegistry

from registry._core import Flow, Guard, Request
from registry.admission.types import Decision, LimitSpec, Reservation
from registry.breakers import WIDE, CircuitBreaker, NodeBreakers, State, describe, worst
from registry.errors import BackendUnavailable, ConfigError, RegistryError, RequestTooLargeError

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_SOCKET_TIMEOUT",
    "CircuitBreaker",
    "FaultCollector",
    "FaultPolicy",
    "FaultStats",
    "Faults",
    "LocalWindows",
    "Spool",
    "with_timeouts",
]

log = logging.getLogger("registry")
T = TypeVar("T")
# CircuitBreaker lives in registry.breakers; it is imported and exported here too, where it was.

# Defaults of from_url: a dead server is noticed in half a second, a hung one in two (above
# the events follower's one-second blocking XREAD, which must not time out).
DEFAULT_SOCKET_TIMEOUT = 2.0
DEFAULT_CONNECT_TIMEOUT = 0.5
DEGRADED_TTL_MS = 86_400_000  # a blind admission may be settled for a day (as a usage record's id)
_DROP_LOG_EVERY = 1_000


def with_timeouts(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the default socket timeouts where the caller set none (a URL's query
    still wins: redis-py lets it override keyword options)."""
    options.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
    options.setdefault("socket_connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    return options


@dataclass(frozen=True, slots=True)
class FaultPolicy:
    """What each kind of operation does while Redis is unavailable.

    - ``admission``: ``"closed"`` (default) acquire, admit, route and check_rate_limit raise
      :class:`BackendUnavailable`; ``"open"`` they decide from this worker's local emergency
      cap (a :class:`Decision` with ``degraded=True``, allowed or refused with a
      ``retry_after`` from the local window).
    - ``budgets``: ``"closed"`` (default) a request of a tenant with budgets is never admitted
      blind, even when admission fails open; ``"open"`` it is, within the emergency cap.
    - ``usage``: ``"spool"`` (default) settle, release and record_usage keep the operation in
      the local spool and return as if written (settle/release ``True``: accepted;
      record_usage the :class:`UsageRecord` priced locally); ``"raise"`` they raise.
    - ``emergency_share``: the fraction of each limit (model and tenant; RPM, TPM, ITPM, OTPM,
      RPD) that one worker may admit on its own while failing open (rounded down: 0.1 of 25
      RPM is 2).
    - ``failures_to_open``, ``open_seconds``: the circuit breaker (see :class:`CircuitBreaker`;
      on a cluster, of each primary).
    - ``spool_max``: records kept at most; when full the oldest is dropped (counted, logged).
    """

    admission: Literal["closed", "open"] = "closed"
    budgets: Literal["closed", "open"] = "closed"
    usage: Literal["spool", "raise"] = "spool"
    emergency_share: float = 0.1
    failures_to_open: int = 3
    open_seconds: float = 1.0
    spool_max: int = 10_000

    def __post_init__(self) -> None:
        for name, allowed in (("admission", ("closed", "open")), ("budgets", ("closed", "open"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"fault policy: {name} must be 'closed' or 'open', got {getattr(self, name)!r}")
        if self.usage not in ("spool", "raise"):
            raise ConfigError(f"fault policy: usage must be 'spool' or 'raise', got {self.usage!r}")
        share = self.emergency_share
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
            raise ConfigError(f"fault policy: emergency_share must be a fraction from 0 to 1, got {share!r}")
        if not _whole(self.failures_to_open, 1):
            raise ConfigError(f"fault policy: failures_to_open must be an integer >= 1, got {self.failures_to_open!r}")
        seconds = self.open_seconds
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= 3600:
            raise ConfigError(f"fault policy: open_seconds must be from 0 (excluded) to 3600, got {seconds!r}")
        if not _whole(self.spool_max, 1):
            raise ConfigError(f"fault policy: spool_max must be an integer >= 1, got {self.spool_max!r}")


def _whole(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


# -- the local emergency cap ----------------------------------------------------------------------


class LocalWindows:
    """Exact sliding windows, in this process, of ``share`` of each limit.

    Each window is a log of (time, amount) admitted within it, so a denial's ``retry_after`` is
    exact (when enough of the log leaves the window). One lock for all: the section is short
    and holds no I/O, so it serves threads and an event loop alike.
    """

    def __init__(self, share: float, clock_ms: Callable[[], int]) -> None:
        self._share = Decimal(str(share))
        self._clock_ms = clock_ms
        self._lock = threading.Lock()
        self._logs: dict[tuple[str, str, str | None], deque[tuple[int, int]]] = {}
        self._used: dict[tuple[str, str, str | None], int] = {}
        self.admits = 0
        self.denials = 0

    def cap(self, limit: int) -> int:
        """What one worker may admit of ``limit`` on its own (rounded down)."""
        return int(self._share * limit)

    def take(
        self, model_key: str, limits: Sequence[LimitSpec], costs: Sequence[int], *, consume: bool = True
    ) -> tuple[str | None, float | None]:
        """(None, 0.0) and the costs charged to every window, or (the limit that refuses, the
        seconds until it would fit, None: never, within the cap). Charges all or none."""
        now = self._clock_ms()
        with self._lock:
            refused: str | None = None
            wait_ms: int | None = 0
            for spec, cost in zip(limits, costs, strict=True):
                key = (model_key, spec.name, spec.tenant)
                entries = self._logs.get(key)
                used = self._used.get(key, 0)
                if entries:
                    while entries and entries[0][0] <= now - spec.window_ms:
                        used -= entries.popleft()[1]
                    self._used[key] = used
                cap = self.cap(spec.limit)
                if used + cost <= cap:
                    continue
                wait = None if cost > cap else _wait_ms(entries or (), used + cost - cap, now, spec.window_ms)
                if refused is None or wait is None or (wait_ms is not None and wait > wait_ms):
                    refused, wait_ms = spec.name, wait
            if refused is not None:
                if consume:
                    self.denials += 1
                return refused, None if wait_ms is None else wait_ms / 1000
            if consume:
                for spec, cost in zip(limits, costs, strict=True):
                    key = (model_key, spec.name, spec.tenant)
                    self._logs.setdefault(key, deque()).append((now, cost))
                    self._used[key] = self._used.get(key, 0) + cost
                self.admits += 1
            return None, 0.0


def _wait_ms(entries: Iterable[tuple[int, int]], excess: int, now: int, window: int) -> int:
    """How long until the oldest entries that add up to ``excess`` have left the window (they
    do add up to it: the caller checked that the request alone fits in the cap)."""
    freed = 0
    for at, amount in entries:
        freed += amount
        if freed >= excess:
            return at + window - now
    return window  # pragma: no cover - unreachable, see above


# -- the spool ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spooled:
    """One usage operation waiting for Redis: its kind, its idempotency key, and how to send it."""

    kind: str  # "settle", "release" or "record_usage"
    key: str  # the reservation's token, or the request id
    make: Callable[[], Flow[Any]]  # a fresh flow of the operation, built at replay time


class Spool:
    """A bounded FIFO of :class:`Spooled` operations (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: deque[Spooled] = deque()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Spooled) -> Spooled | None:
        """Append ``item``; returns the oldest one, dropped to make room, if the spool was full."""
        with self._lock:
            dropped = self._items.popleft() if len(self._items) >= self.limit else None
            self._items.append(item)
            return dropped

    def take(self) -> Spooled | None:
        with self._lock:
            return self._items.popleft() if self._items else None

    def put_back(self, item: Spooled) -> bool:
        """Return a taken ``item`` to the front (False: the spool filled up meanwhile, it is dropped)."""
        with self._lock:
            if len(self._items) >= self.limit:
                return False
            self._items.appendleft(item)
            return True


# -- one client's fault handling ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FaultStats:
    """A snapshot of one client's fault handling (``reg.faults``).

    On a cluster client, whose breakers are one per primary (see :mod:`registry.breakers`),
    ``breakers`` maps each node's ``host:port`` (and ``"*"``, requests spanning several nodes)
    to its state, ``breaker`` is the most open of them (``"open"`` while any node's is: some
    requests are refused), ``consecutive_failures`` the most of any, and the opens and closes
    are summed. A single-Redis client has one breaker: ``breakers`` is empty.
    """

    breaker: State
    consecutive_failures: int
    breaker_opens: int
    breaker_closes: int
    fail_open_admits: int
    fail_open_denials: int
    fail_closed_refusals: int
    spooled: int
    replayed: int
    dropped: int
    spool_depth: int
    breakers: Mapping[str, State] = field(default_factory=lambda: MappingProxyType({}))


class Faults:
    """The :class:`FaultPolicy` of one client, with its breakers, local windows, spool and counters.

    ``clock`` (seconds, monotonic) drives the breakers and the windows; ``on_close`` is the
    client's hook to replay the spool when Redis answers again (a thread or a task).

    Without ``node_of`` (a single Redis) one breaker guards every request: ``guard`` is it and
    ``guard_for`` is None. With ``node_of`` (a cluster: the ``host:port`` of the primary serving
    a request's slot, None if no single node does) ``guard_for`` is a
    :class:`~registry.breakers.NodeBreakers` and ``guard`` is None; ``breaker`` is then the
    breaker of the requests spanning several nodes. The clients pass both to the flow driver.
    """

    def __init__(
        self,
        policy: FaultPolicy,
        *,
        namespace: str,
        clock: Callable[[], float],
        on_close: Callable[[], None],
        node_of: Callable[[Request], str | None] | None = None,
    ) -> None:
        if not isinstance(policy, FaultPolicy):
            raise ConfigError(f"fault_policy must be a FaultPolicy, got {type(policy).__name__}")
        self.policy = policy
        self.namespace = namespace
        self._clock = clock
        self.nodes: NodeBreakers | None = None
        if node_of is None:
            self.breaker = self._breaker("")
        else:
            self.nodes = NodeBreakers(self._breaker, node_of)
            self.breaker = self.nodes.wide
        self.guard: Guard | None = self.breaker if self.nodes is None else None
        self.guard_for: Callable[[Request], Guard | None] | None = self.nodes
        self.windows = LocalWindows(policy.emergency_share, lambda: int(clock() * 1000))
        self.spool = Spool(policy.spool_max)
        self._on_close = on_close
        self._lock = threading.Lock()
        self.refusals = 0
        self.spooled = 0
        self.replayed = 0
        self.dropped = 0
        _live.add(self)
        _ensure_collector()

    def _breaker(self, node: str) -> CircuitBreaker:
        """A breaker of the policy's settings guarding ``node`` ("" on a single Redis)."""
        return CircuitBreaker(
            self.policy.failures_to_open,
            self.policy.open_seconds,
            clock=self._clock,
            on_open=lambda failures: self._opened(failures, node),
            on_close=lambda down: self._closed(down, node),
            node=node,
        )

    def breakers(self) -> list[CircuitBreaker]:
        """This client's breakers: the one, or on a cluster each node's made so far and ``"*"``."""
        return [self.breaker] if self.nodes is None else self.nodes.all()

    def stats(self) -> FaultStats:
        breakers = self.breakers()
        states = [b.state for b in breakers]
        return FaultStats(
            breaker=worst(states),
            consecutive_failures=max(b.failures for b in breakers),
            breaker_opens=sum(b.opens for b in breakers),
            breaker_closes=sum(b.closes for b in breakers),
            fail_open_admits=self.windows.admits,
            fail_open_denials=self.windows.denials,
            fail_closed_refusals=self.refusals,
            spooled=self.spooled,
            replayed=self.replayed,
            dropped=self.dropped,
            spool_depth=len(self.spool),
            breakers=MappingProxyType(
                {} if self.nodes is None else {b.node: st for b, st in zip(breakers, states, strict=True)}
            ),
        )

    # -- the breakers' transitions, logged ----------------------------------------------------

    def _opened(self, failures: int, node: str) -> None:
        policy = self.policy
        log.warning(
            "%s unavailable (%d failures in a row): circuit open, %s fail at once for %.3gs; "
            "admission fails %s, budgets %s, usage %s [namespace %s]",
            describe(node),
            failures,
            "calls" if not node else "its calls (other nodes' go on)" if node != WIDE else "those calls",
            policy.open_seconds,
            policy.admission,
            policy.budgets,
            "spooled" if policy.usage == "spool" else "raises",
            self.namespace,
        )

    def _closed(self, down_seconds: float, node: str) -> None:
        log.info(
            "%s answers again after %.3fs: circuit closed; %d spooled usage records to replay [namespace %s]",
            describe(node),
            down_seconds,
            len(self.spool),
            self.namespace,
        )
        if len(self.spool):  # in order, all nodes' records: one for a node still down stops it
            self._on_close()

    @staticmethod
    @contextlib.contextmanager
    def stale_ok(snapshot: object | None) -> Iterator[None]:
        """Around a catalog refresh: while Redis is unavailable, a client that has a local copy
        (``snapshot``) keeps serving it (reads, and admission under ``admission="open"``)."""
        try:
            yield
        except BackendUnavailable:
            if snapshot is None:
                raise

    # -- admission ----------------------------------------------------------------------------

    def admitting(
        self,
        flow: Flow[Decision],
        model_key: str,
        limits: Sequence[LimitSpec],
        costs: Callable[[int, int], list[int]],
        *,
        input_tokens: int,
        max_output_tokens: int | None,
        default_output: int,
        tenant: str | None,
        request_id: str | None,
        mode: str,
        budgeted: bool,
        now_ms: Callable[[], int],
    ) -> Flow[Decision]:
        """``flow`` (an acquire), decided locally by the policy if Redis is unavailable."""
        try:
            return (yield from flow)
        except BackendUnavailable:
            policy = self.policy
            if policy.admission == "closed" or (budgeted and policy.budgets == "closed"):
                if mode != "peek":
                    with self._lock:
                        self.refusals += 1
                raise
        # Past here the flow has validated the arguments (it reached Redis before failing).
        output = default_output if max_output_tokens is None else max_output_tokens
        charged = costs(input_tokens, output)
        for spec, cost in zip(limits, charged, strict=True):
            if cost > spec.limit:
                raise RequestTooLargeError(model_key, spec.name, cost, spec.limit)
        refused, wait = self.windows.take(model_key, limits, charged, consume=mode != "peek")
        retry_after = self.policy.open_seconds if wait is None else wait
        if refused is not None and mode != "shadow":
            return Decision(False, retry_after, refused, degraded=True)
        if mode == "peek":
            return Decision(True, degraded=True)
        token = Reservation.new_id()
        at = now_ms()
        held = Reservation(
            model_key, request_id or token, tenant, input_tokens, output, token, at_ms=at, ttl_ms=DEGRADED_TTL_MS
        )
        return Decision(True, 0.0, None, MappingProxyType({}), held, would_deny=refused, degraded=True)

    # -- usage: spool and replay ------------------------------------------------------------

    def spooling(
        self, kind: str, key: str, first: Flow[T], again: Callable[[], Flow[Any]], local: Callable[[], T]
    ) -> Flow[T]:
        """``first``; if Redis is unavailable, spool ``again`` (the same operation, idempotent by
        ``key``) and return ``local()``. With ``usage="raise"``, just ``first``."""
        if self.policy.usage != "spool":
            return first
        return self._spooling(kind, key, first, again, local)

    def _spooling(
        self, kind: str, key: str, first: Flow[T], again: Callable[[], Flow[Any]], local: Callable[[], T]
    ) -> Flow[T]:
        try:
            return (yield from first)
        except BackendUnavailable:
            pass
        result = local()  # before spooling: a local failure must not leave a record behind
        self._spool(Spooled(kind, key, again))
        return result

    def _spool(self, item: Spooled) -> None:
        dropped = self.spool.put(item)
        with self._lock:
            self.spooled += 1
        if dropped is not None:
            self._drop(dropped, f"the spool is full ({self.spool.limit} records)")

    def _drop(self, item: Spooled, why: str) -> None:
        with self._lock:
            self.dropped += 1
            count = self.dropped
        if count == 1 or count % _DROP_LOG_EVERY == 0:
            log.warning(
                "usage spool: dropped %s %s: %s (%d dropped so far) [namespace %s]",
                item.kind,
                item.key,
                why,
                count,
                self.namespace,
            )

    def replay(self) -> Flow[int]:
        """Send the spooled operations in order; stop at the first unavailable error (it and the
        rest stay). One that Redis refuses for good (a bad argument, a full ledger) is dropped.
        Returns how many were replayed."""
        done = 0
        while (item := self.spool.take()) is not None:
            try:
                yield from item.make()
            except BackendUnavailable:
                if not self.spool.put_back(item):
                    self._drop(item, "the spool filled up during the replay")
                break
            except RegistryError as exc:
                self._drop(item, f"refused on replay: {exc}")
                continue
            except BaseException:  # cancelled, interrupted: keep it for the next replay
                if not self.spool.put_back(item):
                    self._drop(item, "the spool filled up during the replay")
                raise
            done += 1
            with self._lock:
                self.replayed += 1
        return done

    def lost_at_close(self) -> None:
        """The client closes with records it could not write: count and log them as dropped."""
        left = 0
        while self.spool.take() is not None:
            left += 1
        if left:
            with self._lock:
                self.dropped += left
            log.warning(
                "closing with %d spooled usage records Redis never received: they are lost [namespace %s]",
                left,
                self.namespace,
            )


# -- Prometheus -----------------------------------------------------------------------------------

_live: weakref.WeakSet[Faults] = weakref.WeakSet()
_collector_lock = threading.Lock()
_registered: list[CollectorRegistry] = []

_COUNTERS = (
    (
        "registry_fault_admits",
        "Requests admitted by a worker's local emergency cap while Redis was unavailable.",
        "fail_open_admits",
    ),
    (
        "registry_fault_denials",
        "Requests refused by a worker's local emergency cap while Redis was unavailable.",
        "fail_open_denials",
    ),
    (
        "registry_fault_refusals",
        "Admissions that raised BackendUnavailable under a fail-closed policy.",
        "fail_closed_refusals",
    ),
    ("registry_breaker_opens", "Times a client's circuit breaker (of a cluster node) opened.", "breaker_opens"),
    ("registry_breaker_closes", "Times a client's circuit breaker (of a cluster node) closed again.", "breaker_closes"),
    ("registry_spool_spooled", "Usage operations spooled while Redis was unavailable.", "spooled"),
    ("registry_spool_replayed", "Spooled usage operations replayed to Redis.", "replayed"),
    (
        "registry_spool_dropped",
        "Spooled usage operations dropped (spool full, refused on replay, lost at close).",
        "dropped",
    ),
)


class FaultCollector:
    """The fault counters of every live client of this process, summed per namespace."""

    def collect(self) -> Iterator[Metric]:
        totals: dict[str, dict[str, int]] = {}
        nodes: dict[tuple[str, str], int] = {}
        for faults in list(_live):
            stats = faults.stats()
            into = totals.setdefault(faults.namespace, {})
            for _, _, name in _COUNTERS:
                into[name] = into.get(name, 0) + getattr(stats, name)
            into["open"] = into.get("open", 0) + (stats.breaker != "closed")
            into["depth"] = into.get("depth", 0) + stats.spool_depth
            for node, state in stats.breakers.items():
                nodes[faults.namespace, node] = nodes.get((faults.namespace, node), 0) + (state != "closed")
        for name, doc, key in _COUNTERS:
            counter = CounterMetricFamily(name, doc, labels=["namespace"])
            for namespace, values in sorted(totals.items()):
                counter.add_metric([namespace], values[key])
            yield counter
        for name, doc, key in (
            ("registry_breaker_open", "Clients with a circuit breaker open or half-open.", "open"),
            ("registry_spool_depth", "Usage operations waiting in the spool.", "depth"),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["namespace"])
            for namespace, values in sorted(totals.items()):
                gauge.add_metric([namespace], values[key])
            yield gauge
        gauge = GaugeMetricFamily(
            "registry_breaker_node_open",
            'Cluster clients whose circuit breaker of this node is open or half-open ("*": requests spanning nodes).',
            labels=["namespace", "node"],
        )
        for (namespace, node), count in sorted(nodes.items()):
            gauge.add_metric([namespace, node], count)
        yield gauge


def _ensure_collector(registry: CollectorRegistry = REGISTRY) -> None:
    """Register one :class:`FaultCollector` on ``registry``, once per process (the first client)."""
    with _collector_lock:
        if registry in _registered:
            return
        try:
            registry.register(FaultCollector())
        except ValueError:  # the names are taken (this module loaded twice): the first one serves
            log.debug("registry fault metrics already registered")
        _registered.append(registry)
