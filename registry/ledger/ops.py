"""Recording usage as a flow (see :mod:`registry._core`): one script call, idempotent by id."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from registry._core import Flow, Script
from registry.admission.types import Reservation, check_request_id, check_tenant
from registry.budgets import ops as budget_ops
from registry.budgets.periods import index_at
from registry.budgets.types import Budget
from registry.errors import ConfigError, ScriptError
from registry.keys import Keys
from registry.ledger.money import to_units
from registry.models import ModelSpec
from registry.pricing import check_cache_tokens, check_tokens, estimate

__all__ = ["COUNTERS", "LATENCY_EDGES_MS", "UsageRecord", "record"]

# Histogram bucket upper edges (ms) of the latency counters `lat_le_<edge>` (and `lat_le_inf`).
LATENCY_EDGES_MS = (50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)
REQUEST_ID_TTL_MS = 24 * 3_600_000


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """What :meth:`record_usage` did: ``recorded`` False means the request id was seen before."""

    recorded: bool
    cost: Decimal
    cost_units: int
    server_ms: int

    @property
    def duplicate(self) -> bool:
        return not self.recorded


# The integer counters of a request in the ledger (and in its usage event): usage_fields
# writes them, statistics and events read them. Latency has its own fields besides.
COUNTERS = (
    "requests",
    "successes",
    "failures",
    "throttled",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "cost_units",
)


def usage_fields(
    input_tokens: int,
    output_tokens: int,
    success: bool,
    latency_ms: float | None,
    cost_units: int,
    throttled: bool = False,
    cached_input_tokens: int = 0,
    cache_write_tokens: int = 0,
) -> list[tuple[str, int]]:
    """The counters one request adds to, and by how much. ``throttled``: the provider refused it
    for its own rate limit (HTTP 429), a failure counted apart as well. ``cached_input_tokens``
    and ``cache_write_tokens``: the part of ``input_tokens`` read from and written to the
    provider's prompt cache (counted in ``input_tokens`` too)."""
    fields = [
        ("requests", 1),
        ("successes" if success and not throttled else "failures", 1),
        ("throttled", int(throttled)),
        ("input_tokens", input_tokens),
        ("cached_input_tokens", cached_input_tokens),
        ("cache_write_tokens", cache_write_tokens),
        ("output_tokens", output_tokens),
        ("cost_units", cost_units),
    ]
    if latency_ms is not None:
        edge = next((e for e in LATENCY_EDGES_MS if latency_ms <= e), None)
        fields += [
            ("latency_us_sum", round(latency_ms * 1000)),
            ("latency_count", 1),
            (f"lat_le_{edge if edge is not None else 'inf'}", 1),
        ]
    return [(name, by) for name, by in fields if by]  # a zero adds nothing: leave it out


