"""registry: a Redis-backed model catalog, rate limiter and cost ledger for LLM fleets."""

from __future__ import annotations

from registry.admission.types import Decision, Reservation
from registry.aio import AsyncRegistry
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
    RateLimitedError,
    RegistryError,
    RequestTooLargeError,
    RevisionConflictError,
    ScriptError,
)
from registry.ledger.ops import UsageRecord
from registry.ledger.stats import Statistics, UsageTotals
from registry.models import Capability, Cost, ModelSpec, PriceTier, RateLimit, Status, parse_model_key

__version__ = "0.1.0"

__all__ = [
    "AsyncRegistry",
    "BackendError",
    "BackendUnavailable",
    "Capability",
    "CatalogEntry",
    "ConfigError",
    "Cost",
    "Decision",
    "ModelExistsError",
    "ModelNotFoundError",
    "ModelSpec",
    "PriceTier",
    "RateLimit",
    "RateLimitedError",
    "Registry",
    "RegistryError",
    "RequestTooLargeError",
    "Reservation",
    "RevisionConflictError",
    "ScriptError",
    "SearchQuery",
    "Statistics",
    "Status",
    "SyncPlan",
    "UsageRecord",
    "UsageTotals",
    "__version__",
    "parse_model_key",
]
