"""Cost estimates, with every expected value worked out by hand in the comment beside it."""

from __future__ import annotations

import decimal
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry import ConfigError, Cost
from registry.pricing import estimate, rates_for

D = Decimal


def cost(**fields: object) -> Cost:
    return Cost.model_validate(fields)


def test_price_per_million_tokens() -> None:
    # 1,000 x $30/M + 500 x $60/M = $0.03 + $0.03
    assert estimate(cost(input="30", output="60", per=1_000_000), 1000, 500) == D("0.06")


def test_price_per_thousand_tokens() -> None:
    # 1,500 x $0.01/K + 250 x $0.03/K = $0.015 + $0.0075
    assert estimate(cost(input="0.01", output="0.03", per=1000), 1500, 250) == D("0.0225")


def test_price_per_token_at_a_billion_tokens() -> None:
    # 10^9 x $0.000003 + 10^9 x $0.000015 = $3,000 + $15,000
    assert estimate(cost(input="0.000003", output="0.000015", per=1), 10**9, 10**9) == D("18000")


def test_float_noise_in_a_price_is_kept_exactly() -> None:
    # 1.0000000000000001e-07 x 10^9 = 100.00000000000001: no float rounding anywhere
    c = Cost.model_validate_json('{"input": 1.0000000000000001e-07, "output": 0, "per": 1}')
    assert estimate(c, 10**9, 0) == D("100.00000000000001")


def test_zero_cost_model() -> None:
    free = cost(input="0", output="0")
    assert estimate(free, 10**9, 10**9) == 0
    assert free.is_free
    assert not cost(input="0", output="0", tiers=[{"threshold": 5, "input": "1", "output": "0"}]).is_free


def test_zero_tokens_cost_nothing() -> None:
    assert estimate(cost(input="30", output="60"), 0, 0) == 0


def test_cached_input_tokens_are_part_of_input_tokens() -> None:
    # 10,000 prompt tokens of which 4,000 cached; 1,000 output.
    # 6,000 x 2.50/M = 0.015; 4,000 x 1.25/M = 0.005; 1,000 x 10/M = 0.01
    c = cost(input="2.50", output="10", cached_input="1.25")
    assert estimate(c, 10_000, 1000, cached_input_tokens=4000) == D("0.03")


def test_cached_tokens_without_a_cached_price_bill_as_input() -> None:
    # 10,000 x 2.50/M = 0.025 whatever part was cached
    c = cost(input="2.50", output="10")
    assert estimate(c, 10_000, 0, cached_input_tokens=4000) == D("0.025")


def test_cache_writes_and_reads() -> None:
    # 10,000 prompt = 3,000 plain + 2,000 written + 5,000 read; 500 output.
    # 3,000 x 3 = 9,000; 2,000 x 3.75 = 7,500; 5,000 x 0.30 = 1,500; 500 x 15 = 7,500 -> 25,500 / 10^6
    c = cost(input="3", output="15", cached_input="0.30", cache_write="3.75")
    assert estimate(c, 10_000, 500, cached_input_tokens=5000, cache_write_tokens=2000) == D("0.0255")


TIERED = {
    "input": "1.25",
    "output": "10",
    "cached_input": "0.125",
    "tiers": [{"threshold": 200_000, "input": "2.50", "output": "15", "cached_input": "0.25"}],
}


def test_at_the_threshold_the_base_price_applies() -> None:
    # 200,000 x 1.25/M = 0.25; 1,000 x 10/M = 0.01
    assert estimate(cost(**TIERED), 200_000, 1000) == D("0.26")


def test_above_the_threshold_the_whole_request_pays_the_tier() -> None:
    # 200,001 x 2.50/M = 0.5000025; 1,000 x 15/M = 0.015 (output too)
    assert estimate(cost(**TIERED), 200_001, 1000) == D("0.5150025")


def test_an_inclusive_tier_applies_from_exactly_the_threshold() -> None:
    tiered = {**TIERED, "tiers": [{**TIERED["tiers"][0], "inclusive": True}]}
    # 200,000 x 2.50/M = 0.5; 1,000 x 15/M = 0.015
    assert estimate(cost(**tiered), 200_000, 1000) == D("0.515")
    # 199,999 x 1.25/M = 0.24999875; + 0.01
    assert estimate(cost(**tiered), 199_999, 1000) == D("0.25999875")


def test_tier_cached_price_and_fallbacks() -> None:
    # above: 100,000 plain x 2.5 + 150,000 cached x 0.25 = 250,000 + 37,500 -> 0.2875
    assert estimate(cost(**TIERED), 250_000, 0, cached_input_tokens=150_000) == D("0.2875")
    # a tier without a cached price falls back to the base cached price (0.125)
    no_cached = {**TIERED, "tiers": [{"threshold": 200_000, "input": "2.50", "output": "15"}]}
    # 100,000 x 2.5 + 150,000 x 0.125 = 250,000 + 18,750 -> 0.26875
    assert estimate(cost(**no_cached), 250_000, 0, cached_input_tokens=150_000) == D("0.26875")


