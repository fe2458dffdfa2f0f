"""Budgets: definitions in the catalog, holds at admission, spend at settle, events, concurrency."""

from __future__ import annotations

import multiprocessing as mp
from decimal import Decimal
from typing import Any

import pytest
import redis

from registry import ConfigError, ModelNotFoundError, Registry, RequestTooLargeError
from registry.budgets.periods import DAY_MS, bounds, index_at
from registry.keys import Keys
from registry.testing import FakeClock, use_clock
from tests.conftest import model

K = Keys()
DAY0 = 20_000  # a UTC day number: 2024-10-04
T0 = DAY0 * DAY_MS + 3_600_000  # 01:00 that day
# $30 / $60 per million tokens: a request of 1,000 in and at most 1,000 out is held at
# 1,000 x 30/M + 1,000 x 60/M = $0.09 = 90,000,000 units (nano-dollars).
EST = 90_000_000


def spend(r: redis.Redis, scope: str = "*", period: str = "day", index: int = DAY0, tenant: str = "acme") -> dict:
    return r.hgetall(K.budget_spend(tenant, scope, period, index))


def events(r: redis.Redis, tenant: str = "acme") -> list[dict[str, str]]:
    return [fields for _, fields in r.xrange(K.budget_events(tenant))]


@pytest.fixture
def clocked(reg: Any) -> tuple[Any, FakeClock]:
    eur = model("acme-eu", "m", cost={"input": "1", "output": "1", "currency": "EUR"})
    reg.register_models([model(max_output_tokens=1000), model(id="gpt-4o-mini"), eur])
    clock = FakeClock(T0)
    use_clock(reg, clock)
    return reg, clock


def test_set_get_replace_and_delete_budgets(make_registry: Any) -> None:
    reg = make_registry()
    other = make_registry(watch=True)  # another worker, following the catalog
    reg.register_model(model())
    budget = reg.set_budget("acme", "10", "day")
    assert (budget.amount, budget.period, budget.scope, budget.thresholds) == (Decimal(10), "day", "*", (50, 80, 100))
    reg.set_budget("acme", Decimal("250.5"), "month", model="openai:gpt-4", thresholds=[90])
    reg.set_budget("acme", 12, "day")  # replaces the day budget of every model
    reg.set_budget("beta", "1", "week")
    assert [(b.scope, b.period, b.amount) for b in reg.get_budgets("acme")] == [
        ("*", "day", Decimal(12)),
        ("openai:gpt-4", "month", Decimal("250.5")),
    ]
    assert len(reg.get_budgets()) == 3
    other.refresh()
    assert other.get_budgets("acme") == reg.get_budgets("acme")
    assert reg.delete_budget("acme", "month", model="openai:gpt-4")
    assert not reg.delete_budget("acme", "month", model="openai:gpt-4")
    assert reg.delete_budget("beta", "week")
    assert reg.get_budgets("beta") == []
    other.refresh()
    assert [b.period for b in other.get_budgets()] == ["day"]
    assert reg.list_models()[0].key == "openai:gpt-4"  # budgets are not models


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"amount": 0.5}, "never a float"),
        ({"amount": "0"}, "amount"),
        ({"amount": "1.0000000001"}, "9 decimal places"),
        ({"amount": "10000000000"}, "amount"),
        ({"period": "year"}, "period"),
        ({"thresholds": [80, 50]}, "increasing"),
        ({"thresholds": [0]}, "thresholds"),
        ({"currency": "XXX1"}, "currency"),
        ({"tenant": "a b"}, "tenant"),
    ],
)
def test_bad_budgets_are_refused_and_write_nothing(reg: Any, r: redis.Redis, kwargs: dict, message: str) -> None:
    reg.register_model(model())
    before = r.hget(K.meta, "revision")
    args = {"tenant": "acme", "amount": "1", "period": "day", **kwargs}
    with pytest.raises(ConfigError, match=message):
        reg.set_budget(args.pop("tenant"), args.pop("amount"), **args)
    assert r.hget(K.meta, "revision") == before
    with pytest.raises(ModelNotFoundError):
        reg.set_budget("acme", "1", model="openai:nope")


