"""Admission flows (see :mod:`registry._core`): acquire, peek, settle and release.

Each is one script call, so one round trip: the limits come from the client's catalog copy
as arguments (the catalog lives in another cluster slot), the time from Redis' TIME unless
the testing clock hook gives one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import msgspec

from registry._core import Flow, Script, text
from registry.admission.types import (
    COUNTS,
    Decision,
    LimitSpec,
    Reservation,
    amount,
    applicable_limits,
    check_request_id,
    check_tenant,
)
from registry.budgets import ops as budget_ops
from registry.budgets.types import Budget
from registry.errors import ConfigError, RequestTooLargeError, ScriptError
from registry.keys import Keys
from registry.ledger.money import to_units
from registry.ledger.ops import Usage
from registry.models import MAX_TOKENS, ModelSpec
from registry.pricing import check_cache_tokens, check_tokens, estimate

__all__ = ["DEFAULT_RESERVATION_TTL_MS", "acquire", "acquire_group", "merge_acquires", "settle", "split_acquires"]

DEFAULT_RESERVATION_TTL_MS = 3_600_000  # an unsettled reservation's record lives an hour
# Each limit's part of its window key's name (keys.window): {...}:w:rpm, {...}:t:<tenant>:w:itpm.
_SHORT = {
    "requests_per_minute": "rpm",
    "tokens_per_minute": "tpm",
    "input_tokens_per_minute": "itpm",
    "output_tokens_per_minute": "otpm",
    "requests_per_day": "rpd",
}
Mode = Literal["acquire", "shadow", "peek"]


def window_key(keys: Keys, model_key: str, spec_name: str, tenant: str | None) -> str:
    """The window hash of a limit (``requests_per_minute``, ``tenant.tokens_per_minute``, ...)."""
    return keys.window(model_key, _SHORT[spec_name.removeprefix("tenant.")], tenant)


def _now_arg(now_ms: int | None) -> str | int:
    return "" if now_ms is None else now_ms


def acquire(
    keys: Keys,
    model: ModelSpec,
    input_tokens: int,
    max_output_tokens: int | None,
    *,
    tenant: str | None = None,
    request_id: str | None = None,
    mode: Mode = "acquire",
    now_ms: int | None = None,
    reservation_ttl_ms: int = DEFAULT_RESERVATION_TTL_MS,
    budgets: Sequence[Budget] = (),
    predicted_ms: int = 0,
    plan: WindowPlan | None = None,
) -> Flow[Decision]:
    """Check and consume every limit of ``model`` (and of ``tenant`` on it) at once.

    With ``budgets`` (the tenant's, that the request counts against) the estimated cost is
    held on them first, in the tenant's slot, and given back if the windows refuse: see
    :mod:`registry.budgets.ops` for the order and the window it leaves.
    """
    input_tokens = check_tokens("input_tokens", input_tokens)
    if max_output_tokens is None:
        max_output_tokens = model.max_output_tokens or 0
    max_output_tokens = check_tokens("max_output_tokens", max_output_tokens)
    tenant = check_tenant(tenant)
    request_id = check_request_id(request_id)
    tokens = input_tokens + max_output_tokens
    if tokens > MAX_TOKENS:
        raise ConfigError(f"input_tokens + max_output_tokens must be at most {MAX_TOKENS}")
    token = Reservation.new_id()
    reservation = Reservation(model.key, request_id or token, tenant, input_tokens, max_output_tokens, token)
    check = None
    if budgets and tenant is not None:
        estimate_units = to_units(estimate(model.cost, input_tokens, max_output_tokens))
        check = yield from budget_ops.reserve(
            keys,
            budgets,
            tenant=tenant,
            reservation_id=reservation.id,
            token=reservation.token,
            estimate_units=estimate_units,
            mode=mode,
            now_ms=now_ms,
            predicted_ms=predicted_ms,
            ttl_ms=reservation_ttl_ms,
        )
        if check.status == 3:
            assert check.budget is not None
            raise RequestTooLargeError(model.key, check.budget.name, estimate_units, check.budget.units)
        if check.status == 0:
            assert check.budget is not None
            return Decision(False, check.wait_ms / 1000, check.budget.name, MappingProxyType(dict(check.remaining)))
        reservation = msgspec.structs.replace(reservation, budgets=check.periods)
    try:
        decision = yield from _acquire_windows(keys, model, reservation, mode, now_ms, reservation_ttl_ms, plan)
    except RequestTooLargeError:
        if check is not None and check.fresh and mode != "peek":
            yield from _give_back(keys, reservation, model, now_ms)
        raise
    if check is None:
        return decision
    if check.fresh and mode != "peek" and (not decision.allowed or decision.duplicate):
        yield from _give_back(keys, reservation, model, now_ms)  # the windows refused: compensate
        if not decision.allowed:
            return decision
    remaining = MappingProxyType({**decision.remaining, **check.remaining})
    would_deny = decision.would_deny or (check.budget.name if check.status == 4 and check.budget else None)
    return dataclasses.replace(decision, remaining=remaining, would_deny=would_deny)


def _give_back(keys: Keys, reservation: Reservation, model: ModelSpec, now_ms: int | None) -> Flow[int | None]:
    """Release a budget hold this acquire made (its windows refused the request)."""
    assert reservation.tenant is not None
    return budget_ops.finish(
        keys,
        {},
        tenant=reservation.tenant,
        reservation_id=reservation.id,
        token=reservation.token,
        periods=reservation.budgets,
        cost_units=None,
        currency=model.cost.currency,
        now_ms=now_ms,
    )


@dataclass(frozen=True, slots=True)
class WindowPlan:
    """What every acquire of one model (for one tenant) passes to acquire.lua but the request's
    own numbers: worked out once per catalog revision by the client, not on every call."""

    limits: tuple[LimitSpec, ...]
    keys: tuple[str, ...]  # the window hashes, then the denial counters
    args: tuple[str | int, ...]  # name, limit, window, bucket per limit

    @classmethod
    def of(cls, keys: Keys, model: ModelSpec, tenant: str | None) -> WindowPlan:
        limits = tuple(applicable_limits(model, tenant))
        args: list[str | int] = []
        for spec in limits:
            args += [spec.name, spec.limit, spec.window_ms, spec.bucket_ms]
        window_keys = tuple(window_key(keys, model.key, spec.name, spec.tenant) for spec in limits)
        return cls(limits, (*window_keys, keys.denials(model.key)), tuple(args))

    def costs(self, input_tokens: int, output_tokens: int) -> list[int]:
        """What one request of ``input_tokens`` and (at most) ``output_tokens`` costs on each limit."""
        return [amount(spec.counts, 1, input_tokens, output_tokens) for spec in self.limits]


def _acquire_windows(
    keys: Keys,
    model: ModelSpec,
    reservation: Reservation,
    mode: Mode,
    now_ms: int | None,
    reservation_ttl_ms: int,
    plan: WindowPlan | None = None,
) -> Flow[Decision]:
    if plan is None:
        plan = WindowPlan.of(keys, model, reservation.tenant)
    costs = plan.costs(reservation.input_tokens, reservation.max_output_tokens)
    reply = yield Script(
        "acquire",
        keys=(*plan.keys, keys.reservation(model.key, reservation.id, reservation.tenant)),
        args=(_now_arg(now_ms), mode, reservation_ttl_ms, len(plan.limits), 1, *plan.args, reservation.token, *costs),
    )
    return _decision(reply, plan.limits, costs, reservation, mode, reservation_ttl_ms)


def acquire_group(request: Script) -> tuple[Any, ...] | None:
    """What acquire calls must share to run as one script call (the same windows, limits, mode,
    TTL and clock), or None for any other script: see :func:`merge_acquires`."""
    if request.name != "acquire" or len(request.args) < 5:
        return None
    n = request.args[3]
    if not isinstance(n, int):
        return None
    return (request.keys[: n + 1], request.args[:4], request.args[5 : 5 + 4 * n])


def merge_acquires(requests: Sequence[Script]) -> Script:
    """One acquire.lua call for several single-request acquires of one :func:`acquire_group`:
    the script takes them in this order, each admitted exactly as if it had come alone."""
    first = requests[0]
    n = int(first.args[3])
    head = 5 + 4 * n
    keys = [*first.keys[: n + 1]]
    tails: list[str | int] = []
    for request in requests:
        keys.append(request.keys[n + 1])
        tails.extend(request.args[head:])
    return Script("acquire", tuple(keys), (*first.args[:4], len(requests), *first.args[5:head], *tails))


def split_acquires(reply: Any, count: int) -> list[Any]:
    """The replies of a :func:`merge_acquires` call, one per request, each as if sent alone."""
    try:
        now, size = reply[0], (len(reply) - 1) // count
    except (TypeError, IndexError, ZeroDivisionError) as exc:
        raise ScriptError(f"acquire: malformed reply {reply!r}") from exc
    if size * count != len(reply) - 1:
        raise ScriptError(f"acquire: malformed reply {reply!r}")
    return [[now, *reply[1 + k * size : 1 + (k + 1) * size]] for k in range(count)]


def _charged(reservation: Reservation, record: str, ttl_ms: int) -> Reservation:
    """The handle of the acquire a reservation id's record names (acquire.lua's form:
    "token at|name bucket amount window_ms bucket_ms|...")."""
    try:
        head, *parts = record.split("|")
        token, at = head.split(" ")
        charges = tuple((name, int(i), int(c), int(w), int(b)) for name, i, c, w, b in (p.split(" ") for p in parts))
        return msgspec.structs.replace(reservation, token=token, at_ms=int(at), ttl_ms=ttl_ms, charges=charges)
    except ValueError as exc:
        raise ScriptError(f"acquire: unreadable reservation record {record!r}") from exc


def _decision(
    reply: Any,
    limits: Sequence[LimitSpec],
    costs: Sequence[int],
    reservation: Reservation,
    mode: Mode,
    ttl_ms: int,
) -> Decision:
    try:
        now_ms, status, binding, wait_ms = (int(v) for v in reply[:4])
        stored = text(reply[4])
        remaining = [int(v) for v in reply[5:]]
    except (TypeError, ValueError) as exc:
        raise ScriptError(f"acquire: malformed reply {reply!r}") from exc
    if len(remaining) != len(limits) or status not in (0, 1, 2, 3, 4):
        raise ScriptError(f"acquire: malformed reply {reply!r}")
    named = MappingProxyType({spec.name: left for spec, left in zip(limits, remaining, strict=True) if left >= 0})
    bound = limits[binding - 1].name if binding else None
    if status == 3:  # the cost of that limit alone is more than the limit
        spec = limits[binding - 1]
        raise RequestTooLargeError(reservation.model_key, spec.name, costs[binding - 1], spec.limit)
    if status == 0:
        return Decision(False, wait_ms / 1000, bound, named, server_ms=now_ms)
    if status == 2:  # the handle of the acquire that holds this id
        held = _charged(reservation, stored, ttl_ms)
        return Decision(True, 0.0, None, named, held, duplicate=True, server_ms=now_ms)
    held = None
    if mode != "peek":
        at = now_ms  # every limit of the plan, in its order (the costs came from the same plan)
        charges = tuple(
            [
                (spec.name, at // spec.bucket_ms, cost, spec.window_ms, spec.bucket_ms)
                for spec, cost in zip(limits, costs, strict=False)
            ]
        )
        held = msgspec.structs.replace(reservation, at_ms=now_ms, ttl_ms=ttl_ms, charges=charges)
    return Decision(True, 0.0, None, named, held, would_deny=bound if status == 4 else None, server_ms=now_ms)


def settle(
    keys: Keys,
    reservation: Reservation,
    *,
    input_tokens: int | None,
    output_tokens: int | None,
    release: bool = False,
    now_ms: int | None = None,
    model: ModelSpec | None = None,
    success: bool = True,
    latency_ms: float | None = None,
    throttled: bool = False,
    cached_input_tokens: int = 0,
    cache_write_tokens: int = 0,
    predicted_ms: int = 0,
    sample_cap: int = 0,
    budgets: Mapping[tuple[str, str], Budget] | None = None,
) -> Flow[bool]:
    """Move each charged amount to its real value (or to 0 for a release); True if it did.

    A settle given the ``model`` also records the usage in its ledger, in the same script.
    ``cached_input_tokens`` and ``cache_write_tokens`` are part of the input: they price it (see
    :func:`~registry.pricing.estimate`), and the cache reads are left out of an input-tokens
    limit (Anthropic's ITPM does not count them).
    """
    if not isinstance(reservation, Reservation):
        raise ConfigError(f"expected a Reservation, got {type(reservation).__name__}")
    if release:
        requests, used_in, used_out, cached, written = 0, 0, 0, 0, 0
    else:
        used_in = check_tokens("input_tokens", reservation.input_tokens if input_tokens is None else input_tokens)
        used_out = check_tokens("output_tokens", 0 if output_tokens is None else output_tokens)
        cached, written = check_cache_tokens(used_in, cached_input_tokens, cache_write_tokens)
        requests = 1
    token = reservation.token or "-"
    args: list[str | int] = [
        _now_arg(now_ms),
        len(reservation.charges),
        token,
        reservation.at_ms,
        max(reservation.ttl_ms, 1),
        Reservation.new_id(),  # this call's nonce: the same call re-sent is told it settled
    ]
    window_keys = [
        keys.settled(reservation.model_key, token, reservation.tenant),
        keys.reservation(reservation.model_key, reservation.id, reservation.tenant),
    ]
    for name, bucket, charged, window_ms, bucket_ms in reservation.charges:
        args += [name, bucket, charged, window_ms, bucket_ms, amount(COUNTS[name], requests, used_in, used_out, cached)]
        tenant = reservation.tenant if name.startswith("tenant.") else None
        window_keys.append(window_key(keys, reservation.model_key, name, tenant))
    usage = None
    if model is not None and not release:
        usage = Usage.of(
            model, used_in, used_out, bool(success), latency_ms, reservation.tenant, bool(throttled), cached, written
        )
    budgets_done = None
    if reservation.budgets and reservation.tenant is not None:
        # First the budgets (the tenant's slot), then the windows and the ledger (the model's):
        # each is idempotent on its own, so a retry after a failure between them completes both.
        budgets_done = yield from budget_ops.finish(
            keys,
            budgets or {},
            tenant=reservation.tenant,
            reservation_id=reservation.id,
            token=reservation.token,
            periods=reservation.budgets,
            cost_units=None if usage is None else usage.units,
            currency="" if model is None else model.cost.currency,
            now_ms=now_ms,
        )
    at = predicted_ms if now_ms is None else now_ms
    for _ in range(2):
        extra_keys: list[str] = []
        extra_args: list[str | int] = []
        if usage is not None:
            extra_keys, indexes = usage.keys_at(keys, at)
            extra_args = ["ledger", *indexes, *usage.event_args(reservation.id, sample_cap)]
        reply = yield Script("settle", keys=(*window_keys, *extra_keys), args=(*args, *extra_args))
        try:
            status, server_ms = int(reply[0]), int(reply[1])
        except (TypeError, ValueError, IndexError) as exc:
            raise ScriptError(f"settle: malformed reply {reply!r}") from exc
        if status != 2:
            return status == 1 or budgets_done is not None
        at = server_ms  # ledger buckets named after another minute: once more, after the server's
    raise ScriptError("settle: the server's clock moved past a bucket twice; try again")
