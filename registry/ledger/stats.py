"""Reading the ledger: totals per model, provider, capability and tenant, over time ranges,
and models ranked by what their ledger shows. No I/O here but flows.

Totals come from the all-time hashes, or, for a time range, from the UTC hour buckets (ranges
up to 90 days; the buckets overlapping the range count in full) or day buckets (longer). The
hashes a call needs are read in pipelined round trips whose number does not grow with the
number of models: :func:`statistics` takes two (the models' hashes and tenant sets, then the
tenants' hashes), :func:`rank_models` one.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from registry._core import Commands, Flow, text
from registry.errors import ConfigError
from registry.keys import Keys
from registry.ledger.money import from_units
from registry.ledger.ops import COUNTERS
from registry.models import ModelSpec

__all__ = [
    "RANK_CRITERIA",
    "ModelRanking",
    "Performance",
    "Statistics",
    "UsagePoint",
    "UsageTotals",
    "model_performance",
    "performance",
    "rank_models",
    "statistics",
    "usage",
]

_HOUR_MS, _DAY_MS = 3_600_000, 86_400_000
_MAX_S = 253_402_300_799  # the end of year 9999 (UTC), as datetimes go
_MAX_BUCKETS = 10_000  # buckets one statistics or usage read names (27 years of days)
_INTS = (*COUNTERS, "latency_count")


@dataclass(frozen=True)
class UsageTotals:
    """Counters of one model (or of everything) over the period asked for."""

    requests: int = 0
    successes: int = 0
    failures: int = 0
    throttled: int = 0  # failures that were the provider's own 429 (counted in failures too)
    input_tokens: int = 0  # every prompt token, the cached ones included
    cached_input_tokens: int = 0  # of input_tokens, those read from the provider's prompt cache
    cache_write_tokens: int = 0  # of input_tokens, those written to it
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
    """Totals over the models asked for, in one currency, broken down four ways.

    ``by_model``: every model asked for, each in its own currency. ``by_provider`` and
    ``by_capability`` (a model counts in each of its capabilities): the models' totals added
    up per provider and per capability. ``by_tenant``: each tenant with usage on the models
    asked for (ever: over a range, a tenant idle in it shows zeros), its usage added up over
    them; usage recorded without a tenant is in the totals but in no tenant's.

    Models priced in another currency than ``currency`` appear in ``by_model`` but are added
    neither to the totals nor to ``by_provider``, ``by_capability`` or ``by_tenant``:
    counters in different currencies never mix. A provider, capability or tenant with no model
    in ``currency`` has no entry.
    """

    by_model: Mapping[str, UsageTotals] = field(default_factory=dict)
    by_provider: Mapping[str, UsageTotals] = field(default_factory=dict)
    by_capability: Mapping[str, UsageTotals] = field(default_factory=dict)
    by_tenant: Mapping[str, UsageTotals] = field(default_factory=dict)


def totals_from(raw: Mapping[Any, Any], currency: str) -> UsageTotals:
    """The counters of a ledger hash (an HGETALL reply, str or bytes; fields it lacks are 0)."""
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
    if isinstance(value, bool) or not isinstance(value, int | float) or not -_MAX_S <= value <= _MAX_S:  # NaN too
        raise ConfigError(f"since/until must be datetimes or epoch seconds (up to year 9999), got {value!r}")
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
    indexes = range(start // width, end // width + 1)
    if len(indexes) > _MAX_BUCKETS:  # day buckets are kept 2 years: such a span is mostly empty
        raise ConfigError(f"since..until spans {len(indexes)} days: at most {_MAX_BUCKETS} (or all time)")
    return [keys.ledger(model_key, period, i, tenant) for i in indexes]


def _counters(totals: UsageTotals) -> dict[str, int]:
    return {name: getattr(totals, name) for name in (*_INTS, "latency_us_sum")}


def _add(groups: dict[str, UsageTotals], name: str, usage: UsageTotals, currency: str) -> None:
    groups[name] = groups.get(name, UsageTotals(currency=currency)).plus(usage)


def _sum(replies: Any, ledger_keys: Sequence[str], currency: str) -> UsageTotals:
    """The next ``len(ledger_keys)`` HGETALL replies, added up."""
    usage = UsageTotals(currency=currency)
    for _ in ledger_keys:
        usage = usage.plus(totals_from(next(replies) or {}, currency))
    return usage


def statistics(
    keys: Keys,
    models: Sequence[ModelSpec],
    *,
    tenant: str | None = None,
    since: datetime | float | None = None,
    until: datetime | float | None = None,
    currency: str = "USD",
) -> Flow[Statistics]:
    """Totals of ``models`` (for ``tenant`` only, if given) over all time or a range.

    Two pipelined round trips whatever the number of models: the models' hashes together
    with the tenant set of each model priced in ``currency``, then those tenants' hashes.
    With ``tenant`` given, ``by_tenant`` holds that tenant alone and one round trip does.
    """
    plan = [(m, _ledger_keys(keys, m.key, tenant, since, until)) for m in models]
    counted = [m for m in models if m.cost.currency == currency]  # the models the totals add
    with_sets = counted if tenant is None else []
    commands = (
        *(("HGETALL", key) for _, ledger_keys in plan for key in ledger_keys),
        *(("SMEMBERS", keys.ledger_tenants(m.key)) for m in with_sets),
    )
    replies = iter((yield Commands(commands, transaction=False)) if commands else [])
    by_model = {spec.key: _sum(replies, ledger_keys, spec.cost.currency) for spec, ledger_keys in plan}

    total = UsageTotals(currency=currency)
    by_provider: dict[str, UsageTotals] = {}
    by_capability: dict[str, UsageTotals] = {}
    for spec in counted:
        usage = by_model[spec.key]
        total = total.plus(usage)
        _add(by_provider, spec.provider, usage, currency)
        for capability in spec.capabilities:
            _add(by_capability, capability, usage, currency)

    by_tenant: dict[str, UsageTotals] = {}
    if tenant is not None:
        if counted:
            by_tenant[tenant] = total
    else:
        tenant_plan = [
            (name, _ledger_keys(keys, spec.key, name, since, until))
            for spec in with_sets
            for name in sorted(text(t) for t in next(replies) or ())
        ]
        tenant_commands = tuple(("HGETALL", key) for _, ledger_keys in tenant_plan for key in ledger_keys)
        tenant_replies = iter((yield Commands(tenant_commands, transaction=False)) if tenant_commands else [])
        for name, ledger_keys in tenant_plan:
            _add(by_tenant, name, _sum(tenant_replies, ledger_keys, currency), currency)

    def ordered(groups: dict[str, UsageTotals]) -> dict[str, UsageTotals]:
        return dict(sorted(groups.items()))

    return Statistics(
        **_counters(total),
        currency=currency,
        by_model=by_model,
        by_provider=ordered(by_provider),
        by_capability=ordered(by_capability),
        by_tenant=ordered(by_tenant),
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
    if not isinstance(granularity, str) or granularity not in _PERIODS:
        raise ConfigError(f"granularity must be one of {sorted(_PERIODS)}, got {granularity!r}")
    period, width = _PERIODS[granularity]
    start, end = _ms(since), _ms(until)
    if end < start:
        raise ConfigError("until is before since")
    indexes = range(start // width, end // width + 1)
    if len(indexes) > _MAX_BUCKETS:
        raise ConfigError(f"{len(indexes)} points: use a coarser granularity (at most 10,000 points)")
    replies = yield Commands(
        tuple(("HGETALL", keys.ledger(model.key, period, i, tenant)) for i in indexes), transaction=False
    )
    return [
        UsagePoint(i * width // 1000, totals_from(raw or {}, model.cost.currency))
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


def _performance_of(raw: Mapping[Any, Any] | None, model: ModelSpec, edges: Sequence[int]) -> Performance:
    """A model's performance from the HGETALL reply of its all-time hash."""
    histogram = {text(k): int(v) for k, v in (raw or {}).items()}
    return performance(totals_from(raw or {}, model.cost.currency), histogram, edges)