def test_acquire_holds_the_estimate_and_refuses_beyond_the_budget(clocked: Any, r: redis.Redis) -> None:
    reg, _ = clocked
    reg.set_budget("acme", "1", "day")  # 1,000,000,000 units: 11 holds of 90,000,000 fit, not 12
    held = []
    for _ in range(11):
        decision = reg.acquire("openai:gpt-4", 1000, tenant="acme")
        assert decision.allowed
        held.append(decision.reservation)
    assert decision.remaining["budget:*:day"] == 10**9 - 11 * EST
    assert spend(r)["held"] == str(11 * EST)
    refused = reg.acquire("openai:gpt-4", 1000, tenant="acme")
    assert (refused.allowed, refused.denied_by) == (False, "budget:*:day")
    assert refused.retry_after == 1.0  # holds may be settled below their estimate soon
    assert spend(r)["denied"] == "1"  # counted on the refusing budget's period
    assert not reg.check_rate_limit("openai:gpt-4", 1000, tenant="acme").allowed
    assert spend(r)["denied"] == "1"  # a peek counts nothing
    assert reg.acquire("openai:gpt-4", 1000).allowed  # no tenant: no budget
    assert reg.acquire("openai:gpt-4", 1000, tenant="beta").allowed  # another tenant

    # Settle with the real use: 1,000 in, 500 out = $0.06; the hold is replaced by the spend.
    assert reg.settle(held[0], 1000, 500)
    assert spend(r)["spent"] == "60000000"
    assert spend(r)["held"] == str(10 * EST)
    assert not reg.settle(held[0], 1000, 500)  # once
    assert spend(r)["spent"] == "60000000"
    assert reg.release(held[1])
    assert spend(r)["held"] == str(9 * EST)
    assert reg.acquire("openai:gpt-4", 1000, tenant="acme").allowed  # room again

    status = {s.budget.period: s for s in reg.budget_status("acme")}["day"]
    assert (status.spent, status.held) == (Decimal("0.06"), Decimal("0.9"))
    assert status.remaining == Decimal("0.04")
    assert status.period_start.timestamp() * 1000 == DAY0 * DAY_MS
    assert status.thresholds_reached == ()


def test_a_spent_budget_refuses_until_its_period_ends_then_starts_fresh(clocked: Any, r: redis.Redis) -> None:
    reg, clock = clocked
    reg.set_budget("acme", "0.1", "day")
    first = reg.acquire("openai:gpt-4", 1000, tenant="acme").reservation
    reg.settle(first, 1000, 1000)  # spends $0.09 of $0.10
    refused = reg.acquire("openai:gpt-4", 1000, tenant="acme")
    assert not refused.allowed
    assert refused.retry_after == (DAY0 + 1) * 86_400 - T0 / 1000  # spend alone leaves no room: next day
    clock.set((DAY0 + 1) * 86_400 + 1)
    assert reg.acquire("openai:gpt-4", 1000, tenant="acme").allowed  # a new day, no reset job
    assert spend(r, index=DAY0 + 1)["held"] == str(EST)
    assert spend(r)["spent"] == str(EST)  # yesterday's books are kept
    assert 0 < r.pttl(K.budget_spend("acme", "*", "day", DAY0)) <= 40 * DAY_MS


def test_week_and_month_budgets_and_a_model_budget(clocked: Any, r: redis.Redis) -> None:
    reg, _ = clocked
    reg.set_budget("acme", "100", "week")
    reg.set_budget("acme", "0.1", "month", model="openai:gpt-4o-mini")
    reg.set_budget("acme", "1", "day", currency="EUR")
    held = reg.acquire("openai:gpt-4", 1000, 1000, tenant="acme").reservation
    assert [p[:2] for p in held.budgets] == [("*", "week")]  # not the EUR one, not the model's
    mini = reg.acquire("openai:gpt-4o-mini", 1000, 1000, tenant="acme").reservation
    assert [p[:2] for p in mini.budgets] == [("*", "week"), ("openai:gpt-4o-mini", "month")]
    assert not reg.acquire("openai:gpt-4o-mini", 1000, 1000, tenant="acme").allowed  # $0.18 > $0.10
    eu = reg.acquire("acme-eu:m", 1000, 1000, tenant="acme").reservation
    assert [p[:2] for p in eu.budgets] == [("*", "day")]  # EUR: the EUR day budget only
    week, month = index_at("week", T0), index_at("month", T0)
    assert spend(r, period="week", index=week)["held"] == str(2 * EST)
    assert spend(r, "openai:gpt-4o-mini", "month", month)["held"] == str(EST)
    assert spend(r)["held"] == "2000000"  # 2,000 tokens at EUR 1/M
    assert bounds("week", week)[0] <= T0 < bounds("week", week)[1]


