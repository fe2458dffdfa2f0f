"""Export and import: the catalog and every ledger counter as one JSON-able document.

An export reads the catalog copy and every ledger hash of the namespace (all-time totals and
the time buckets still kept, with their remaining TTLs); an import writes them into another,
empty namespace, renaming each key's namespace. Window buckets and reservations (in-flight
admission state) are not part of it: they describe the last minute, not the books.
"""

from __future__ import annotations

import re
from typing import Any

from registry._core import Commands, Flow, Scan, text
from registry.catalog.snapshot import Snapshot
from registry.errors import ConfigError
from registry.keys import Keys

__all__ = ["FORMAT", "export_ledger", "import_commands", "import_ledger"]

FORMAT = "registry-export/1"
# What an export holds and an import may write, after the namespace's "{<namespace>:": a model's
# (or a tenant's on it) ledger keys, and a tenant's budget spend. The model key ends at the tag's
# brace (it holds none), so a request id or model id that contains ":l:" or ":s:" matches
# neither; the SCAN patterns below are only a first sieve.
_BOOKS = re.compile(
    r"adm:[^{}]+\}(?::t:[^{}:]+)?:l:(?:total|denied|tenants|[mhd]:[0-9]{1,20})"
    r"|bud:[^{}:]+\}:s:[^{}]+:(?:day|week|month):[0-9]{1,20}"
)
_INT64 = (-(2**63), 2**63 - 1)
_MAX_TTL_MS = 2**53


def _ledger_pattern(keys: Keys) -> str:
    return f"{{{keys.namespace}:adm:*:l:*"


def _is_set(key: str) -> bool:
    """A model's tenant set (the only ledger key that is not a hash of counters)."""
    return key.endswith(":l:tenants")


def _spend_pattern(keys: Keys) -> str:
    return f"{{{keys.namespace}:bud:*:s:*"


def _scan(pattern: str) -> Flow[list[str]]:
    return [text(k) for k in (yield Scan(pattern))]


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
    found += yield from _scan(_spend_pattern(keys))
    prefix = f"{{{keys.namespace}:"
    names = sorted({k for k in found if _BOOKS.fullmatch(k.removeprefix(prefix))})  # not request-id markers
    replies = yield Commands(
        tuple(cmd for k in names for cmd in ((("SMEMBERS" if _is_set(k) else "HGETALL"), k), ("PTTL", k))), False
    )
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


def import_commands(keys: Keys, document: Any) -> tuple[tuple[Any, ...], ...]:
    """The writes of :func:`import_ledger`, every entry checked first: a document that is not an
    export (or names a key an export never holds: a catalog, window or record key) raises
    :class:`ConfigError`, and nothing is written."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ConfigError(f"not a {FORMAT} document")
    ledger = document.get("ledger", {})
    if not isinstance(ledger, dict):
        raise ConfigError("ledger: expected an object of ledger keys")
    commands: list[tuple[Any, ...]] = []
    for suffix, entry in sorted(ledger.items(), key=lambda item: str(item[0])):
        if not _name(suffix) or not _BOOKS.fullmatch(suffix) or not isinstance(entry, dict):
            raise ConfigError(f"ledger entry {suffix!r}: not a ledger key of an export")
        key = f"{{{keys.namespace}:{suffix}"
        if _is_set(key):
            members = entry.get("members")
            if not isinstance(members, list) or not members or not all(map(_name, members)):
                raise ConfigError(f"ledger entry {suffix!r}: members must be names")
            commands.append(("SADD", key, *members))
            continue
        counters, ttl = entry.get("counters"), entry.get("ttl_ms")
        if not isinstance(counters, dict) or not counters or not all(_counter(f, v) for f, v in counters.items()):
            raise ConfigError(f"ledger entry {suffix!r}: counters must be names with 64-bit integers")
        if ttl is not None and not (type(ttl) is int and 0 < ttl <= _MAX_TTL_MS):
            raise ConfigError(f"ledger entry {suffix!r}: ttl_ms must be null or a positive integer")
        flat = [x for field, value in sorted(counters.items()) for x in (field, value)]
        commands.append(("HSET", key, *flat))
        if ttl:
            commands.append(("PEXPIRE", key, ttl))
    return tuple(commands)


def _counter(field: Any, value: Any) -> bool:
    return _name(field) and type(value) is int and _INT64[0] <= value <= _INT64[1]


def _name(value: Any) -> bool:
    """A non-empty string Redis can be sent (json.loads makes lone surrogates of "\\udcff")."""
    if not isinstance(value, str) or not value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def import_ledger(keys: Keys, document: dict[str, Any]) -> Flow[int]:
    """Write an export's ledger into ``keys``' namespace, which must hold no ledger yet."""
    commands = import_commands(keys, document)
    used = (yield from _scan(_ledger_pattern(keys))) + (yield from _scan(_spend_pattern(keys)))
    if any(_BOOKS.fullmatch(k.removeprefix(f"{{{keys.namespace}:")) for k in used):
        raise ConfigError(f"namespace {keys.namespace!r} already has a ledger: import into an empty one")
    if commands:
        yield Commands(commands, transaction=True)
    return len(document["ledger"]) if "ledger" in document else 0
