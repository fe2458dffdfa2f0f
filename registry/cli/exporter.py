"""``registry exporter [--port 9464] [--addr 0.0.0.0]``: the fleet's metrics for Prometheus.

Serves ``/metrics`` (see :mod:`registry.exporter` for every series) until Ctrl-C, then exits 0.
An unreachable Redis at start is an error (exit 1); once serving, an outage shows as
``registry_up 0`` and the exporter keeps answering. ``--port 0`` picks a free port; the line
printed at start says which.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from registry.cli.context import CONNECT_TIMEOUT, Context, redact
from registry.client import Registry

if TYPE_CHECKING:
    from registry.exporter import MetricsServer

__all__ = ["cmd_exporter"]

READ_TIMEOUT = 10.0  # a scrape waits no longer than this for Redis (Prometheus' default scrape_timeout)


def _wait(server: MetricsServer) -> None:
    """Until Ctrl-C, which interrupts the join with KeyboardInterrupt; the server answers
    from its own thread meanwhile. Returns only if that thread ends."""
    server.thread.join()


def cmd_exporter(ctx: Context) -> int:
    """Serve the fleet's metrics; returns 0 on Ctrl-C, 1 when the address cannot be bound."""
    from registry.exporter import serve

    args = ctx.args
    url = ctx.url
    # A watching client: the catalog follows changes through pub/sub, so a scrape costs
    # exactly fleet_view's two round trips.
    reg = Registry.from_url(
        url, namespace=ctx.namespace, watch=True, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=READ_TIMEOUT
    )
    try:
        reg.ping()  # an unreachable Redis is an error at start, not something to wait for
        try:
            server = serve(reg, args.port, args.addr)
        except OSError as exc:
            ctx.out.error(f"cannot listen on {args.addr}:{args.port}: {exc.strerror or exc}")
            return 1
        try:
            host = f"[{args.addr}]" if ":" in args.addr else args.addr
            where = f"http://{host}:{server.port}/metrics"
            if ctx.out.json:
                ctx.out.document(
                    {
                        "url": where,
                        "addr": args.addr,
                        "port": server.port,
                        "redis": redact(url),
                        "namespace": ctx.namespace,
                    },
                    compact=True,
                )
            else:
                ctx.out.line(
                    f"serving Prometheus metrics on {where} (Redis {redact(url)}, namespace {ctx.namespace}); "
                    "Ctrl-C stops"
                )
            _wait(server)
        except KeyboardInterrupt:
            if not ctx.out.json:
                ctx.out.line("stopped")
            return 0
        finally:
            server.stop()
        ctx.out.error("the metrics server stopped")
        return 1
    finally:
        reg.close()
