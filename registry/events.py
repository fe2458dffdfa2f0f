"""Events: what the catalog, the ledger and the budgets write to their capped Redis Streams.

Each event is written by the same Lua script as the change it describes, so a reader never
sees an event for a change that did not happen, nor a change without its event::

    {ns:catalog}:events        catalog.changed   entry id <revision>-0; fields put, deleted
    {ns:adm:<model>}:events    usage.recorded    one per model; sampled (usage_event_rate)
    {ns:bud:<tenant>}:events   budget.threshold  one per tenant with budgets

This module does no I/O: it parses entries into :class:`Event`, lists the streams a snapshot
of the catalog calls for, and keeps a :class:`Follower`'s state (the position in each stream,
the callbacks by event type) as flows (see :mod:`registry._core`). The clients' ``on()`` and
``events()`` drive those flows; only their reading loops are twinned.

Where a subscription starts: at the last entry of each stream at the time of ``on()``
(XREVRANGE ... COUNT 1, never ``$``: a ``$`` sent again on every XREAD loses what was written
between two calls), and after the first read at the last id seen. A stream that appears later
(a new model, a new budgeted tenant) starts at the server time of the subscription, so events
written on it since are delivered and older ones are not.

On a Redis Cluster the followed streams carry one hash tag per model and per tenant, so one
XREAD cannot read them all (CROSSSLOT): the follower splits it into one XREAD per slot and
polls them (a BLOCK becomes a 100 ms poll), see :func:`registry._base.cluster_commands`.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from registry._core import Commands, Flow, text
from registry._core import fields as _fields
from registry.catalog import ops
from registry.catalog.snapshot import Snapshot
from registry.errors import ConfigError
from registry.keys import Keys
from registry.ledger.money import from_units
from registry.ledger.ops import COUNTERS

__all__ = [
    "ANY",
    "BUDGET_THRESHOLD",
    "CATALOG_CHANGED",
    "EVENT_TYPES",
    "USAGE_RECORDED",
    "Event",
    "Follower",
    "Subscription",
    "check_event_type",
    "event_types",
    "latest_ids",
    "merge_events",
    "parse_budget",
    "parse_catalog",
    "parse_entry",
    "parse_usage",
    "read_events",
    "recent_events",
    "source_of",
    "stream_keys",
]

CATALOG_CHANGED = "catalog.changed"
USAGE_RECORDED = "usage.recorded"
BUDGET_THRESHOLD = "budget.threshold"
EVENT_TYPES = (CATALOG_CHANGED, USAGE_RECORDED, BUDGET_THRESHOLD)
ANY = "*"

FOLLOW_BLOCK_MS = 1_000  # how long one XREAD waits: close() stops a follower within about this
FOLLOW_COUNT = 100  # entries per stream per read
MAX_LAST = 10_000

_MAX_SEQ = 2**64 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LAST = datetime.max.replace(tzinfo=UTC)
_ID = re.compile(r"^(\d{1,20})(?:-(\d{1,20}))?$")
# Present in every usage.recorded event's data, 0 when the entry leaves them out (the scripts
# write a counter only when it is not 0; entries from before throttled and the cache counters).
_USAGE_COUNTERS = COUNTERS
_BUDGET_INTS = ("index", "threshold", "amount_units", "spent_units")

log = logging.getLogger("registry")

Entry = tuple[str, str, dict[str, str]]  # stream key, entry id, fields
Callback = Callable[["Event"], Any]


def check_event_type(event_type: Any) -> str:
    """``event_type`` if it is one of :data:`EVENT_TYPES` or ``"*"``; else :class:`ConfigError`."""
    if event_type == ANY or event_type in EVENT_TYPES:
        return str(event_type)
    raise ConfigError(f"event type {event_type!r}: expected one of {', '.join(EVENT_TYPES)} or '*'")


def event_types(selection: str | Iterable[str]) -> frozenset[str]:
    """The event types a selection names (``"*"`` is all of them), each checked."""
    if not isinstance(selection, str | Iterable) or isinstance(selection, bytes | Mapping):
        raise ConfigError(f"event type {selection!r}: expected a type, a list of types, or '*'")
    chosen = [selection] if isinstance(selection, str) else list(selection)
    if not chosen:
        raise ConfigError("choose at least one event type (or '*')")
    types = {check_event_type(t) for t in chosen}
    return frozenset(EVENT_TYPES) if ANY in types else frozenset(types)


@dataclass(frozen=True, slots=True)
class Event:
    """One stream entry, parsed.

    ``time`` is when the script wrote it (UTC, from the entry id's milliseconds); a catalog
    entry's id is its revision instead, so a ``catalog.changed`` event takes the time of the
    write from the catalog itself when that is known exactly (a model it put still carries
    that revision), else None. ``data`` holds the fields: integers for counters, ``cost`` (a
    usage record's) and ``amount``/``spent`` (a budget's) as exact Decimals of ``currency``,
    lists for a catalog change's ``put`` and ``deleted`` model keys and ``budgets_put`` and
    ``budgets_deleted`` tenants. A usage record always has ``requests``, ``successes``,
    ``failures``, ``throttled``, ``input_tokens``, ``cached_input_tokens``,
    ``cache_write_tokens``, ``output_tokens`` and ``cost_units`` (0 when not counted: the
    scripts write only the counters a request adds to).
    """

    type: str
    stream: str
    id: str
    time: datetime | None
    model: str | None = None
    tenant: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able document (``time`` in ISO 8601; Decimals left for the encoder)."""
        return {
            "type": self.type,
            "stream": self.stream,
            "id": self.id,
            "time": None if self.time is None else self.time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "model": self.model,
            "tenant": self.tenant,
            "data": self.data,
        }


# -- parsing --------------------------------------------------------------------------------------


def _id_parts(entry_id: str) -> tuple[int, int]:
    match = _ID.match(entry_id) if isinstance(entry_id, str) else None
    if match is None:
        raise ConfigError(f"stream id {entry_id!r}: expected <milliseconds>-<sequence>, e.g. 1700000000000-0")
    return int(match[1]), int(match[2] or 0)


def _time_of(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _int(value: str) -> int | str:
    try:
        return int(value)
    except ValueError:
        return value


def _lines(value: str | None) -> list[str]:
    return [line for line in (value or "").split("\n") if line]


def parse_catalog(stream: str, entry_id: str, fields: Mapping[str, str], snapshot: Snapshot | None = None) -> Event:
    """A ``catalog.changed`` event; ``snapshot`` (at or after it) supplies the time of the write."""
    revision = _id_parts(entry_id)[0]
    prefix = Keys.BUDGET_MEMBER_PREFIX
    data: dict[str, Any] = {"revision": revision}
    for name in ("put", "deleted"):
        members = _lines(fields.get(name))
        data[name] = [m for m in members if not m.startswith(prefix)]
        data[f"budgets_{name}"] = [m[len(prefix) :] for m in members if m.startswith(prefix)]
    when = _time_of(int(fields["ms"])) if fields.get("ms", "").isdigit() else None
    if when is None and snapshot is not None:  # an entry written before the stream kept times
        for key in data["put"]:
            row = snapshot.rows.get(key)
            if row is not None and row.entry.revision == revision and row.entry.updated_ms:
                when = _time_of(row.entry.updated_ms)
                break
    return Event(CATALOG_CHANGED, stream, entry_id, when, data=data)


def parse_usage(
    stream: str, entry_id: str, fields: Mapping[str, str], model: str, snapshot: Snapshot | None = None
) -> Event:
    """A ``usage.recorded`` event of ``model``; ``snapshot`` supplies the model's currency."""
    data: dict[str, Any] = dict.fromkeys(_USAGE_COUNTERS, 0)
    for name, value in fields.items():
        if name not in ("type", "tenant", "request_id"):
            data[name] = _int(value)
    data["request_id"] = fields.get("request_id") or None
    units = data["cost_units"]
    data["cost"] = from_units(units) if isinstance(units, int) else None
    row = None if snapshot is None else snapshot.rows.get(model)
    data["currency"] = None if row is None else row.model.cost.currency
    when = _time_of(_id_parts(entry_id)[0])
    tenant = fields.get("tenant") or None
    return Event(fields.get("type") or USAGE_RECORDED, stream, entry_id, when, model=model, tenant=tenant, data=data)


def parse_budget(stream: str, entry_id: str, fields: Mapping[str, str], tenant: str) -> Event:
    """A ``budget.threshold`` event of ``tenant``: ``amount`` and ``spent`` as exact Decimals."""
    data: dict[str, Any] = {name: value for name, value in fields.items() if name not in ("type", "tenant")}
    for name in _BUDGET_INTS:
        if name in data:
            data[name] = _int(data[name])
    for name in ("amount", "spent"):
        units = data.get(f"{name}_units")
        data[name] = from_units(units) if isinstance(units, int) else None
    when = _time_of(_id_parts(entry_id)[0])
    return Event(
        fields.get("type") or BUDGET_THRESHOLD, stream, entry_id, when, tenant=fields.get("tenant") or tenant, data=data
    )


def source_of(keys: Keys, stream: str) -> tuple[str, str | None] | None:
    """What a stream key holds: (event type, its model or tenant), or None if not ours.

    The inverse of :meth:`Keys.usage_events` and :meth:`Keys.budget_events` (names never
    contain braces, so the hash tag delimits them).
    """
    if stream == keys.events:
        return CATALOG_CHANGED, None
    for event_type, tag in ((USAGE_RECORDED, "adm"), (BUDGET_THRESHOLD, "bud")):
        head = f"{{{keys.namespace}:{tag}:"
        if stream.startswith(head) and stream.endswith("}:events") and len(stream) > len(head) + 8:
            return event_type, stream[len(head) : -len("}:events")]
    return None


def parse_entry(keys: Keys, stream: str, entry_id: str, fields: Mapping[str, str], snapshot: Snapshot | None) -> Event:
    """Any followed stream's entry, parsed by the kind of its stream."""
    source = source_of(keys, stream)
    if source is None:
        raise ConfigError(f"{stream!r} is not an events stream of namespace {keys.namespace!r}")
    kind, subject = source
    assert kind == CATALOG_CHANGED or subject is not None
    if kind == CATALOG_CHANGED:
        return parse_catalog(stream, entry_id, fields, snapshot)
    if kind == USAGE_RECORDED:
        return parse_usage(stream, entry_id, fields, subject or "", snapshot)
    return parse_budget(stream, entry_id, fields, subject or "")


def _budget_tenants(snapshot: Snapshot) -> Iterable[str]:
    # Budgets join the snapshot with the budgets work; until then there are none to follow.
    return getattr(snapshot, "budgets", {}) or {}


def stream_keys(keys: Keys, snapshot: Snapshot, types: Iterable[str]) -> list[str]:
    """The streams holding ``types`` of events for this catalog: the catalog's, every model's
    usage stream, every budgeted tenant's budget stream."""
    wanted = set(types)
    streams = [keys.events] if CATALOG_CHANGED in wanted else []
    if USAGE_RECORDED in wanted:
        streams += [keys.usage_events(model) for model in snapshot.rows]
    if BUDGET_THRESHOLD in wanted:
        streams += [keys.budget_events(tenant) for tenant in _budget_tenants(snapshot)]
    return streams


def merge_events(events: Iterable[Event]) -> list[Event]:
    """Events of several streams in the order they were written, oldest first.

    Times are the server's, to the millisecond; at the same millisecond a catalog change comes
    first (a usage record needs its model). A catalog event whose time is unknown is placed
    just before the next revision whose time is known (revisions follow time), or last.
    """
    events = list(events)
    latest = _LAST
    placed: dict[int, datetime] = {}
    catalog = sorted((e for e in events if e.type == CATALOG_CHANGED), key=lambda e: _id_parts(e.id), reverse=True)
    for event in catalog:
        if event.time is not None:
            latest = min(latest, event.time)
        placed[id(event)] = event.time or latest

    def order(e: Event) -> tuple[datetime, int, str, tuple[int, int]]:
        return (placed.get(id(e)) or e.time or _LAST, e.type != CATALOG_CHANGED, e.stream, _id_parts(e.id))

    return sorted(events, key=order)


# -- reading --------------------------------------------------------------------------------------


def _entries(raw: Any) -> list[tuple[str, dict[str, str]]]:
    return [(text(entry_id), _fields(raw_fields)) for entry_id, raw_fields in raw or []]


def _xread_streams(reply: Any) -> list[tuple[str, Any]]:
    """XREAD's reply as (stream, entries) pairs, whichever shape redis-py gave (RESP2 or 3)."""
    if not reply:
        return []
    pairs = reply.items() if isinstance(reply, Mapping) else reply
    out = []
    for stream, entries in pairs:
        if entries and len(entries) == 1 and entries[0] and isinstance(entries[0][0], list | tuple):
            entries = entries[0]  # RESP3 as redis-py's legacy callback wraps it: [[(id, fields), ...]]
        out.append((text(stream), entries))
    return out


def latest_ids(streams: Sequence[str]) -> Flow[tuple[dict[str, str], int]]:
    """The id of each stream's last entry now ("0-0" if empty or missing), and the server's ms."""
    replies = yield Commands((("TIME",), *(("XREVRANGE", s, "+", "-", "COUNT", 1) for s in streams)), transaction=False)
    seconds, micros = replies[0]
    last = {s: (_entries(reply)[0][0] if reply else "0-0") for s, reply in zip(streams, replies[1:], strict=True)}
    return last, int(seconds) * 1000 + int(micros) // 1000


def _xread(streams: Mapping[str, str], block_ms: int | None, count: int) -> tuple[Any, ...]:
    block = () if block_ms is None else ("BLOCK", int(block_ms))
    return ("XREAD", "COUNT", int(count), *block, "STREAMS", *streams, *streams.values())


def _advance(streams: dict[str, str], reply: Any) -> list[Entry]:
    out: list[Entry] = []
    for stream, raw in _xread_streams(reply):
        for entry_id, fields in _entries(raw):
            out.append((stream, entry_id, fields))
            streams[stream] = entry_id
    return out


def read_events(
    streams: dict[str, str], block_ms: int | None = FOLLOW_BLOCK_MS, count: int = FOLLOW_COUNT
) -> Flow[list[Entry]]:
    """One XREAD of ``streams`` (key -> last id seen) for the entries after those ids.

    Blocks up to ``block_ms`` when nothing is there yet (None: do not block). Advances
    ``streams`` in place to the last id read of each stream; returns (stream, id, fields).
    Sent as a pipeline without MULTI: a blocking command inside MULTI would not block.
    """
    if not streams:
        return []
    (reply,) = yield Commands((_xread(streams, block_ms, count),), transaction=False)
    return _advance(streams, reply)


def _after(since_id: str) -> str:
    """The smallest id after ``since_id`` (XRANGE's start is inclusive)."""
    ms, seq = _id_parts(since_id)
    return f"{ms}-{seq + 1}" if seq < _MAX_SEQ else f"{ms + 1}-0"


def recent_events(
    keys: Keys, snapshot: Snapshot, types: frozenset[str], *, last: int = 20, since_id: str | None = None
) -> Flow[list[Event]]:
    """The last ``last`` events of ``types``, oldest first; with ``since_id`` the first ``last``
    after that entry id (in every stream: usage and budget ids are server milliseconds, the
    catalog's are revisions).

    The streams read are those of the catalog as it is, and those of the models and tenants
    that the catalog changes in the same window deleted: their records outlive them.
    """
    if isinstance(last, bool) or not isinstance(last, int) or not 1 <= last <= MAX_LAST:
        raise ConfigError(f"last must be a whole number from 1 to {MAX_LAST}, got {last!r}")
    start = None if since_id is None else _after(since_id)

    def window(stream: str) -> tuple[Any, ...]:
        if start is None:
            return ("XREVRANGE", stream, "+", "-", "COUNT", last)
        return ("XRANGE", stream, start, "+", "COUNT", last)

    (raw,) = yield Commands((window(keys.events),), transaction=False)
    catalog = [parse_catalog(keys.events, entry_id, fields, snapshot) for entry_id, fields in _entries(raw)]
    streams = dict.fromkeys(s for s in stream_keys(keys, snapshot, types) if s != keys.events)
    for event in catalog:
        if USAGE_RECORDED in types:
            streams.update(dict.fromkeys(keys.usage_events(m) for m in event.data["deleted"]))
        if BUDGET_THRESHOLD in types:
            streams.update(dict.fromkeys(keys.budget_events(t) for t in event.data["budgets_deleted"]))
    replies = (yield Commands(tuple(map(window, streams)), transaction=False)) if streams else []
    events = catalog if CATALOG_CHANGED in types else []
    events += [
        parse_entry(keys, stream, entry_id, fields, snapshot)
        for stream, reply in zip(streams, replies, strict=True)
        for entry_id, fields in _entries(reply)
    ]
    merged = merge_events(events)
    return merged[-last:] if since_id is None else merged[:last]


# -- following ------------------------------------------------------------------------------------


class Subscription:
    """What ``on()`` returns: call it (or :meth:`cancel`) to stop the callback. Idempotent."""

    __slots__ = ("_follower", "_token", "callback", "event_type")

    def __init__(self, follower: Follower, token: int, event_type: str, callback: Callback) -> None:
        self._follower = follower
        self._token = token
        self.event_type = event_type
        self.callback = callback

    @property
    def active(self) -> bool:
        return self._follower._active(self._token)

    def cancel(self) -> bool:
        """Unsubscribe; False if it was already."""
        return self._follower._remove(self._token)

    def __call__(self) -> bool:
        return self.cancel()

    def __repr__(self) -> str:
        return f"<Subscription {self.event_type} {self.callback!r}{'' if self.active else ' (cancelled)'}>"


def _later(a: str, b: str) -> bool:
    return _id_parts(a) > _id_parts(b)


class Follower:
    """One client's subscriptions and where it is in each stream; no I/O.

    The client drives :meth:`subscribe` (from ``on()``) and :meth:`poll` (from its follower
    thread or task) with its own I/O, and hands each event to :meth:`deliver`. The catalog
    stream is always read, whatever the types followed: a catalog change refreshes the
    follower's own copy of the catalog and re-lists the streams (new models, new tenants).
    Safe to use from two threads: state changes under a lock, never across a yield.
    """

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.snapshot: Snapshot | None = None
        self.positions: dict[str, str] = {}  # stream -> last id seen
        self._since_ms: dict[str, int] = {}  # event type -> server ms at its first subscription
        self._callbacks: dict[int, tuple[str, Callback]] = {}
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()

    # -- subscriptions (caller's thread) --

    def _types_locked(self) -> frozenset[str]:
        return frozenset().union(*(event_types(t) for t, _ in self._callbacks.values()))

    def subscribe(self, event_type: str, callback: Callback, snapshot: Snapshot) -> Flow[Subscription]:
        """Register ``callback`` for events of ``event_type`` written from now on."""
        event_type = check_event_type(event_type)
        if not callable(callback):
            raise ConfigError(f"callback must be callable, got {type(callback).__name__}")
        with self._lock:
            fresh = event_types(event_type) - self._types_locked()
            catalog_known = self.keys.events in self.positions
        catalog_pos: dict[str, str] = {}
        if not catalog_known:  # the first subscription: where the catalog is now, then its models
            catalog_pos, _ = yield from latest_ids([self.keys.events])
        self._adopt((yield from ops.refresh(self.keys, self.snapshot or snapshot)))
        assert self.snapshot is not None
        streams = [s for s in stream_keys(self.keys, self.snapshot, fresh) if s != self.keys.events]
        last, now_ms = yield from latest_ids(streams)
        with self._lock:
            for stream, entry_id in {**catalog_pos, **last}.items():
                self.positions.setdefault(stream, entry_id)
            for t in fresh:
                self._since_ms.setdefault(t, now_ms)
            token = next(self._tokens)
            self._callbacks[token] = (event_type, callback)
            self._relist_locked()
        return Subscription(self, token, event_type, callback)

    def _active(self, token: int) -> bool:
        with self._lock:
            return token in self._callbacks

    def _remove(self, token: int) -> bool:
        with self._lock:
            if self._callbacks.pop(token, None) is None:
                return False
            types = self._types_locked()
            for t in list(self._since_ms):
                if t not in types:
                    del self._since_ms[t]  # subscribed again later: "from then on", not from before
            self._relist_locked()
            return True

    @property
    def subscribed(self) -> bool:
        with self._lock:
            return bool(self._callbacks)

    # -- streams --

    def _adopt(self, snapshot: Snapshot) -> None:
        with self._lock:
            self._adopt_locked(snapshot)

    def _adopt_locked(self, snapshot: Snapshot) -> None:
        old = self.snapshot
        if old is None or snapshot.epoch != old.epoch or snapshot.revision >= old.revision:
            self.snapshot = snapshot
            if old is None or snapshot is not old:
                self._relist_locked()

    def _relist_locked(self) -> None:
        """Follow exactly the streams the catalog and the subscribed types call for."""
        if self.snapshot is None or self.keys.events not in self.positions:
            return
        types = self._types_locked() - {CATALOG_CHANGED}
        wanted = {self.keys.events, *stream_keys(self.keys, self.snapshot, types)}
        for stream in wanted - self.positions.keys():
            source = source_of(self.keys, stream)
            assert source is not None
            since = self._since_ms.get(source[0])
            if since is not None:  # a stream new since the subscription: everything written since
                self.positions[stream] = f"{since - 1}-{_MAX_SEQ}" if since > 0 else "0-0"
        for stream in self.positions.keys() - wanted:
            del self.positions[stream]

    # -- reading (the follower's thread or task) --

    def poll(self, block_ms: int | None = FOLLOW_BLOCK_MS, count: int = FOLLOW_COUNT) -> Flow[list[Event]]:
        """Wait up to ``block_ms`` for entries and return them as events, oldest first.

        Positions move on only once the whole batch is parsed, so a failure re-reads it. The
        catalog's epoch is read in the same round trip: after a wipe (a Redis restarted
        without persistence) the catalog stream is read again from its start.
        """
        with self._lock:
            streams = dict(self.positions)
            snapshot = self.snapshot
        catalog = self.keys.events
        meta, reply = yield Commands(
            (("HMGET", self.keys.meta, "revision", "epoch"), _xread(streams, block_ms, count)), transaction=False
        )
        entries = _advance(streams, reply)
        epoch = "" if meta[1] is None else text(meta[1])
        wiped = snapshot is not None and epoch != snapshot.epoch
        if wiped:  # the catalog was wiped and written anew: its revisions (entry ids) start over
            entries = [entry for entry in entries if entry[0] != catalog]
            streams[catalog] = "0-0"
        if wiped or any(stream == catalog for stream, _, _ in entries):
            snapshot = yield from ops.refresh(self.keys, snapshot)
        events = merge_events(parse_entry(self.keys, s, i, f, snapshot) for s, i, f in entries)
        with self._lock:
            for stream, entry_id in streams.items():
                current = self.positions.get(stream)
                if current is not None and (_later(entry_id, current) or (wiped and stream == catalog)):
                    self.positions[stream] = entry_id
            if snapshot is not None:
                self._adopt_locked(snapshot)
        return events

    def callbacks_for(self, event: Event) -> list[Callback]:
        """The callbacks subscribed to this event's type (or to every type), in order."""
        with self._lock:
            return [cb for t, cb in self._callbacks.values() if t == ANY or t == event.type]

    def deliver(self, event: Event) -> None:
        """Call each callback with ``event``; one that raises is logged and the rest still run."""
        for callback in self.callbacks_for(event):
            try:
                callback(event)
            except Exception:
                _log_failure(callback, event)

    async def adeliver(self, event: Event) -> None:
        """:meth:`deliver` for asyncio: a callback may be a coroutine function (awaited)."""
        for callback in self.callbacks_for(event):
            try:
                result = callback(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                _log_failure(callback, event)


def _log_failure(callback: Callback, event: Event) -> None:
    log.exception("event callback %r failed on %s %s", callback, event.type, event.id)
