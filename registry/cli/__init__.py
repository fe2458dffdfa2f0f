"""The ``registry`` command line (``python -m registry``, or the ``registry`` script).

::

    registry models list [--provider P] [--status S]
    registry models show KEY
    registry models search [--provider P ...] [--capability C ...] [--name PATTERN] ...
    registry models cheapest [--capability C] [--limit N] [--input-tokens N] [--output-tokens N]
    registry estimate KEY --input N --output N [--cached N] [--cache-write N]
    registry sync FILE [--prune] [--dry-run] [--watch] [--interval SECONDS]
    registry import litellm FILE [--dry-run] [--replace]
    registry import dump FILE
    registry export [--output FILE]
    registry budget set TENANT AMOUNT [--period day|week|month] [--model KEY] [--thresholds P ...]
    registry budget delete TENANT [--period P] [--model KEY]
    registry budget list [TENANT] | status TENANT
    registry events [--follow] [--type T ...] [--last N] [--since-id ID]
    registry top [--interval SECONDS] [--once]
    registry exporter [--port PORT] [--addr ADDR]
    registry schema [--output FILE | --check FILE]
    registry docs cli|config [--output FILE | --check FILE]
    registry acl [--worker-password P] [--admin-password P] [--dashboard-password P] [--aclfile]
                 [--output FILE | --check FILE]
    registry functions load | source
    registry demo [--workers N] [--duration SECONDS] [--rps N] [--seed N] [--config FILE] [--keep]

Global options, before or after the command: ``--redis-url`` (default ``$REGISTRY_REDIS_URL``,
else ``redis://localhost:6379/0``; ``demo`` starts a private Redis instead), ``--namespace``
(default ``$REGISTRY_NAMESPACE``, else ``registry``), ``--json``, ``--version``, ``--scripts``
(``eval`` or ``functions``, default ``$REGISTRY_SCRIPTS``, else ``eval``). TLS with a private
CA: ``rediss://HOST:PORT/0?ssl_ca_certs=CA.pem``, plus ``&ssl_certfile=...&ssl_keyfile=...`` for
mutual TLS (redis-py reads these from the query string).

Exit status: 0 done; 1 Redis unreachable or failing, a model not found, a file that could not
be written, ``schema --check`` found a difference, ``budget delete`` found no such budget, a
check of ``demo``'s verdict failed; 2 a
usage error or a bad config file. Every error is one message on stderr, ``registry: error: ...``,
never a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from registry.cli.context import Context, redact
from registry.cli.output import Output
from registry.errors import (
    BackendError,
    BackendUnavailable,
    ConfigError,
    ModelNotFoundError,
    RegistryError,
)

__all__ = ["main"]

TLS_HINT = "name a private CA in the URL, rediss://...?ssl_ca_certs=PATH, and ssl_certfile=&ssl_keyfile= for mutual TLS"


def _silence_stdout() -> None:
    """After the reader closed the pipe, keep Python's final flush of stdout from failing too."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a real file (captured, replaced)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (argparse's usage errors included)."""
    from registry.cli.parser import build_parser

    out = Output()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors (already printed)
        return exc.code if isinstance(exc.code, int) else 2
    out.json = args.json
    ctx = Context(args, out)
    try:
        return int(args.handler(ctx))
    except ConfigError as exc:
        out.error(str(exc))
        return 2
    except ModelNotFoundError as exc:
        out.error(str(exc))
        return 1
    except BackendUnavailable as exc:
        where = f" at {redact(ctx.url)}" if args.command != "demo" or ctx.given_url() else ""
        hint = f"is Redis running{where}? set --redis-url or $REGISTRY_REDIS_URL"
        if "certificate" in str(exc).lower():  # TLS: verify failed, certificate required, unknown ca
            hint = f"TLS refused{where}: {TLS_HINT}"
        out.error(f"{' '.join(str(exc).split())} ({hint})")
        return 1
    except (BackendError, RegistryError) as exc:
        out.error(" ".join(str(exc).split()))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `registry models list | head -1`
        _silence_stdout()
        return 1
    except OSError as exc:  # a file the command writes, e.g. schema --output
        where = f"{exc.filename}: " if exc.filename else ""
        out.error(f"{where}{exc.strerror or exc}")
        return 1
