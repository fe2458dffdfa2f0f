"""``registry demo``: the catalog end to end in a second, on a private Redis unless given one.

It syncs a config (the shipped ``models.json`` by default), then shows the difference, the
catalog, the three cheapest chat models for a 3:1 request and a few exact cost estimates.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from registry import _resources, embedded
from registry.cli.catalog import (
    cheapest_document,
    cheapest_lines,
    cheapest_rows,
    estimate_document,
)
from registry.cli.context import Context, redact
from registry.cli.output import cost_text, model_table, render_table
from registry.cli.sync import plan_document, plan_lines
from registry.client import Registry
from registry.errors import BackendUnavailable, ConfigError
from registry.models import ModelSpec
from registry.pricing import estimate

__all__ = ["cmd_demo"]

REFERENCE = (3_000, 1_000)  # a 3:1 request
# (input tokens, output tokens, cached input tokens): a short chat turn, a long cached prompt
EXAMPLES = ((1_000, 200, 0), (20_000, 500, 15_000))


def default_config() -> Path:
    try:
        return _resources.data_file("models.json")
    except FileNotFoundError as exc:
        raise ConfigError(f"{exc}; pass --config FILE") from None


def _estimates(models: list[ModelSpec]) -> list[tuple[ModelSpec, Decimal, tuple[int, int, int]]]:
    out = []
    for model in models:
        for request in EXAMPLES:
            out.append((model, estimate(model.cost, *request), request))
    return out


def _run(ctx: Context, reg: Registry, config: Path, server: dict[str, Any]) -> None:
    plan = reg.load_config(config)
    catalog = reg.list_models()
    cheapest = cheapest_rows(
        reg.most_cost_effective_models("chat", 3, input_tokens=REFERENCE[0], output_tokens=REFERENCE[1]), *REFERENCE
    )
    # Local models cost nothing: estimate the three cheapest chat models that are paid for.
    paid = [
        m
        for m in reg.most_cost_effective_models("chat", None, input_tokens=REFERENCE[0], output_tokens=REFERENCE[1])
        if not m.cost.is_free
    ]
    samples = paid[:3] or catalog[:3]
    estimates = _estimates(samples)
    if ctx.out.json:
        ctx.out.document(
            {
                "redis": server,
                "sync": plan_document(plan, config),
                "models": [m.model_dump(mode="json") for m in catalog],
                "cheapest": {
                    "capability": "chat",
                    "input_tokens": REFERENCE[0],
                    "output_tokens": REFERENCE[1],
                    "models": cheapest_document(cheapest),
                },
                "estimates": [estimate_document(m, cost, i, o, c) for m, cost, (i, o, c) in estimates],
            }
        )
        return
    out = ctx.out
    out.line(f"synced {config} into namespace {reg.namespace!r}:")
    out.lines(f"  {line}" for line in plan_lines(plan))
    out.line()
    out.line(f"catalog ({len(catalog)} models):")
    out.lines(model_table(catalog))
    out.line()
    out.lines(cheapest_lines(cheapest, *REFERENCE, what="the three cheapest chat models (3:1)"))
    if estimates:
        out.line()
        out.line("example estimates (exact, in each model's currency):")
        rows = [
            (m.key, f"{i:,}", f"{c:,}", f"{o:,}", cost_text(cost), m.cost.currency) for m, cost, (i, o, c) in estimates
        ]
        out.lines(render_table(("KEY", "INPUT", "CACHED", "OUTPUT", "COST", "CUR"), rows, right=(1, 2, 3, 4)))


def cmd_demo(ctx: Context) -> int:
    """Start a private Redis when no URL is given, sync the config into it and tour the API."""
    config = Path(ctx.args.config) if ctx.args.config else default_config()
    url = ctx.given_url()
    private: embedded.EmbeddedRedis | None = None
    if url is None:
        try:
            private = embedded.start()
        except (RuntimeError, OSError) as exc:
            raise BackendUnavailable(f"could not start a private Redis: {exc}") from exc
        url = private.url
        server = {"url": url, "kind": private.kind, "version": private.version, "embedded": True}
        if not ctx.out.json:
            ctx.out.line(f"started {private.description}")
    else:
        server = {"url": redact(url), "embedded": False}
        if not ctx.out.json:
            ctx.out.line(f"using Redis at {redact(url)}")
    try:
        with ctx.registry(url) as reg:
            _run(ctx, reg, config, server)
    finally:
        if private is not None:
            private.stop()
            if not ctx.out.json:
                ctx.out.line()
                ctx.out.line(f"stopped the private {private.kind}{' server' if private.kind == 'fakeredis' else ''}")
    return 0