def test_a_request_bigger_than_the_budget_is_refused_for_good(clocked: Any, r: redis.Redis) -> None:
    reg, _ = clocked
    reg.set_budget("acme", "0.05", "day")
    with pytest.raises(RequestTooLargeError, match="budget:\\*:day"):
        reg.acquire("openai:gpt-4", 1000, 1000, tenant="acme")
    assert spend(r) == {"denied": "1"}  # counted as a refusal of that budget, nothing held
    assert 0 < r.pttl(K.budget_spend("acme", "*", "day", DAY0)) <= 40 * DAY_MS


def test_a_refusal_by_the_windows_gives_the_hold_back(clocked: Any, r: redis.Redis) -> None:
    reg, _ = clocked
    reg.update_model("openai:gpt-4", {"rate_limit": {"requests_per_minute": 1}})
    reg.set_budget("acme", "1", "day")
    assert reg.acquire("openai:gpt-4", 1000, tenant="acme").allowed
    refused = reg.acquire("openai:gpt-4", 1000, tenant="acme")
    assert (refused.allowed, refused.denied_by) == (False, "requests_per_minute")
    assert spend(r)["held"] == str(EST)  # the refused request's hold was given back
    assert len([f for f in spend(r) if f.startswith("h:")]) == 1
    # Too large for the windows (more tokens than the TPM): the budget hold is given back too.
    reg.update_model("openai:gpt-4", {"rate_limit": {"tokens_per_minute": 5}})
    with pytest.raises(RequestTooLargeError, match="tokens_per_minute"):
        reg.acquire("openai:gpt-4", 10, 0, tenant="acme")
    assert spend(r)["held"] == str(EST)


def test_holds_never_settled_lapse_after_the_reservation_ttl(clocked: Any, r: redis.Redis) -> None:
    reg, clock = clocked
    reg.set_budget("acme", "0.2", "day")
    lost = reg.acquire("openai:gpt-4", 1000, tenant="acme").reservation  # its worker dies
    reg.acquire("openai:gpt-4", 1000, tenant="acme")
    assert not reg.acquire("openai:gpt-4", 1000, tenant="acme").allowed
    assert reg.budget_status("acme")[0].held == Decimal("0.18")
    clock.advance(3600)  # the default reservation TTL: both holds lapse
    assert reg.budget_status("acme")[0].held == Decimal(0)
    assert reg.acquire("openai:gpt-4", 1000, tenant="acme").allowed
    assert spend(r)["held"] == str(EST)  # the lapsed ones were swept, once
    reg.settle(lost, 1000, 1000)  # a late settle still counts what was spent, once
    assert spend(r)["spent"] == str(EST)
    assert spend(r)["held"] == str(EST)
    assert not reg.settle(lost, 1000, 1000)
    assert spend(r)["spent"] == str(EST)


def test_thresholds_raise_one_event_each_per_period(clocked: Any, r: redis.Redis) -> None:
    reg, clock = clocked
    reg.set_budget("acme", "0.3", "day")  # marks: 50 % = $0.15, 80 % = $0.24, 100 % = $0.30
    # (output tokens reserved, used) -> spent after settling, and the events raised so far
    steps = [
        (1000, 1000, [], "0.09"),  # 30 %
        (1000, 1000, [50], "0.18"),  # 60 %
        (1000, 0, [50], "0.21"),  # 70 %
        (1000, 500, [50, 80], "0.27"),  # 90 %
        (0, 0, [50, 80, 100], "0.30"),  # an estimate of $0.03 fits exactly: 100 %
    ]
    for reserved, used, expected, total in steps:
        held = reg.acquire("openai:gpt-4", 1000, reserved, tenant="acme").reservation
        reg.settle(held, 1000, used)
        assert [int(e["threshold"]) for e in events(r)] == expected
        assert reg.budget_status("acme")[0].spent == Decimal(total)
    assert not reg.acquire("openai:gpt-4", 1, 0, tenant="acme").allowed  # spent in full
    got = events(r)
    assert got[0] == {
        "type": "budget.threshold",
        "tenant": "acme",
        "scope": "*",
        "period": "day",
        "index": str(DAY0),
        "threshold": "50",
        "amount_units": "300000000",
        "spent_units": "180000000",  # the spend that crossed the mark
        "currency": "USD",
        "request_id": got[0]["request_id"],
    }
    assert reg.budget_status("acme")[0].thresholds_reached == (50, 80, 100)
    clock.set((DAY0 + 1) * 86_400)
    held = reg.acquire("openai:gpt-4", 1000, 1000, tenant="acme").reservation
    reg.settle(held, 1000, 3000)  # a new day: $0.21 is 70 %, 50 % again, once
    assert [int(e["threshold"]) for e in events(r)] == [50, 80, 100, 50]


