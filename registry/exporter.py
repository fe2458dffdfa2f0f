"""Prometheus metrics of the fleet: the ledger, the windows and the budgets, read on each scrape.

:func:`fleet_metrics` turns one :class:`~registry.ledger.view.FleetView` into metric families
(no I/O, unit-tested); :class:`FleetCollector` reads the view once per scrape (two pipelined
round trips, whatever the number of models and tenants) and reports ``registry_up 0`` instead
of failing when Redis does not answer; :func:`serve` puts it on HTTP, on its own
``CollectorRegistry`` (no process or GC metrics of the exporter itself).

Every series, its labels and its meaning::

    registry_up                                      gauge    1 if the last read of Redis worked
    registry_scrape_duration_seconds                 gauge    how long that read took
    registry_requests_total{model,provider,outcome}  counter  outcome: success | failure
    registry_provider_throttled_total{model,provider}   counter  the provider's own 429s (failures too)
    registry_input_tokens_total{model,provider}      counter  every prompt token, cached ones included
    registry_cached_input_tokens_total{model,provider}  counter  of those, read from the prompt cache
    registry_cache_write_tokens_total{model,provider}   counter  of those, written to the prompt cache
    registry_output_tokens_total{model,provider}     counter
    registry_cost_total{model,provider,currency}     counter  in the currency's major unit
    registry_cost_today{model,provider,currency}     gauge    this UTC day
    registry_cost_month{model,provider,currency}     gauge    this UTC calendar month
    registry_tenant_requests_total{model,provider,tenant}               counter
    registry_tenant_input_tokens_total{model,provider,tenant}           counter
    registry_tenant_output_tokens_total{model,provider,tenant}          counter
    registry_tenant_cost_total{model,provider,tenant,currency}          counter
    registry_denials_total{model,provider,limit}     counter  acquires each limit refused
    registry_window_used{model,provider,limit}       gauge    requests or tokens in the window now
    registry_window_limit{model,provider,limit}      gauge    the limit of that window
    registry_window_use_ratio{model,provider,limit}  gauge    used / limit
    registry_request_latency_seconds{model,provider} histogram  _bucket{le}, _sum, _count
    registry_budget_amount{tenant,scope,period,currency}   gauge  in the currency's major unit
    registry_budget_spent{tenant,scope,period,currency}    gauge  settled spend this period
    registry_budget_held{tenant,scope,period,currency}     gauge  held by unsettled requests
    registry_budget_denials{tenant,scope,period,currency}  gauge  acquires refused this period
    registry_budget_threshold_reached{tenant,scope,period,currency,threshold}  gauge  0 or 1

``model`` is the model key (``openai:gpt-4o``); ``limit`` a limit name (``requests_per_minute``,
``tenant.tokens_per_minute``, ...); ``scope`` ``*`` for a budget on every model, else the model
key; ``period`` ``day``, ``week`` or ``month``; ``threshold`` a percentage.

Money: Prometheus values are 64-bit floats, so amounts are the ledger's exact Decimals rounded
to the nearest float (exact to about 15 significant digits: a tenth of a nano-unit on totals up
to a million). The exact figures stay in the ledger (``get_statistics``, ``registry export``).
Costs carry a ``currency`` label rather than a unit suffix (``_dollars``): the catalog prices
models in several currencies, and a sum across currencies is meaningless, so group by it.
The ``*_total`` counters are all-time ledger totals; they drop only if the ledger itself is
wiped, which Prometheus' ``rate()`` takes as a counter reset.

>>> reg = Registry.from_url("redis://localhost:6379/0")  # doctest: +SKIP
>>> with serve(reg, port=9464) as server:  # doctest: +SKIP
...     print(server.url)
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from socketserver import ThreadingMixIn
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from registry.errors import RegistryError
from registry.ledger.ops import LATENCY_EDGES_MS

if TYPE_CHECKING:
    from registry.ledger.stats import UsageTotals
    from registry.ledger.view import FleetView, ModelView

__all__ = ["DEFAULT_PORT", "FleetCollector", "MetricsServer", "fleet_metrics", "latency_buckets", "serve"]

DEFAULT_PORT = 9464
log = logging.getLogger("registry.exporter")

_MODEL = ("model", "provider")
_BUDGET = ("tenant", "scope", "period", "currency")
_MONEY = "in the currency's major unit; a float, the exact amount is in the ledger"


class _ViewSource(Protocol):
    def fleet_view(self) -> FleetView: ...


def _money(value: Decimal) -> float:
    return float(value)


def latency_buckets(
    histogram: Mapping[str, int], count: int, edges: Sequence[int] = LATENCY_EDGES_MS
) -> list[tuple[str, float]]:
    """Prometheus' cumulative buckets (``le`` in seconds) from the ledger's per-bucket counts.

    The ledger counts each request once, in the first bucket whose edge (ms) it does not
    exceed (``lat_le_<edge>``, else ``lat_le_inf``); Prometheus wants, per edge, the requests
    at or below it. ``+Inf`` is ``count`` (the ledger's ``latency_count``).
    """
    running, buckets = 0, []
    for edge in edges:
        running += histogram.get(f"lat_le_{edge}", 0)
        buckets.append((floatToGoString(edge / 1000), float(running)))
    buckets.append(("+Inf", float(count)))
    return buckets


def _labels(view: ModelView) -> list[str]:
    return [view.model.key, view.model.provider]


def fleet_metrics(view: FleetView) -> list[Metric]:
    """Every metric family of one fleet view (see the module docstring); no I/O."""
    requests = CounterMetricFamily("registry_requests", "Requests recorded in the ledger.", labels=[*_MODEL, "outcome"])
    throttled = CounterMetricFamily(
        "registry_provider_throttled",
        "Requests the provider refused for its own rate limit (HTTP 429), also counted as failures.",
        labels=_MODEL,
    )
    input_tokens = CounterMetricFamily("registry_input_tokens", "Input (prompt) tokens recorded.", labels=_MODEL)
    cached_input = CounterMetricFamily(
        "registry_cached_input_tokens",
        "Input tokens read from the provider's prompt cache (counted in registry_input_tokens too).",
        labels=_MODEL,
    )
    cache_write = CounterMetricFamily(
        "registry_cache_write_tokens",
        "Input tokens written to the provider's prompt cache (counted in registry_input_tokens too).",
        labels=_MODEL,
    )
    output_tokens = CounterMetricFamily("registry_output_tokens", "Output tokens recorded.", labels=_MODEL)
    cost = CounterMetricFamily("registry_cost", f"Cost recorded, {_MONEY}.", labels=[*_MODEL, "currency"])
    today = GaugeMetricFamily(
        "registry_cost_today", f"Cost recorded this UTC day, {_MONEY}.", labels=[*_MODEL, "currency"]
    )
    month = GaugeMetricFamily(
        "registry_cost_month", f"Cost recorded this UTC calendar month, {_MONEY}.", labels=[*_MODEL, "currency"]
    )
    denials = CounterMetricFamily(
        "registry_denials", "Acquires refused, by the limit that refused them.", labels=[*_MODEL, "limit"]
    )
    used = GaugeMetricFamily(
        "registry_window_used",
        "Requests or tokens (as the limit counts) in the sliding window now.",
        labels=[*_MODEL, "limit"],
    )
    limit = GaugeMetricFamily("registry_window_limit", "The limit of the sliding window.", labels=[*_MODEL, "limit"])
    ratio = GaugeMetricFamily("registry_window_use_ratio", "Window used / limit (1 = full).", labels=[*_MODEL, "limit"])
    latency = HistogramMetricFamily(
        "registry_request_latency_seconds", "Request latency as recorded in the ledger.", labels=_MODEL
    )
    for mv in view.models:
        labels = _labels(mv)
        currency = mv.model.cost.currency
        total: UsageTotals = mv.total
        requests.add_metric([*labels, "success"], total.successes)
        requests.add_metric([*labels, "failure"], total.failures)
        throttled.add_metric(labels, total.throttled)
        input_tokens.add_metric(labels, total.input_tokens)
        cached_input.add_metric(labels, total.cached_input_tokens)
        cache_write.add_metric(labels, total.cache_write_tokens)
        output_tokens.add_metric(labels, total.output_tokens)
        cost.add_metric([*labels, currency], _money(total.total_cost))
        today.add_metric([*labels, currency], _money(mv.today.total_cost))
        month.add_metric([*labels, currency], _money(mv.month.total_cost))
        for name, count in sorted(mv.denials.items()):
            denials.add_metric([*labels, name], count)
        for window in mv.windows:
            used.add_metric([*labels, window.name], window.used)
            limit.add_metric([*labels, window.name], window.limit)
            ratio.add_metric([*labels, window.name], window.fraction)
        latency.add_metric(labels, latency_buckets(mv.histogram, total.latency_count), total.latency_us_sum / 1_000_000)

    tenant_labels = [*_MODEL, "tenant"]
    t_requests = CounterMetricFamily(
        "registry_tenant_requests", "A tenant's requests on a model.", labels=tenant_labels
    )
    t_input = CounterMetricFamily(
        "registry_tenant_input_tokens", "A tenant's input tokens on a model.", labels=tenant_labels
    )
    t_output = CounterMetricFamily(
        "registry_tenant_output_tokens", "A tenant's output tokens on a model.", labels=tenant_labels
    )
    t_cost = CounterMetricFamily(
        "registry_tenant_cost", f"A tenant's cost on a model, {_MONEY}.", labels=[*tenant_labels, "currency"]
    )
    providers = {mv.model.key: mv.model.provider for mv in view.models}
    for (model_key, tenant), totals in sorted(view.tenant_total.items()):
        labels = [model_key, providers[model_key], tenant]
        t_requests.add_metric(labels, totals.requests)
        t_input.add_metric(labels, totals.input_tokens)
        t_output.add_metric(labels, totals.output_tokens)
        t_cost.add_metric([*labels, totals.currency], _money(totals.total_cost))

    amount = GaugeMetricFamily("registry_budget_amount", f"A budget's cap per period, {_MONEY}.", labels=_BUDGET)
    spent = GaugeMetricFamily(
        "registry_budget_spent", f"Spent in the budget's current period, {_MONEY}.", labels=_BUDGET
    )
    held = GaugeMetricFamily(
        "registry_budget_held", f"Held by admitted, unsettled requests this period, {_MONEY}.", labels=_BUDGET
    )
    b_denials = GaugeMetricFamily("registry_budget_denials", "Acquires the budget refused this period.", labels=_BUDGET)
    reached = GaugeMetricFamily(
        "registry_budget_threshold_reached",
        "1 once spend this period reached the threshold (percent of the amount), else 0.",
        labels=[*_BUDGET, "threshold"],
    )
    for tenant, statuses in sorted(view.budgets.items()):
        for status in statuses:
            budget = status.budget
            labels = [tenant, budget.scope, budget.period, budget.currency]
            amount.add_metric(labels, _money(budget.amount))
            spent.add_metric(labels, _money(status.spent))
            held.add_metric(labels, _money(status.held))
            b_denials.add_metric(labels, status.denied)
            for pct in budget.thresholds:
                reached.add_metric([*labels, str(pct)], 1 if pct in status.thresholds_reached else 0)

    return [
        requests,
        throttled,
        input_tokens,
        cached_input,
        cache_write,
        output_tokens,
        cost,
        today,
        month,
        t_requests,
        t_input,
        t_output,
        t_cost,
        denials,
        used,
        limit,
        ratio,
        latency,
        amount,
        spent,
        held,
        b_denials,
        reached,
    ]


class FleetCollector:
    """A prometheus_client collector: one :meth:`~registry.Registry.fleet_view` per scrape.

    When the read fails (Redis down, a malformed reply, anything else) the scrape still
    answers, with ``registry_up 0`` and no fleet series, and the failure is logged: Prometheus
    then keeps scraping the exporter and a dashboard can tell "Redis down" from "exporter down".
    """

    def __init__(self, source: _ViewSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        start = time.perf_counter()
        try:
            families: Iterable[Metric] = fleet_metrics(self._source.fleet_view())
            up = 1
        except RegistryError as exc:  # Redis down or failing: expected now and then
            log.warning("exporter: cannot read the fleet view: %s", " ".join(str(exc).split()))
            families, up = (), 0
        except Exception:  # a bug or unreadable data: still answer, with the traceback logged
            log.exception("exporter: cannot turn the fleet view into metrics")
            families, up = (), 0
        elapsed = time.perf_counter() - start
        yield GaugeMetricFamily("registry_up", "1 if the last read of Redis worked, else 0.", value=up)
        yield GaugeMetricFamily(
            "registry_scrape_duration_seconds", "How long this scrape's read of Redis took.", value=elapsed
        )
        yield from families


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck scrape does not keep the process alive


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # one line per scrape is noise
        pass


class _Server6(_Server):
    address_family = socket.AF_INET6


@dataclass
class MetricsServer:
    """A running exporter: :attr:`url` to scrape, :meth:`stop` (or ``with``) to end it."""

    httpd: WSGIServer
    thread: threading.Thread
    collectors: CollectorRegistry

    @property
    def addr(self) -> str:
        return str(self.httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        """The metrics URL; an any-address listener is shown as loopback, which reaches it."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.addr, self.addr)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop serving and close the socket; returns once the serving thread has ended."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve(source: _ViewSource, port: int = DEFAULT_PORT, addr: str = "0.0.0.0") -> MetricsServer:
    """Serve ``source``'s metrics on ``http://addr:port/metrics`` from a daemon thread.

    ``port`` 0 picks a free port (see :attr:`MetricsServer.port`). Raises OSError when the
    address cannot be bound. Any path answers with the metrics, as prometheus_client's own
    server does.
    """
    collectors = CollectorRegistry(auto_describe=False)
    collectors.register(FleetCollector(source))
    server_class = _Server6 if ":" in addr else _Server
    httpd = make_server(addr, port, make_wsgi_app(collectors), server_class, handler_class=_QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, name=f"registry-exporter-{httpd.server_port}", daemon=True)
    thread.start()
    return MetricsServer(httpd, thread, collectors)
