"""The local copy of the catalog that each client reads from, and its in-memory indexes.

A snapshot is immutable: a refresh builds a new one and swaps the client's reference, so a
reader in another thread always sees one whole revision of the catalog, never half a write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from registry.catalog.codec import CatalogEntry
from registry.catalog.search import SearchQuery, rank_by_cost
from registry.errors import ModelNotFoundError
from registry.models import ModelSpec
from registry.pricing import estimate

__all__ = ["Snapshot"]

_INDEXED = ("provider", "status", "capability", "tag")


def _index_terms(model: ModelSpec) -> Iterable[tuple[str, str]]:
    yield "provider", model.provider
    yield "status", model.status.value
    for capability in model.capabilities:
        yield "capability", capability
    for tag in model.tags:
        yield "tag", tag


def _build_index(entries: Mapping[str, CatalogEntry]) -> dict[str, dict[str, frozenset[str]]]:
    index: dict[str, dict[str, set[str]]] = {name: {} for name in _INDEXED}
    for key, entry in entries.items():
        for name, term in _index_terms(entry.model):
            index[name].setdefault(term, set()).add(key)
    return {name: {t: frozenset(ks) for t, ks in terms.items()} for name, terms in index.items()}


@dataclass(frozen=True)
class Snapshot:
    """One revision of the catalog: its entries by key, and indexes for search."""

    revision: int = 0
    epoch: str = ""
    entries: Mapping[str, CatalogEntry] = field(default_factory=dict)
    index: Mapping[str, Mapping[str, frozenset[str]]] = field(default_factory=dict)

    @classmethod
    def build(cls, revision: int, epoch: str, entries: Mapping[str, CatalogEntry]) -> Snapshot:
        ordered = dict(sorted(entries.items()))
        return cls(revision, epoch, MappingProxyType(ordered), _build_index(ordered))

    def changed(self, revision: int, put: Iterable[CatalogEntry], deleted: Iterable[str]) -> Snapshot:
        """A new snapshot at ``revision`` with these entries written and keys removed."""
        entries = dict(self.entries)
        for key in deleted:
            entries.pop(key, None)
        for entry in put:
            entries[entry.model.key] = entry
        return Snapshot.build(revision, self.epoch, entries)

    # -- reads ------------------------------------------------------------------------------

    def entry(self, model_key: str) -> CatalogEntry:
        try:
            return self.entries[model_key]
        except KeyError:
            raise ModelNotFoundError(model_key) from None

    def get(self, model_key: str) -> ModelSpec:
        return self.entry(model_key).model

    def models(self) -> list[ModelSpec]:
        return [entry.model for entry in self.entries.values()]

    def search(self, query: SearchQuery) -> list[ModelSpec]:
        keys = query.candidates(self.index)
        if keys is None:
            pool: Iterable[CatalogEntry] = self.entries.values()
        else:
            pool = (self.entries[k] for k in sorted(keys))
        return [entry.model for entry in pool if query.matches(entry.model)]

    def cheapest(
        self, query: SearchQuery, *, limit: int | None, input_tokens: int, output_tokens: int
    ) -> list[tuple[ModelSpec, Decimal]]:
        ranked = rank_by_cost(
            self.search(query), input_tokens=input_tokens, output_tokens=output_tokens
        )
        return ranked if limit is None else ranked[:limit]

    def estimate_cost(self, model_key: str, *args: Any, **kwargs: Any) -> Decimal:
        return estimate(self.get(model_key).cost, *args, **kwargs)