def test_shadow_and_peek(make_registry: Any, r: redis.Redis) -> None:
    reg = make_registry(shadow=True)
    reg.register_model(model(max_output_tokens=1000))
    use_clock(reg, FakeClock(T0))
    reg.set_budget("acme", "0.1", "day")
    assert reg.check_rate_limit("openai:gpt-4", 1000, tenant="acme").allowed  # peek: holds nothing
    assert not r.exists(K.budget_spend("acme", "*", "day", DAY0))
    assert reg.acquire("openai:gpt-4", 1000, tenant="acme").would_deny is None
    over = reg.acquire("openai:gpt-4", 1000, tenant="acme")
    assert (over.allowed, over.would_deny) == (True, "budget:*:day")
    assert spend(r)["held"] == str(2 * EST)
    peek = reg.check_rate_limit("openai:gpt-4", 1000, tenant="acme")
    assert (peek.allowed, peek.denied_by) == (False, "budget:*:day")


# -- many processes against one budget ------------------------------------------------------------

CTX = mp.get_context("spawn")
PROCS = 16


def _spender(i: int, url: str, barrier: Any, results: Any) -> None:
    import random

    rng = random.Random(i)
    reg = Registry.from_url(url, watch=False)
    reg.get_budgets("acme")
    barrier.wait()
    admitted = spent = 0
    for _ in range(60):
        decision = reg.acquire("openai:gpt-4", rng.randint(100, 2000), rng.randint(100, 1000), tenant="acme")
        if not decision.allowed:
            continue
        held = decision.reservation
        out = rng.randint(0, held.max_output_tokens)
        if rng.random() < 0.2:
            reg.release(held)
            continue
        reg.settle(held, held.input_tokens, out)
        admitted += 1
        spent += int(reg.estimate_cost("openai:gpt-4", held.input_tokens, out) * 10**9)
    reg.close()
    results.put((admitted, spent))


def test_sixteen_processes_never_spend_beyond_a_budget_and_each_threshold_fires_once(
    redis_url: str, r: redis.Redis
) -> None:
    reg = Registry.from_url(redis_url, watch=False)
    reg.register_model(model())
    reg.set_budget("acme", "1.5", "day", thresholds=[10, 25, 50, 75, 90, 100])
    barrier, results = CTX.Barrier(PROCS), CTX.Queue()
    workers = [CTX.Process(target=_spender, args=(i, redis_url, barrier, results)) for i in range(PROCS)]
    for w in workers:
        w.start()
    out = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    admitted, spent = sum(a for a, _ in out), sum(s for _, s in out)
    status = reg.budget_status("acme")[0]
    # Every settled request's exact cost, summed by the workers, is what the budget holds as
    # spent; and it never passes the budget (16 x 60 attempts ask for far more).
    assert admitted > 0
    assert status.spent == Decimal(spent) / 10**9
    assert status.spent <= Decimal("1.5")
    assert status.held == 0
    got = events(r)
    reached = [int(e["threshold"]) for e in got]
    assert sorted(reached) == sorted(set(reached))  # once each
    assert set(reached) == {p for p in (10, 25, 50, 75, 90, 100) if status.spent * 100 >= Decimal("1.5") * p}
    assert all(int(e["spent_units"]) <= 1_500_000_000 for e in got)
    reg.close()


def test_budget_refusals_are_not_cached_locally(make_registry: Any) -> None:
    """cache_denials remembers a window's refusal (seconds), never a budget's (it may last a
    day, and a raised budget must admit at once)."""
    reg = make_registry(cache_denials=True)
    reg.register_model(model())
    reg.set_budget("acme", "0.05", "day")
    assert reg.acquire("openai:gpt-4", 1000, 0, tenant="acme").allowed  # $0.03
    assert reg.acquire("openai:gpt-4", 1000, 0, tenant="acme").denied_by == "budget:*:day"
    reg.set_budget("acme", "1", "day")
    assert reg.acquire("openai:gpt-4", 1000, 0, tenant="acme").allowed


