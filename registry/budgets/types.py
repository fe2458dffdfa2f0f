"""What a budget is, how a tenant's budgets sit in the catalog, and what status reads return."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

import msgspec
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from registry._core import validation_error
from registry.budgets.periods import Period, bounds
from registry.errors import ScriptError
from registry.ledger.money import from_units, to_units
from registry.models import Currency, TenantName, parse_model_key

__all__ = ["DEFAULT_THRESHOLDS", "MAX_BUDGET_UNITS", "Budget", "BudgetStatus", "decode_budgets", "encode_budgets"]

DEFAULT_THRESHOLDS = (50, 80, 100)
# A budget's amount stays below 2^53 units (about 9 million in the currency's major unit), so
# that the Lua scripts compare money exactly; every change of a counter is an HINCRBY anyway.
MAX_BUDGET_UNITS = 2**53 - 1
_encoder = msgspec.json.Encoder()


class Budget(BaseModel):
    """A cap on what a tenant spends per UTC ``period``, on every model or on one ``model``.

    Only models priced in the budget's ``currency`` count against it. ``thresholds`` are the
    percentages of the amount at which one ``budget.threshold`` event is raised per period.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: TenantName
    amount: Annotated[Decimal, Field(gt=0, allow_inf_nan=False)]
    period: Period = "day"
    model: str | None = None
    currency: Currency = "USD"
    thresholds: tuple[Annotated[int, Field(ge=1, le=100)], ...] = DEFAULT_THRESHOLDS

    @field_validator("amount")
    @classmethod
    def _fits(cls, value: Decimal) -> Decimal:
        units = to_units(value)
        if units < 1 or units > MAX_BUDGET_UNITS:
            raise ValueError(f"must be from 1e-9 to {from_units(MAX_BUDGET_UNITS)} (exact in the scripts)")
        if from_units(units) != value:
            raise ValueError("has more than 9 decimal places (the ledger's unit is 1e-9)")
        return value

    @field_validator("model")
    @classmethod
    def _model_key(cls, value: str | None) -> str | None:
        if value is not None:
            parse_model_key(value)
        return value

    @model_validator(mode="after")
    def _sorted_thresholds(self) -> Budget:
        if list(self.thresholds) != sorted(set(self.thresholds)):
            raise ValueError("thresholds must be increasing percentages without repeats")
        return self

    @classmethod
    def build(cls, **fields: Any) -> Budget:
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise validation_error(exc, where="budget") from None

    @property
    def scope(self) -> str:
        """``*`` for every model, else the model key: part of the spend key's name."""
        return self.model or "*"

    @property
    def name(self) -> str:
        """How a refusal names the budget: ``budget:<scope>:<period>``."""
        return f"budget:{self.scope}:{self.period}"

    @property
    def units(self) -> int:
        return to_units(self.amount)

    def threshold_units(self) -> list[tuple[int, int]]:
        """Each threshold with the spend (units, rounded up) that reaches it."""
        return [(pct, -(-self.units * pct // 100)) for pct in self.thresholds]

    def applies_to(self, model_key: str, currency: str) -> bool:
        return (self.model is None or self.model == model_key) and self.currency == currency


def encode_budgets(tenant: str, budgets: Sequence[Budget]) -> dict[str, str]:
    """A tenant's budgets as the fields of its catalog hash."""
    rows = [b.model_dump(mode="json", exclude={"tenant"}) for b in budgets]
    return {"tenant": tenant, "budgets": _encoder.encode(rows).decode()}


def decode_budgets(raw: Mapping[Any, Any]) -> tuple[str, tuple[Budget, ...]]:
    """Parse a tenant's catalog hash (an HGETALL reply) back into its budgets."""
    fields = {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in raw.items()}
    try:
        tenant = fields["tenant"]
        tenant = tenant.decode() if isinstance(tenant, bytes) else str(tenant)
        rows = msgspec.json.decode(fields["budgets"])
        return tenant, tuple(Budget.model_validate({**row, "tenant": tenant}) for row in rows)
    except (KeyError, TypeError, msgspec.DecodeError, ValidationError) as exc:
        raise ScriptError(f"malformed budget hash: {exc}") from exc


@dataclass(frozen=True)
class BudgetStatus:
    """Where one budget stands in its current period."""

    budget: Budget
    period_start: datetime
    period_end: datetime
    spent: Decimal  # settled and recorded cost in the period
    held: Decimal  # estimates of admitted requests not yet settled
    thresholds_reached: tuple[int, ...]
    denied: int = 0  # acquires this budget refused in the period

    @property
    def remaining(self) -> Decimal:
        return max(self.budget.amount - self.spent - self.held, Decimal(0))

    @property
    def used_fraction(self) -> float:
        return float(self.spent / self.budget.amount)

    @classmethod
    def of(cls, budget: Budget, index: int, raw: Mapping[str, str], now_ms: int) -> BudgetStatus:
        """From a spend hash: ``held`` counts the holds that have not lapsed by ``now_ms``."""
        start, end = bounds(budget.period, index)
        reached = tuple(p for p in budget.thresholds if f"t:{p}" in raw)
        held = 0
        for name, value in raw.items():
            if name.startswith("h:"):
                expires, units = value.split()
                held += int(units) if int(expires) > now_ms else 0
        return cls(
            budget,
            datetime.fromtimestamp(start / 1000, UTC),
            datetime.fromtimestamp(end / 1000, UTC),
            from_units(int(raw.get("spent", 0))),
            from_units(held),
            reached,
            int(raw.get("denied", 0)),
        )