def model_performance(keys: Keys, model: ModelSpec, edges: Sequence[int]) -> Flow[Performance]:
    """A model's all-time performance, from its ledger totals."""
    (raw,) = yield Commands((("HGETALL", keys.ledger(model.key, "total")),), transaction=False)
    return _performance_of(raw, model, edges)


RANK_CRITERIA: tuple[str, ...] = ("cost_efficiency", "latency", "throughput", "success_rate")
_DIVIDE = decimal.Context(prec=28, rounding=decimal.ROUND_HALF_EVEN)  # whatever the caller's context


@dataclass(frozen=True)
class ModelRanking:
    """One model's row of :func:`rank_models`, from its all-time ledger totals.

    ``cost_per_success``: everything the model cost (failed requests too) divided by its
    successful requests, None without a success. ``cost_per_1k_output_tokens``: everything it
    cost (input too) per 1,000 output tokens, None without output. Both are exact to 28
    digits, in ``currency`` (the model's own). Latencies are upper edges of histogram buckets.
    """

    model_key: str
    currency: str
    requests: int
    success_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    output_tokens_per_second: float | None
    cost_per_success: Decimal | None
    cost_per_1k_output_tokens: Decimal | None


def _ranking(model: ModelSpec, raw: Mapping[Any, Any] | None, edges: Sequence[int]) -> ModelRanking:
    totals = totals_from(raw or {}, model.cost.currency)
    perf = _performance_of(raw, model, edges)
    cost = totals.total_cost
    return ModelRanking(
        model_key=model.key,
        currency=model.cost.currency,
        requests=totals.requests,
        success_rate=perf.success_rate,
        p50_ms=perf.p50_ms,
        p95_ms=perf.p95_ms,
        output_tokens_per_second=perf.output_tokens_per_second,
        cost_per_success=_DIVIDE.divide(cost, totals.successes) if totals.successes else None,
        cost_per_1k_output_tokens=(
            _DIVIDE.divide(cost.scaleb(3, _DIVIDE), totals.output_tokens) if totals.output_tokens else None
        ),
    )


