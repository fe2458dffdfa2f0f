"""Export and import: the catalog and every ledger counter as one JSON-able document.

An export reads the catalog copy and every ledger hash of the namespace (all-time totals and
the time buckets still kept, with their remaining TTLs); an import writes them into another,
empty namespace, renaming each key's namespace. Window buckets and reservations (in-flight
admission state) are not part of it: they describe the last minute, not the books.
"""

from __future__ import annotations

from typing import Any

from registry._core import Commands, Flow, text
from registry.catalog.snapshot import Snapshot
from registry.errors import ConfigError
from registry.keys import Keys

__all__ = ["FORMAT", "export_ledger", "import_ledger"]

FORMAT = "registry-export/1"
_SCAN_COUNT = 1000


def _ledger_pattern(keys: Keys) -> str:
    return f"{{{keys.namespace}:adm:*:l:*"


def _is_set(key: str) -> bool:
    """A model's tenant set (the only ledger key that is not a hash of counters)."""
    return key.endswith(":l:tenants")


def _spend_pattern(keys: Keys) -> str:
    return f"{{{keys.namespace}:bud:*:s:*"


def _scan(pattern: str) -> Flow[list[str]]:
    found: list[str] = []
    cursor = "0"
    while True:
        (reply,) = yield Commands((("SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_COUNT),), False)
        cursor, batch = text(reply[0]), [text(k) for k in reply[1]]
        found += batch
        if cursor == "0":
            return found


def _books(key: str, counters: dict[str, str]) -> dict[str, str]:
    """What an export keeps of a hash: all of a ledger hash; of a budget's spend hash, what was
    spent and the thresholds announced (holds are in-flight admission state, like windows)."""
    if ":l:" in key:
        return counters
    return {f: v for f, v in counters.items() if f in ("spent", "denied") or f.startswith("t:")}


def export_ledger(keys: Keys, snapshot: Snapshot) -> Flow[dict[str, Any]]:
    """The document: catalog models and budgets, each ledger hash with its counters and TTL,
    and what each budget period spent."""
    found = yield from _scan(_ledger_pattern(keys))
    found = [k for k in found if ":l:id:" not in k]  # request-id markers are not counters
    found += yield from _scan(_spend_pattern(keys))
    names = sorted(set(found))
    replies = yield Commands(
        tuple(cmd for k in names for cmd in ((("SMEMBERS" if _is_set(k) else "HGETALL"), k), ("PTTL", k))), False
    )
    prefix = f"{{{keys.namespace}:"
    ledger: dict[str, Any] = {}
    for i, key in enumerate(names):
        counters, ttl = replies[2 * i], int(replies[2 * i + 1])
        if _is_set(key):
            ledger[key.removeprefix(prefix)] = {"members": sorted(text(m) for m in counters)}
        elif books := {f: int(v) for f, v in _books(key, {text(f): text(v) for f, v in counters.items()}).items()}:
            ledger[key.removeprefix(prefix)] = {"counters": books, "ttl_ms": ttl if ttl > 0 else None}
    return {
        "format": FORMAT,
        "namespace": keys.namespace,
        "catalog": [row.model.model_dump(mode="json") for row in snapshot.rows.values()],
        "budgets": [b.model_dump(mode="json") for held in snapshot.budgets.values() for b in held],
        "ledger": ledger,
    }


def import_ledger(keys: Keys, document: dict[str, Any]) -> Flow[int]:
    """Write an export's ledger into ``keys``' namespace, which must hold no ledger yet."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ConfigError(f"not a {FORMAT} document")
    used = (yield from _scan(_ledger_pattern(keys))) + (yield from _scan(_spend_pattern(keys)))
    if used:
        raise ConfigError(f"namespace {keys.namespace!r} already has a ledger: import into an empty one")
    commands: list[tuple[Any, ...]] = []
    for suffix, entry in sorted(document.get("ledger", {}).items()):
        key = f"{{{keys.namespace}:{suffix}"
        if _is_set(key):
            members = entry.get("members")
            if not members or not all(isinstance(m, str) for m in members):
                raise ConfigError(f"ledger entry {suffix!r}: members must be names")
            commands.append(("SADD", key, *members))
            continue
        counters = entry["counters"]
        if not counters or not all(isinstance(v, int) and not isinstance(v, bool) for v in counters.values()):
            raise ConfigError(f"ledger entry {suffix!r}: counters must be integers")
        flat = [x for field, value in sorted(counters.items()) for x in (field, value)]
        commands.append(("HSET", key, *flat))
        if entry.get("ttl_ms"):
            commands.append(("PEXPIRE", key, int(entry["ttl_ms"])))
    if commands:
        yield Commands(tuple(commands), transaction=True)
    return len(document.get("ledger", {}))
