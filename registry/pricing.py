"""Exact cost arithmetic on catalog prices. No I/O, no floats, no rounding.

Billing rule (the one LiteLLM's price map encodes):

* ``input_tokens`` counts every prompt token, the cached ones included (OpenAI's
  ``prompt_tokens``). Of those, ``cached_input_tokens`` are billed at ``cached_input`` and
  ``cache_write_tokens`` at ``cache_write``; the rest at ``input``.
* When the prompt passes a tier's threshold (strictly above it, or from exactly it for an
  ``inclusive`` tier), the whole request, output included, is billed at that tier's rates; with
  several tiers the highest one passed wins. A tier's missing cached-input or cache-write price
  falls back to the base price of the same kind, and with neither, cache tokens bill at the
  tier's input price.
* ``output_tokens`` counts every output token, reasoning ones included (OpenAI's
  ``completion_tokens``); of those, ``reasoning_tokens`` are billed at ``reasoning_output``
  where the model has that price.
* The total is divided by ``per``; a ``per_request`` fee is added once, undivided.
* Every step is exact decimal arithmetic: a result that could not be represented exactly
  raises instead of rounding.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass
from decimal import Decimal

from registry.errors import ConfigError
from registry.models import MAX_TOKENS, Cost

__all__ = ["Rates", "check_cache_tokens", "check_tokens", "estimate", "price", "rates_for"]

# Prices carry at most a few dozen significant digits and token counts at most 10; a
# thousand digits of precision can never round, and Inexact traps prove it.
_EXACT = decimal.Context(
    prec=1000,
    rounding=decimal.ROUND_HALF_EVEN,
    traps=[decimal.Inexact, decimal.InvalidOperation, decimal.Overflow, decimal.DivisionByZero],
)


@dataclass(frozen=True, slots=True)
class Rates:
    """The four prices that apply to one request, per ``per`` tokens."""

    input: Decimal
    output: Decimal
    cached_input: Decimal
    cache_write: Decimal
    reasoning_output: Decimal
    per: int


def rates_for(cost: Cost, prompt_tokens: int) -> Rates:
    """The prices that bill a request whose prompt has ``prompt_tokens`` input tokens."""
    tier = None
    for candidate in cost.tiers:  # sorted by threshold: the last one that applies wins
        if candidate.applies_to(prompt_tokens):
            tier = candidate
    if tier is None:
        return Rates(
            input=cost.input,
            output=cost.output,
            cached_input=cost.input if cost.cached_input is None else cost.cached_input,
            cache_write=cost.input if cost.cache_write is None else cost.cache_write,
            reasoning_output=cost.output if cost.reasoning_output is None else cost.reasoning_output,
            per=cost.per,
        )
    # A tier's missing cache price is the base one; with none at all, cache tokens bill as
    # input, and inside a tier "input" is the tier's input price.
    cached = tier.cached_input if tier.cached_input is not None else cost.cached_input
    write = tier.cache_write if tier.cache_write is not None else cost.cache_write
    reasoning = tier.reasoning_output if tier.reasoning_output is not None else cost.reasoning_output
    return Rates(
        input=tier.input,
        output=tier.output,
        cached_input=tier.input if cached is None else cached,
        cache_write=tier.input if write is None else write,
        reasoning_output=tier.output if reasoning is None else reasoning,
        per=cost.per,
    )


def _tokens(name: str, value: int) -> int:
    if type(value) is int and 0 <= value <= MAX_TOKENS:  # the common case, checked cheaply
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {type(value).__name__}")
    if not 0 <= value <= MAX_TOKENS:
        raise ConfigError(f"{name} must be between 0 and {MAX_TOKENS}, got {value}")
    return value


def estimate(
    cost: Cost,
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int = 0,
    cache_write_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> Decimal:
    """The exact price of one request, in ``cost.currency``."""
    input_tokens = _tokens("input_tokens", input_tokens)
    output_tokens = _tokens("output_tokens", output_tokens)
    cached_input_tokens, cache_write_tokens = check_cache_tokens(input_tokens, cached_input_tokens, cache_write_tokens)
    reasoning_tokens = _tokens("reasoning_tokens", reasoning_tokens)
    if reasoning_tokens > output_tokens:
        raise ConfigError(
            f"reasoning_tokens ({reasoning_tokens}) exceed output_tokens ({output_tokens}):"
            " output_tokens counts every output token, reasoning ones included"
        )
    return price(cost, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens)


def check_tokens(name: str, value: int) -> int:
    """``value`` if it is a whole token count in range; :class:`ConfigError` otherwise."""
    return _tokens(name, value)


def check_cache_tokens(input_tokens: int, cached_input_tokens: int, cache_write_tokens: int) -> tuple[int, int]:
    """``(cached_input_tokens, cache_write_tokens)`` if each is a whole token count and together
    they are part of ``input_tokens`` (a count already checked); :class:`ConfigError` otherwise."""
    if type(cached_input_tokens) is type(cache_write_tokens) is int and cached_input_tokens == cache_write_tokens == 0:
        return 0, 0  # the common request: no prompt cache
    cached_input_tokens = _tokens("cached_input_tokens", cached_input_tokens)
    cache_write_tokens = _tokens("cache_write_tokens", cache_write_tokens)
    if cached_input_tokens + cache_write_tokens > input_tokens:
        raise ConfigError(
            "cached_input_tokens + cache_write_tokens "
            f"({cached_input_tokens} + {cache_write_tokens}) exceed input_tokens ({input_tokens}):"
            " input_tokens counts every prompt token, cached ones included"
        )
    return cached_input_tokens, cache_write_tokens


# What _plain needs of a price pair: both prices as integers over one power of ten, that
# exponent, and per's. Keyed by the price objects' ids, which the entry keeps alive (so no
# other object can take an id while it is cached): equal Decimals may differ in exponent
# (0, 0.000 and 0E+3), which the result keeps, so equality is not enough.
_SCALED: dict[tuple[int, int, int], tuple[Decimal, Decimal, int, int, int, int]] = {}
_MAX_SCALED = 4096


def _scaled(cost: Cost) -> tuple[Decimal, Decimal, int, int, int, int]:
    key = (id(cost.input), id(cost.output), cost.per)
    found = _SCALED.get(key)
    if found is None:
        if len(_SCALED) >= _MAX_SCALED:
            _SCALED.clear()
        i, o = cost.input.as_tuple(), cost.output.as_tuple()
        assert isinstance(i.exponent, int)  # finite: the model checks
        assert isinstance(o.exponent, int)
        exponent = min(i.exponent, o.exponent)
        ci, co = int("".join(map(str, i.digits))), int("".join(map(str, o.digits)))
        a, b = ci * 10 ** (i.exponent - exponent), co * 10 ** (o.exponent - exponent)
        found = _SCALED[key] = (cost.input, cost.output, a, b, exponent, len(str(cost.per)) - 1)
    return found


def _plain(cost: Cost, input_tokens: int, output_tokens: int) -> Decimal:
    """(input_tokens x input + output_tokens x output) / per in integers, the very Decimal (value
    and exponent) that Decimal's own multiply, add and divide give, in a third of their time.

    The sum is an integer over 10^exponent; dividing by per = 10^k moves the exponent down by k,
    and Decimal's exact division keeps the exponent closest to the sum's own: it drops up to k
    trailing zeros of the coefficient (all of them for zero)."""
    _, _, a, b, exponent, k = _scaled(cost)
    n = input_tokens * a + output_tokens * b
    dropped = 0
    if n == 0:
        dropped = k
    else:
        while dropped < k and n % 10 == 0:
            n //= 10
            dropped += 1
    return Decimal(n).scaleb(exponent - k + dropped, _EXACT)


def price(
    cost: Cost,
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int = 0,
    cache_write_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> Decimal:
    """:func:`estimate` without checking its arguments (for callers that checked them once)."""
    c = _EXACT
    if not (cost.tiers or cached_input_tokens or cache_write_tokens or reasoning_tokens):
        # The common request: base prices, plain tokens (the same sums as below, fewer steps).
        total = _plain(cost, input_tokens, output_tokens)
        return c.add(total, cost.per_request) if cost.per_request else total
    rates = rates_for(cost, input_tokens)
    plain = input_tokens - cached_input_tokens - cache_write_tokens
    total = c.multiply(Decimal(plain), rates.input)
    if cached_input_tokens:
        total = c.add(total, c.multiply(Decimal(cached_input_tokens), rates.cached_input))
    if cache_write_tokens:
        total = c.add(total, c.multiply(Decimal(cache_write_tokens), rates.cache_write))
    total = c.add(total, c.multiply(Decimal(output_tokens - reasoning_tokens), rates.output))
    if reasoning_tokens:
        total = c.add(total, c.multiply(Decimal(reasoning_tokens), rates.reasoning_output))
    total = c.divide(total, Decimal(rates.per))
    if cost.per_request:
        total = c.add(total, cost.per_request)
    return total