def _sort_key(by: str, currency: str) -> Callable[[ModelRanking], tuple[Any, ...]]:
    """Rows with data before rows without; the criterion; then the model key, for a stable order."""

    def metric(row: ModelRanking) -> tuple[Any, ...] | None:
        if by == "cost_efficiency":
            if row.currency != currency or row.cost_per_success is None:
                return None  # no success, or a price that does not compare
            return (row.cost_per_success,)
        if by == "latency":
            return None if row.p95_ms is None or row.p50_ms is None else (row.p95_ms, row.p50_ms)
        if by == "throughput":
            tps = row.output_tokens_per_second
            return None if tps is None else (-tps,)
        return None if row.success_rate is None else (-row.success_rate, -row.requests)

    def key(row: ModelRanking) -> tuple[Any, ...]:
        value = metric(row)
        return (row.requests == 0, value is None, value or (), row.model_key)

    return key


def rank_models(
    keys: Keys,
    models: Sequence[ModelSpec],
    edges: Sequence[int],
    *,
    by: str = "cost_efficiency",
    min_requests: int = 1,
    limit: int | None = None,
    currency: str = "USD",
) -> Flow[list[ModelRanking]]:
    """``models`` ranked by their all-time ledger, in one pipelined round trip.

    ``by``:

    - ``"cost_efficiency"``: cheapest per successful request first. Only models priced in
      ``currency`` compare; the others follow them (costs in different currencies never mix).
    - ``"latency"``: lowest p95, then lowest p50, first.
    - ``"throughput"``: most output tokens per second of request time first.
    - ``"success_rate"``: highest first; on a tie, the one with more requests.

    Models with fewer than ``min_requests`` requests are left out (``0`` keeps every model);
    models lacking the criterion's figure (no success, no latency recorded) come after the
    others, and models with no requests last; ties go by model key. ``limit`` keeps the first
    rows. Arguments are checked here, before any round trip.

    >>> reg.rank_models("latency", capability="chat", min_requests=100, limit=5)  # doctest: +SKIP
    """
    if by not in RANK_CRITERIA:
        raise ConfigError(f"by must be one of {', '.join(RANK_CRITERIA)}; got {by!r}")
    if isinstance(min_requests, bool) or not isinstance(min_requests, int) or min_requests < 0:
        raise ConfigError(f"min_requests must be an integer >= 0, got {min_requests!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
    return _rank(keys, list(models), edges, by, min_requests, limit, currency)


def _rank(
    keys: Keys,
    models: list[ModelSpec],
    edges: Sequence[int],
    by: str,
    min_requests: int,
    limit: int | None,
    currency: str,
) -> Flow[list[ModelRanking]]:
    commands = tuple(("HGETALL", keys.ledger(m.key, "total")) for m in models)
    replies = (yield Commands(commands, transaction=False)) if commands else []
    rows = [_ranking(m, raw, edges) for m, raw in zip(models, replies, strict=True)]
    rows = sorted((row for row in rows if row.requests >= min_requests), key=_sort_key(by, currency))
    return rows if limit is None else rows[:limit]