@dataclass(frozen=True, slots=True)
class Usage:
    """One request's ledger increments, ready for a script (record_usage or settle)."""

    model_key: str
    tenant: str | None
    cost: Decimal
    units: int
    pairs: tuple[str | int, ...]

    @classmethod
    def of(
        cls,
        model: ModelSpec,
        input_tokens: int,
        output_tokens: int,
        success: bool,
        latency_ms: float | None,
        tenant: str | None,
        throttled: bool = False,
        cached_input_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> Usage:
        """The increments of one request; its cost is :func:`~registry.pricing.estimate`'s,
        cache reads and writes (part of ``input_tokens``) at the model's cache prices."""
        if latency_ms is not None and (
            isinstance(latency_ms, bool) or not isinstance(latency_ms, int | float) or not 0 <= latency_ms <= 86_400_000
        ):
            raise ConfigError(f"latency_ms must be a number from 0 to 86400000, got {latency_ms!r}")
        cost = estimate(
            model.cost,
            input_tokens,
            output_tokens,
            cached_input_tokens=cached_input_tokens,
            cache_write_tokens=cache_write_tokens,
        )
        units = to_units(cost)
        pairs: list[str | int] = []
        fields = usage_fields(
            input_tokens, output_tokens, success, latency_ms, units, throttled, cached_input_tokens, cache_write_tokens
        )
        for name, by in fields:
            pairs += [name, by]
        return cls(model.key, tenant, cost, units, tuple(pairs))

    def keys_at(self, keys: Keys, at_ms: int) -> tuple[list[str], tuple[int, int, int]]:
        """The script's ledger keys: the usage stream, the model's hashes named after the
        buckets of ``at_ms``, and the tenant's with the model's tenant set."""
        indexes = (at_ms // 60_000, at_ms // 3_600_000, at_ms // 86_400_000)
        scopes = [None] if self.tenant is None else [None, self.tenant]
        names = [keys.usage_events(self.model_key)]
        names += [
            keys.ledger(self.model_key, period, index, scope)
            for scope in scopes
            for period, index in (("total", None), ("m", indexes[0]), ("h", indexes[1]), ("d", indexes[2]))
        ]
        if self.tenant is not None:
            names.append(keys.ledger_tenants(self.model_key))
        return names, indexes

    def event_args(self, request_id: str, sample_cap: int) -> tuple[str | int, ...]:
        """The request id, the usage event's cap (0: none) and tenant, then the counter pairs."""
        return (request_id, sample_cap, self.tenant or "", *self.pairs)


def record(
    keys: Keys,
    model: ModelSpec,
    input_tokens: int,
    output_tokens: int,
    *,
    success: bool = True,
    latency_ms: float | None = None,
    tenant: str | None = None,
    request_id: str | None = None,
    throttled: bool = False,
    cached_input_tokens: int = 0,
    cache_write_tokens: int = 0,
    now_ms: int | None = None,
    predicted_ms: int,
    sample_cap: int = 0,
    budgets: Sequence[Budget] = (),
) -> Flow[UsageRecord]:
    """Add one request's usage to the model's (and the tenant's) counters, once per id.

    The time-bucket keys are named from ``predicted_ms`` (the client's idea of the server's
    clock); the script checks them against its own time and, when they disagree (a skewed
    client, a minute boundary), answers with its time so that the call is made again once.
    ``cached_input_tokens`` and ``cache_write_tokens`` are part of ``input_tokens``.
    """
    input_tokens = check_tokens("input_tokens", input_tokens)
    output_tokens = check_tokens("output_tokens", output_tokens)
    cached, written = check_cache_tokens(input_tokens, cached_input_tokens, cache_write_tokens)
    tenant = check_tenant(tenant)
    request_id = check_request_id(request_id)
    usage = Usage.of(
        model, input_tokens, output_tokens, bool(success), latency_ms, tenant, bool(throttled), cached, written
    )
    at = predicted_ms if now_ms is None else now_ms
    nonce = Reservation.new_id()  # this call's: the same call re-sent (a lost reply) is told it counted
    for _ in range(2):
        ledger_keys, indexes = usage.keys_at(keys, at)
        reply = yield Script(
            "record_usage",
            keys=(keys.usage_marker(model.key, request_id or "-"), *ledger_keys),
            args=(
                "" if now_ms is None else now_ms,
                *indexes,
                REQUEST_ID_TTL_MS,
                nonce,
                *usage.event_args(request_id or "", sample_cap),
            ),
        )
        try:
            status, server_ms = int(reply[0]), int(reply[1])
        except (TypeError, ValueError, IndexError) as exc:
            raise ScriptError(f"record_usage: malformed reply {reply!r}") from exc
        if status != 2:
            if status == 1 and budgets and tenant is not None:
                # The tenant's budgets count recorded spend too (nothing was held for it). Only
                # a record that counted reaches them, so a resent id is never spent twice; a
                # failure between the two scripts loses this spend from the budget, never doubles it.
                yield from budget_ops.finish(
                    keys,
                    {(b.scope, b.period): b for b in budgets},
                    tenant=tenant,
                    reservation_id=request_id or "-",
                    token="-",
                    periods=[(b.scope, b.period, index_at(b.period, server_ms)) for b in budgets],
                    cost_units=usage.units,
                    currency=model.cost.currency,
                    now_ms=now_ms,
                    held=False,
                )
            return UsageRecord(status == 1, usage.cost, usage.units, server_ms)
        at = server_ms
    raise ScriptError("record_usage: the server's clock moved past a bucket twice; try again")
