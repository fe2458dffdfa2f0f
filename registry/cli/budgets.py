"""``registry budget set|delete|list|status``: tenants' spend caps and where they stand."""

from __future__ import annotations

from typing import Any

from registry.budgets.types import Budget, BudgetStatus
from registry.cli.context import Context
from registry.cli.output import cost_text, render_table

__all__ = ["cmd_budget_delete", "cmd_budget_list", "cmd_budget_set", "cmd_budget_status"]


def _budget_row(budget: Budget) -> list[str]:
    return [
        budget.tenant,
        budget.scope,
        budget.period,
        f"{cost_text(budget.amount)} {budget.currency}",
        ",".join(f"{p}%" for p in budget.thresholds),
    ]


def _status_document(status: BudgetStatus) -> dict[str, Any]:
    return {
        **status.budget.model_dump(mode="json"),
        "period_start": status.period_start.isoformat(),
        "period_end": status.period_end.isoformat(),
        "spent": status.spent,
        "held": status.held,
        "remaining": status.remaining,
        "thresholds_reached": list(status.thresholds_reached),
    }


def cmd_budget_set(ctx: Context) -> int:
    """Set (or replace) a tenant's budget for a period, on every model or on one."""
    args = ctx.args
    kwargs: dict[str, Any] = {"currency": args.currency}
    if args.thresholds is not None:
        kwargs["thresholds"] = args.thresholds
    with ctx.registry() as reg:
        budget = reg.set_budget(args.tenant, args.amount, args.period, args.model, **kwargs)
    if ctx.out.json:
        ctx.out.document(budget.model_dump(mode="json"))
    else:
        ctx.out.line(f"set {budget.tenant} {budget.name}: {cost_text(budget.amount)} {budget.currency}")
    return 0


def cmd_budget_delete(ctx: Context) -> int:
    """Remove a budget (what was spent stays in the ledger); exit 1 if there was none."""
    args = ctx.args
    with ctx.registry() as reg:
        removed = reg.delete_budget(args.tenant, args.period, args.model)
    scope = f"budget:{args.model or '*'}:{args.period}"
    if ctx.out.json:
        ctx.out.document({"removed": removed})
    else:
        ctx.out.line(f"removed {args.tenant} {scope}" if removed else f"no {scope} budget for {args.tenant}")
    return 0 if removed else 1


def cmd_budget_list(ctx: Context) -> int:
    """Every budget (or one tenant's)."""
    with ctx.registry() as reg:
        budgets = reg.get_budgets(ctx.args.tenant)
    if ctx.out.json:
        ctx.out.document([b.model_dump(mode="json") for b in budgets])
    elif budgets:
        ctx.out.lines(render_table(["TENANT", "MODEL", "PERIOD", "AMOUNT", "THRESHOLDS"], map(_budget_row, budgets)))
    else:
        ctx.out.line("no budgets")
    return 0


def cmd_budget_status(ctx: Context) -> int:
    """A tenant's budgets in their current periods: spent, held, remaining, thresholds reached."""
    with ctx.registry() as reg:
        statuses = reg.budget_status(ctx.args.tenant)
    if ctx.out.json:
        ctx.out.document([_status_document(s) for s in statuses])
        return 0
    if not statuses:
        ctx.out.line(f"no budgets for {ctx.args.tenant}")
        return 0
    rows = [
        [
            s.budget.scope,
            f"{s.budget.period} from {s.period_start:%Y-%m-%d}",
            f"{cost_text(s.spent)} / {cost_text(s.budget.amount)} {s.budget.currency}",
            cost_text(s.held),
            cost_text(s.remaining),
            f"{s.used_fraction:.0%}",
            ",".join(f"{p}%" for p in s.thresholds_reached) or "-",
        ]
        for s in statuses
    ]
    ctx.out.lines(render_table(["MODEL", "PERIOD", "SPENT", "HELD", "REMAINING", "USED", "REACHED"], rows))
    return 0
