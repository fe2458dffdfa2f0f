"""``registry models list|show|search|cheapest`` and ``registry estimate``: reading the catalog."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from registry.cli.context import Context
from registry.cli.output import cost_text, model_details, model_table, render_table
from registry.models import ModelSpec
from registry.pricing import estimate

__all__ = ["cheapest_rows", "cmd_cheapest", "cmd_estimate", "cmd_list", "cmd_search", "cmd_show"]


def _show_models(ctx: Context, models: list[ModelSpec]) -> int:
    if ctx.out.json:
        ctx.out.document([m.model_dump(mode="json") for m in models])
    else:
        ctx.out.lines(model_table(models))
    return 0


def cmd_list(ctx: Context) -> int:
    """Every model, by key; optionally of some providers or statuses."""
    with ctx.registry() as reg:
        models = reg.list_models(provider=ctx.args.provider, status=ctx.args.status)
    return _show_models(ctx, models)


def cmd_show(ctx: Context) -> int:
    """One model with all its fields (and, for people, the revision of its last write)."""
    with ctx.registry() as reg:
        entry = reg.get_entry(ctx.args.key)
    if ctx.out.json:
        ctx.out.document(entry.model.model_dump(mode="json"))
    else:
        ctx.out.lines(model_details(entry.model, revision=entry.revision))
    return 0


def search_filters(args: Any) -> dict[str, Any]:
    """The keyword arguments of :meth:`Registry.search_models` that the command line set."""
    filters = {
        "provider": args.provider,
        "capability": args.capability,
        "min_context_window": args.min_context,
        "max_context_window": args.max_context,
        "name_pattern": args.name,
        "tags": args.tag,
        "status": args.status,
        "max_cost_per_token": args.max_cost_per_token,
        "min_version": args.min_version,
        "max_version": args.max_version,
        "exclude_deprecated": args.exclude_deprecated,
    }
    return {name: value for name, value in filters.items() if value not in (None, False)}


def cmd_search(ctx: Context) -> int:
    """Models passing every filter given (see :mod:`registry.catalog.search`)."""
    with ctx.registry() as reg:
        models = reg.search_models(**search_filters(ctx.args))
    return _show_models(ctx, models)


def cheapest_rows(models: list[ModelSpec], input_tokens: int, output_tokens: int) -> list[tuple[ModelSpec, Decimal]]:
    """Each ranked model with the exact price of the reference request (the ranking's score)."""
    return [(m, estimate(m.cost, input_tokens, output_tokens)) for m in models]


def cheapest_lines(
    ranked: list[tuple[ModelSpec, Decimal]], input_tokens: int, output_tokens: int, *, what: str = "cheapest models"
) -> list[str]:
    head = f"{what} for a request of {input_tokens:,} input + {output_tokens:,} output tokens:"
    if not ranked:
        return [head, "(no models match)"]
    rows = [
        (str(i), m.key, cost_text(cost), m.cost.currency, "-" if m.context_window is None else f"{m.context_window:,}")
        for i, (m, cost) in enumerate(ranked, 1)
    ]
    return [head, *render_table(("#", "KEY", "COST", "CUR", "CONTEXT"), rows, right=(0, 2, 4))]


def cheapest_document(ranked: list[tuple[ModelSpec, Decimal]]) -> list[dict[str, Any]]:
    return [
        {
            "rank": i,
            "key": m.key,
            "cost": cost_text(cost),
            "currency": m.cost.currency,
            "model": m.model_dump(mode="json"),
        }
        for i, (m, cost) in enumerate(ranked, 1)
    ]


def cmd_cheapest(ctx: Context) -> int:
    """The cheapest models for a reference request (3 input : 1 output tokens by default)."""
    args = ctx.args
    with ctx.registry() as reg:
        models = reg.most_cost_effective_models(
            args.capability,
            args.limit,
            input_tokens=args.input_tokens,
            output_tokens=args.output_tokens,
            currency=args.currency,
        )
    ranked = cheapest_rows(models, args.input_tokens, args.output_tokens)
    if ctx.out.json:
        ctx.out.document(cheapest_document(ranked))
    else:
        ctx.out.lines(cheapest_lines(ranked, args.input_tokens, args.output_tokens))
    return 0


def estimate_document(
    model: ModelSpec,
    cost: Decimal,
    input_tokens: int,
    output_tokens: int,
    cached: int = 0,
    cache_write: int = 0,
    reasoning: int = 0,
) -> dict[str, Any]:
    return {
        "model": model.key,
        "cost": cost_text(cost),
        "currency": model.cost.currency,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cached_input_tokens": cached,
        "cache_write_tokens": cache_write,
        "reasoning_tokens": reasoning,
    }


def estimate_line(
    model: ModelSpec,
    cost: Decimal,
    input_tokens: int,
    output_tokens: int,
    cached: int = 0,
    cache_write: int = 0,
    reasoning: int = 0,
) -> str:
    parts = [f"{input_tokens:,} input"]
    if cached:
        parts.append(f"{cached:,} of them cached")
    if cache_write:
        parts.append(f"{cache_write:,} written to the cache")
    output = f"{output_tokens:,} output tokens" + (f" ({reasoning:,} of them reasoning)" if reasoning else "")
    return f"{cost_text(cost)} {model.cost.currency}  ({model.key}: {', '.join(parts)}, {output})"


def cmd_estimate(ctx: Context) -> int:
    """The exact price of one request, in the model's currency."""
    args = ctx.args
    with ctx.registry() as reg:
        # One read gives both the price and its currency (estimate_cost returns a bare amount).
        model = reg.get_model(args.key)
    counts = (args.input, args.output, args.cached, args.cache_write, args.reasoning)
    cost = estimate(model.cost, *counts)
    if ctx.out.json:
        ctx.out.document(estimate_document(model, cost, *counts))
    else:
        ctx.out.line(estimate_line(model, cost, *counts))
    return 0
