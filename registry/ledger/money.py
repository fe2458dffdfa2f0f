"""Money as integers: one unit is 10^-9 of the currency's major unit (a nano-dollar for USD).

Why nano: a signed 64-bit Redis counter then holds 9.2 x 10^9 dollars, above the 10^9 the
ledger must reach, and the smallest per-token price in LiteLLM's map (1.3 x 10^-10 USD) is a
fraction of a unit only per token, never per request of consequence. Each recorded request's
exact decimal cost (see :mod:`registry.pricing`) is rounded once, half to even, to a whole
number of units, so a total is within half a unit per record of the exact sum. Lua never does
arithmetic on money: amounts reach the scripts as integer strings and Redis adds them with
INCRBY/HINCRBY in 64-bit integers.
"""

from __future__ import annotations

import decimal
from decimal import Decimal

from registry.errors import ConfigError

__all__ = ["MAX_UNITS", "UNITS_PER_MAJOR", "from_units", "to_units"]

UNITS_PER_MAJOR = 10**9
MAX_UNITS = 2**63 - 1  # what a Redis integer holds
_QUANTUM = Decimal(1)


def to_units(amount: Decimal) -> int:
    """``amount`` (in the currency's major unit) as whole units, rounded half to even."""
    if not isinstance(amount, Decimal) or not amount.is_finite():
        raise ConfigError(f"amount must be a finite Decimal, got {amount!r}")
    context = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)
    try:
        units = int(context.quantize(context.multiply(amount, Decimal(UNITS_PER_MAJOR)), _QUANTUM))
    except decimal.InvalidOperation:  # more than 60 digits of units: far beyond the bound below
        units = MAX_UNITS + 1
    if abs(units) > MAX_UNITS:
        raise ConfigError(f"amount {amount} is beyond what a ledger counter holds")
    return units


def from_units(units: int) -> Decimal:
    """Whole units back to an exact Decimal of the major unit."""
    return Decimal(int(units)).scaleb(-9)
