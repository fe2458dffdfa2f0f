"""Reading the ledger for a dashboard: breakdowns per provider, capability and tenant, a ranking
of models, and a bounded number of round trips however many models."""

from __future__ import annotations

import inspect
from decimal import Decimal
from typing import Any

import pytest

from registry import ConfigError
from registry._core import Commands, Request, run
from registry.keys import Keys
from registry.ledger import stats
from registry.ledger.ops import LATENCY_EDGES_MS
from registry.ledger.stats import ModelRanking, UsageTotals
from registry.models import ModelSpec
from registry.testing import FakeClock, use_clock
from tests.conftest import model

K = Keys()


def usd(units: str) -> int:
    """A dollar amount as ledger units (nano-dollars)."""
    return int(Decimal(units) * 10**9)


# -- breakdowns ----------------------------------------------------------------------------------

DASHBOARD = [
    model("openai", "gpt-4", capabilities=["chat", "tools"]),  # $30 / $60 per M
    model("openai", "mini", cost={"input": "1", "output": "2"}, capabilities=["chat"]),
    model("anthropic", "claude", cost={"input": "3", "output": "15"}, capabilities=["chat", "vision"]),
    model("custom", "eur", cost={"input": "1", "output": "1", "currency": "EUR"}, capabilities=["chat"]),
    model("google", "idle", capabilities=["embedding"]),  # never used
]


def _record_dashboard(reg: Any) -> None:
    reg.register_models(DASHBOARD)
    # 1,000 x 30/M + 500 x 60/M = 0.03 + 0.03 = $0.06
    reg.record_usage("openai:gpt-4", 1000, 500, tenant="acme", latency_ms=400)
    # 2,000 x 30/M = $0.06, failed
    reg.record_usage("openai:gpt-4", 2000, 0, success=False, tenant="beta", latency_ms=1200)
    # 10,000 x 1/M + 5,000 x 2/M = 0.01 + 0.01 = $0.02
    reg.record_usage("openai:mini", 10_000, 5000, tenant="acme")
    # 1,000 x 3/M + 1,000 x 15/M = 0.003 + 0.015 = $0.018
    reg.record_usage("anthropic:claude", 1000, 1000, tenant="beta")
    # 100 x 3/M = $0.0003, no tenant
    reg.record_usage("anthropic:claude", 100, 0)
    # 1,000 x 1/M + 1,000 x 1/M = EUR 0.002: never in a USD total
    reg.record_usage("custom:eur", 1000, 1000, tenant="acme")


def test_totals_per_provider_capability_and_tenant(reg: Any) -> None:
    _record_dashboard(reg)
    s = reg.get_statistics()

    # the unchanged contract: $0.06 + $0.06 + $0.02 + $0.018 + $0.0003 = $0.1583 over 5 requests
    assert (s.currency, s.total_cost, s.requests, s.successes, s.failures) == ("USD", Decimal("0.1583"), 5, 4, 1)
    assert (s.input_tokens, s.output_tokens) == (1000 + 2000 + 10_000 + 1000 + 100, 500 + 5000 + 1000)
    assert list(s.by_model) == ["anthropic:claude", "custom:eur", "google:idle", "openai:gpt-4", "openai:mini"]
    assert (s.by_model["custom:eur"].currency, s.by_model["custom:eur"].total_cost) == ("EUR", Decimal("0.002"))

    # per provider: openai = gpt-4 ($0.06 + $0.06) + mini ($0.02); custom is EUR: no entry
    assert s.by_provider == {
        "anthropic": UsageTotals(
            requests=2, successes=2, input_tokens=1100, output_tokens=1000, cost_units=usd("0.0183")
        ),
        "google": UsageTotals(),  # a model asked for, with no usage
        "openai": UsageTotals(
            requests=3,
            successes=2,
            failures=1,
            input_tokens=13_000,
            output_tokens=5500,
            cost_units=usd("0.14"),
            latency_count=2,
            latency_us_sum=1_600_000,  # 400 ms + 1,200 ms
        ),
    }
    # per capability: a model counts in each of its own; chat = openai $0.14 + anthropic $0.0183
    assert list(s.by_capability) == ["chat", "embedding", "tools", "vision"]
    assert (s.by_capability["chat"].requests, s.by_capability["chat"].total_cost) == (5, Decimal("0.1583"))
    assert (s.by_capability["tools"].requests, s.by_capability["tools"].total_cost) == (2, Decimal("0.12"))
    assert s.by_capability["vision"] == s.by_provider["anthropic"]
    assert s.by_capability["embedding"] == UsageTotals()

    # per tenant: acme = gpt-4 $0.06 + mini $0.02 (its EUR 0.002 is not added);
    # beta = gpt-4 $0.06 (failed) + claude $0.018; the $0.0003 without a tenant is in no tenant's
    assert s.by_tenant == {
        "acme": UsageTotals(
            requests=2,
            successes=2,
            input_tokens=11_000,
            output_tokens=5500,
            cost_units=usd("0.08"),
            latency_count=1,
            latency_us_sum=400_000,
        ),
        "beta": UsageTotals(
            requests=2,
            successes=1,
            failures=1,
            input_tokens=3000,
            output_tokens=1000,
            cost_units=usd("0.078"),
            latency_count=1,
            latency_us_sum=1_200_000,
        ),
    }
    assert s.by_tenant["acme"].total_cost + s.by_tenant["beta"].total_cost + Decimal("0.0003") == s.total_cost


