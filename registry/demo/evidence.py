"""The workers' own logs, and the facts the verdict reads from them. No Redis here.

Each worker process appends JSON lines to a file of its own and flushes each line before it
goes on (so a worker that dies leaves everything it did up to then). ``e`` names the event:

=========  =====================================================================================
ready      the worker is connected and waits for the start
admit      ``m`` model, ``t`` tenant, ``id`` request id, ``ms`` the server's time of the
           admission (from the acquire script's reply), ``in`` and ``max`` the input tokens and
           max output reserved
deny       ``m``, ``t``, ``by`` the limit or budget that refused (``denied_by``), ``after``
           retry_after in seconds, ``wait`` true when the worker waits that long and asks again
rejected   a request that every model it tried refused (``t``)
settle     ``m``, ``t``, ``id``, ``in``, ``out``, ``ok`` (success), ``counted`` (settle said it
           counted), ``units`` and ``cost``: the price the worker computed itself
record     the same for a request reported with ``record_usage`` (no reservation)
dup        ``kind`` acquire, settle or record: the same request sent again (a retry), and
           ``caught`` whether the library answered that it was a duplicate
die        the worker exits between acquire and settle, leaving request ``id`` of ``m``
error      ``what``: an exception the worker did not expect
done       the worker reached the deadline
=========  =====================================================================================
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from registry.admission.types import Counts, amount

__all__ = ["DUPLICATE_KINDS", "Admission", "Evidence", "LogReader", "Record"]

DUPLICATE_KINDS = ("acquire", "settle", "record")


@dataclass
class Admission:
    """One admitted request, as its worker saw it."""

    model: str
    tenant: str | None
    id: str
    server_ms: int
    input: int  # input tokens reserved
    max_output: int  # output tokens reserved
    final: tuple[int, int] | None = None  # input and output tokens once a settle counted

    def charge(self, counts: Counts) -> int:
        """What the request holds in the end in a window that counts ``counts``: 1 request; in a
        token window its real tokens once settled, else (a worker that died, a settle that did
        not count) its whole reservation. Input plus output, input only or output only."""
        input_tokens, output_tokens = (self.input, self.max_output) if self.final is None else self.final
        return amount(counts, 1, input_tokens, output_tokens)


@dataclass(frozen=True, slots=True)
class Record:
    """One request the ledger must hold once: settled after an admission, or recorded."""

    model: str
    tenant: str | None
    input: int
    output: int
    success: bool
    units: int  # the worker's price, rounded once to nano-units
    cost: Decimal  # ... and exact
    via: str  # "settle" or "record"


@dataclass
class Evidence:
    """Everything the workers logged, added up."""

    admissions: dict[tuple[str, str], Admission] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    denials: Counter[tuple[str, str | None, str]] = field(default_factory=Counter)  # (model, tenant, denied_by)
    waits: int = 0
    rejected: int = 0
    failures: int = 0
    uncounted: int = 0  # settles and records that should have counted and said they did not
    duplicates: dict[str, list[int]] = field(default_factory=lambda: {k: [0, 0] for k in DUPLICATE_KINDS})
    deaths: int = 0
    errors: list[str] = field(default_factory=list)
    ready: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)

    @property
    def budget_denials(self) -> int:
        return sum(n for (_, _, by), n in self.denials.items() if by.startswith("budget:"))

    @property
    def limit_denials(self) -> int:
        return sum(self.denials.values()) - self.budget_denials

    def feed(self, worker: str, entry: dict[str, Any]) -> None:
        """Add one log line of ``worker``."""
        try:
            self._feed(worker, entry)
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            self.errors.append(f"{worker}: unreadable log line {entry!r}: {exc!r}")

    def _feed(self, worker: str, entry: dict[str, Any]) -> None:
        event = entry["e"]
        if event == "admit":
            key = (entry["m"], entry["id"])
            self.admissions[key] = Admission(
                entry["m"], entry["t"], entry["id"], int(entry["ms"]), int(entry["in"]), int(entry["max"])
            )
        elif event == "deny":
            self.denials[(entry["m"], entry["t"], entry["by"])] += 1
            self.waits += bool(entry.get("wait"))
        elif event in ("settle", "record"):
            self._usage(event, entry)
        elif event == "dup":
            counts = self.duplicates[entry["kind"]]
            counts[0] += 1
            counts[1] += bool(entry["caught"])
        elif event == "rejected":
            self.rejected += 1
        elif event == "die":
            self.deaths += 1
        elif event == "error":
            self.errors.append(f"{worker}: {entry['what']}")
        elif event == "ready":
            self.ready.add(worker)
        elif event == "done":
            self.done.add(worker)
        else:
            raise ValueError(f"unknown event {event!r}")

    def _usage(self, via: str, entry: dict[str, Any]) -> None:
        success = bool(entry["ok"])
        self.failures += not success
        if not entry["counted"]:
            self.uncounted += 1
            return
        if via == "settle":
            self.admissions[(entry["m"], entry["id"])].final = (int(entry["in"]), int(entry["out"]))
        self.records.append(
            Record(
                entry["m"],
                entry["t"],
                int(entry["in"]),
                int(entry["out"]),
                success,
                int(entry["units"]),
                Decimal(entry["cost"]),
                via,
            )
        )


class LogReader:
    """Follows the ``*.jsonl`` files of a directory as they grow, feeding one :class:`Evidence`."""

    def __init__(self, directory: Path, evidence: Evidence | None = None) -> None:
        self.directory = directory
        self.evidence = evidence or Evidence()
        self._offsets: dict[Path, int] = {}

    def poll(self) -> Evidence:
        """Read every complete line written since the last call."""
        for path in sorted(self.directory.glob("*.jsonl")):
            start = self._offsets.get(path, 0)
            with path.open("rb") as file:
                file.seek(start)
                chunk = file.read()
            end = chunk.rfind(b"\n") + 1  # a line being written is read next time
            self._offsets[path] = start + end
            for raw in chunk[:end].splitlines():
                try:
                    entry = json.loads(raw)
                except ValueError:
                    self.evidence.errors.append(f"{path.stem}: not JSON: {raw[:80]!r}")
                    continue
                self.evidence.feed(path.stem, entry)
        return self.evidence
