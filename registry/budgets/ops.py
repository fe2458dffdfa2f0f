"""Budget flows (see :mod:`registry._core`): hold an estimate at admission, settle or release it,
read where budgets stand. Each is one script call in the tenant's hash slot.

Admission of a request that counts against budgets touches two slots: the tenant's budgets
and the model's windows. :func:`registry.admission.ops.acquire` orders them so that nothing
is ever over-admitted: first hold the estimate on the budgets (refused: stop there), then
consume the windows; if the windows refuse, give the hold back. Between the hold and its
return (one round trip, or the hold TTL if the client dies in between) the estimate counts
against the budget although the request was not admitted, so another request of the same
tenant may be refused then that would have fitted. Never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from registry._core import Commands, Flow, Script, text
from registry.budgets.periods import bounds, index_at, keep_ms
from registry.budgets.types import Budget, BudgetStatus, decode_budgets, encode_budgets
from registry.catalog import ops as catalog_ops
from registry.catalog.ops import Write
from registry.errors import RevisionConflictError, ScriptError
from registry.keys import Keys

__all__ = ["BUDGET_EVENTS_CAP", "BudgetCheck", "change", "finish", "reserve", "setting", "status"]

BUDGET_EVENTS_CAP = 10_000
Period3 = tuple[str, str, int]  # scope, period, index: which spend hash a hold sits in


@dataclass(frozen=True, slots=True)
class BudgetCheck:
    """budget_reserve.lua's answer. ``status``: 1 held, 0 refused, 2 held before under this id,
    3 the estimate alone exceeds ``budget``, 4 shadow (held, would have refused)."""

    status: int
    budget: Budget | None  # the binding budget (refusing, or would refuse)
    wait_ms: int
    token: str
    periods: tuple[Period3, ...]
    remaining: Mapping[str, int]  # units left of each budget: amount - spent - held

    @property
    def fresh(self) -> bool:
        """Whether this call made a hold (that a refusal of the windows must give back)."""
        return self.status in (1, 4)


def reserve(
    keys: Keys,
    budgets: Sequence[Budget],
    *,
    tenant: str,
    reservation_id: str,
    token: str,
    estimate_units: int,
    mode: str,
    now_ms: int | None,
    predicted_ms: int,
    ttl_ms: int,
) -> Flow[BudgetCheck]:
    """Hold ``estimate_units`` on every budget of ``budgets`` (all for ``tenant``), or on none."""
    at = predicted_ms if now_ms is None else now_ms
    for _ in range(2):
        periods = tuple((b.scope, b.period, index_at(b.period, at)) for b in budgets)
        args: list[str | int] = ["" if now_ms is None else now_ms, mode, ttl_ms, token, estimate_units, len(budgets)]
        for budget, (_, _, index) in zip(budgets, periods, strict=True):
            args += [budget.units, keep_ms(budget.period), *bounds(budget.period, index)]
        reply = yield Script(
            "budget_reserve",
            keys=(keys.budget_hold(tenant, reservation_id), *(keys.budget_spend(tenant, *p) for p in periods)),
            args=tuple(args),
        )
        try:
            status, server_ms, binding, wait_ms = (int(v) for v in reply[:4])
            held_by = text(reply[4])
            amounts = [int(v) for v in reply[5:]]
        except (TypeError, ValueError, IndexError) as exc:
            raise ScriptError(f"budget_reserve: malformed reply {reply!r}") from exc
        if status == 5:
            at = server_ms  # our clock named another period: once more, after the server's
            continue
        if status not in (0, 1, 2, 3, 4) or len(amounts) != 2 * len(budgets):
            raise ScriptError(f"budget_reserve: malformed reply {reply!r}")
        remaining = {b.name: max(b.units - amounts[2 * i] - amounts[2 * i + 1], 0) for i, b in enumerate(budgets)}
        return BudgetCheck(status, budgets[binding - 1] if binding else None, wait_ms, held_by, periods, remaining)
    raise ScriptError("budget_reserve: the server's clock moved past a period twice; try again")


def finish(
    keys: Keys,
    budgets: Mapping[tuple[str, str], Budget],
    *,
    tenant: str,
    reservation_id: str,
    token: str,
    periods: Sequence[Period3],
    cost_units: int | None,
    currency: str,
    now_ms: int | None,
    events_cap: int = BUDGET_EVENTS_CAP,
    held: bool = True,
) -> Flow[int | None]:
    """Settle a hold with the real ``cost_units`` (None: release it, adding nothing); with
    ``held`` False, add ``cost_units`` to budgets that held nothing (a recorded request).

    ``budgets`` are the tenant's budgets now, by (scope, period): their amounts and thresholds
    decide the events; a budget removed since the hold still gets the spend, without events.
    Returns the number of threshold events raised, or None if there was no such hold.
    """
    args: list[str | int] = [
        "" if now_ms is None else now_ms,
        token,
        "release" if cost_units is None else ("settle" if held else "spend"),
        cost_units or 0,
        len(periods),
        events_cap,
        tenant,
        currency,
        reservation_id,
    ]
    for scope, period, index in periods:
        budget = budgets.get((scope, period))
        marks = "" if budget is None else " ".join(f"{p}:{u}" for p, u in budget.threshold_units())
        args += [scope, period, index, "" if budget is None else budget.units, marks, keep_ms(period)]  # type: ignore[arg-type]
    reply = yield Script(
        "budget_settle",
        keys=(
            keys.budget_hold(tenant, reservation_id),
            *(keys.budget_spend(tenant, *p) for p in periods),
            keys.budget_events(tenant),
        ),
        args=tuple(args),
    )
    try:
        done, _now, raised = (int(v) for v in reply)
    except (TypeError, ValueError) as exc:
        raise ScriptError(f"budget_settle: malformed reply {reply!r}") from exc
    return raised if done == 1 else None


def status(keys: Keys, tenant: str, budgets: Sequence[Budget], at_ms: int) -> Flow[list[BudgetStatus]]:
    """Where each budget of ``tenant`` stands in the period containing ``at_ms``: one round trip."""
    indexes = [index_at(b.period, at_ms) for b in budgets]
    spend_keys = [keys.budget_spend(tenant, b.scope, b.period, i) for b, i in zip(budgets, indexes, strict=True)]
    replies = yield Commands(tuple(("HGETALL", k) for k in spend_keys), transaction=False)
    out = []
    for budget, index, raw in zip(budgets, indexes, replies, strict=True):
        fields: dict[str, Any] = {text(k): text(v) for k, v in (raw or {}).items()}
        out.append(BudgetStatus.of(budget, index, fields, at_ms))
    return out


_WRITE_ATTEMPTS = 10


def change(
    keys: Keys, tenant: str, edit: Callable[[tuple[Budget, ...]], tuple[Budget, ...]]
) -> Flow[tuple[Budget, ...]]:
    """Read a tenant's budgets from Redis, apply ``edit``, and compare-and-set the result as a
    catalog write (so every client's local copy follows); retried when another write won."""
    member = keys.budget_member(tenant)
    for _ in range(_WRITE_ATTEMPTS):
        (raw,) = yield Commands((("HGETALL", keys.catalog_item(member)),), transaction=False)
        current = decode_budgets(raw)[1] if raw else ()
        revision = int(text(raw.get("_revision", raw.get(b"_revision", 0)))) if raw else 0
        wanted = edit(current)
        if wanted == current:
            return current
        if wanted:
            write = Write("put", member, revision, fields=encode_budgets(tenant, wanted))
        else:
            write = Write("delete", member, revision)
        try:
            yield from catalog_ops.write(keys, [write])
        except RevisionConflictError:
            continue
        return wanted
    raise RevisionConflictError(member, -1, -1)


def setting(budgets: tuple[Budget, ...]) -> Callable[[tuple[Budget, ...]], tuple[Budget, ...]]:
    """An edit for :func:`change` that sets the tenant's budgets to ``budgets``."""
    return lambda _current: budgets