def test_breakdowns_keep_to_one_currency_and_follow_the_filters(reg: Any) -> None:
    _record_dashboard(reg)

    eur = reg.get_statistics(currency="eur")  # only custom:eur adds up: EUR 0.002
    assert (eur.currency, eur.total_cost, eur.requests) == ("EUR", Decimal("0.002"), 1)
    assert list(eur.by_provider) == ["custom"]
    assert {k: v.total_cost for k, v in eur.by_capability.items()} == {"chat": Decimal("0.002")}
    assert {k: (v.currency, v.total_cost) for k, v in eur.by_tenant.items()} == {"acme": ("EUR", Decimal("0.002"))}
    assert len(eur.by_model) == 5  # every model is still listed, each in its own currency

    beta = reg.get_statistics(tenant="beta")  # gpt-4 $0.06 (failed) + claude $0.018
    assert beta.by_tenant == {"beta": reg.get_statistics().by_tenant["beta"]}  # the same, seen from either side
    assert (beta.by_tenant["beta"].requests, beta.by_tenant["beta"].total_cost) == (2, Decimal("0.078"))
    assert {k: v.total_cost for k, v in beta.by_provider.items()} == {
        "anthropic": Decimal("0.018"),
        "google": Decimal(0),
        "openai": Decimal("0.06"),
    }
    assert {k: v.total_cost for k, v in beta.by_capability.items()} == {
        "chat": Decimal("0.078"),
        "embedding": Decimal(0),
        "tools": Decimal("0.06"),
        "vision": Decimal("0.018"),
    }
    assert reg.get_statistics(tenant="nobody").by_tenant == {"nobody": UsageTotals()}

    openai = reg.get_statistics(provider="openai")  # tenants summed over openai's models only
    assert list(openai.by_provider) == ["openai"]
    assert {k: v.total_cost for k, v in openai.by_tenant.items()} == {
        "acme": Decimal("0.08"),  # gpt-4 $0.06 + mini $0.02
        "beta": Decimal("0.06"),  # gpt-4 $0.06
    }
    mini = reg.get_statistics(model="openai:mini")
    assert {k: v.total_cost for k, v in mini.by_tenant.items()} == {"acme": Decimal("0.02")}
    assert {k: v.requests for k, v in mini.by_capability.items()} == {"chat": 1}


