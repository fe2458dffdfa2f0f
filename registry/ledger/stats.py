"""Reading the ledger: totals per model, per tenant and over time ranges. No I/O here but flows.

Totals come from the all-time hashes, or, for a time range, from the UTC hour buckets (ranges
up to 90 days; the buckets overlapping the range count in full) or day buckets (longer). All
the hashes a call needs are read in one pipelined round trip, however many models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from registry._core import Commands, Flow, text
from registry.errors import ConfigError
from registry.keys import Keys
from registry.ledger.money import from_units
from registry.models import ModelSpec

__all__ = ["Statistics", "UsageTotals", "statistics"]

_HOUR_MS, _DAY_MS = 3_600_000, 86_400_000
_INTS = ("requests", "successes", "failures", "input_tokens", "output_tokens", "cost_units", "latency_count")


@dataclass(frozen=True)
class UsageTotals:
    """Counters of one model (or of everything) over the period asked for."""

    requests: int = 0
    successes: int = 0
    failures: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_units: int = 0
    latency_count: int = 0
    latency_us_sum: int = 0
    currency: str = "USD"

    @property
    def total_cost(self) -> Decimal:
        """Exact, in ``currency``."""
        return from_units(self.cost_units)

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.requests if self.requests else None

    @property
    def mean_latency_ms(self) -> float | None:
        return self.latency_us_sum / self.latency_count / 1000 if self.latency_count else None

    def plus(self, other: UsageTotals) -> UsageTotals:
        merged = {name: getattr(self, name) + getattr(other, name) for name in (*_INTS, "latency_us_sum")}
        return UsageTotals(**merged, currency=self.currency)


@dataclass(frozen=True)
class Statistics(UsageTotals):
    """Totals over the models asked for, in one currency, with ``by_model`` per model key.

    Models priced in another currency than ``currency`` appear in ``by_model`` but are not
    added to the totals: counters in different currencies never mix.
    """

    by_model: Mapping[str, UsageTotals] = field(default_factory=dict)


def _totals(raw: Mapping[Any, Any], currency: str) -> UsageTotals:
    values = {text(k): int(v) for k, v in raw.items()}
    return UsageTotals(
        **{name: values.get(name, 0) for name in _INTS},
        latency_us_sum=values.get("latency_us_sum", 0),
        currency=currency,
    )


def _ms(value: datetime | float | int) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ConfigError("since/until must be timezone-aware datetimes (or epoch seconds)")
        return int(value.timestamp() * 1000)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"since/until must be datetimes or epoch seconds, got {value!r}")
    return int(value * 1000)


def _ledger_keys(
    keys: Keys, model_key: str, tenant: str | None, since: datetime | float | None, until: datetime | float | None
) -> list[str]:
    if since is None and until is None:
        return [keys.ledger(model_key, "total", tenant=tenant)]
    if since is None or until is None:
        raise ConfigError("give both since and until, or neither (all time)")
    start, end = _ms(since), _ms(until)
    if end < start:
        raise ConfigError("until is before since")
    period, width = ("h", _HOUR_MS) if end - start <= 90 * _DAY_MS else ("d", _DAY_MS)
    return [keys.ledger(model_key, period, i, tenant) for i in range(start // width, end // width + 1)]


def statistics(
    keys: Keys,
    models: Sequence[ModelSpec],
    *,
    tenant: str | None = None,
    since: datetime | float | None = None,
    until: datetime | float | None = None,
    currency: str = "USD",
) -> Flow[Statistics]:
    """Totals of ``models`` (for ``tenant`` only, if given) over all time or a range."""
    plan = [(m, _ledger_keys(keys, m.key, tenant, since, until)) for m in models]
    commands = tuple(("HGETALL", key) for _, ledger_keys in plan for key in ledger_keys)
    replies = iter((yield Commands(commands, transaction=False)) if commands else [])
    by_model: dict[str, UsageTotals] = {}
    total = UsageTotals(currency=currency)
    for spec, ledger_keys in plan:
        usage = UsageTotals(currency=spec.cost.currency)
        for _ in ledger_keys:
            usage = usage.plus(_totals(next(replies) or {}, spec.cost.currency))
        by_model[spec.key] = usage
        if spec.cost.currency == currency:
            total = total.plus(usage)
    return Statistics(
        **{name: getattr(total, name) for name in (*_INTS, "latency_us_sum")}, currency=currency, by_model=by_model
    )
