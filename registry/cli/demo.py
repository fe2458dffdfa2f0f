"""``registry demo``: a fleet of worker processes on a private Redis (or ``--redis-url``), and a
verdict from the workers' own logs.

It syncs a config (the shipped ``models.json`` by default) into a namespace of its own, tightens
the limits of the models the fleet uses so that they are reached, sets two tenants' budgets,
runs the fleet for ``--duration`` seconds (see :mod:`registry.demo`) and checks what the workers
logged against the limits and the ledger. Exit 0 when every check passes, 1 when one fails.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path
from typing import Any

from registry import _resources, embedded
from registry.catalog.sync import read_catalog_file
from registry.cli.context import CONNECT_TIMEOUT, Context, redact
from registry.cli.output import render_table, token_limits
from registry.client import Registry
from registry.demo import scenario as sc
from registry.demo.dashboard import Board, LiveView, PlainView
from registry.demo.fleet import Fleet, FleetStatus
from registry.demo.verdict import BudgetView, LedgerView, Tally, Verdict, judge
from registry.errors import BackendUnavailable, ConfigError
from registry.ledger.money import to_units
from registry.ledger.stats import UsageTotals

__all__ = ["cmd_demo"]


def default_config() -> Path:
    try:
        return _resources.data_file("models.json")
    except FileNotFoundError as exc:
        raise ConfigError(f"{exc}; pass --config FILE") from None


def _tally(totals: UsageTotals) -> Tally:
    return Tally(totals.requests, totals.input_tokens, totals.output_tokens, totals.cost_units)


def _ledger(reg: Registry) -> LedgerView:
    stats = reg.get_statistics()
    return LedgerView(
        {k: _tally(v) for k, v in stats.by_model.items()},
        {k: _tally(v) for k, v in stats.by_tenant.items()},
        _tally(stats),
    )


def _budgets(reg: Registry, scenario: sc.Scenario) -> list[BudgetView]:
    views = []
    for tenant in scenario.budgets:
        for s in reg.budget_status(tenant):
            views.append(
                BudgetView(
                    tenant,
                    to_units(s.budget.amount),
                    to_units(s.spent),
                    to_units(s.held),
                    int(s.period_start.timestamp() * 1000),
                    s.budget.currency,
                )
            )
    return views


def _board(reg: Registry, scenario: sc.Scenario) -> Board:
    budgets = {}
    for tenant in scenario.budgets:
        for s in reg.budget_status(tenant):
            budgets[tenant] = (s.budget.amount, s.spent, s.held, float((s.spent + s.held) / s.budget.amount))
    return Board(reg.get_statistics(), budgets)


def _introduce(ctx: Context, scenario: sc.Scenario, reg: Registry, config: Path) -> None:
    out = ctx.out
    fleet = [reg.get_model(k) for k in scenario.models]
    out.line(
        f"namespace {scenario.namespace}: synced {len(scenario.catalog)} models from {config}; the fleet uses "
        f"{len(fleet)}, with limits sized to this run so that they are reached:"
    )
    rows = []
    for model, weight in zip(fleet, scenario.weights, strict=True):
        tenant_rpm = model.tenant_limits.get("*")
        rows.append(
            (
                model.key,
                f"{weight:.0%}",
                f"{model.rate_limit.requests_per_minute or 0:,}",
                token_limits(model.rate_limit),
                f"{tenant_rpm.requests_per_minute:,}" if tenant_rpm and tenant_rpm.requests_per_minute else "-",
                "free" if model.cost.is_free else f"{model.cost.input}/{model.cost.output} per {model.cost.per:,}",
            )
        )
    out.lines(
        f"  {line}"
        for line in render_table(
            ("MODEL", "SHARE", "RPM", "TOKENS/MIN", "RPM PER TENANT", "USD"), rows, right=(1, 2, 3, 4)
        )
    )
    tenants = ", ".join(
        (t.name or "no tenant") + (f" (budget ${t.budget}/day)" if t.budget is not None else "")
        for t in scenario.tenants
    )
    out.line(f"tenants: {tenants}")
    out.line(
        f"fleet: {scenario.workers} worker processes ({scenario.mortal} of them die now and then and are "
        f"replaced), about {scenario.rps:g} requests/s for {scenario.duration:g} s, seed {scenario.seed}"
    )


def _run(ctx: Context, url: str, server: dict[str, Any], config: Path, *, owned: bool) -> Verdict:
    args = ctx.args
    catalog = read_catalog_file(config)
    namespace = args.namespace or sc.new_namespace()
    seed = args.seed if args.seed is not None else random.randrange(10_000)
    scenario = sc.build(
        catalog, namespace=namespace, workers=args.workers, duration=args.duration, rps=args.rps, seed=seed
    )
    started = time.monotonic()
    with Registry.from_url(url, namespace=namespace, watch=False, socket_connect_timeout=CONNECT_TIMEOUT) as reg:
        sc.install(reg, scenario)
        try:
            models = {k: reg.get_model(k) for k in scenario.models}
            if not ctx.out.json:
                _introduce(ctx, scenario, reg, config)
            status = _fly(ctx, url, scenario, reg, list(models.values()))
            verdict = judge(
                status.evidence,
                models,
                _ledger(reg),
                _budgets(reg, scenario),
                dead_workers=status.dead,
                lost_workers=status.lost,
            )
        finally:
            removed = sc.remove_namespace(reg) if owned and not args.keep else 0
    wall = time.monotonic() - started
    if ctx.out.json:
        ctx.out.document(
            {
                "redis": server,
                "scenario": scenario.document(),
                "run": {
                    "seconds": round(wall, 3),
                    "workers_started": status.started,
                    "dead_workers": status.dead,
                    "lost_workers": status.lost,
                },
                "verdict": verdict.document(),
            }
        )
        return verdict
    ctx.out.line()
    ctx.out.line("verdict, from the workers' own logs (admissions with the server's time, prices they computed):")
    ctx.out.lines(f"  {line}" if line else "" for line in verdict.lines())
    removal = f"; removed the {removed:,} keys of namespace {namespace}" if removed else ""
    ctx.out.line(
        f"ran {scenario.duration:g} s: {scenario.workers} worker processes and "
        f"{status.started - scenario.workers} replacements for those that died; {wall:.1f} s in all{removal}"
    )
    return verdict


def _fly(ctx: Context, url: str, scenario: sc.Scenario, reg: Registry, models: list[Any]) -> FleetStatus:
    def read() -> Board:
        return _board(reg, scenario)

    with tempfile.TemporaryDirectory(prefix="registry-demo-") as logs:
        fleet = Fleet(url, scenario, Path(logs))
        if ctx.out.json:
            return fleet.run(lambda status: None)
        stream = ctx.out.stdout
        if stream.isatty():
            with LiveView(stream, read, scenario, models) as live:
                return fleet.run(live)
        with PlainView(ctx.out, read) as plain:
            return fleet.run(plain)


def cmd_demo(ctx: Context) -> int:
    """Start a private Redis when no URL is given, run the fleet, print the verdict."""
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
        verdict = _run(ctx, url, server, config, owned=private is None and not ctx.args.namespace)
    finally:
        if private is not None:
            private.stop()
            if not ctx.out.json:
                ctx.out.line(f"stopped the private {private.kind}{' server' if private.kind == 'fakeredis' else ''}")
    return 0 if verdict.passed else 1
