"""Declarative config sync: read a catalog file, compare it with Redis, plan the writes.

``registry sync FILE`` makes the catalog match the file: models the file adds are created,
models it changes are rewritten, and with ``prune`` the models it no longer lists are
*retired* (status ``retired``), never deleted, so that their history in the ledger keeps its
prices. Running it twice changes nothing the second time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
from pydantic import ValidationError

from registry._core import Flow, validation_error
from registry.catalog.codec import CatalogEntry
from registry.catalog.ops import Write, load_snapshot, write
from registry.catalog.snapshot import Snapshot
from registry.errors import ConfigError, ModelExistsError, RevisionConflictError
from registry.keys import Keys
from registry.models import CatalogFile, ModelSpec, Status

__all__ = ["SyncPlan", "plan_sync", "read_catalog_file", "sync"]

_SYNC_ATTEMPTS = 5
_decoder = msgspec.json.Decoder(float_hook=Decimal)
_BYTE_POSITION = re.compile(r"(?:\(byte (\d+)\)|at byte (\d+))\s*$")


def _line_col(data: bytes, position: int) -> str:
    before = data[:position]
    line = before.count(b"\n") + 1
    column = position - (before.rfind(b"\n") + 1) + 1
    return f"line {line}, column {column}"


def parse_catalog(data: bytes, *, where: str = "<config>") -> list[ModelSpec]:
    """Validate a catalog document; errors name ``where``, the entry and the field."""
    try:
        document = _decoder.decode(data)
    except RecursionError:
        raise ConfigError(f"{where}: not valid JSON: nested too deep") from None
    except msgspec.DecodeError as exc:
        message = str(exc)
        # msgspec ends the message with "(byte N)" (older versions: "at byte N"); a document
        # cut short says only "truncated", so point at its end.
        position = _BYTE_POSITION.search(message)
        if position is not None:
            offset = int(position.group(1) or position.group(2))
            message = f"{message[: position.start()].rstrip(' -')} ({_line_col(data, offset)})"
        elif "truncated" in message:
            message = f"{message} (at the end, {_line_col(data, len(data))})"
        raise ConfigError(f"{where}: not valid JSON: {message}") from None
    labels: dict[int, str] = {}
    if isinstance(document, dict) and isinstance(document.get("models"), list):
        for index, entry in enumerate(document["models"]):
            if isinstance(entry, dict):
                labels[index] = f"{entry.get('provider', '?')}:{entry.get('id', '?')}"
    try:
        return CatalogFile.model_validate(document).models
    except ValidationError as exc:
        raise validation_error(exc, where=where, labels=labels) from None


def read_catalog_file(path: str | Path) -> list[ModelSpec]:
    """The models of a catalog file (``{"models": [...]}``), validated."""
    if not isinstance(path, str | os.PathLike):
        raise ConfigError(f"a catalog file is named by a path, got {path!r}")
    path = Path(path)
    try:
        data = path.read_bytes()
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        raise ConfigError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_catalog(data, where=str(path))


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: value}


def field_changes(old: ModelSpec, new: ModelSpec) -> list[tuple[str, Any, Any]]:
    """``(path, old, new)`` for every field that differs, e.g. ``("cost.input", "30", "25")``."""
    a, b = _flat(old.model_dump(mode="json")), _flat(new.model_dump(mode="json"))
    return [(k, a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


@dataclass
class SyncPlan:
    """What a sync changes. ``applied`` and ``revision`` are set once it has been written."""

    added: list[ModelSpec] = field(default_factory=list)
    updated: list[tuple[CatalogEntry, ModelSpec]] = field(default_factory=list)
    retired: list[tuple[CatalogEntry, ModelSpec]] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    applied: bool = False
    revision: int | None = None

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.retired)

    def writes(self) -> list[Write]:
        out = [Write("create", m.key, 0, m) for m in self.added]
        out += [Write("put", e.model.key, e.revision, m) for e, m in self.updated + self.retired]
        return out

    def lines(self) -> list[str]:
        """The difference, one line per change, as ``registry sync`` prints it."""
        out = [f"+ {m.key}" for m in self.added]
        for entry, model in self.updated:
            out.append(f"~ {model.key}")
            out += [f"    {path}: {old!r} -> {new!r}" for path, old, new in field_changes(entry.model, model)]
        out += [f"- {e.model.key} (retired)" for e, _ in self.retired]
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "added": [m.key for m in self.added],
            "updated": {m.key: {p: [o, n] for p, o, n in field_changes(e.model, m)} for e, m in self.updated},
            "retired": [e.model.key for e, _ in self.retired],
            "unchanged": len(self.unchanged),
            "applied": self.applied,
            "revision": self.revision,
        }


def plan_sync(snapshot: Snapshot, desired: Sequence[ModelSpec], *, prune: bool = False) -> SyncPlan:
    """The writes that make ``snapshot`` hold exactly ``desired`` (retiring the rest if ``prune``)."""
    plan = SyncPlan()
    wanted = {m.key: m for m in desired}
    for key, model in wanted.items():
        entry = snapshot.entries.get(key)
        if entry is None:
            plan.added.append(model)
        elif entry.model != model:
            plan.updated.append((entry, model))
        else:
            plan.unchanged.append(key)
    if prune:
        for key, entry in snapshot.entries.items():
            if key not in wanted and entry.model.status is not Status.RETIRED:
                retired = entry.model.model_copy(update={"status": Status.RETIRED})
                plan.retired.append((entry, retired))
    return plan


def sync(keys: Keys, desired: Sequence[ModelSpec], *, prune: bool = False, dry_run: bool = False) -> Flow[SyncPlan]:
    """Plan against what Redis holds now and apply it as one compare-and-set batch."""
    for attempt in range(_SYNC_ATTEMPTS):
        snapshot = yield from load_snapshot(keys)
        plan = plan_sync(snapshot, desired, prune=prune)
        if dry_run or not plan.changed:
            plan.revision = snapshot.revision
            return plan
        try:
            plan.revision = yield from write(keys, plan.writes())
        except (RevisionConflictError, ModelExistsError):
            if attempt == _SYNC_ATTEMPTS - 1:
                raise
            continue
        plan.applied = True
        return plan
    raise AssertionError("unreachable")  # pragma: no cover
