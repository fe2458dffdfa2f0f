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


_PERIODS = {"minute": ("m", 60_000), "hour": ("h", _HOUR_MS), "day": ("d", _DAY_MS)}


@dataclass(frozen=True)
class UsagePoint:
    """One bucket of a :func:`usage` series: its start (UTC, epoch seconds) and its totals."""

    start: int
    totals: UsageTotals


def usage(
    keys: Keys,
    model: ModelSpec,
    *,
    tenant: str | None = None,
    since: datetime | float,
    until: datetime | float,
    granularity: str = "hour",
) -> Flow[list[UsagePoint]]:
    """A time series of one model's usage (or a tenant's on it), one point per UTC bucket.

    Minute buckets are kept 2 days, hour buckets 90 days, day buckets 2 years; a series
    reaching further back shows zeros there.
    """
    if granularity not in _PERIODS:
        raise ConfigError(f"granularity must be one of {sorted(_PERIODS)}, got {granularity!r}")
    period, width = _PERIODS[granularity]
    start, end = _ms(since), _ms(until)
    if end < start:
        raise ConfigError("until is before since")
    indexes = range(start // width, end // width + 1)
    if len(indexes) > 10_000:
        raise ConfigError(f"{len(indexes)} points: use a coarser granularity (at most 10,000 points)")
    replies = yield Commands(
        tuple(("HGETALL", keys.ledger(model.key, period, i, tenant)) for i in indexes), transaction=False
    )
    return [
        UsagePoint(i * width // 1000, _totals(raw or {}, model.cost.currency))
        for i, raw in zip(indexes, replies, strict=True)
    ]


@dataclass(frozen=True)
class Performance:
    """Latency percentiles (from the histogram: each is the upper edge of its bucket, ms),
    success rate, and output tokens per second of request time."""

    requests: int
    success_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_latency_ms: float | None
    output_tokens_per_second: float | None


def performance(totals: UsageTotals, histogram: Mapping[str, int], edges: Sequence[int]) -> Performance:
    """Percentiles read off the latency histogram; exact to one bucket, never optimistic."""
    counts = [(float(e), histogram.get(f"lat_le_{e}", 0)) for e in edges]
    counts.append((float("inf"), histogram.get("lat_le_inf", 0)))
    seen = sum(c for _, c in counts)

    def quantile(q: float) -> float | None:
        if not seen:
            return None
        running = 0
        for edge, count in counts:
            running += count
            if running >= q * seen:
                return edge
        return float("inf")  # pragma: no cover - running reaches seen

    seconds = totals.latency_us_sum / 1e6
    return Performance(
        requests=totals.requests,
        success_rate=totals.success_rate,
        p50_ms=quantile(0.50),
        p95_ms=quantile(0.95),
        p99_ms=quantile(0.99),
        mean_latency_ms=totals.mean_latency_ms,
        output_tokens_per_second=totals.output_tokens / seconds if seconds else None,
    )


def model_performance(keys: Keys, model: ModelSpec, edges: Sequence[int]) -> Flow[Performance]:
    """A model's all-time performance, from its ledger totals."""
    (raw,) = yield Commands((("HGETALL", keys.ledger(model.key, "total")),), transaction=False)
    histogram = {text(k): int(v) for k, v in (raw or {}).items()}
    return performance(_totals(raw or {}, model.cost.currency), histogram, edges)
