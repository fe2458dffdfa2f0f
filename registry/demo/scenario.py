"""What the demo fleet does: its models and their (tightened) limits, its tenants and budgets.

The shipped catalog's limits are real providers' quotas, far above what a 20-second run on a
laptop reaches. So the models the fleet uses get limits sized to *this* run: about half of the
requests the fleet will send to a model fit in its window, so every limit is reached while the
run is going on. Half the models are held by their requests-per-minute limit, half by their
tokens-per-minute limit; a model whose provider counts input and output tokens apart
(Anthropic's ``input_tokens_per_minute`` and ``output_tokens_per_minute``) keeps those two
limits instead, and is held by one or the other. One model also limits every tenant on it
(``tenant_limits["*"]``); a free local model, when the catalog has one, takes the overflow at a
looser limit. Two tenants
get daily budgets of about a quarter and a half of what they would spend, so both run out.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Any

from registry.client import Registry
from registry.errors import ConfigError, map_redis_errors
from registry.models import ModelSpec, Status
from registry.pricing import estimate

__all__ = [
    "Scenario",
    "Tenant",
    "build",
    "install",
    "namespace_keys",
    "new_namespace",
    "remove_namespace",
]

# The shipped catalog's models the demo prefers, in this order; another catalog's active chat
# models otherwise.
PREFERRED = (
    "openai:gpt-5.2",
    "anthropic:claude-haiku-4-5",
    "openai:gpt-5.5",
    "anthropic:claude-sonnet-4-6",
    "llama.cpp:llama-3.1-8b-instruct",
)
MAX_MODELS = 5
WEIGHTS = (0.30, 0.25, 0.15, 0.15, 0.15)
PER_WORKER_RPS = 9.0  # about what one worker sustains with the simulated latencies
# Request shapes (see worker.py): the prompt is log-normal around 600 tokens, 40 to 6,000.
INPUT_MEDIAN, INPUT_SIGMA, INPUT_MIN, INPUT_MAX = 600, 0.8, 40, 6_000
MAX_OUTPUTS = (128, 256, 512, 1_024)
MEAN_INPUT, MEAN_MAX_OUTPUT = 830, 480
MEAN_RESERVED = MEAN_INPUT + MEAN_MAX_OUTPUT  # what a request reserves on average
LARGEST = INPUT_MAX + max(MAX_OUTPUTS)
LIFETIME = (15, 50)  # admissions before a mortal worker dies (drawn per process)


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str | None  # None: requests without a tenant
    weight: float
    budget: Decimal | None = None  # USD per UTC day, on every model


@dataclass(frozen=True)
class Scenario:
    """One run: who sends what, how fast, for how long, and the catalog it runs on."""

    namespace: str
    models: tuple[str, ...]
    weights: tuple[float, ...]
    tenants: tuple[Tenant, ...]
    catalog: tuple[ModelSpec, ...]  # every model to sync, the fleet's with their demo limits
    workers: int
    duration: float
    rps: float
    seed: int
    mortal: int  # worker slots whose processes die now and then (and are replaced)
    free: tuple[str, ...] = field(default=())  # the fleet's models that cost nothing
    lifetime: tuple[int, int] = LIFETIME

    @property
    def budgets(self) -> dict[str, Decimal]:
        return {t.name: t.budget for t in self.tenants if t.name is not None and t.budget is not None}

    def fallback(self, model: str) -> str | None:
        """Where a request refused by ``model`` goes next: a free model, else the next one."""
        others = [m for m in self.models if m != model]
        if not others:
            return None
        free = [m for m in self.free if m != model]
        if free and model not in self.free:
            return free[0]
        return others[self.models.index(model) % len(others)]

    def document(self) -> dict[str, Any]:
        by_key = {m.key: m for m in self.catalog}
        return {
            "namespace": self.namespace,
            "workers": self.workers,
            "mortal_workers": self.mortal,
            "duration": self.duration,
            "rps": self.rps,
            "seed": self.seed,
            "models": [
                {
                    "key": key,
                    "weight": weight,
                    "rate_limit": by_key[key].rate_limit.model_dump(mode="json", exclude={"note"}),
                    "tenant_limits": {
                        t: r.model_dump(mode="json", exclude={"note"}) for t, r in by_key[key].tenant_limits.items()
                    },
                }
                for key, weight in zip(self.models, self.weights, strict=True)
            ],
            "tenants": [
                {"name": t.name, "weight": t.weight, "budget_per_day": None if t.budget is None else str(t.budget)}
                for t in self.tenants
            ],
        }


def new_namespace() -> str:
    return f"demo-{secrets.token_hex(3)}"


def _nice(value: float, floor: int) -> int:
    """``value`` to two significant digits, at least ``floor``."""
    if value <= floor:
        return floor
    step = 10 ** max(0, int(math.log10(value)) - 1)
    return max(floor, round(value / step) * step)


def _money(value: Decimal) -> Decimal:
    """Two significant digits, rounded up, at least a cent."""
    if value <= Decimal("0.01"):
        return Decimal("0.01")
    exponent = value.adjusted() - 1
    return value.quantize(Decimal(1).scaleb(exponent), rounding=ROUND_CEILING)


def _pick(catalog: Sequence[ModelSpec]) -> list[ModelSpec]:
    by_key = {m.key: m for m in catalog}
    usable = [
        m
        for m in catalog
        if m.status in (Status.ACTIVE, Status.BETA) and "chat" in m.capabilities and m.cost.currency == "USD"
    ]
    chosen = [by_key[k] for k in PREFERRED if k in by_key and by_key[k] in usable]
    for m in sorted(usable, key=lambda m: (m.cost.is_free, m.key)):
        if len(chosen) >= MAX_MODELS:
            break
        if m not in chosen:
            chosen.append(m)
    if not chosen:
        raise ConfigError("the catalog has no active chat model priced in USD for the demo fleet")
    return chosen


def _tight(model: ModelSpec, index: int, attempts: float, total: float, *, free: bool) -> ModelSpec:
    """``model`` with limits sized so that about half of ``attempts`` requests fit."""
    # Token limits: room for `requests` requests of the mean size, and at least `floor` of the
    # largest (a request larger than a limit never fits); `tight` sizes the one that holds.
    requests, floor = 2 * attempts, 3
    tight: dict[str, float] = {}
    if free:  # the overflow's destination: room for a fifth of everything the fleet sends
        rpm, requests = _nice(0.18 * total, 10), 0.2 * total
    elif index % 2 == 0:  # held by its requests per minute
        rpm = _nice(0.42 * attempts, 5)
    else:  # held by its tokens per minute (settle's refunds let more requests in than it seems);
        # where input and output are limited apart, by input tokens (never refunded) or output
        # tokens (refunded to about half the max output), one such model in two
        rpm, floor = _nice(1.5 * attempts, 10), 2
        tight = {"tokens": 0.33, **({"input": 0.5} if index // 2 % 2 == 0 else {"output": 0.25})}

    def limit(kind: str, mean: int, largest: int) -> int:
        return _nice((tight[kind] * attempts if kind in tight else requests) * mean, floor * largest)

    note = "registry demo: sized to this run so that it is reached"
    rate: dict[str, Any] = {"requests_per_minute": rpm}
    if model.rate_limit.input_tokens_per_minute is None and model.rate_limit.output_tokens_per_minute is None:
        rate["tokens_per_minute"] = limit("tokens", MEAN_RESERVED, LARGEST)
    else:  # the provider counts input and output tokens apart (Anthropic's ITPM and OTPM): so does the demo
        rate["input_tokens_per_minute"] = limit("input", MEAN_INPUT, INPUT_MAX)
        rate["output_tokens_per_minute"] = limit("output", MEAN_MAX_OUTPUT, max(MAX_OUTPUTS))
    changes: dict[str, Any] = {"rate_limit": {**rate, "note": note}}
    if index == 0:  # every tenant on the first model gets a share of it
        changes["tenant_limits"] = {"*": {"requests_per_minute": _nice(0.15 * attempts, 3)}}
    else:
        changes["tenant_limits"] = {}
    return ModelSpec.model_validate({**model.model_dump(mode="json"), **changes})


def build(
    catalog: Sequence[ModelSpec],
    *,
    namespace: str,
    workers: int,
    duration: float,
    rps: float,
    seed: int,
) -> Scenario:
    """The run's scenario on ``catalog`` (the config file's models, which all get synced)."""
    chosen = _pick(catalog)
    weights = WEIGHTS[: len(chosen)]
    weights = tuple(w / sum(weights) for w in weights)
    rate = min(rps, workers * PER_WORKER_RPS)
    total = rate * min(duration, 60.0)  # what the fleet sends within one minute window
    tight: dict[str, ModelSpec] = {}
    paid_index = 0
    for model, weight in zip(chosen, weights, strict=True):
        free = model.cost.is_free
        tight[model.key] = _tight(model, paid_index, total * weight, total, free=free)
        paid_index += 0 if free else 1
    paid = [m for m in chosen if not m.cost.is_free and m.cost.currency == "USD"]
    typical = sum((estimate(m.cost, 800, 300) for m in paid), Decimal(0)) / max(1, len(paid))
    # What a tenant of weight w spends: about half its requests admitted, mostly on paid models.
    spend = Decimal(str(total * 0.5 * 0.85)) * typical
    tenants = (
        Tenant("acme", 0.30, _money(spend * Decimal("0.30") / 4) if paid else None),
        Tenant("globex", 0.25, _money(spend * Decimal("0.25") / 2) if paid else None),
        Tenant("initech", 0.20),
        Tenant(None, 0.25),
    )
    return Scenario(
        namespace=namespace,
        models=tuple(m.key for m in chosen),
        weights=weights,
        tenants=tenants,
        catalog=tuple(tight.get(m.key, m) for m in catalog),
        workers=workers,
        duration=duration,
        rps=rps,
        seed=seed,
        mortal=max(1, round(workers / 4)),
        free=tuple(m.key for m in chosen if m.cost.is_free),
        lifetime=LIFETIME,
    )


def install(reg: Registry, scenario: Scenario) -> int:
    """Write the scenario's catalog and budgets into ``reg``'s (empty) namespace; the revision."""
    if namespace_keys(reg, limit=1):
        raise ConfigError(
            f"namespace {reg.namespace!r} is not empty; the demo needs one of its own: leave out --namespace"
        )
    reg.sync_models(list(scenario.catalog))
    for name, amount in scenario.budgets.items():
        reg.set_budget(name, amount, "day")
    return reg.refresh()


def namespace_keys(reg: Registry, *, limit: int | None = None) -> list[str]:
    """Keys of ``reg``'s namespace (every key name starts with ``{<namespace>:``), by SCAN."""
    found: list[str] = []
    with map_redis_errors():
        for key in reg.redis.scan_iter(match=f"{{{reg.namespace}:*", count=1_000):
            found.append(key)
            if limit is not None and len(found) >= limit:
                break
    return found


def remove_namespace(reg: Registry) -> int:
    """Delete every key of ``reg``'s namespace (the demo's own); how many there were."""
    keys = namespace_keys(reg)
    with map_redis_errors():
        for start in range(0, len(keys), 500):
            reg.redis.unlink(*keys[start : start + 500])
    return len(keys)
