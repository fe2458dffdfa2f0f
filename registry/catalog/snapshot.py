"""The local copy of the catalog that each client reads from, and its in-memory indexes.

A snapshot is immutable: a refresh builds a new one and swaps the client's reference, so a
reader in another thread always sees one whole revision of the catalog, never half a write.
A change of a few models costs work in proportion to those models (plus copying the key
maps), not a rebuild of every index: a 5,000-model catalog takes one write in about a
millisecond.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import semver

from registry.budgets.types import Budget
from registry.catalog.codec import CatalogEntry
from registry.catalog.search import SearchQuery
from registry.errors import ModelNotFoundError
from registry.models import ModelSpec
from registry.pricing import check_tokens, estimate, price

__all__ = ["Row", "Snapshot"]

_INDEXED = ("provider", "status", "capability", "tag")
Index = Mapping[str, Mapping[str, frozenset[str]]]


@dataclass(frozen=True, slots=True)
class Row:
    """An entry with what search needs computed once: lower-cased names, the parsed version."""

    entry: CatalogEntry
    model: ModelSpec
    names: tuple[str, str, str]
    version: semver.Version

    @classmethod
    def of(cls, entry: CatalogEntry) -> Row:
        m = entry.model
        return cls(entry, m, (m.key.lower(), m.id.lower(), m.name.lower()), m.semver)


def _index_terms(model: ModelSpec) -> Iterator[tuple[str, str]]:
    yield "provider", model.provider
    yield "status", model.status.value
    for capability in model.capabilities:
        yield "capability", capability
    for tag in model.tags:
        yield "tag", tag


@dataclass(frozen=True)
class Snapshot:
    """One revision of the catalog: its rows by key (sorted), and inverted indexes for search."""

    revision: int = 0
    epoch: str = ""
    rows: Mapping[str, Row] = field(default_factory=dict)
    index: Index = field(default_factory=dict)
    # Each tenant's budgets (catalog items beside the models), so admission reads them locally.
    budgets: Mapping[str, tuple[Budget, ...]] = field(default_factory=dict)
    # Rankings by reference request, computed on first use; safe to share: the snapshot never changes.
    _ranked: dict[tuple[int, int], list[tuple[Decimal, str]]] = field(default_factory=dict, compare=False)

    @classmethod
    def build(
        cls,
        revision: int,
        epoch: str,
        entries: Mapping[str, CatalogEntry],
        budgets: Mapping[str, tuple[Budget, ...]] | None = None,
    ) -> Snapshot:
        return cls(revision, epoch).changed(revision, entries.values(), (), budgets)

    def changed(
        self,
        revision: int,
        put: Iterable[CatalogEntry],
        deleted: Iterable[str],
        budgets: Mapping[str, tuple[Budget, ...] | None] | None = None,
    ) -> Snapshot:
        """A new snapshot at ``revision`` with these entries written and keys removed, and
        these tenants' budgets replaced (None: removed)."""
        rows = dict(self.rows)
        # Terms touched by this change, as mutable sets; frozen again at the end, so a change
        # costs in proportion to the terms it touches, and a full build is linear.
        touched: dict[tuple[str, str], set[str]] = {}

        def members(name: str, term: str) -> set[str]:
            found = touched.get((name, term))
            if found is None:
                found = touched[(name, term)] = set(self.index.get(name, {}).get(term, ()))
            return found

        def unindex(key: str) -> None:
            old = rows.pop(key, None)
            if old is not None:
                for name, term in _index_terms(old.model):
                    members(name, term).discard(key)

        for key in deleted:
            unindex(key)
        added_key = False
        for entry in put:
            key = entry.model.key
            if key in rows:
                unindex(key)
            else:
                added_key = True
            rows[key] = Row.of(entry)
            for name, term in _index_terms(entry.model):
                members(name, term).add(key)
        if added_key:
            rows = dict(sorted(rows.items()))
        index = {name: dict(self.index.get(name, {})) for name in _INDEXED}
        for (name, term), keys in touched.items():
            if keys:
                index[name][term] = frozenset(keys)
            else:
                index[name].pop(term, None)
        frozen = MappingProxyType({name: MappingProxyType(terms) for name, terms in index.items()})
        held = self.budgets
        if budgets:
            merged = dict(self.budgets)
            for tenant, tenant_budgets in budgets.items():
                if tenant_budgets:
                    merged[tenant] = tenant_budgets
                else:
                    merged.pop(tenant, None)
            held = MappingProxyType(merged)
        return Snapshot(revision, self.epoch, MappingProxyType(rows), frozen, held)

    def budgets_for(self, tenant: str | None, model: ModelSpec) -> list[Budget]:
        """The budgets a request of ``tenant`` on ``model`` counts against (same currency)."""
        if tenant is None:
            return []
        return [b for b in self.budgets.get(tenant, ()) if b.applies_to(model.key, model.cost.currency)]

    # -- reads ------------------------------------------------------------------------------

    @property
    def entries(self) -> Mapping[str, CatalogEntry]:
        """Entries by key (a view; sorted by key)."""
        return _EntriesView(self.rows)

    def entry(self, model_key: str) -> CatalogEntry:
        try:
            return self.rows[model_key].entry
        except KeyError:
            raise ModelNotFoundError(model_key) from None

    def get(self, model_key: str) -> ModelSpec:
        return self.entry(model_key).model

    def models(self) -> list[ModelSpec]:
        return [row.model for row in self.rows.values()]

    def search(self, query: SearchQuery) -> list[ModelSpec]:
        keys = query.candidates(self.index)
        matches = query.matches
        if keys is None:
            return [row.model for row in self.rows.values() if matches(row)]
        return [row.model for key, row in self.rows.items() if key in keys and matches(row)]

    def cheapest(
        self, query: SearchQuery, *, limit: int | None, input_tokens: int, output_tokens: int
    ) -> list[tuple[ModelSpec, Decimal]]:
        """Models passing ``query``, cheapest first for the reference request (see search.py)."""
        mix = (check_tokens("input_tokens", input_tokens), check_tokens("output_tokens", output_tokens))
        ranked = self._ranked.get(mix)
        if ranked is None:
            scored = [
                (price(row.model.cost, *mix), -(row.model.context_window or 0), key) for key, row in self.rows.items()
            ]
            scored.sort()
            ranked = self._ranked[mix] = [(cost, key) for cost, _, key in scored]
        out: list[tuple[ModelSpec, Decimal]] = []
        allowed = query.candidates(self.index)
        for cost, key in ranked:
            if allowed is not None and key not in allowed:
                continue
            row = self.rows[key]
            if query.matches(row):
                out.append((row.model, cost))
                if limit is not None and len(out) >= limit:
                    break
        return out

    def estimate_cost(self, model_key: str, *args: Any, **kwargs: Any) -> Decimal:
        return estimate(self.get(model_key).cost, *args, **kwargs)


class _EntriesView(Mapping[str, CatalogEntry]):
    """``rows`` seen as key -> CatalogEntry, without copying."""

    __slots__ = ("_rows",)

    def __init__(self, rows: Mapping[str, Row]) -> None:
        self._rows = rows

    def __getitem__(self, key: str) -> CatalogEntry:
        return self._rows[key].entry

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)
