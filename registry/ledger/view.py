"""One read of everything a dashboard shows: the fleet's windows, spend, latency and budgets.

:func:`fleet_view` is what ``registry top`` and the Prometheus exporter draw from: per model
its all-time totals and latency histogram, today's and this month's usage (UTC), how full
each of its windows is now, and how often each limit refused; per tenant its usage on each
model and its budgets. Two pipelined round trips, whatever the number of models and tenants.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from registry._core import Commands, Flow, text
from registry.admission.ops import window_key
from registry.admission.types import applicable_limits
from registry.budgets.periods import DAY_MS, bounds, index_at
from registry.budgets.types import Budget, BudgetStatus
from registry.catalog.snapshot import Snapshot
from registry.keys import Keys
from registry.ledger.ops import LATENCY_EDGES_MS
from registry.ledger.stats import Performance, UsageTotals, performance, totals_from
from registry.models import ModelSpec

__all__ = ["FleetView", "ModelView", "WindowUse", "fleet_view"]


@dataclass(frozen=True)
class WindowUse:
    """How much of one sliding-window limit is in use now."""

    name: str  # a limit name: requests_per_minute, tokens_per_minute, input_tokens_per_minute, ...
    used: int
    limit: int
    window_s: int

    @property
    def fraction(self) -> float:
        return self.used / self.limit if self.limit else 1.0


@dataclass(frozen=True)
class ModelView:
    model: ModelSpec
    total: UsageTotals  # all time
    today: UsageTotals  # this UTC day
    month: UsageTotals  # this UTC calendar month
    windows: tuple[WindowUse, ...]
    denials: Mapping[str, int]  # limit name -> refusals, all time
    histogram: Mapping[str, int]  # lat_le_<edge> -> requests, all time
    performance: Performance


@dataclass(frozen=True)
class FleetView:
    at_ms: int
    models: tuple[ModelView, ...]
    tenant_total: Mapping[tuple[str, str], UsageTotals] = field(default_factory=dict)  # (model, tenant)
    tenant_today: Mapping[tuple[str, str], UsageTotals] = field(default_factory=dict)
    budgets: Mapping[str, tuple[BudgetStatus, ...]] = field(default_factory=dict)


def _window_use(
    raw: Mapping[Any, Any], name: str, limit: int, window_ms: int, bucket_ms: int, now_ms: int
) -> WindowUse:
    """What the buckets still inside the window hold (acquire.lua's count, read without writing)."""
    used = 0
    for index, value in raw.items():
        index = text(index)
        if not index.startswith("_") and (int(index) + 1) * bucket_ms > now_ms - window_ms:
            used += int(value)
    return WindowUse(name, used, limit, window_ms // 1000)


def fleet_view(
    keys: Keys, snapshot: Snapshot, now_ms: int, *, models: Sequence[ModelSpec] | None = None
) -> Flow[FleetView]:
    """Everything a dashboard shows, at ``now_ms`` (the server's clock, as best known)."""
    models = list(snapshot.models() if models is None else models)
    today = now_ms // DAY_MS
    month_start = bounds("month", index_at("month", now_ms))[0] // DAY_MS
    month_days = range(month_start, today + 1)
    commands: list[tuple[Any, ...]] = []
    plans = []
    for m in models:
        limits = applicable_limits(m, None)
        plans.append((m, limits))
        commands += [
            ("HGETALL", keys.ledger(m.key, "total")),
            *(("HGETALL", keys.ledger(m.key, "d", d)) for d in month_days),
            *(("HGETALL", window_key(keys, m.key, spec.name, None)) for spec in limits),
            ("HGETALL", keys.denials(m.key)),
            ("SMEMBERS", keys.ledger_tenants(m.key)),
        ]
    budgeted: list[tuple[str, Budget, int]] = [
        (tenant, b, index_at(b.period, now_ms)) for tenant, held in snapshot.budgets.items() for b in held
    ]
    commands += [("HGETALL", keys.budget_spend(t, b.scope, b.period, i)) for t, b, i in budgeted]
    replies = iter((yield Commands(tuple(commands), transaction=False)) if commands else [])

    views, tenants_of = [], []
    for m, limits in plans:
        currency = m.cost.currency
        raw_total = next(replies) or {}
        days = [totals_from(next(replies) or {}, currency) for _ in month_days]
        month = UsageTotals(currency=currency)
        for day in days:
            month = month.plus(day)
        windows = tuple(
            _window_use(next(replies) or {}, s.name, s.limit, s.window_ms, s.bucket_ms, now_ms) for s in limits
        )
        denials = {text(k): int(v) for k, v in (next(replies) or {}).items()}
        tenants_of.append((m, sorted(text(t) for t in (next(replies) or ()))))
        histogram = {text(k): int(v) for k, v in raw_total.items() if text(k).startswith("lat_le_")}
        total = totals_from(raw_total, currency)
        views.append(
            ModelView(
                m, total, days[-1], month, windows, denials, histogram, performance(total, histogram, LATENCY_EDGES_MS)
            )
        )
    budgets: dict[str, list[BudgetStatus]] = {}
    for tenant, budget, index in budgeted:
        fields = {text(k): text(v) for k, v in (next(replies) or {}).items()}
        budgets.setdefault(tenant, []).append(BudgetStatus.of(budget, index, fields, now_ms))

    pairs = [(m, t) for m, names in tenants_of for t in names]
    tenant_commands = tuple(
        ("HGETALL", keys.ledger(m.key, period, index, t))
        for m, t in pairs
        for period, index in (("total", None), ("d", today))
    )
    tenant_replies = iter((yield Commands(tenant_commands, transaction=False)) if tenant_commands else [])
    tenant_total, tenant_today = {}, {}
    for m, t in pairs:
        tenant_total[(m.key, t)] = totals_from(next(tenant_replies) or {}, m.cost.currency)
        tenant_today[(m.key, t)] = totals_from(next(tenant_replies) or {}, m.cost.currency)
    return FleetView(
        now_ms,
        tuple(views),
        tenant_total,
        tenant_today,
        {t: tuple(statuses) for t, statuses in budgets.items()},
    )
