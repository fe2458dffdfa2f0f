"""Cheapest available model: try the cheapest eligible models in order, admit the first that has
room. A flow (see :mod:`registry._core`): one acquire, so one round trip, per model tried (two
where the tenant has budgets), and none for a model a cached refusal already rules out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from registry._core import Flow
from registry.admission.types import Decision
from registry.catalog.search import SearchQuery
from registry.catalog.snapshot import Snapshot
from registry.errors import ConfigError, ModelNotFoundError, RequestTooLargeError
from registry.models import ModelSpec, Status
from registry.pricing import check_tokens, estimate

__all__ = ["Route", "candidates", "route"]


class Route(NamedTuple):
    """What :meth:`Registry.route` chose: the admission, and the model it is for (None: none
    had room; ``decision`` is then the refusal that ends soonest). ``tried`` lists each model
    refused on the way, with the limit that refused it."""

    decision: Decision
    model_key: str | None
    tried: tuple[tuple[str, str | None], ...] = ()


def candidates(
    snapshot: Snapshot,
    *,
    input_tokens: int,
    max_output_tokens: int | None,
    capability: str | Sequence[str] | None,
    keys: Sequence[str] | None,
    max_cost: Decimal | int | str | None,
    currency: str,
    filters: dict[str, Any],
) -> list[tuple[ModelSpec, Decimal]]:
    """The eligible models, cheapest first for this request: the capability and filters hold,
    the currency is ``currency``, the model is not retired or deprecated, the request fits its
    context window, and its estimated cost is at most ``max_cost``. Ties: the larger context
    window, then the key."""
    input_tokens = check_tokens("input_tokens", input_tokens)
    if max_output_tokens is not None:
        max_output_tokens = check_tokens("max_output_tokens", max_output_tokens)
    limit = None
    if max_cost is not None:
        if isinstance(max_cost, float | bool):
            raise ConfigError(f"max_cost must be a Decimal, int or decimal string, got {max_cost!r}")
        try:
            limit = Decimal(str(max_cost))
        except InvalidOperation:
            raise ConfigError(f"max_cost must be a Decimal, int or decimal string, got {max_cost!r}") from None
        if not limit.is_finite() or limit < 0:
            raise ConfigError(f"max_cost must be a finite amount >= 0, got {max_cost!r}")
    query = SearchQuery.build(capability=capability, currency=currency, exclude_deprecated=True, **filters)
    if keys is not None:
        if isinstance(keys, str | bytes | Mapping) or not isinstance(keys, Iterable):
            raise ConfigError("candidates must be a list of model keys")
        keys = list(keys)
        if not all(isinstance(k, str) for k in keys):
            raise ConfigError(f"candidates must be model keys (strings), got {keys!r}")
        pool = [snapshot.get(k) for k in keys]  # an unknown key is an error, not a silent skip
        rows = [snapshot.rows[m.key] for m in pool]
        models = [row.model for row in rows if query.matches(row)]
    else:
        models = snapshot.search(query)
    ranked = []
    for m in models:
        if m.status == Status.RETIRED:
            continue
        output = max_output_tokens if max_output_tokens is not None else (m.max_output_tokens or 0)
        if m.context_window is not None and input_tokens + output > m.context_window:
            continue
        cost = estimate(m.cost, input_tokens, output)
        if limit is not None and cost > limit:
            continue
        ranked.append((cost, -(m.context_window or 0), m.key, m))
    ranked.sort(key=lambda item: item[:3])
    return [(m, cost) for cost, _, _, m in ranked]


def route(
    eligible: Sequence[tuple[ModelSpec, Decimal]],
    acquire: Callable[[ModelSpec], Flow[Decision]],
    cached: Callable[[str], Decision | None],
) -> Flow[Route]:
    """Acquire on each model of ``eligible`` in order until one admits."""
    tried: list[tuple[str, str | None]] = []
    soonest: Decision | None = None
    too_large: RequestTooLargeError | None = None
    for model, _cost in eligible:
        decision = cached(model.key)
        if decision is None:
            try:
                decision = yield from acquire(model)
            except RequestTooLargeError as exc:  # never fits this model: the next may
                tried.append((model.key, exc.limit))
                too_large = exc
                continue
        if decision.allowed:
            return Route(decision, model.key, tuple(tried))
        tried.append((model.key, decision.denied_by))
        if soonest is None or decision.retry_after < soonest.retry_after:
            soonest = decision
    if not eligible:
        raise ModelNotFoundError("(no model matches the route's filters)")
    if soonest is None:  # every candidate is too small for this request: waiting never helps
        assert too_large is not None
        raise too_large
    return Route(soonest, None, tuple(tried))