def test_breakdowns_over_a_time_range(reg: Any) -> None:
    reg.register_models(DASHBOARD[:3])
    day = 20_000 * 86_400  # a UTC midnight, in seconds
    clock = FakeClock()
    clock.set(day + 10 * 3600)
    use_clock(reg, clock)
    reg.record_usage("openai:gpt-4", 1000, 500, tenant="acme")  # $0.06
    reg.record_usage("anthropic:claude", 1000, 1000, tenant="beta")  # $0.018
    clock.advance(86_400)
    reg.record_usage("openai:mini", 10_000, 5000, tenant="acme")  # $0.02, the next day

    first = reg.get_statistics(since=day, until=day + 86_399)  # hour buckets of the first day
    assert first.total_cost == Decimal("0.078")
    assert {k: v.total_cost for k, v in first.by_tenant.items()} == {"acme": Decimal("0.06"), "beta": Decimal("0.018")}
    assert {k: v.total_cost for k, v in first.by_provider.items()} == {
        "anthropic": Decimal("0.018"),
        "openai": Decimal("0.06"),
    }
    second = reg.get_statistics(since=day + 86_400, until=day + 2 * 86_400 - 1)
    # beta has usage on claude, none that day: listed with zeros
    assert {k: v.total_cost for k, v in second.by_tenant.items()} == {"acme": Decimal("0.02"), "beta": Decimal(0)}
    long = reg.get_statistics(since=day - 200 * 86_400, until=day + 2 * 86_400)  # day buckets
    assert {k: v.total_cost for k, v in long.by_tenant.items()} == {"acme": Decimal("0.08"), "beta": Decimal("0.018")}


def test_the_statistics_flow_reads_tenant_sets_then_tenant_hashes() -> None:
    """No Redis: the two requests the flow makes, and what it does with the replies."""
    usd_model = ModelSpec.model_validate(model("openai", "gpt-4"))
    eur_model = ModelSpec.model_validate(model("custom", "eur", cost={"input": "1", "output": "1", "currency": "EUR"}))
    flow = stats.statistics(K, [usd_model, eur_model])
    first = next(flow)
    assert first == Commands(
        (
            ("HGETALL", K.ledger("openai:gpt-4", "total")),
            ("HGETALL", K.ledger("custom:eur", "total")),
            ("SMEMBERS", K.ledger_tenants("openai:gpt-4")),  # not the EUR model's: never added up
        ),
        transaction=False,
    )
    second = flow.send([{"requests": "3", "cost_units": "9"}, {"requests": "1"}, {b"beta", "acme"}])
    assert second == Commands(
        (
            ("HGETALL", K.ledger("openai:gpt-4", "total", tenant="acme")),
            ("HGETALL", K.ledger("openai:gpt-4", "total", tenant="beta")),
        ),
        transaction=False,
    )
    with pytest.raises(StopIteration) as done:
        flow.send([{"requests": "2", "cost_units": "6"}, None])
    result = done.value.value
    assert (result.requests, result.cost_units) == (3, 9)
    assert result.by_tenant == {"acme": UsageTotals(requests=2, cost_units=6), "beta": UsageTotals()}

    def no_io(request: Request) -> Any:
        raise AssertionError(f"unexpected request {request}")

    assert run(stats.statistics(K, []), no_io).by_tenant == {}
    assert run(stats.rank_models(K, [], LATENCY_EDGES_MS), no_io) == []


# -- ranking -------------------------------------------------------------------------------------

RANKED = [  # every one has "chat"
    model("openai", "p", cost={"input": "1", "output": "1"}),
    model("openai", "q", cost={"input": "10", "output": "10"}, capabilities=["chat", "tools"]),
    model("openai", "r", cost={"input": "100", "output": "100"}),
    model("anthropic", "s", cost={"input": "3", "output": "15"}, capabilities=["chat", "tools", "vision"]),
    model("custom", "eur", cost={"input": "0.1", "output": "1", "currency": "EUR"}),
    model("openai", "z"),  # never used
]


def _record_ranked(reg: Any) -> None:
    reg.register_models(RANKED)
    for _ in range(4):  # P: cheap and slow. 2,000 x $1/M = $0.002 each, 2 s each
        reg.record_usage("openai:p", 1000, 1000, latency_ms=2000)
    for _ in range(5):  # Q: fast, little output. 1,010 x $10/M = $0.0101 each, 40 ms each
        reg.record_usage("openai:q", 1000, 10, latency_ms=40)
    for i in range(5):  # R: dear, 1 failure in 5. 2,000 x $100/M = $0.2 each, 400 ms each
        reg.record_usage("openai:r", 1000, 1000, latency_ms=400, success=i != 0)
    for i in range(10):  # S: 1,000 x $3/M + 100 x $15/M = $0.0045 each; 6 at 80 ms, 4 at 450 ms
        reg.record_usage("anthropic:s", 1000, 100, latency_ms=80 if i < 6 else 450)
    for _ in range(2):  # EUR: 1,000 x EUR 0.1/M = EUR 0.0001 each, no latency given
        reg.record_usage("custom:eur", 1000, 0)


