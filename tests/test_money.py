"""Ledger money units: nano-units of the currency, rounded once per record, half to even."""

from __future__ import annotations

from decimal import Decimal

import pytest

from registry import ConfigError
from registry.ledger.money import MAX_UNITS, UNITS_PER_MAJOR, from_units, to_units
from registry.models import Cost
from registry.pricing import estimate

D = Decimal


@pytest.mark.parametrize(
    ("amount", "units"),
    [
        (D("0"), 0),
        (D("1"), 10**9),
        (D("0.000000001"), 1),
        (D("0.0000000005"), 0),  # half to even: 0.5 -> 0
        (D("0.0000000015"), 2),  # 1.5 -> 2
        (D("0.0000000025"), 2),  # 2.5 -> 2
        (D("0.00000000250000001"), 3),  # just above half
        (D("1.3E-10") * 1000, 130),  # 1,000 tokens at the map's smallest per-token price
        (D("-0.000000002"), -2),  # a refund
        (D("1000000000"), 10**18),  # 10^9 dollars fit
    ],
)
def test_to_units(amount: Decimal, units: int) -> None:
    assert to_units(amount) == units


def test_round_trip_is_exact_for_whole_units() -> None:
    for units in (0, 1, 999_999_999, 10**9, MAX_UNITS, -MAX_UNITS):
        assert to_units(from_units(units)) == units
    assert from_units(1300) == D("0.0000013")


def test_a_request_cost_rounds_once_to_within_half_a_unit() -> None:
    cost = Cost.model_validate({"input": "1.0000000000000001e-07", "output": "3e-07", "per": 1})
    exact = estimate(cost, 123_457, 8_901)
    units = to_units(exact)
    assert abs(from_units(units) - exact) <= D("0.5") / UNITS_PER_MAJOR


@pytest.mark.parametrize("bad", [D("NaN"), D("Infinity"), 1.5, "1", D("9300000000")])
def test_bad_or_overflowing_amounts_are_refused(bad: object) -> None:
    with pytest.raises(ConfigError):
        to_units(bad)  # type: ignore[arg-type]
