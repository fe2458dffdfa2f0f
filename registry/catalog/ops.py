"""Catalog operations as flows (see :mod:`registry._core`): writes, snapshot loads, refreshes.

Consistency model: every write is one Lua script that changes the model hashes, the models
index, the revision counter and the events stream together and publishes the new revision.
A reader's snapshot is at some revision R; it catches up by reading the events after R and
re-reading the hashes they name, or, when the stream no longer reaches back to R (capped),
by loading everything again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from pydantic import ValidationError

from registry._core import Commands, Flow, Script, text, validation_error
from registry._core import fields as _fields
from registry.budgets.types import Budget, decode_budgets
from registry.catalog.codec import CatalogEntry, decode_entry, encode_fields_json
from registry.catalog.snapshot import Snapshot
from registry.errors import (
    ConfigError,
    ModelExistsError,
    ModelNotFoundError,
    RevisionConflictError,
    ScriptError,
)
from registry.keys import Keys
from registry.models import ModelSpec, parse_model_key

__all__ = [
    "Write",
    "coerce_model",
    "fetch_entry",
    "load_snapshot",
    "merge_changes",
    "refresh",
    "update",
    "write",
]

EVENTS_CAP = 10_000
MAX_EVENTS_PER_REFRESH = 1_000
_FULL_LOAD_ATTEMPTS = 5
_UPDATE_ATTEMPTS = 10
_MERGED = ("cost", "rate_limit", "metadata")


@dataclass(frozen=True, slots=True)
class Write:
    """One model write of a batch; ``expected`` is a revision to compare and set (0: absent)."""

    op: Literal["create", "put", "delete"]
    key: str  # a model key, or a tenant's budgets (Keys.budget_member)
    expected: int | None = None
    model: ModelSpec | None = None
    fields: Mapping[str, str] | None = None  # the hash of an item that is not a model


def coerce_model(value: ModelSpec | Mapping[str, Any], *, where: str = "") -> ModelSpec:
    """A :class:`ModelSpec` from itself or from a plain mapping of the same fields."""
    if isinstance(value, ModelSpec):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{where + ': ' if where else ''}expected a ModelSpec or a mapping, got {type(value).__name__}"
        )
    try:
        return ModelSpec.model_validate(dict(value))
    except ValidationError as exc:
        label = f"{value.get('provider', '?')}:{value.get('id', '?')}"
        raise validation_error(exc, where=where or label) from None


def merge_changes(model: ModelSpec, changes: ModelSpec | Mapping[str, Any]) -> ModelSpec:
    """``model`` with ``changes`` applied; ``cost``, ``rate_limit`` and ``metadata`` merge by field."""
    if isinstance(changes, ModelSpec):
        merged = changes
    elif isinstance(changes, Mapping):
        data = model.model_dump()
        for name, value in changes.items():
            if name in _MERGED and isinstance(value, Mapping) and isinstance(data.get(name), dict):
                data[name] = {**data[name], **value}
            else:
                data[name] = value
        merged = coerce_model(data, where=model.key)
    else:
        raise ConfigError(f"changes must be a mapping or a ModelSpec, got {type(changes).__name__}")
    if merged.key != model.key:
        raise ConfigError(f"an update cannot change a model's key ({model.key} -> {merged.key})")
    return merged


def write(keys: Keys, writes: Sequence[Write], *, events_cap: int = EVENTS_CAP) -> Flow[int]:
    """Apply ``writes`` atomically; returns the new catalog revision."""
    if not writes:
        raise ConfigError("nothing to write")
    seen: set[str] = set()
    args: list[str | int] = [events_cap, keys.changes_channel, len(writes)]
    for w in writes:
        if not w.key.startswith(Keys.BUDGET_MEMBER_PREFIX):
            parse_model_key(w.key)
        if w.expected is not None and (type(w.expected) is not int or w.expected < 0):
            raise ConfigError(f"expected_revision must be None or an integer >= 0, got {w.expected!r}")
        if w.key in seen:
            raise ConfigError(f"the batch writes {w.key} twice")
        seen.add(w.key)
        if w.model is not None:
            body = encode_fields_json(w.model)
        else:
            body = "" if w.fields is None else msgspec.json.encode(dict(w.fields)).decode()
        args += [w.op, w.key, "" if w.expected is None else w.expected, body]
    reply = yield Script(
        "catalog_write",
        keys=(*keys.catalog_keys(), *(keys.catalog_item(w.key) for w in writes)),
        args=tuple(args),
    )
    try:
        status = int(reply[0])
        if status == 0:
            return int(reply[1])
        failed = writes[int(reply[1]) - 1]
    except (TypeError, ValueError, IndexError) as exc:
        raise ScriptError(f"catalog_write: malformed reply {reply!r}") from exc
    if status == 1:
        raise RevisionConflictError(failed.key, failed.expected or 0, int(reply[2]))
    if status == 2:
        raise ModelExistsError([failed.key])
    if status == 3:
        raise ModelNotFoundError(failed.key)
    raise ScriptError(f"catalog_write: unknown status {status}")


def fetch_entry(keys: Keys, model_key: str) -> Flow[CatalogEntry | None]:
    """The model as Redis holds it now (not the local snapshot)."""
    (raw,) = yield Commands((("HGETALL", keys.model(model_key)),), transaction=False)
    return decode_entry(raw) if raw else None


def update(
    keys: Keys,
    model_key: str,
    changes: ModelSpec | Mapping[str, Any],
    *,
    expected_revision: int | None = None,
) -> Flow[CatalogEntry]:
    """Read, merge and compare-and-set; retried on a conflict unless a revision was given."""
    for attempt in range(_UPDATE_ATTEMPTS):
        current = yield from fetch_entry(keys, model_key)
        if current is None:
            raise ModelNotFoundError(model_key)
        model = merge_changes(current.model, changes)
        expected = current.revision if expected_revision is None else expected_revision
        try:
            revision = yield from write(keys, [Write("put", model_key, expected, model)])
        except RevisionConflictError:
            if expected_revision is not None or attempt == _UPDATE_ATTEMPTS - 1:
                raise
            continue
        return CatalogEntry(model, revision, 0)
    raise AssertionError("unreachable")  # pragma: no cover


def _items(
    members: Sequence[str], replies: Iterable[Any]
) -> tuple[dict[str, CatalogEntry], dict[str, tuple[Budget, ...] | None]]:
    """Decode the hashes of catalog members: models by key, and budgets by tenant (None: gone)."""
    entries: dict[str, CatalogEntry] = {}
    budgets: dict[str, tuple[Budget, ...] | None] = {}
    for member, raw in zip(members, replies, strict=True):
        if member.startswith(Keys.BUDGET_MEMBER_PREFIX):
            tenant = member[len(Keys.BUDGET_MEMBER_PREFIX) :]
            budgets[tenant] = decode_budgets(raw)[1] if raw else None
        elif raw:
            entry = decode_entry(raw)
            entries[entry.model.key] = entry
    return entries, budgets


def _meta(keys: Keys) -> tuple[str, ...]:
    return ("HMGET", keys.meta, "revision", "epoch")


def _revision_epoch(reply: Any) -> tuple[int, str]:
    revision, epoch = reply
    return int(revision or 0), text(epoch) if epoch is not None else ""


def load_snapshot(keys: Keys) -> Flow[Snapshot]:
    """Everything, consistently: the hashes are read in one MULTI with the revision."""
    for _ in range(_FULL_LOAD_ATTEMPTS):
        meta, members = yield Commands((_meta(keys), ("ZRANGE", keys.models, 0, -1)))
        revision, epoch = _revision_epoch(meta)
        members = [text(m) for m in members]
        replies = yield Commands((*(("HGETALL", keys.catalog_item(m)) for m in members), _meta(keys)))
        if _revision_epoch(replies[-1]) == (revision, epoch):
            break
    # After a few racing writers, keep what was read: it is at least `revision`, and the next
    # refresh replays the events after it.
    entries, budgets = _items(members, replies[:-1])
    return Snapshot.build(revision, epoch, entries, {t: b for t, b in budgets.items() if b})


def refresh(keys: Keys, snapshot: Snapshot | None) -> Flow[Snapshot]:
    """``snapshot`` brought up to the current revision, incrementally where the stream allows.

    The epoch tells a catalog that was wiped and written again (a Redis restarted without
    persistence, a FLUSHALL) from one that moved on: its revisions start over, so a reader
    with another epoch loads everything again.
    """
    if snapshot is None:
        return (yield from load_snapshot(keys))
    start = snapshot.revision + 1
    meta, events = yield Commands(
        (_meta(keys), ("XRANGE", keys.events, f"{start}-0", "+", "COUNT", MAX_EVENTS_PER_REFRESH))
    )
    revision, epoch = _revision_epoch(meta)
    if epoch != snapshot.epoch:
        return (yield from load_snapshot(keys))
    if revision == snapshot.revision:
        return snapshot
    revisions = [int(text(event_id).split("-")[0]) for event_id, _ in events]
    if revision < snapshot.revision or not revisions or revisions[0] != start or revisions[-1] != revision:
        # Trimmed stream, or more changes than one replay takes: start over.
        return (yield from load_snapshot(keys))
    touched: dict[str, None] = {}
    for _, raw_fields in events:
        fields = _fields(raw_fields)
        for name in ("put", "deleted"):
            touched.update((k, None) for k in fields.get(name, "").split("\n") if k)
    keys_touched = list(touched)
    replies = yield Commands(tuple(("HGETALL", keys.catalog_item(k)) for k in keys_touched), transaction=True)
    fetched, budgets = _items(keys_touched, replies)
    deleted = [k for k in keys_touched if k not in fetched and not k.startswith(Keys.BUDGET_MEMBER_PREFIX)]
    # Hashes may be newer than `revision` if a write landed in between; they are still
    # current, and the next refresh replays from `revision` anyway.
    return snapshot.changed(revision, fetched.values(), deleted, budgets)
