"""The argument parser of ``registry``: every command, its options and their checks."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

from registry import __version__
from registry.acl import ROLES
from registry.budgets.periods import PERIODS
from registry.cli import access, budgets, catalog, demo, events, exporter, reference, sync, tools, top
from registry.events import EVENT_TYPES
from registry.models import Status

__all__ = ["build_parser"]

_STATUSES = [s.value for s in Status]


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number >= 1, got 0")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _amount(text: str) -> str:
    """A decimal amount, checked here and passed on as text (never through a float)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"expected a decimal amount, got {text!r}") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite amount >= 0, got {text!r}")
    return text


def _port(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535."""
    value = _non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return value


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """``--redis-url``, ``--namespace`` and ``--json``, accepted before or after the command.

    On sub-commands their default is SUPPRESS, so an option given before the command is not
    overwritten by a sub-command's default.
    """

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options")
    group.add_argument(
        "--redis-url",
        metavar="URL",
        default=default(None),
        help="Redis to use (default: $REGISTRY_REDIS_URL, else redis://localhost:6379/0; demo starts a private one). "
        "TLS with a private CA: rediss://HOST:PORT/0?ssl_ca_certs=CA.pem[&ssl_certfile=CERT&ssl_keyfile=KEY]",
    )
    group.add_argument(
        "--namespace",
        metavar="NAME",
        default=default(None),
        help="key namespace (default: $REGISTRY_NAMESPACE, else 'registry')",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print JSON documents for scripts (Decimals as strings)",
    )
    group.add_argument(
        "--scripts",
        choices=("eval", "functions"),
        default=default(None),
        help="how the Lua runs: eval (EVALSHA) or functions (FCALL of the library `registry functions load` "
        "loaded, for ACL roles without EVAL) (default: $REGISTRY_SCRIPTS, else eval)",
    )


def _command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    handler: Callable[..., int] | None,
    help: str,
    **kwargs: object,
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help, description=help, **kwargs)  # type: ignore[arg-type]
    _global_options(parser, suppress=True)
    if handler is not None:
        parser.set_defaults(handler=handler)
    return parser


def _models_commands(models: argparse.ArgumentParser) -> None:
    sub = models.add_subparsers(dest="models_command", metavar="COMMAND", required=True)

    p = _command(sub, "list", catalog.cmd_list, "list the catalog")
    p.add_argument("--provider", action="append", metavar="P", help="only this provider (repeatable)")
    p.add_argument("--status", action="append", choices=_STATUSES, help="only this status (repeatable)")

    p = _command(sub, "show", catalog.cmd_show, "show one model")
    p.add_argument("key", metavar="KEY", help="provider:id")

    p = _command(sub, "search", catalog.cmd_search, "find models by filters (all must hold)")
    p.add_argument("--provider", action="append", metavar="P", help="any of these providers")
    p.add_argument("--capability", action="append", metavar="C", help="has all of these")
    p.add_argument("--min-context", type=_non_negative_int, metavar="N")
    p.add_argument("--max-context", type=_non_negative_int, metavar="N")
    p.add_argument("--name", metavar="PATTERN", help="glob (*, ?, [abc]) or substring of key, id or display name")
    p.add_argument("--tag", action="append", metavar="T", help="has all of these tags")
    p.add_argument("--status", action="append", choices=_STATUSES, help="any of these statuses")
    p.add_argument(
        "--max-cost-per-token", type=_amount, metavar="X", help="input and output price per single token at most X"
    )
    p.add_argument("--min-version", metavar="V")
    p.add_argument("--max-version", metavar="V")
    p.add_argument("--exclude-deprecated", action="store_true", help="leave out deprecated and retired models")

    p = _command(
        sub, "cheapest", catalog.cmd_cheapest, "the cheapest models for a reference request (deprecated ones left out)"
    )
    p.add_argument("--capability", action="append", metavar="C", help="required (repeatable)")
    p.add_argument("--limit", type=_positive_int, default=5, metavar="N", help="default: 5")
    p.add_argument(
        "--input-tokens",
        type=_non_negative_int,
        default=3,
        metavar="N",
        help="reference request's input tokens (default: 3)",
    )
    p.add_argument(
        "--output-tokens",
        type=_non_negative_int,
        default=1,
        metavar="N",
        help="reference request's output tokens (default: 1)",
    )
    p.add_argument("--currency", default="USD", help="only models priced in it (default: USD)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="registry",
        description="A Redis-backed model catalog for LLM fleets.",
        epilog="Start with: registry demo",
    )
    parser.add_argument("--version", action="version", version=f"registry {__version__}")
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    models = _command(sub, "models", None, "read the catalog: list, show, search, cheapest")
    _models_commands(models)

    p = _command(sub, "estimate", catalog.cmd_estimate, "the exact cost of one request")
    p.add_argument("key", metavar="KEY", help="provider:id")
    p.add_argument(
        "--input", type=_non_negative_int, required=True, metavar="N", help="prompt tokens, cached ones included"
    )
    p.add_argument("--output", type=_non_negative_int, required=True, metavar="N")
    p.add_argument(
        "--cached",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="of the prompt tokens, those read from the cache",
    )
    p.add_argument(
        "--cache-write",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="of the prompt tokens, those written to the cache",
    )
    p.add_argument(
        "--reasoning",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="of the output tokens, those spent on reasoning",
    )

    p = _command(sub, "sync", sync.cmd_sync, "make the catalog match a JSON config file")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--prune", action="store_true", help="retire the models the file no longer lists (never deletes)")
    p.add_argument("--dry-run", action="store_true", help="show the difference, write nothing")
    p.add_argument("--watch", action="store_true", help="sync again whenever the file changes")
    p.add_argument(
        "--interval",
        type=_positive_float,
        default=0.5,
        metavar="SECONDS",
        help="how often --watch looks at the file (default: 0.5)",
    )

    imports = _command(sub, "import", None, "import a third-party catalog, or restore an export")
    importers = imports.add_subparsers(dest="import_command", metavar="SOURCE", required=True)
    p = _command(importers, "litellm", tools.cmd_import_litellm, "LiteLLM's model_prices_and_context_window.json")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--dry-run", action="store_true", help="show what would change, write nothing")
    p.add_argument(
        "--replace", action="store_true", help="overwrite models already in the catalog (default: keep them)"
    )

    p = _command(importers, "dump", tools.cmd_import_dump, "a `registry export` document, into an empty namespace")
    p.add_argument("file", metavar="FILE")

    p = _command(sub, "export", tools.cmd_export, "the catalog and the ledger counters as one JSON document")
    p.add_argument("--output", metavar="FILE", help="write it to FILE (default: stdout)")

    budget = _command(sub, "budget", None, "tenants' spend caps per UTC day, week or month")
    bsub = budget.add_subparsers(dest="budget_command", metavar="COMMAND", required=True)
    p = _command(bsub, "set", budgets.cmd_budget_set, "set or replace a tenant's budget")
    p.add_argument("tenant", metavar="TENANT")
    p.add_argument("amount", type=_amount, metavar="AMOUNT", help="exact decimal, in --currency")
    p.add_argument("--period", choices=PERIODS, default="day")
    p.add_argument("--model", metavar="KEY", help="only this model (default: every model)")
    p.add_argument("--currency", default="USD", help="ISO 4217 (default: USD); only models priced in it count")
    p.add_argument(
        "--thresholds",
        type=_positive_int,
        nargs="+",
        metavar="PERCENT",
        help="percentages announced once per period (default: 50 80 100)",
    )
    p = _command(bsub, "delete", budgets.cmd_budget_delete, "remove a budget (exit 1 if there was none)")
    p.add_argument("tenant", metavar="TENANT")
    p.add_argument("--period", choices=PERIODS, default="day")
    p.add_argument("--model", metavar="KEY")
    p = _command(bsub, "list", budgets.cmd_budget_list, "every budget, or one tenant's")
    p.add_argument("tenant", nargs="?", metavar="TENANT")
    p = _command(bsub, "status", budgets.cmd_budget_status, "spent, held and thresholds reached this period")
    p.add_argument("tenant", metavar="TENANT")

    p = _command(sub, "events", events.cmd_events, "catalog changes, usage records and budget thresholds")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events until Ctrl-C")
    p.add_argument("--type", action="append", choices=EVENT_TYPES, help="only this type (repeatable; default: all)")
    p.add_argument(
        "--last", type=_positive_int, metavar="N", help="the last N events (default: 20, or none with --follow)"
    )
    p.add_argument(
        "--since-id",
        metavar="ID",
        help="the events after this stream entry id (<ms>-<seq>; the catalog's ids are <revision>-0)",
    )

    p = _command(sub, "top", top.cmd_top, "a live dashboard: windows, rates, spend, latency, budgets; q quits")
    p.add_argument(
        "--interval", type=_positive_float, default=1.0, metavar="SECONDS", help="between refreshes (default: 1)"
    )
    p.add_argument("--once", action="store_true", help="print one frame and exit (no terminal needed)")

    p = _command(sub, "schema", tools.cmd_schema, "the config file's JSON Schema")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--output", metavar="FILE", help="write it to FILE")
    group.add_argument("--check", metavar="FILE", help="exit 1 if FILE differs from it")

    p = _command(sub, "docs", reference.cmd_docs, "the reference pages docs/cli.md and docs/config.md, from the code")
    p.add_argument("page", choices=tuple(reference.PAGES), help="cli (this parser) or config (the JSON Schema)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--output", metavar="FILE", help="write it to FILE")
    group.add_argument("--check", metavar="FILE", help="exit 1 if FILE differs from it")

    p = _command(sub, "acl", access.cmd_acl, "the Redis ACL users of the namespace's roles: worker, admin, dashboard")
    for role in ROLES:
        p.add_argument(
            f"--{role}-password",
            metavar="SECRET",
            help=f"stored as its SHA-256 (default: ${access.password_env(role)}; without one the user is off)",
        )
    p.add_argument("--aclfile", action="store_true", help="bare user lines for an aclfile (default: redis.conf lines)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--output", metavar="FILE", help="write it to FILE")
    group.add_argument("--check", metavar="FILE", help="exit 1 if FILE differs from it")

    functions = _command(sub, "functions", None, "the function library of scripts=functions clients (Redis 7+)")
    fsub = functions.add_subparsers(dest="functions_command", metavar="COMMAND", required=True)
    _command(
        fsub, "load", access.cmd_functions_load, "FUNCTION LOAD it into every primary (admin role); print its name"
    )
    _command(fsub, "source", access.cmd_functions_source, "print its source, as FUNCTION LOAD takes it")

    p = _command(sub, "exporter", exporter.cmd_exporter, "serve the fleet's metrics to Prometheus on /metrics")
    p.add_argument("--port", type=_port, default=9464, metavar="PORT", help="default: 9464; 0 picks a free one")
    p.add_argument("--addr", default="0.0.0.0", metavar="ADDR", help="address to listen on (default: 0.0.0.0)")

    p = _command(
        sub,
        "demo",
        demo.cmd_demo,
        "run a fleet of workers on a private Redis (or --redis-url) and check it: limits, spend, budgets",
    )
    p.add_argument("--workers", type=_positive_int, default=8, metavar="N", help="worker processes (default: 8)")
    p.add_argument(
        "--duration", type=_positive_float, default=20.0, metavar="SECONDS", help="how long they run (default: 20)"
    )
    p.add_argument(
        "--rps", type=_positive_float, default=80.0, metavar="N", help="requests per second, all workers (default: 80)"
    )
    p.add_argument("--seed", type=_non_negative_int, metavar="N", help="for the workers' choices (default: random)")
    p.add_argument("--config", metavar="FILE", help="the catalog to sync (default: the shipped models.json)")
    p.add_argument(
        "--keep",
        action="store_true",
        help="on a given Redis, keep the demo's namespace (default: its keys are removed at the end)",
    )
    return parser