def test_the_highest_tier_passed_wins() -> None:
    c = cost(
        input="1",
        output="2",
        tiers=[
            {"threshold": 200_000, "input": "4", "output": "8"},
            {"threshold": 128_000, "input": "2", "output": "4"},
        ],
    )
    assert [t.threshold for t in c.tiers] == [128_000, 200_000]  # kept sorted
    assert rates_for(c, 128_000).input == D(1)
    assert rates_for(c, 150_000).input == D(2)
    assert rates_for(c, 200_001).output == D(8)
    # 150,000 x 2/M = 0.3; 10 x 4/M = 0.00004
    assert estimate(c, 150_000, 10) == D("0.30004")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 0), "input_tokens must be between 0"),
        ((0, -1), "output_tokens must be between 0"),
        ((10**9 + 1, 0), "input_tokens must be between 0"),
        ((1.5, 0), "input_tokens must be an integer"),
        ((True, 0), "input_tokens must be an integer"),
        (("10", 0), "input_tokens must be an integer"),
    ],
)
def test_bad_token_counts(args: tuple, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        estimate(cost(input="1", output="1"), *args)


def test_cached_tokens_cannot_exceed_the_prompt() -> None:
    with pytest.raises(ConfigError, match="exceed input_tokens"):
        estimate(cost(input="1", output="1"), 10, 0, cached_input_tokens=6, cache_write_tokens=5)


def test_inside_a_tier_cache_tokens_without_any_cache_price_bill_at_the_tier_input() -> None:
    c = cost(input="1", output="1", tiers=[{"threshold": 100, "input": "3", "output": "3"}])
    # 200 prompt tokens, 50 cached, 50 written, no cache prices anywhere: all 200 x 3 = 600 per M
    assert estimate(c, 200, 0, cached_input_tokens=50, cache_write_tokens=50) == D("0.0006")


def test_reasoning_tokens_are_part_of_output_and_bill_at_their_own_price() -> None:
    c = cost(input="1", output="2", reasoning_output="8")
    # 1,000 x 1 + (500 - 300) x 2 + 300 x 8 = 1,000 + 400 + 2,400 = 3,800 per M
    assert estimate(c, 1000, 500, reasoning_tokens=300) == D("0.0038")
    # without a reasoning price, reasoning tokens are output tokens: 1,000 + 500 x 2 = 2,000 per M
    assert estimate(cost(input="1", output="2"), 1000, 500, reasoning_tokens=300) == D("0.002")
    with pytest.raises(ConfigError, match="exceed output_tokens"):
        estimate(c, 10, 5, reasoning_tokens=6)


def test_reasoning_price_inside_a_tier() -> None:
    c = cost(
        input="1",
        output="2",
        reasoning_output="8",
        tiers=[
            {"threshold": 100, "input": "2", "output": "4", "reasoning_output": "16"},
            {"threshold": 1000, "input": "3", "output": "6"},
        ],
    )
    # tier 100: 200 x 2 + 10 x 4 + 10 x 16 = 400 + 40 + 160 = 600 per M
    assert estimate(c, 200, 20, reasoning_tokens=10) == D("0.0006")
    # tier 1000 has no reasoning price: the base one (8): 2,000 x 3 + 10 x 6 + 10 x 8 = 6,140 per M
    assert estimate(c, 2000, 20, reasoning_tokens=10) == D("0.00614")


def test_a_per_request_fee_is_added_once_undivided() -> None:
    c = cost(input="0", output="2.8", per=1_000_000, per_request="0.005")
    # 0.005 + 1,000 x 2.8 / 10^6 = 0.005 + 0.0028
    assert estimate(c, 500, 1000) == D("0.0078")
    assert not c.is_free
    assert estimate(cost(input="0", output="0", per_request="0"), 1, 1) == 0


# -- the integer fast path of a plain request ----------------------------------------------------

# Prices as a catalog holds them (0 to 10^9): a coefficient over a power of ten, fine or coarse.
_PRICES = st.one_of(
    st.builds(lambda n, e: Decimal(n).scaleb(e), st.integers(0, 10**9), st.integers(-15, 0)),
    st.builds(lambda n, e: Decimal(n).scaleb(e), st.integers(0, 1000), st.integers(1, 6)),
)


@given(
    input_price=_PRICES,
    output_price=_PRICES,
    per=st.sampled_from([1, 1000, 1_000_000]),
    input_tokens=st.integers(0, 10**9),
    output_tokens=st.integers(0, 10**9),
)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_plain_request_costs_the_very_decimal_decimal_arithmetic_gives(
    input_price: Decimal, output_price: Decimal, per: int, input_tokens: int, output_tokens: int
) -> None:
    """The fast path computes in integers; its result must be Decimal's own, digit for digit
    (value and exponent: ``str`` shows both), as the multiply, add and divide it replaces."""
    cost = Cost(input=input_price, output=output_price, per=per)
    c = decimal.Context(prec=1000, traps=[decimal.Inexact])
    slow = c.divide(
        c.add(c.multiply(Decimal(input_tokens), cost.input), c.multiply(Decimal(output_tokens), cost.output)),
        Decimal(per),
    )
    fast = estimate(cost, input_tokens, output_tokens)
    assert fast == slow
    assert str(fast) == str(slow)
    assert fast.as_tuple() == slow.as_tuple()


@pytest.mark.parametrize(
    ("prices", "tokens", "expected"),
    [
        (("2.5", "10"), (12_000, 800), "0.038"),
        (("0", "0"), (5, 5), "0"),
        (("1E+1", "3.00"), (0, 0), "0.00"),
        (("1E+1", "3.00"), (1, 0), "0.00001"),
        (("30", "60"), (1_000_000, 1_000_000), "90"),
        # equal prices of other exponents give results of other exponents, as Decimal does
        (("0", "0"), (0, 0), "0"),
        (("0.000", "0"), (0, 0), "0.000"),
        (("0E+3", "0E+3"), (0, 0), "0E+3"),
        (("0E+3", "0E+3"), (7, 9), "0E+3"),
    ],
)
def test_plain_prices_worked_by_hand(prices: tuple[str, str], tokens: tuple[int, int], expected: str) -> None:
    cost = Cost(input=Decimal(prices[0]), output=Decimal(prices[1]))
    assert str(estimate(cost, *tokens)) == expected
