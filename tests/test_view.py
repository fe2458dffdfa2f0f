"""fleet_view: what dashboards draw, worked out by hand, in two round trips."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from registry.budgets.periods import DAY_MS
from registry.testing import FakeClock, use_clock
from tests.conftest import model

DAY = 20_000  # 2024-10-04, a Friday; its month (October 2024) began on day 19_997
T0 = DAY * DAY_MS + 7_200_000  # 02:00 UTC


def test_fleet_view_by_hand(reg: Any) -> None:
    reg.register_models(
        [
            model(rate_limit={"requests_per_minute": 3, "tokens_per_minute": 10_000}),  # $30/$60 per M
            model("anthropic", "claude", cost={"input": "3", "output": "15"}),
        ]
    )
    clock = FakeClock(T0)
    use_clock(reg, clock)
    reg.set_budget("acme", "1", "day")
    # Two days ago (same month): one record, in the month but not today.
    clock.set((DAY - 2) * 86_400 + 60)
    reg.record_usage("openai:gpt-4", 1000, 1000, tenant="acme", latency_ms=40)  # $0.09
    clock.set(T0 / 1000)
    first = reg.acquire("openai:gpt-4", 1000, 1000, tenant="acme").reservation
    reg.settle(first, 1000, 500, latency_ms=300)  # $0.06; windows: 1 request, 1,500 tokens
    reg.acquire("openai:gpt-4", 100, 100)  # held: 1 request, 200 tokens
    reg.acquire("openai:gpt-4", 100, 100)
    assert not reg.acquire("openai:gpt-4", 100, 100).allowed  # the 4th in the minute: refused
    reg.record_usage("anthropic:claude", 1_000_000, 0, success=False, tenant="beta")  # $3

    view = reg.fleet_view()
    assert view.at_ms == T0
    by_key = {v.model.key: v for v in view.models}
    gpt, claude = by_key["openai:gpt-4"], by_key["anthropic:claude"]
    assert [(w.name, w.used, w.limit, w.window_s) for w in gpt.windows] == [
        ("requests_per_minute", 3, 3, 60),
        ("tokens_per_minute", 1_500 + 200 + 200, 10_000, 60),
    ]
    assert gpt.denials == {"requests_per_minute": 1}
    assert (gpt.total.requests, gpt.total.total_cost) == (2, Decimal("0.15"))
    assert (gpt.today.requests, gpt.today.total_cost) == (1, Decimal("0.06"))
    assert (gpt.month.requests, gpt.month.total_cost) == (2, Decimal("0.15"))
    assert gpt.histogram == {"lat_le_50": 1, "lat_le_500": 1}
    assert (gpt.performance.p50_ms, gpt.performance.p95_ms) == (50.0, 500.0)
    assert claude.windows == ()
    assert (claude.today.failures, claude.today.total_cost) == (1, Decimal(3))
    assert view.tenant_total[("openai:gpt-4", "acme")].total_cost == Decimal("0.15")
    assert view.tenant_today[("openai:gpt-4", "acme")].total_cost == Decimal("0.06")
    assert view.tenant_today[("anthropic:claude", "beta")].failures == 1
    (acme,) = view.budgets["acme"]
    assert (acme.spent, acme.held, acme.thresholds_reached, acme.denied) == (Decimal("0.06"), 0, (), 0)
    assert list(view.budgets) == ["acme"]

    # A minute later the minute windows are empty again.
    clock.advance(61)
    later = reg.fleet_view()
    assert [w.used for w in {v.model.key: v for v in later.models}["openai:gpt-4"].windows] == [0, 0]


def test_input_and_output_windows_in_the_view(reg: Any) -> None:
    reg.register_model(
        model(
            "anthropic",
            "claude",
            rate_limit={
                "requests_per_minute": 50,
                "input_tokens_per_minute": 30_000,
                "output_tokens_per_minute": 8_000,
            },
        )
    )
    use_clock(reg, FakeClock(T0))
    held = reg.acquire("anthropic:claude", 2_000, 1_000).reservation
    reg.acquire("anthropic:claude", 500, 300)
    reg.settle(held, 2_000, 120)
    (view,) = reg.fleet_view().models
    assert [(w.name, w.used, w.limit, w.window_s) for w in view.windows] == [
        ("requests_per_minute", 2, 50, 60),
        ("input_tokens_per_minute", 2_500, 30_000, 60),
        ("output_tokens_per_minute", 120 + 300, 8_000, 60),
    ]


def test_fleet_view_takes_two_round_trips_for_a_hundred_models(reg: Any) -> None:
    reg.register_models([model(id=f"m{i}", rate_limit={"requests_per_minute": 100}) for i in range(100)])
    reg.set_budget("acme", "5", "month")
    for i in range(0, 100, 10):
        reg.record_usage(f"openai:m{i}", 10, 10, tenant=f"t{i % 3}")
    reg.refresh()
    target = getattr(reg, "_target", reg)
    sent: list[Any] = []
    execute = target._execute

    def counting(request: Any) -> Any:
        sent.append(request)
        return execute(request)

    target._execute = counting
    try:
        view = reg.fleet_view()
    finally:
        target._execute = execute
    ledger_reads = [r for r in sent if any("catalog" not in str(c[1]) for c in getattr(r, "commands", ()))]
    assert len(ledger_reads) == 2
    assert len(view.models) == 100
    assert len(view.tenant_total) == 10
    assert sum(t.requests for t in view.tenant_total.values()) == 10