def test_rows_are_worked_out_from_the_ledger(reg: Any) -> None:
    _record_ranked(reg)
    rows = {row.model_key: row for row in reg.rank_models(min_requests=0)}
    # P: 4 x $0.002 = $0.008 over 4 successes; per 1k output: $0.008 x 1000 / 4,000;
    # every latency <= 2,500 ms; 4,000 output tokens in 8 s
    assert rows["openai:p"] == ModelRanking(
        "openai:p", "USD", 4, 1.0, 2500.0, 2500.0, 500.0, Decimal("0.002"), Decimal("0.002")
    )
    # Q: $0.0505 / 5; $0.0505 x 1000 / 50; <= 50 ms; 50 tokens in 0.2 s
    assert rows["openai:q"] == ModelRanking(
        "openai:q", "USD", 5, 1.0, 50.0, 50.0, 250.0, Decimal("0.0101"), Decimal("1.01")
    )
    # R: $1.0 / 4 successes (the failure is paid for too); $1.0 x 1000 / 5,000; <= 500 ms; 5,000 in 2 s
    assert rows["openai:r"] == ModelRanking(
        "openai:r", "USD", 5, 0.8, 500.0, 500.0, 2500.0, Decimal("0.25"), Decimal("0.2")
    )
    # S: p50 is the 5th of 10 (<= 100 ms), p95 the 10th (<= 500 ms); 1,000 tokens in 6 x 0.08 + 4 x 0.45 = 2.28 s
    assert rows["anthropic:s"] == ModelRanking(
        "anthropic:s", "USD", 10, 1.0, 100.0, 500.0, 1000 / 2.28, Decimal("0.0045"), Decimal("0.045")
    )
    # EUR: no latency, no output
    assert rows["custom:eur"] == ModelRanking("custom:eur", "EUR", 2, 1.0, None, None, None, Decimal("0.0001"), None)
    assert rows["openai:z"] == ModelRanking("openai:z", "USD", 0, None, None, None, None, None, None)


def test_each_criterion_gives_its_own_order(reg: Any) -> None:
    _record_ranked(reg)

    def order(by: str, **kwargs: Any) -> list[str]:
        return [row.model_key for row in reg.rank_models(by, **kwargs)]

    # cost per successful request: P $0.002 < S $0.0045 < Q $0.0101 < R $0.25; EUR 0.0001
    # does not compare with dollars: after them
    assert order("cost_efficiency") == ["openai:p", "anthropic:s", "openai:q", "openai:r", "custom:eur"]
    assert [row.model_key for row in reg.rank_models()] == order("cost_efficiency")  # the default
    # (p95, p50): Q (50, 50) < S (500, 100) < R (500, 500) < P (2500, 2500); EUR has no latency
    assert order("latency") == ["openai:q", "anthropic:s", "openai:r", "openai:p", "custom:eur"]
    # tokens/s: R 2,500 > P 500 > S 438.6 > Q 250; EUR has none
    assert order("throughput") == ["openai:r", "openai:p", "anthropic:s", "openai:q", "custom:eur"]
    # 100 %: S (10 requests), Q (5), P (4), EUR (2); then R 80 %
    assert order("success_rate") == ["anthropic:s", "openai:q", "openai:p", "custom:eur", "openai:r"]

    # a model with no requests is left out by default, and last when asked for
    assert order("latency", min_requests=0)[-1] == "openai:z"
    assert order("throughput", min_requests=0)[-1] == "openai:z"
    # fewer than 5 requests: P (4) and EUR (2) are left out
    assert order("cost_efficiency", min_requests=5) == ["anthropic:s", "openai:q", "openai:r"]
    assert order("latency", limit=2) == ["openai:q", "anthropic:s"]
    assert order("throughput", provider="openai") == ["openai:r", "openai:p", "openai:q"]
    assert order("cost_efficiency", capability="chat") == order("cost_efficiency")
    assert order("cost_efficiency", capability="tools") == ["anthropic:s", "openai:q"]
    assert order("latency", capability=["tools", "vision"]) == ["anthropic:s"]