def test_recorded_usage_counts_against_the_tenants_budgets_once(clocked: Any, r: redis.Redis) -> None:
    reg, _ = clocked
    reg.set_budget("acme", "0.3", "day")
    reg.set_budget("acme", "5", "month", model="openai:gpt-4o-mini")
    reg.record_usage("openai:gpt-4", 1000, 1000, tenant="acme", request_id="r1")  # $0.09, held nothing
    assert reg.record_usage("openai:gpt-4", 1000, 1000, tenant="acme", request_id="r1").duplicate
    reg.record_usage("openai:gpt-4", 1000, 1000, tenant="acme")  # no id: counts each time
    reg.record_usage("openai:gpt-4", 1000, 1000, tenant="beta")  # another tenant
    reg.record_usage("openai:gpt-4", 1000, 1000)  # no tenant
    (day, month) = reg.budget_status("acme")
    assert (day.spent, day.held, day.thresholds_reached) == (Decimal("0.18"), 0, (50,))
    assert month.spent == 0  # a budget of another model
    # the budget now admits only what is left: $0.12, one more $0.09 request
    assert reg.acquire("openai:gpt-4", 1000, 1000, tenant="acme").allowed
    assert not reg.acquire("openai:gpt-4", 1000, 1000, tenant="acme").allowed
    assert 0 < r.pttl(K.budget_spend("acme", "*", "day", DAY0)) <= 40 * DAY_MS


def test_a_hold_settles_to_the_cheaper_cost_of_cached_input(clocked: Any, r: redis.Redis) -> None:
    """The acquire holds the estimate at the full input price (the cache split is not known
    yet); the settle replaces it with the exact cost, cache reads and writes at their own prices,
    and a record's spend is priced the same way."""
    reg, _ = clocked
    prices = {"input": "30", "output": "60", "cached_input": "3", "cache_write": "37.5"}
    reg.register_model(model(id="gpt-4c", max_output_tokens=1000, cost=prices))
    reg.set_budget("acme", "1", "day")
    held = reg.acquire("openai:gpt-4c", 1000, tenant="acme").reservation
    assert spend(r)["held"] == str(EST)
    assert reg.settle(held, 1000, 500, cached_input_tokens=800, cache_write_tokens=100)
    # 100 plain x 30 + 800 read x 3 + 100 written x 37.5 + 500 out x 60, per million: $0.03915
    exact = reg.estimate_cost("openai:gpt-4c", 1000, 500, cached_input_tokens=800, cache_write_tokens=100)
    assert exact == Decimal("0.03915") < reg.estimate_cost("openai:gpt-4c", 1000, 500)  # $0.06 uncached
    assert (spend(r)["spent"], spend(r)["held"]) == ("39150000", "0")
    assert reg.record_usage("openai:gpt-4c", 1000, 0, tenant="acme", cached_input_tokens=1000).cost == Decimal("0.003")
    (day,) = reg.budget_status("acme")
    assert (day.spent, day.held) == (Decimal("0.04215"), 0)


def test_a_free_model_holds_zero_and_settles_releases_and_lapses(clocked: Any, r: redis.Redis) -> None:
    """A hold of 0 units (a free local model) is settled, released and swept like any other
    (Redis refuses HINCRBY by "-0": the scripts must not send it)."""
    reg, clock = clocked
    reg.register_model(model("llama.cpp", "local", cost={"input": "0", "output": "0"}))
    reg.set_budget("acme", "1", "day")
    held = reg.acquire("llama.cpp:local", 100, 100, tenant="acme").reservation
    assert reg.settle(held, 100, 40)
    assert reg.release(reg.acquire("llama.cpp:local", 100, 100, tenant="acme").reservation)
    reg.acquire("llama.cpp:local", 100, 100, tenant="acme")  # never settled
    clock.advance(3601)
    assert reg.acquire("llama.cpp:local", 100, 100, tenant="acme").allowed  # sweeps the lapsed one
    assert "spent" not in spend(r)  # nothing was ever spent
    assert spend(r)["held"] == "0"
    assert reg.budget_status("acme")[0].spent == 0
