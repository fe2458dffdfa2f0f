"""The public surface: what ``registry`` exports, and the twin clients' identical signatures."""

from __future__ import annotations

import inspect

import registry
from registry import AsyncRegistry, Registry


def test_public_names() -> None:
    assert registry.__all__ == [
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
    for name in registry.__all__:
        assert hasattr(registry, name), name


def _public(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and callable(member)
    }


def test_sync_and_async_clients_have_the_same_methods_and_signatures() -> None:
    sync, aio = _public(Registry), _public(AsyncRegistry)
    assert sync.keys() - {"close"} == aio.keys() - {"aclose"}
    for name, signature in sync.items():
        if name == "close":
            continue
        other = aio[name]
        assert list(signature.parameters) == list(other.parameters), name
        for p, q in zip(signature.parameters.values(), other.parameters.values(), strict=True):
            assert (p.kind, p.default) == (q.kind, q.default), f"{name}({p.name})"


def test_async_twins_are_coroutines() -> None:
    for name, member in inspect.getmembers(AsyncRegistry):
        if name.startswith("_") or name in ("from_url", "compare_versions", "admit") or not callable(member):
            continue
        assert inspect.iscoroutinefunction(member), name
