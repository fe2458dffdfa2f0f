"""registry: a Redis-backed model catalog, rate limiter and cost ledger for LLM fleets."""

from __future__ import annotations

from registry.admission.route import Route
from registry.admission.types import Decision, Reservation
from registry.aio import AsyncRegistry
from registry.budgets.types import Budget, BudgetStatus
from registry.catalog.codec import CatalogEntry
from registry.catalog.search import SearchQuery
from registry.catalog.sync import SyncPlan
from registry.client import Registry
from registry.errors import (
    BackendError,
    BackendUnavailable,
    ConfigError,
    ModelExistsError,
    ModelNotFoundError,
    PermissionDenied,
    RateLimitedError,
    RegistryError,
    RequestTooLargeError,
    RevisionConflictError,
    ScriptError,
)
from registry.events import Event, Subscription
from registry.ledger.ops import UsageRecord
from registry.ledger.stats import ModelRanking, Performance, Statistics, UsagePoint, UsageTotals
from registry.models import Capability, Cost, ModelSpec, PriceTier, RateLimit, Status, parse_model_key

__version__ = "0.1.0"

__all__ = [
    "AsyncRegistry",
    "BackendError",
    "BackendUnavailable",
    "Budget",
    "BudgetStatus",
    "Capability",
    "CatalogEntry",
    "ConfigError",
    "Cost",
    "Decision",
    "Event",
    "ModelExistsError",
    "ModelNotFoundError",
    "ModelRanking",
    "ModelSpec",
    "Performance",
    "PermissionDenied",
    "PriceTier",
    "RateLimit",
    "RateLimitedError",
    "Registry",
    "RegistryError",
    "RequestTooLargeError",
    "Reservation",
    "RevisionConflictError",
    "Route",
    "ScriptError",
    "SearchQuery",
    "Statistics",
    "Status",
    "Subscription",
    "SyncPlan",
    "UsagePoint",
    "UsageRecord",
    "UsageTotals",
    "__version__",
    "parse_model_key",
]