def test_bad_ranking_arguments_raise_config_errors(reg: Any) -> None:
    reg.register_models(RANKED)
    with pytest.raises(ConfigError, match="by must be one of cost_efficiency, latency, throughput, success_rate"):
        reg.rank_models("speed")
    for bad in (-1, 1.5, "3", True, None):
        with pytest.raises(ConfigError, match="min_requests must be an integer >= 0"):
            reg.rank_models(min_requests=bad)
    for bad in (0, -2, 2.0, False):
        with pytest.raises(ConfigError, match="limit must be a positive integer or None"):
            reg.rank_models(limit=bad)


# -- round trips ---------------------------------------------------------------------------------


def _count_requests(reg: Any, monkeypatch: pytest.MonkeyPatch) -> list[Request]:
    """Every request the client sends from now on (sync, or the async client behind the facade)."""
    target = getattr(reg, "_target", reg)
    inner = target._execute
    sent: list[Request] = []
    if inspect.iscoroutinefunction(inner):

        async def counted_async(request: Request) -> Any:
            sent.append(request)
            return await inner(request)

        monkeypatch.setattr(target, "_execute", counted_async)
    else:

        def counted(request: Request) -> Any:
            sent.append(request)
            return inner(request)

        monkeypatch.setattr(target, "_execute", counted)
    return sent


def _ledger_trips(sent: list[Request]) -> list[Commands]:
    """The requests that read the ledger; the others may only be the catalog's refresh."""
    ledger = [r for r in sent if isinstance(r, Commands) and any(":l:" in str(c[1]) for c in r.commands)]
    others = [r for r in sent if r not in ledger]
    assert all(str(c[1]).startswith(K.catalog_tag) for r in others for c in r.commands), others
    return ledger


def test_a_dashboard_of_100_models_costs_two_round_trips(reg: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    reg.register_models(
        [model(f"p{i % 4}", f"m{i}", capabilities=["chat", f"c{i % 3}"]) for i in range(100)]
    )  # $30 / $60 per M
    for i in range(100):
        # each model: 1,000 input tokens ($0.03) for tenant t<i % 5>, and 1 output token ($0.00006)
        # for tenant u<i % 2>
        reg.record_usage(f"p{i % 4}:m{i}", 1000, 0, tenant=f"t{i % 5}", latency_ms=i)
        reg.record_usage(f"p{i % 4}:m{i}", 0, 1, tenant=f"u{i % 2}", success=i % 10 != 0)
    sent = _count_requests(reg, monkeypatch)

    s = reg.get_statistics()
    trips = _ledger_trips(sent)
    assert len(trips) == 2
    # 100 totals and 100 tenant sets, then 100 x 2 tenant totals
    assert [len(t.commands) for t in trips] == [200, 200]
    assert s.total_cost == 100 * (Decimal("0.03") + Decimal("0.00006"))
    # 20 models each for t0..t4: 20 x $0.03; 50 models each for u0, u1: 50 x $0.00006
    assert {k: v.total_cost for k, v in s.by_tenant.items()} == {
        **{f"t{j}": Decimal("0.60") for j in range(5)},
        **{f"u{j}": Decimal("0.003") for j in range(2)},
    }
    assert {k: v.requests for k, v in s.by_provider.items()} == {f"p{j}": 50 for j in range(4)}  # 25 models x 2
    assert s.by_capability["chat"].requests == 200
    assert [s.by_capability[f"c{j}"].requests for j in range(3)] == [68, 66, 66]  # 34, 33, 33 models x 2

    sent.clear()
    reg.get_statistics(tenant="t3")  # no tenant sets to read: one round trip
    assert len(_ledger_trips(sent)) == 1

    sent.clear()
    reg.get_statistics(since=0, until=100 * 86_400)  # a range of day buckets: still two
    assert len(_ledger_trips(sent)) == 2

    sent.clear()
    ranked = reg.rank_models("success_rate")
    trips = _ledger_trips(sent)
    assert len(trips) == 1
    assert len(trips[0].commands) == 100
    assert len(ranked) == 100
    # the failing ones (i = 0, 10, ..., 90: 1 of 2 requests) last, by key
    assert [row.model_key for row in ranked[-10:]] == sorted(f"p{i % 4}:m{i}" for i in range(0, 100, 10))
