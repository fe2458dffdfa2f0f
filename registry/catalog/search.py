"""Search and ranking over a catalog snapshot. Pure functions, no I/O.

Filter semantics (all given filters must hold):

* ``provider``, ``status``: one value or several; a model matches any of them.
* ``capability``, ``tags``: one value or several; a model must have all of them.
* ``min_context_window`` / ``max_context_window``: inclusive bounds on the context window
  (a model whose context window is unknown matches neither).
* ``name_pattern``: case-insensitive shell-style glob (``*``, ``?``, ``[abc]``) matched
  against the key, the id and the display name; a pattern without wildcards matches as a
  substring (``gpt-4`` finds ``openai:gpt-4-turbo``).
* ``max_cost_per_token``: the base input *and* output prices, per single token, are both at
  most this amount (in the model's own currency).
* ``min_version`` / ``max_version``: inclusive bounds by semver precedence, so ``2.0.0-rc.1``
  is below ``2.0.0``.
* ``exclude_deprecated``: leave out deprecated and retired models.
* ``currency``: only models priced in this currency.

Ranking (``Snapshot.cheapest``): a model's score is the exact price of a reference request of
``input_tokens`` input and ``output_tokens`` output tokens, 3 to 1 by default (the usual
"blended" weighting of input and output prices). Prices per 1, 1,000 or 1,000,000 tokens are
all brought to the same basis by this, and tier prices apply when the reference prompt passes
a threshold. Ties go to the larger context window (unknown counts as 0), then to the key.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

import semver

from registry.errors import ConfigError
from registry.models import Status
from registry.versions import parse_version

if TYPE_CHECKING:
    from registry.catalog.snapshot import Row

__all__ = ["SearchQuery"]

_WILDCARDS = frozenset("*?[")
_GONE = (Status.DEPRECATED, Status.RETIRED)


def _as_set(name: str, value: str | Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return frozenset((value,))
    if isinstance(value, bytes | Mapping) or not isinstance(value, Iterable):
        raise ConfigError(f"{name}: expected a string or a list of strings, got {value!r}")
    values = frozenset(str(v) for v in value)
    if not values:
        raise ConfigError(f"{name}: give at least one value, or None for no filter")
    return values


def _as_int(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _as_decimal(name: str, value: Decimal | int | str | None) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, float):
        value = repr(value)
    try:
        amount = Decimal(value)
    except (InvalidOperation, TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a decimal amount, got {value!r}") from exc
    if not amount.is_finite() or amount < 0:
        raise ConfigError(f"{name} must be a finite amount >= 0, got {value!r}")
    return amount


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A validated set of filters. Build it with :meth:`build` from keyword arguments."""

    providers: frozenset[str] | None = None
    capabilities: frozenset[str] | None = None
    tags: frozenset[str] | None = None
    statuses: frozenset[str] | None = None
    min_context_window: int | None = None
    max_context_window: int | None = None
    name_pattern: str | None = None
    max_cost_per_token: Decimal | None = None
    min_version: semver.Version | None = None
    max_version: semver.Version | None = None
    exclude_deprecated: bool = False
    currency: str | None = None
    name_regex: re.Pattern[str] | None = None
    name_literals: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        *,
        provider: str | Sequence[str] | None = None,
        capability: str | Sequence[str] | None = None,
        min_context_window: int | None = None,
        max_context_window: int | None = None,
        name_pattern: str | None = None,
        tags: str | Sequence[str] | None = None,
        status: str | Sequence[str] | None = None,
        max_cost_per_token: Decimal | int | str | None = None,
        min_version: str | None = None,
        max_version: str | None = None,
        exclude_deprecated: bool = False,
        currency: str | None = None,
    ) -> SearchQuery:
        statuses = _as_set("status", status)
        if statuses is not None:
            unknown = statuses - {s.value for s in Status}
            if unknown:
                raise ConfigError(f"status: unknown {sorted(unknown)}, expected {[s.value for s in Status]}")
        if name_pattern is not None and not isinstance(name_pattern, str):
            raise ConfigError(f"name_pattern must be a string, got {name_pattern!r}")
        if currency is not None and not isinstance(currency, str):
            raise ConfigError(f"currency must be a string such as 'USD', got {currency!r}")
        pattern = name_pattern.lower() if name_pattern else None
        regex = re.compile(fnmatch.translate(pattern)) if pattern and not _WILDCARDS.isdisjoint(pattern) else None
        return cls(
            providers=_as_set("provider", provider),
            capabilities=_as_set("capability", capability),
            tags=_as_set("tags", tags),
            statuses=statuses,
            min_context_window=_as_int("min_context_window", min_context_window),
            max_context_window=_as_int("max_context_window", max_context_window),
            name_pattern=pattern,
            max_cost_per_token=_as_decimal("max_cost_per_token", max_cost_per_token),
            min_version=parse_version(min_version) if min_version is not None else None,
            max_version=parse_version(max_version) if max_version is not None else None,
            exclude_deprecated=bool(exclude_deprecated),
            currency=currency.upper() if currency else None,
            name_regex=regex,
            # Every literal run of a glob must appear in a matching name: a cheap test first.
            name_literals=tuple(p for p in re.split(r"[*?]|\[[^\]]*\]", pattern or "") if p) if regex else (),
        )

    def candidates(self, index: Mapping[str, Mapping[str, frozenset[str]]]) -> frozenset[str] | None:
        """Narrow by the snapshot's inverted indexes; None when no indexed filter is set."""
        found: frozenset[str] | None = None

        def meet(keys: frozenset[str]) -> None:
            nonlocal found
            found = keys if found is None else found & keys

        empty: frozenset[str] = frozenset()
        if self.providers is not None:
            meet(frozenset().union(*(index["provider"].get(p, empty) for p in self.providers)))
        if self.statuses is not None:
            meet(frozenset().union(*(index["status"].get(s, empty) for s in self.statuses)))
        for capability in self.capabilities or ():
            meet(index["capability"].get(capability, empty))
        for tag in self.tags or ():
            meet(index["tag"].get(tag, empty))
        return found

    def matches(self, row: Row) -> bool:
        """Whether a snapshot row passes every filter (the indexed ones are checked again)."""
        model = row.model
        if self.providers is not None and model.provider not in self.providers:
            return False
        if self.statuses is not None and model.status.value not in self.statuses:
            return False
        if self.capabilities is not None and not self.capabilities.issubset(model.capabilities):
            return False
        if self.tags is not None and not self.tags.issubset(model.tags):
            return False
        if self.exclude_deprecated and model.status in _GONE:
            return False
        if self.currency is not None and model.cost.currency != self.currency:
            return False
        if self.min_context_window is not None or self.max_context_window is not None:
            window = model.context_window
            if window is None:  # unknown: matches no bound
                return False
            if self.min_context_window is not None and window < self.min_context_window:
                return False
            if self.max_context_window is not None and window > self.max_context_window:
                return False
        if self.max_cost_per_token is not None:
            limit = self.max_cost_per_token * model.cost.per  # compare without dividing: exact
            if model.cost.input > limit or model.cost.output > limit:
                return False
        if self.min_version is not None and row.version.compare(self.min_version) < 0:
            return False
        if self.max_version is not None and row.version.compare(self.max_version) > 0:
            return False
        if self.name_pattern is None:
            return True
        key, model_id, name = row.names
        if self.name_regex is not None:
            for literal in self.name_literals:
                if literal not in key and literal not in model_id and literal not in name:
                    return False
            match = self.name_regex.match
            return bool(match(key) or match(model_id) or match(name))
        pattern = self.name_pattern
        return pattern in key or pattern in model_id or pattern in name
