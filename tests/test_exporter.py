"""The Prometheus exporter: scraped over HTTP, parsed with prometheus_client's parser, and held
to hand-computed figures and to the ledger's own answers; the CLI command; the Grafana dashboard."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import registry.cli.exporter as cli_exporter
from registry import Registry
from registry.budgets.periods import DAY_MS
from registry.embedded import free_port
from registry.exporter import MetricsServer, fleet_metrics, latency_buckets, serve
from registry.ledger.ops import LATENCY_EDGES_MS
from registry.ledger.view import FleetView
from registry.testing import FakeClock, use_clock
from tests.conftest import ROOT, model

DAY = 20_000  # 2024-10-04 (UTC); its month began on day 19_997
T0 = DAY * DAY_MS + 7_200_000  # 02:00 UTC
GPT, CLAUDE, MISTRAL = "openai:gpt-4", "anthropic:claude", "mistral:small"
DASHBOARD = ROOT / "config" / "grafana-dashboard.json"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Every sample by (name, labels), and every family's type, through prometheus_client's parser."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = s.value
    return samples, types


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def m(key: str) -> dict[str, str]:
    """The model labels of a model key."""
    return {"model": key, "provider": key.split(":")[0]}


def approx(x: Decimal | float) -> Any:
    return pytest.approx(float(x), rel=1e-12, abs=1e-12)


# -- a known set of records ----------------------------------------------------------------------


@pytest.fixture
def fleet(redis_url: str) -> Iterator[Registry]:
    """Three models (one priced in EUR), two tenants with budgets, records, refusals, holds.

    Hand-computed (prices per 1M tokens: gpt-4 $30/$60, claude $3/$15, mistral 1/3 EUR):

    - gpt-4: acme's record two days ago (1000/1000, 40 ms, $0.09) and acme's settled acquire
      today (1000/500, 300 ms, $0.06); two unsettled acquires without tenant (100/100); the
      4th acquire of the minute refused by requests_per_minute. Windows: 3 of 3 requests,
      1500 + 200 + 200 of 10,000 tokens.
    - claude: beta's settled acquire (20,000/1,000, 70 s, $0.075: 75 % of its $0.10 budget,
      so the 50 % threshold only); an acquire refused by that budget; one held (1000/100,
      $0.0045); a failed record without latency (1M/0, $3, no tenant).
    - mistral: a record of 2000/1000 at 2.5 s, 0.005 EUR, no tenant.
    """
    reg = Registry.from_url(redis_url, watch=False)
    reg.register_models(
        [
            model(rate_limit={"requests_per_minute": 3, "tokens_per_minute": 10_000}),
            model("anthropic", "claude", cost={"input": "3", "output": "15"}),
            model("mistral", "small", cost={"input": "1", "output": "3", "currency": "EUR"}),
        ]
    )
    clock = FakeClock(T0)
    use_clock(reg, clock)
    reg.set_budget("acme", "1", "day")
    reg.set_budget("beta", "0.10", "day", model=CLAUDE)
    clock.set((DAY - 2) * 86_400 + 60)
    reg.record_usage(GPT, 1000, 1000, tenant="acme", latency_ms=40)
    clock.set(T0 / 1000)
    first = reg.acquire(GPT, 1000, 1000, tenant="acme").reservation
    reg.settle(first, 1000, 500, latency_ms=300)
    assert reg.acquire(GPT, 100, 100).allowed
    assert reg.acquire(GPT, 100, 100).allowed
    assert reg.acquire(GPT, 100, 100).denied_by == "requests_per_minute"

    beta = reg.acquire(CLAUDE, 20_000, 1_000, tenant="beta").reservation
    reg.settle(beta, 20_000, 1_000, latency_ms=70_000)
    assert reg.acquire(CLAUDE, 5_000, 1_000, tenant="beta").denied_by == f"budget:{CLAUDE}:day"
    assert reg.acquire(CLAUDE, 1_000, 100, tenant="beta").allowed
    reg.record_usage(CLAUDE, 1_000_000, 0, success=False)

    # 500 of its input read from the prompt cache, 100 written (no cache prices: billed as input)
    reg.record_usage(MISTRAL, 2000, 1000, latency_ms=2500, cached_input_tokens=500, cache_write_tokens=100)
    yield reg
    reg.close()


@pytest.fixture
def exporter(fleet: Registry) -> Iterator[MetricsServer]:
    with serve(fleet, 0, "127.0.0.1") as server:
        yield server


@pytest.fixture
def scraped(exporter: MetricsServer) -> tuple[Samples, dict[str, str]]:
    return parse(scrape(exporter.url))


def test_the_scrape_equals_hand_computed_figures(scraped: tuple[Samples, dict[str, str]]) -> None:
    samples, types = scraped
    assert value(samples, "registry_up") == 1
    assert 0 <= value(samples, "registry_scrape_duration_seconds") < 10
    assert types["registry_requests"] == "counter"
    assert types["registry_window_used"] == "gauge"
    assert types["registry_request_latency_seconds"] == "histogram"

    requests = series(samples, "registry_requests_total")
    assert requests == {
        frozenset({**m(GPT), "outcome": "success"}.items()): 2,
        frozenset({**m(GPT), "outcome": "failure"}.items()): 0,
        frozenset({**m(CLAUDE), "outcome": "success"}.items()): 1,
        frozenset({**m(CLAUDE), "outcome": "failure"}.items()): 1,
        frozenset({**m(MISTRAL), "outcome": "success"}.items()): 1,
        frozenset({**m(MISTRAL), "outcome": "failure"}.items()): 0,
    }
    assert value(samples, "registry_input_tokens_total", **m(GPT)) == 2000
    assert value(samples, "registry_output_tokens_total", **m(GPT)) == 1500
    assert value(samples, "registry_input_tokens_total", **m(CLAUDE)) == 1_020_000
    assert value(samples, "registry_output_tokens_total", **m(CLAUDE)) == 1_000
    assert value(samples, "registry_cached_input_tokens_total", **m(MISTRAL)) == 500  # part of its 2,000 input
    assert value(samples, "registry_cache_write_tokens_total", **m(MISTRAL)) == 100
    assert value(samples, "registry_cached_input_tokens_total", **m(GPT)) == 0
    assert types["registry_cached_input_tokens"] == types["registry_cache_write_tokens"] == "counter"

    assert value(samples, "registry_cost_total", **m(GPT), currency="USD") == approx(Decimal("0.15"))
    assert value(samples, "registry_cost_total", **m(CLAUDE), currency="USD") == approx(Decimal("3.075"))
    assert value(samples, "registry_cost_total", **m(MISTRAL), currency="EUR") == approx(Decimal("0.005"))
    assert value(samples, "registry_cost_today", **m(GPT), currency="USD") == approx(Decimal("0.06"))
    assert value(samples, "registry_cost_month", **m(GPT), currency="USD") == approx(Decimal("0.15"))
    assert value(samples, "registry_cost_today", **m(CLAUDE), currency="USD") == approx(Decimal("3.075"))

    assert value(samples, "registry_tenant_requests_total", **m(GPT), tenant="acme") == 2
    assert value(samples, "registry_tenant_cost_total", **m(GPT), tenant="acme", currency="USD") == approx(
        Decimal("0.15")
    )
    assert value(samples, "registry_tenant_requests_total", **m(CLAUDE), tenant="beta") == 1
    assert value(samples, "registry_tenant_input_tokens_total", **m(CLAUDE), tenant="beta") == 20_000
    assert value(samples, "registry_tenant_output_tokens_total", **m(CLAUDE), tenant="beta") == 1_000
    assert value(samples, "registry_tenant_cost_total", **m(CLAUDE), tenant="beta", currency="USD") == approx(
        Decimal("0.075")
    )
    assert len(series(samples, "registry_tenant_requests_total")) == 2  # usage without a tenant is in no tenant's

    # A budget refusal is the budget's, not a window's.
    assert series(samples, "registry_denials_total") == {
        frozenset({**m(GPT), "limit": "requests_per_minute"}.items()): 1
    }
    rpm, tpm = {**m(GPT), "limit": "requests_per_minute"}, {**m(GPT), "limit": "tokens_per_minute"}
    assert (value(samples, "registry_window_used", **rpm), value(samples, "registry_window_limit", **rpm)) == (3, 3)
    assert (value(samples, "registry_window_used", **tpm), value(samples, "registry_window_limit", **tpm)) == (
        1900,
        10_000,
    )
    assert value(samples, "registry_window_use_ratio", **rpm) == 1
    assert value(samples, "registry_window_use_ratio", **tpm) == pytest.approx(0.19)
    assert len(series(samples, "registry_window_used")) == 2  # claude and mistral have no limits

    acme = {"tenant": "acme", "scope": "*", "period": "day", "currency": "USD"}
    beta = {"tenant": "beta", "scope": CLAUDE, "period": "day", "currency": "USD"}
    assert value(samples, "registry_budget_amount", **acme) == 1
    assert value(samples, "registry_budget_spent", **acme) == approx(Decimal("0.06"))
    assert value(samples, "registry_budget_held", **acme) == 0
    assert value(samples, "registry_budget_amount", **beta) == approx(Decimal("0.10"))
    assert value(samples, "registry_budget_spent", **beta) == approx(Decimal("0.075"))
    assert value(samples, "registry_budget_held", **beta) == approx(Decimal("0.0045"))
    assert value(samples, "registry_budget_denials", **beta) == 1
    assert value(samples, "registry_budget_denials", **acme) == 0
    thresholds = series(samples, "registry_budget_threshold_reached")
    reached = {dict(labels)["threshold"]: v for labels, v in thresholds.items() if dict(labels)["tenant"] == "beta"}
    assert reached == {"50": 1, "80": 0, "100": 0}


def test_the_latency_histogram_is_cumulative_in_seconds(scraped: tuple[Samples, dict[str, str]]) -> None:
    samples, _ = scraped
    edges = [f"{e / 1000}" for e in LATENCY_EDGES_MS]  # 0.05 ... 60.0, as prometheus_client writes them
    assert edges[:5] == ["0.05", "0.1", "0.25", "0.5", "1.0"]

    def buckets(key: str) -> list[float]:
        return [value(samples, "registry_request_latency_seconds_bucket", **m(key), le=le) for le in [*edges, "+Inf"]]

    #                        0.05 0.1 .25 0.5 1.0 2.5 5.0 10  30  60  +Inf
    assert buckets(GPT) == [1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2]  # 40 ms, 300 ms
    assert buckets(CLAUDE) == [0] * 10 + [1]  # 70 s (the failed record has no latency)
    assert buckets(MISTRAL) == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]  # 2.5 s: le is inclusive
    assert value(samples, "registry_request_latency_seconds_count", **m(GPT)) == 2
    assert value(samples, "registry_request_latency_seconds_sum", **m(GPT)) == pytest.approx(0.34)
    assert value(samples, "registry_request_latency_seconds_sum", **m(CLAUDE)) == pytest.approx(70.0)


def test_the_scrape_equals_the_ledger(fleet: Registry, scraped: tuple[Samples, dict[str, str]]) -> None:
    """The same numbers as get_statistics, budget_status and fleet_view, read independently."""
    samples, _ = scraped
    usd, eur = fleet.get_statistics(), fleet.get_statistics(currency="EUR")
    for key, totals in [*usd.by_model.items()]:
        if totals.currency != "USD":
            totals = eur.by_model[key]
        assert value(samples, "registry_requests_total", **m(key), outcome="success") == totals.successes
        assert value(samples, "registry_requests_total", **m(key), outcome="failure") == totals.failures
        assert value(samples, "registry_input_tokens_total", **m(key)) == totals.input_tokens
        assert value(samples, "registry_output_tokens_total", **m(key)) == totals.output_tokens
        assert value(samples, "registry_cost_total", **m(key), currency=totals.currency) == approx(totals.total_cost)
        assert value(samples, "registry_request_latency_seconds_count", **m(key)) == totals.latency_count
        assert value(samples, "registry_request_latency_seconds_sum", **m(key)) == pytest.approx(
            totals.latency_us_sum / 1e6
        )
    # Per tenant: the exporter's per-model series add up to the ledger's by_tenant.
    for tenant, totals in usd.by_tenant.items():
        cost = sum(
            v for labels, v in series(samples, "registry_tenant_cost_total").items() if ("tenant", tenant) in labels
        )
        count = sum(
            v for labels, v in series(samples, "registry_tenant_requests_total").items() if ("tenant", tenant) in labels
        )
        assert (count, cost) == (totals.requests, approx(totals.total_cost))
    assert set(usd.by_tenant) == {"acme", "beta"}

    for tenant in ("acme", "beta"):
        for status in fleet.budget_status(tenant):
            b = status.budget
            labels = {"tenant": tenant, "scope": b.scope, "period": b.period, "currency": b.currency}
            assert value(samples, "registry_budget_amount", **labels) == approx(b.amount)
            assert value(samples, "registry_budget_spent", **labels) == approx(status.spent)
            assert value(samples, "registry_budget_held", **labels) == approx(status.held)
            assert value(samples, "registry_budget_denials", **labels) == status.denied
            for pct in b.thresholds:
                got = value(samples, "registry_budget_threshold_reached", **labels, threshold=str(pct))
                assert got == (pct in status.thresholds_reached)

    view = fleet.fleet_view()
    for mv in view.models:
        assert value(samples, "registry_cost_today", **m(mv.model.key), currency=mv.model.cost.currency) == approx(
            mv.today.total_cost
        )
        for w in mv.windows:
            assert value(samples, "registry_window_used", **m(mv.model.key), limit=w.name) == w.used
        for name, count in mv.denials.items():
            assert value(samples, "registry_denials_total", **m(mv.model.key), limit=name) == count


def test_a_scrape_reads_the_view_once_in_two_round_trips(fleet: Registry, exporter: MetricsServer) -> None:
    fleet.refresh()
    sent: list[Any] = []
    execute = fleet._execute
    calls = 0

    def counting(request: Any) -> Any:
        sent.append(request)
        return execute(request)

    def view() -> FleetView:
        nonlocal calls
        calls += 1
        return original()

    original = fleet.fleet_view
    fleet._execute = counting  # type: ignore[method-assign]
    fleet.fleet_view = view  # type: ignore[method-assign]
    try:
        scrape(exporter.url)
    finally:
        del fleet._execute, fleet.fleet_view
    ledger_reads = [r for r in sent if any("catalog" not in str(c[1]) for c in getattr(r, "commands", ()))]
    assert calls == 1
    assert len(ledger_reads) == 2


# -- without Redis -------------------------------------------------------------------------------


def test_an_unreachable_redis_is_up_0_not_a_failed_scrape(caplog: pytest.LogCaptureFixture) -> None:
    reg = Registry.from_url(f"redis://127.0.0.1:{free_port()}/0", watch=False, socket_connect_timeout=1)
    with caplog.at_level(logging.WARNING, logger="registry.exporter"), serve(reg, 0, "127.0.0.1") as server:
        samples, _ = parse(scrape(server.url))
        samples_again, _ = parse(scrape(server.url))
    reg.close()
    assert value(samples, "registry_up") == 0
    assert value(samples_again, "registry_up") == 0
    assert {name for name, _ in samples} == {"registry_up", "registry_scrape_duration_seconds"}
    assert "cannot read the fleet view" in caplog.text


def test_a_failure_to_build_the_metrics_is_up_0_too(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def fleet_view(self) -> FleetView:
            raise ValueError("invalid literal for int() with base 10: 'x'")

    with caplog.at_level(logging.ERROR, logger="registry.exporter"), serve(Broken(), 0, "127.0.0.1") as server:
        samples, _ = parse(scrape(server.url))
    assert value(samples, "registry_up") == 0
    assert "cannot turn the fleet view into metrics" in caplog.text
    assert "ValueError" in caplog.text


def test_fleet_metrics_of_an_empty_fleet_has_every_family_and_no_series() -> None:
    families = fleet_metrics(FleetView(at_ms=0, models=()))
    assert all(not f.samples for f in families)
    assert len({f.name for f in families}) == len(families) == 23


def test_input_and_output_windows_are_series_of_their_own(redis_url: str) -> None:
    with Registry.from_url(redis_url, watch=False) as reg:
        reg.register_model(
            model(
                "anthropic", "claude", rate_limit={"input_tokens_per_minute": 30_000, "output_tokens_per_minute": 8_000}
            )
        )
        use_clock(reg, FakeClock(T0))
        held = reg.acquire(CLAUDE, 2_000, 1_000).reservation
        reg.settle(held, 2_000, 200)
        assert reg.acquire(CLAUDE, 0, 8_000).denied_by == "output_tokens_per_minute"
        families = {f.name: f for f in fleet_metrics(reg.fleet_view())}
    used = {s.labels["limit"]: s.value for s in families["registry_window_used"].samples}
    limits = {s.labels["limit"]: s.value for s in families["registry_window_limit"].samples}
    assert used == {"input_tokens_per_minute": 2_000, "output_tokens_per_minute": 200}
    assert limits == {"input_tokens_per_minute": 30_000, "output_tokens_per_minute": 8_000}
    denied = {s.labels["limit"]: s.value for s in families["registry_denials"].samples if s.name.endswith("_total")}
    assert denied == {"output_tokens_per_minute": 1}


def test_latency_buckets_turn_per_bucket_counts_cumulative() -> None:
    histogram = {"lat_le_50": 2, "lat_le_250": 1, "lat_le_60000": 4, "lat_le_inf": 3}
    assert latency_buckets(histogram, 10) == [
        ("0.05", 2.0),
        ("0.1", 2.0),
        ("0.25", 3.0),
        ("0.5", 3.0),
        ("1.0", 3.0),
        ("2.5", 3.0),
        ("5.0", 3.0),
        ("10.0", 3.0),
        ("30.0", 3.0),
        ("60.0", 7.0),
        ("+Inf", 10.0),
    ]
    assert latency_buckets({}, 0, (100,)) == [("0.1", 0.0), ("+Inf", 0.0)]


def test_the_server_url_and_stop() -> None:
    class Empty:
        def fleet_view(self) -> FleetView:
            return FleetView(at_ms=0, models=())

    server = serve(Empty(), 0)
    try:
        assert server.addr == "0.0.0.0"
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        assert "registry_up 1.0" in scrape(server.url)
    finally:
        server.stop()
    assert not server.thread.is_alive()
    with pytest.raises(urllib.error.URLError):
        scrape(server.url)


def test_ipv6() -> None:
    if not socket.has_ipv6:  # pragma: no cover - depends on the machine
        pytest.skip("no IPv6")

    class Empty:
        def fleet_view(self) -> FleetView:
            return FleetView(at_ms=0, models=())

    try:
        server = serve(Empty(), 0, "::1")
    except OSError:  # pragma: no cover - IPv6 disabled on the machine
        pytest.skip("cannot bind ::1")
    with server:
        assert server.url == f"http://[::1]:{server.port}/metrics"
        assert "registry_up 1.0" in scrape(server.url)


# -- the command line ----------------------------------------------------------------------------


def test_cli_serves_until_ctrl_c(run: Any, fleet: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    bodies: list[str] = []

    def scrape_then_interrupt(server: MetricsServer) -> None:
        bodies.append(scrape(server.url))
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_exporter, "_wait", scrape_then_interrupt)
    code, out, err = run("exporter", "--port", "0", "--addr", "127.0.0.1")
    assert (code, err) == (0, "")
    first, last = out.splitlines()
    port = int(re.search(r"http://127\.0\.0\.1:(\d+)/metrics", first).group(1))  # type: ignore[union-attr]
    assert port > 0
    assert "namespace registry" in first
    assert last == "stopped"
    samples, _ = parse(bodies[0])
    assert value(samples, "registry_up") == 1
    assert value(samples, "registry_requests_total", **m(GPT), outcome="success") == 2


def test_cli_json_line(run: Any, monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    def interrupt(server: MetricsServer) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_exporter, "_wait", interrupt)
    code, out, _ = run("--json", "exporter", "--port", "0", "--addr", "127.0.0.1")
    assert code == 0
    document = json.loads(out)
    assert document["port"] > 0
    assert document["url"].endswith(f":{document['port']}/metrics")
    assert document["redis"] == redis_url
    assert document["namespace"] == "registry"


def test_cli_fails_if_the_server_thread_ends(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_exporter, "_wait", lambda server: None)
    code, _, err = run("exporter", "--port", "0", "--addr", "127.0.0.1")
    assert code == 1
    assert err == "registry: error: the metrics server stopped\n"


def test_wait_returns_when_the_server_ends() -> None:
    class Empty:
        def fleet_view(self) -> FleetView:  # pragma: no cover - never scraped
            return FleetView(at_ms=0, models=())

    server = serve(Empty(), 0, "127.0.0.1")
    server.stop()
    cli_exporter._wait(server)  # returns at once: the thread has ended


@pytest.mark.parametrize("port", ["65536", "-1", "http", "1.5"])
def test_cli_bad_port_is_a_usage_error(run: Any, port: str) -> None:
    code, out, err = run("exporter", "--port", port)
    assert (code, out) == (2, "")
    assert "--port" in err


def test_cli_port_in_use(run: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run("exporter", "--port", str(port), "--addr", "127.0.0.1")
    assert code == 1
    assert err.startswith(f"registry: error: cannot listen on 127.0.0.1:{port}: ")


def test_cli_unreachable_redis_at_start(run: Any) -> None:
    code, out, err = run("exporter", "--port", "0", url=f"redis://127.0.0.1:{free_port()}/0")
    assert (code, out) == (1, "")
    assert "is Redis running" in err


def test_cli_in_a_process_stops_on_sigint(fleet: Registry, redis_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "registry", "--redis-url", redis_url, "exporter", "--port", "0"]
    proc = subprocess.Popen(
        [*command, "--addr", "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
        assert match, (line, proc.stderr.read() if proc.stderr else "")
        samples, _ = parse(scrape(match.group(0)))
        assert value(samples, "registry_up") == 1
        assert value(samples, "registry_cost_total", **m(GPT), currency="USD") == approx(Decimal("0.15"))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # pragma: no cover - only when the test fails
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out == "stopped\n"


# -- the Grafana dashboard -----------------------------------------------------------------------

_METRIC = re.compile(r"\bregistry_[a-z0-9_]+\b")


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def test_the_dashboard_only_names_exported_series(scraped: tuple[Samples, dict[str, str]]) -> None:
    samples, _ = scraped
    exported = {name for name, _ in samples}
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"

    panels = list(_panels(dashboard["panels"]))
    assert len({p["id"] for p in panels}) == len(panels)
    expressions = [v["definition"] for v in variables.values() if "definition" in v]
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            expressions.append(target["expr"])

    named = {name for expr in expressions for name in _METRIC.findall(expr)}
    assert named <= exported, named - exported
    # Every kind of series the issue asks for is on the dashboard.
    for needed in (
        "registry_cost_total",
        "registry_requests_total",
        "registry_denials_total",
        "registry_window_used",
        "registry_window_limit",
        "registry_request_latency_seconds_bucket",
        "registry_budget_spent",
        "registry_budget_amount",
        "registry_input_tokens_total",
        "registry_output_tokens_total",
        "registry_tenant_cost_total",
        "registry_provider_throttled_total",
        "registry_cached_input_tokens_total",
        "registry_cache_write_tokens_total",
    ):
        assert needed in named
