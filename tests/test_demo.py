"""``registry demo``: the fleet end to end, and the verdict's checks on hand-made logs.

The verdict must be able to fail: every check is shown failing here on evidence that breaks it.
"""

from __future__ import annotations

import io
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from registry import Registry, _resources
from registry.catalog.sync import read_catalog_file
from registry.cli.output import token_limits
from registry.demo import fleet as fleet_module
from registry.demo import scenario as sc
from registry.demo import worker
from registry.demo.dashboard import Board, LiveView, PlainView
from registry.demo.evidence import Evidence, LogReader
from registry.demo.fleet import GRACE, Fleet, FleetStatus
from registry.demo.verdict import BudgetView, LedgerView, Tally, judge, window_max
from registry.errors import BackendUnavailable, ConfigError, RegistryError
from registry.ledger.money import to_units
from registry.models import ModelSpec
from tests.conftest import model

MINUTE = 60_000


@pytest.fixture
def short_lives(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mortal workers die after 1 to 3 admissions, so that a short run sees deaths even on a loaded machine.

    (3 to 8 once failed in CI: a slow 4 s run gave its one mortal worker fewer admissions than that.)
    """
    monkeypatch.setattr(sc, "LIFETIME", (1, 3))


def demo_keys(redis_url: str) -> list[str]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return list(client.scan_iter(match="{demo-*"))
    finally:
        client.close()


# -- end to end ------------------------------------------------------------------------------------


def test_demo_on_a_given_redis(run: Any, redis_url: str, short_lives: None) -> None:
    code, out, err = run("demo", "--workers", "3", "--duration", "4", "--seed", "1")
    assert (code, err) == (0, ""), out
    lines = out.splitlines()
    assert lines[0] == f"using Redis at {redis_url}"
    assert lines[1].startswith("namespace demo-")
    assert "the fleet uses 5" in lines[1]
    assert "fleet: 3 worker processes (1 of them die now and then and are replaced)" in out
    for needle in (
        "openai:gpt-5.2                   requests_per_minute: max ",
        "tokens_per_minute: max ",
        "anthropic:claude-haiku-4-5       input_tokens_per_minute: max ",
        " input tokens in any 60 s window, limit ",
        " output tokens in any 60 s window, limit ",
        "spend       total                            workers $",
        "budget      acme                             spent $",
        "duplicates  record ",
        "fleet       workers                          0 errors, 0 settles or records that did not count",
    ):
        assert needle in out
    assert re.search(r"openai:gpt-5.2 \w+ +tenant\.requests_per_minute: max ", out)  # a tenant's window
    assert "FAIL" not in out
    survived = next(line for line in lines if line.startswith("  survived: "))
    assert " by a limit, " in survived
    assert "dead worker" in survived
    assert any(line.startswith("  verdict: PASS (") for line in lines)
    assert "removed the " in lines[-1]
    assert "keys of namespace demo-" in lines[-1]
    assert demo_keys(redis_url) == []  # its own namespace, gone


def test_demo_embedded_as_json(run: Any, monkeypatch: pytest.MonkeyPatch, short_lives: None) -> None:
    monkeypatch.delenv("REGISTRY_REDIS_URL", raising=False)
    code, out, err = run("--json", "demo", "--workers", "3", "--duration", "4", url=None)
    assert (code, err) == (0, "")
    document = json.loads(out)
    assert document["redis"]["embedded"] is True
    assert document["redis"]["kind"] in ("redis-server", "fakeredis")
    verdict = document["verdict"]
    assert verdict["passed"] is True, [c for c in verdict["checks"] if not c["passed"]]
    groups = {c["group"] for c in verdict["checks"]}
    assert groups == {"window", "spend", "budget", "duplicates", "fleet"}
    totals = verdict["totals"]
    assert totals["admitted"] > 0
    assert totals["records"] > 0
    assert totals["limit_denials"] > 0
    assert totals["budget_denials"] > 0
    assert totals["dead_workers"] >= 1
    assert 3 <= document["run"]["workers_started"] <= 3 + totals["dead_workers"]  # none replaced near the end
    assert len(document["scenario"]["models"]) == 5


def test_a_failing_check_fails_the_command(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Evidence of more admissions than a limit allows: the verdict says FAIL, exit 1."""

    def crowded(self: Fleet, tick: Callable[[FleetStatus], None], **_: Any) -> FleetStatus:
        evidence = Evidence()
        for i in range(1_000):  # far more than any limit the scenario sets, in one second
            evidence.feed("w0", admit("openai:gpt-5.2", 1_000_000 + i, i=i))
        status = FleetStatus(self.scenario.duration, evidence, started_at=1.0, finished=True)
        tick(status)
        return status

    monkeypatch.setattr(Fleet, "run", crowded)
    code, out, _ = run("demo", "--duration", "1")
    assert code == 1
    assert "requests_per_minute: max 1,000 requests in any 60 s window, limit " in out
    assert any(line.startswith("  verdict: FAIL (") for line in out.splitlines())


def test_demo_refuses_a_namespace_in_use(run: Any, redis_url: str) -> None:
    with Registry.from_url(redis_url, namespace="mine", watch=False) as reg:
        reg.register_model(model())
    code, _, err = run("--namespace", "mine", "demo", "--duration", "1")
    assert code == 2
    assert "namespace 'mine' is not empty" in err


# -- the verdict on hand-made logs -------------------------------------------------------------------


def admit(m: str, ms: int, *, i: int = 0, t: str | None = None, prompt: int = 100, out: int = 100) -> dict[str, Any]:
    return {"e": "admit", "m": m, "t": t, "id": f"r{i}", "ms": ms, "in": prompt, "max": out}


def usage(
    spec: ModelSpec, *, i: int, t: str | None = None, prompt: int = 100, out: int = 50, via: str = "settle"
) -> dict[str, Any]:
    from registry.pricing import estimate

    cost = estimate(spec.cost, prompt, out)
    return {
        "e": via,
        "m": spec.key,
        "t": t,
        "id": f"r{i}",
        "in": prompt,
        "out": out,
        "ok": True,
        "counted": True,
        "units": to_units(cost),
        "cost": str(cost),
    }


GATED = ModelSpec.model_validate(
    model(
        cost={"input": "0.3", "output": "0.7"},
        rate_limit={"requests_per_minute": 3, "tokens_per_minute": 1_000},
        tenant_limits={"*": {"requests_per_minute": 2}},
    )
)
MODELS = {GATED.key: GATED}


def ledger_of(evidence: Evidence, **changes: Tally) -> LedgerView:
    """The ledger that agrees with ``evidence`` (a Tally per model and tenant), unless changed."""
    models: dict[str, Tally] = {}
    tenants: dict[str, Tally] = {}
    total = Tally()
    for r in evidence.records:
        models[r.model] = models.get(r.model, Tally()).plus(r.input, r.output, r.units)
        if r.tenant:
            tenants[r.tenant] = tenants.get(r.tenant, Tally()).plus(r.input, r.output, r.units)
        total = total.plus(r.input, r.output, r.units)
    return LedgerView(changes.get("models", models), tenants, changes.get("total", total))  # type: ignore[arg-type]


def evidence_of(*entries: dict[str, Any]) -> Evidence:
    evidence = Evidence()
    for entry in entries:
        evidence.feed("w0", entry)
    return evidence


def failed(verdict: Any) -> list[tuple[str, str]]:
    return [(c.group, c.subject) for c in verdict.failed]


def test_window_max_sweeps_every_window() -> None:
    assert window_max([], MINUTE) == (0, 0)
    # (t - 60 s, t]: an event exactly 60 s before t has left the window
    assert window_max([(0, 1), (59_999, 1), (60_000, 1)], MINUTE) == (2, 59_999)
    assert window_max([(5, 1), (5, 1), (5, 1), (70_000, 1)], MINUTE) == (3, 5)  # the same ms counts together
    assert window_max([(0, 700), (30_000, 400), (61_000, 900)], MINUTE) == (1_300, 61_000)
    rng = random.Random(7)
    for _ in range(200):
        events = [(rng.randrange(0, 300_000), rng.randrange(1, 50)) for _ in range(rng.randrange(1, 40))]
        brute = max(sum(a for s, a in events if t - MINUTE < s <= t) for t, _ in events)
        assert window_max(events, MINUTE)[0] == brute


def test_a_clean_log_passes_every_check() -> None:
    evidence = evidence_of(
        admit(GATED.key, 1_000, i=1, t="acme"),
        usage(GATED, i=1, t="acme"),
        admit(GATED.key, 2_000, i=2),
        usage(GATED, i=2, out=80),
        admit(GATED.key, 3_000, i=3, t="acme"),  # its worker died: charged its reservation, costs nothing
        {"e": "die", "m": GATED.key, "id": "r3"},
        usage(GATED, i=9, via="record", t="globex"),
        {"e": "dup", "kind": "record", "m": GATED.key, "id": "r9", "caught": True},
        {"e": "deny", "m": GATED.key, "t": "acme", "by": "budget:*:day", "after": 3600.0, "wait": False},
        {"e": "deny", "m": GATED.key, "t": None, "by": "requests_per_minute", "after": 0.5, "wait": True},
    )
    budgets = [BudgetView("acme", to_units(Decimal("1")), evidence.records[0].units, 140, 0)]
    verdict = judge(evidence, MODELS, ledger_of(evidence), budgets, dead_workers=1)
    assert verdict.passed, verdict.lines()
    checks = {(c.group, c.subject, c.data.get("limit_name")): c for c in verdict.checks}
    assert checks[("window", GATED.key, "requests_per_minute")].text == (
        "requests_per_minute: max 3 requests in any 60 s window, limit 3"
    )
    assert checks[("window", GATED.key, "tokens_per_minute")].data["max"] == 150 + 180 + 200
    assert checks[("window", f"{GATED.key} acme", "tenant.requests_per_minute")].data["max"] == 2
    assert verdict.totals["denials"] == 2
    assert verdict.totals["budget_denials"] == 1
    assert verdict.totals["waits"] == 1
    assert verdict.lines()[-1].startswith("verdict: PASS (")
    assert json.loads(json.dumps(verdict.document()))["passed"] is True


def test_more_admissions_in_a_window_than_the_limit_fails() -> None:
    spread = evidence_of(*(admit(GATED.key, ms, i=i) for i, ms in enumerate((1, 30_001, 60_001, 90_001))))
    assert judge(spread, MODELS, ledger_of(spread)).passed  # never more than 2 in 60 s: it slides

    crowded = evidence_of(*(admit(GATED.key, ms, i=i) for i, ms in enumerate((1, 30_000, 59_000, 60_000))))
    verdict = judge(crowded, MODELS, ledger_of(crowded))
    assert failed(verdict) == [("window", GATED.key)]
    assert verdict.failed[0].text == "requests_per_minute: max 4 requests in any 60 s window, limit 3"
    row = next(line for line in verdict.lines() if "max 4 requests" in line)
    assert row.split()[:2] == ["window", GATED.key]
    assert row.endswith("FAIL")
    assert verdict.lines()[-1].startswith("verdict: FAIL (")

    tenant = evidence_of(*(admit(GATED.key, ms, i=i, t="acme") for i, ms in enumerate((1, 2, 3))))
    assert failed(judge(tenant, MODELS, ledger_of(tenant))) == [("window", f"{GATED.key} acme")]


def test_tokens_count_what_each_request_finally_held() -> None:
    # reserved 500 each; two settled at 200: 200 + 200 + 500 fits in 1,000
    refunded = [admit(GATED.key, 1_000 + i * 1_000, i=i, prompt=100, out=400) for i in range(3)]
    settled = [usage(GATED, i=i, prompt=100, out=100) for i in range(2)]
    evidence = evidence_of(*refunded, *settled)
    assert judge(evidence, MODELS, ledger_of(evidence)).passed
    # settled at 400 each: 400 + 400 + 500 is more than the limit
    heavy = evidence_of(*refunded, *(usage(GATED, i=i, prompt=100, out=300) for i in range(2)))
    verdict = judge(heavy, MODELS, ledger_of(heavy))
    assert failed(verdict) == [("window", GATED.key)]
    assert verdict.failed[0].data == {
        "model": GATED.key,
        "tenant": None,
        "limit_name": "tokens_per_minute",
        "max": 1_300,
        "at_ms": 3_000,
        "limit": 1_000,
    }


SPLIT = ModelSpec.model_validate(
    model(
        "anthropic",
        "split",
        cost={"input": "0.3", "output": "0.7"},
        rate_limit={"input_tokens_per_minute": 1_000, "output_tokens_per_minute": 300},
        tenant_limits={"*": {"output_tokens_per_minute": 200}},
    )
)


def test_input_and_output_windows_count_their_own_tokens() -> None:
    # 3 x 300 input (never refunded) fit 1,000; 3 x 150 output reserved, two settled at 50: 250 fit 300
    admitted = [admit(SPLIT.key, 1_000 + i * 1_000, i=i, prompt=300, out=150) for i in range(3)]
    settled = [usage(SPLIT, i=i, prompt=300, out=50) for i in range(2)]
    evidence = evidence_of(*admitted, *settled)
    verdict = judge(evidence, {SPLIT.key: SPLIT}, ledger_of(evidence))
    assert verdict.passed, verdict.lines()
    checks = {c.data.get("limit_name"): c for c in verdict.checks if c.group == "window"}
    assert set(checks) == {"input_tokens_per_minute", "output_tokens_per_minute"}
    assert checks["input_tokens_per_minute"].text == (
        "input_tokens_per_minute: max 900 input tokens in any 60 s window, limit 1,000"
    )
    assert checks["output_tokens_per_minute"].data["max"] == 50 + 50 + 150
    # a fourth input of 300 passes the ITPM (1,200), though input plus output (1,650) has no limit
    heavy = evidence_of(*admitted, *settled, admit(SPLIT.key, 4_000, i=3, prompt=300, out=0))
    verdict = judge(heavy, {SPLIT.key: SPLIT}, ledger_of(heavy))
    assert [c.data["limit_name"] for c in verdict.failed] == ["input_tokens_per_minute"]
    assert verdict.failed[0].data["max"] == 1_200
    # settled at more output than the window allows (the workers never do): the OTPM check fails
    over = evidence_of(*admitted, *(usage(SPLIT, i=i, prompt=300, out=100) for i in range(2)))
    verdict = judge(over, {SPLIT.key: SPLIT}, ledger_of(over))
    assert [c.data["limit_name"] for c in verdict.failed] == ["output_tokens_per_minute"]
    assert verdict.failed[0].text == "output_tokens_per_minute: max 350 output tokens in any 60 s window, limit 300"
    # a tenant's output window: 150 + 150 of acme's output in a minute, more than its 200
    tenant = evidence_of(*(admit(SPLIT.key, 1_000 * i, i=i, t="acme", prompt=10, out=150) for i in (1, 2)))
    assert failed(judge(tenant, {SPLIT.key: SPLIT}, ledger_of(tenant))) == [("window", f"{SPLIT.key} acme")]


def test_spend_that_differs_from_the_ledger_fails() -> None:
    evidence = evidence_of(admit(GATED.key, 1, i=1), usage(GATED, i=1), usage(GATED, i=2, via="record", t="acme"))
    right = ledger_of(evidence)
    # two records: the exact sum may be within a nano-unit of the ledger, never 2
    off = Tally(right.total.requests, right.total.input_tokens, right.total.output_tokens, right.total.units + 2)
    verdict = judge(evidence, MODELS, ledger_of(evidence, total=off))
    assert failed(verdict) == [("spend", "total"), ("spend", "rounding")]
    assert "!=" in verdict.failed[0].text
    counted_twice = Tally(3, 300, 150, right.models[GATED.key].units)
    verdict = judge(evidence, MODELS, ledger_of(evidence, models={GATED.key: counted_twice}))  # type: ignore[arg-type]
    assert failed(verdict) == [("spend", GATED.key)]
    # a tenant the workers never sent, in the ledger
    extra = LedgerView(right.models, {**right.tenants, "ghost": Tally(1, 1, 1, 1)}, right.total)
    assert failed(judge(evidence, MODELS, extra)) == [("spend", "tenant ghost")]


def test_a_budget_overspent_or_disagreeing_fails() -> None:
    evidence = evidence_of(admit(GATED.key, 5_000, i=1, t="acme"), usage(GATED, i=1, t="acme"))
    spent = evidence.records[0].units
    ledger = ledger_of(evidence)
    assert judge(evidence, MODELS, ledger, [BudgetView("acme", spent, spent, 0, 0)]).passed  # exactly full
    over = judge(evidence, MODELS, ledger, [BudgetView("acme", spent, spent, 1, 0)])
    assert failed(over) == [("budget", "acme")]
    disagree = judge(evidence, MODELS, ledger, [BudgetView("acme", 10 * spent, spent + 1, 0, 0)])
    assert failed(disagree) == [("budget", "acme")]
    # the run began in the previous period: what the workers settled may have gone to both
    crossed = judge(evidence, MODELS, ledger, [BudgetView("acme", 10 * spent, spent + 1, 0, 6_000)])
    assert crossed.passed
    assert "crossed the period start" in crossed.checks[-2].text


def test_duplicates_not_caught_errors_and_lost_workers_fail() -> None:
    evidence = evidence_of(
        {"e": "dup", "kind": "settle", "m": GATED.key, "id": "r1", "caught": True},
        {"e": "dup", "kind": "settle", "m": GATED.key, "id": "r2", "caught": False},
    )
    verdict = judge(evidence, MODELS, ledger_of(evidence))
    assert failed(verdict) == [("duplicates", "settle")]
    assert verdict.failed[0].text == "1 of 2 sent twice answered as duplicates"

    lost = judge(Evidence(), MODELS, ledger_of(Evidence()), lost_workers=["w3 (exit code 1)"])
    assert failed(lost) == [("fleet", "workers")]
    assert "worker w3 (exit code 1) crashed or hung" in lost.failed[0].text

    uncounted = {**usage(GATED, i=1, via="record"), "counted": False}
    broken = evidence_of(uncounted, {"e": "error", "what": "ScriptError: boom"}, {"e": "bogus"})
    verdict = judge(broken, MODELS, ledger_of(broken))
    assert failed(verdict) == [("fleet", "workers")]
    assert verdict.failed[0].text.startswith("2 errors, 1 settles or records that did not count (first: w0: ")

    untimed = evidence_of(admit(GATED.key, 0, i=1))
    assert failed(judge(untimed, MODELS, ledger_of(untimed))) == [("window", "server times")]


def test_the_log_reader_reads_complete_lines_only(tmp_path: Path) -> None:
    log = tmp_path / "w0.jsonl"
    log.write_text(json.dumps(admit(GATED.key, 10, i=1)) + "\n" + '{"e": "ready"', encoding="utf-8")
    reader = LogReader(tmp_path)
    assert len(reader.poll().admissions) == 1
    assert not reader.evidence.ready
    with log.open("a", encoding="utf-8") as file:
        file.write("}\nnot json\n")
    evidence = reader.poll()
    assert evidence.ready == {"w0"}
    assert evidence.errors == ["w0: not JSON: b'not json'"]


# -- the scenario, a worker in this process, the views ------------------------------------------------


def shipped() -> list[ModelSpec]:
    return read_catalog_file(_resources.data_file("models.json"))


def test_the_scenario_tightens_the_fleets_limits_to_the_run() -> None:
    scenario = sc.build(shipped(), namespace="demo-t", workers=8, duration=20, rps=80, seed=1)
    assert scenario.models == sc.PREFERRED
    assert scenario.free == ("llama.cpp:llama-3.1-8b-instruct",)
    assert abs(sum(scenario.weights) - 1) < 1e-9
    by_key = {m.key: m for m in scenario.catalog}
    assert len(by_key) == len(shipped())
    first = by_key["openai:gpt-5.2"]
    assert 60 <= first.rate_limit.requests_per_minute <= 300  # type: ignore[operator]
    assert first.tenant_limits["*"].requests_per_minute
    assert by_key["openai:gpt-4"].rate_limit.tokens_per_minute == 10_000  # not the fleet's: as shipped
    assert scenario.fallback("openai:gpt-5.2") == "llama.cpp:llama-3.1-8b-instruct"
    assert scenario.fallback("llama.cpp:llama-3.1-8b-instruct") in scenario.models
    assert set(scenario.budgets) == {"acme", "globex"}
    assert scenario.mortal == 2
    assert scenario.document()["tenants"][0] == {"name": "acme", "weight": 0.3, "budget_per_day": "0.32"}
    assert (sc._nice(3, 5), sc._nice(1234, 5), sc._money(Decimal("0.0001")), sc._money(Decimal("0.1234"))) == (
        5,
        1200,
        Decimal("0.01"),
        Decimal("0.13"),
    )
    with pytest.raises(ConfigError, match="no active chat model priced in USD"):
        sc.build([ModelSpec.model_validate(model(capabilities=["embeddings"]))], **{**ARGS, "namespace": "x"})


def test_split_token_limits_stay_split_held_by_input_or_by_output() -> None:
    """The shipped Anthropic models limit input and output tokens apart: the demo keeps that form,
    sized to the run, and holds one of them by its input tokens, the other by its output."""
    scenario = sc.build(shipped(), namespace="demo-t", workers=8, duration=20, rps=80, seed=1)
    by_key = {m.key: m.rate_limit for m in scenario.catalog}
    haiku, sonnet = by_key["anthropic:claude-haiku-4-5"], by_key["anthropic:claude-sonnet-4-6"]
    for rate in (haiku, sonnet):
        assert rate.tokens_per_minute is None
        assert rate.input_tokens_per_minute
        assert rate.output_tokens_per_minute
    assert by_key["openai:gpt-5.2"].input_tokens_per_minute is None
    # in mean requests: haiku's input limit is the tight one, sonnet's output limit
    assert haiku.input_tokens_per_minute / sc.MEAN_INPUT < haiku.output_tokens_per_minute / sc.MEAN_MAX_OUTPUT / 2
    assert sonnet.output_tokens_per_minute / sc.MEAN_MAX_OUTPUT < sonnet.input_tokens_per_minute / sc.MEAN_INPUT / 2
    documented = {m["key"]: m["rate_limit"] for m in scenario.document()["models"]}
    assert documented["anthropic:claude-haiku-4-5"]["input_tokens_per_minute"] == haiku.input_tokens_per_minute
    assert token_limits(sonnet) == f"{sonnet.input_tokens_per_minute:,} in, {sonnet.output_tokens_per_minute:,} out"
    assert token_limits(by_key["openai:gpt-4"]) == "10,000"
    assert token_limits(by_key["anthropic:claude-3-haiku-20240307"]) == "-"


ARGS: dict[str, Any] = {"namespace": "demo-w", "workers": 2, "duration": 2.0, "rps": 40.0, "seed": 3}


@pytest.fixture
def installed(redis_url: str) -> Iterator[tuple[Registry, sc.Scenario]]:
    scenario = sc.build(shipped(), **ARGS)
    with Registry.from_url(redis_url, namespace=scenario.namespace, watch=False) as reg:
        sc.install(reg, scenario)
        yield reg, scenario


def test_a_worker_in_process_leaves_a_log_the_verdict_accepts(
    installed: tuple[Registry, sc.Scenario], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, scenario = installed
    monkeypatch.setattr(worker, "DUP_ACQUIRE", 0.5)
    monkeypatch.setattr(worker, "DUP_SETTLE", 0.5)
    monkeypatch.setattr(worker.time, "sleep", lambda s: None)
    log = io.StringIO()
    spec = worker.WorkerSpec("w0", redis_url, scenario.namespace, scenario, "-", seed=5, mortal=False)
    with Registry.from_url(redis_url, namespace=scenario.namespace) as own:
        one = worker.Worker(spec, own, log)
        for _ in range(120):
            one.request(deadline=float("inf"))
        for _ in range(10):
            one.report()
    evidence = evidence_of(*(json.loads(line) for line in log.getvalue().splitlines()))
    assert evidence.admissions
    assert evidence.records
    assert evidence.denials
    assert all(sent == caught and sent > 0 for sent, caught in evidence.duplicates.values())
    stats = reg.get_statistics()
    ledger = LedgerView(
        {k: Tally(v.requests, v.input_tokens, v.output_tokens, v.cost_units) for k, v in stats.by_model.items()},
        {k: Tally(v.requests, v.input_tokens, v.output_tokens, v.cost_units) for k, v in stats.by_tenant.items()},
        Tally(stats.requests, stats.input_tokens, stats.output_tokens, stats.cost_units),
    )
    models = {k: reg.get_model(k) for k in scenario.models}
    verdict = judge(evidence, models, ledger)
    assert verdict.passed, [c.text for c in verdict.failed]
    assert sc.remove_namespace(reg) > 0
    assert sc.namespace_keys(reg) == []


def test_the_worker_main_runs_to_the_deadline(
    installed: tuple[Registry, sc.Scenario], redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, scenario = installed
    monkeypatch.setattr(worker.signal, "signal", lambda *a: None)
    go, deadline = threading.Event(), type("Value", (), {"value": 0.0})()
    go.set()
    deadline.value = time.time() + 0.5
    path = tmp_path / "w9.jsonl"
    worker.run(worker.WorkerSpec("w9", redis_url, scenario.namespace, scenario, str(path), 1, False), go, deadline)
    evidence = LogReader(tmp_path).poll()
    assert evidence.ready == {"w9"}
    assert evidence.done == {"w9"}
    assert not evidence.errors


def test_a_worker_resends_without_an_answer_and_dies_on_purpose(
    installed: tuple[Registry, sc.Scenario], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, scenario = installed

    class Died(Exception):
        pass

    def exit_now(code: int) -> None:
        raise Died(code)

    monkeypatch.setattr(worker.os, "_exit", exit_now)
    monkeypatch.setattr(worker.time, "sleep", lambda s: None)
    log = io.StringIO()
    spec = worker.WorkerSpec("w1", redis_url, scenario.namespace, scenario, "-", seed=2, mortal=True)
    with Registry.from_url(redis_url, namespace=scenario.namespace, watch=False) as own:
        one = worker.Worker(spec, own, log)
        one.lifetime = 1

        def until_it_dies() -> None:
            for _ in range(50):
                one.request(deadline=float("inf"))

        with pytest.raises(Died, match=str(worker.DIE_EXIT_CODE)):
            until_it_dies()
        answers: list[Any] = [BackendUnavailable("lost"), False]  # the first try counted, its answer was lost

        def send() -> Any:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

        assert one._once(send, duplicate=lambda result: result is False) is True
        answers[:] = [BackendUnavailable("down")] * 3
        monkeypatch.setattr(worker, "FAULT_RETRY_S", -1.0)  # Redis stays away past the retry deadline
        with pytest.raises(BackendUnavailable):
            one._once(send, duplicate=lambda result: result is False)
        assert len(answers) == 2  # it gave up after one try
    entries = [json.loads(line) for line in log.getvalue().splitlines()]
    assert entries[-1]["e"] == "die"
    assert entries[-2]["e"] == "admit"
    assert entries[-2]["id"] == entries[-1]["id"]


class FakeProcess:
    def __init__(self, exitcode: int | None = None) -> None:
        self.exitcode = exitcode

    def is_alive(self) -> bool:
        return self.exitcode is None

    def terminate(self) -> None:
        self.exitcode = -15

    def join(self, timeout: float | None = None) -> None:
        pass


def test_the_fleet_replaces_the_dead_and_counts_the_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = sc.build(shipped(), **{**ARGS, "workers": 4})
    fleet = Fleet("redis://127.0.0.1:1/0", scenario, tmp_path)
    spawned: list[str] = []

    def spawn(slot: Any) -> None:
        slot.name = f"w{slot.index}.{slot.generation}"
        slot.process = FakeProcess()
        spawned.append(slot.name)

    monkeypatch.setattr(fleet, "_spawn", spawn)
    for slot, code in zip(fleet._slots, (worker.DIE_EXIT_CODE, 1, 0, None), strict=True):
        slot.name, slot.process = f"w{slot.index}", FakeProcess(code)
    fleet._deadline.value = time.time() + 10
    assert fleet._supervise() is False
    assert (fleet.status.dead, fleet.status.lost, spawned) == (1, ["w1 (exit code 1)"], ["w0.1", "w1.1"])
    assert fleet.status.alive == 3
    fleet._deadline.value = time.time() - GRACE - 1  # the deadline is long past: stop who is left
    assert fleet._supervise() is True
    assert fleet.status.lost[1:] == [f"w{i} (stopped 15 s after the deadline)" for i in ("0.1", "1.1", "3")]

    fleet._slots[0].process = FakeProcess(1)
    with pytest.raises(RegistryError, match="exited with code 1 at start"):
        fleet._wait_ready()
    for slot in fleet._slots:
        slot.process = FakeProcess()
    monkeypatch.setattr(fleet_module, "READY_TIMEOUT", 0.0)
    with pytest.raises(RegistryError, match="not ready after 0 s"):
        fleet._wait_ready()


def test_a_budgeted_tenant_settles_on_a_free_model(redis_url: str) -> None:
    """The demo's fallback when a budget refuses: a free local model, whose hold is zero."""
    with Registry.from_url(redis_url, watch=False) as reg:
        reg.register_model(model("llama.cpp", "local", cost={"input": "0", "output": "0"}))
        reg.set_budget("acme", "1", "day")
        decision = reg.acquire("llama.cpp:local", 100, 100, tenant="acme")
        assert decision.allowed
        assert decision.server_ms > 0
        assert reg.settle(decision.reservation, 100, 40) is True
        assert reg.release(reg.acquire("llama.cpp:local", 100, 100, tenant="acme").reservation) is True


def test_the_views_show_the_run(installed: tuple[Registry, sc.Scenario]) -> None:
    reg, scenario = installed
    evidence = evidence_of(
        admit("openai:gpt-5.2", 5, i=1, t="acme"),
        {"e": "deny", "m": "openai:gpt-5.2", "t": "acme", "by": "budget:*:day", "after": 9.0, "wait": False},
    )
    status = FleetStatus(2.0, evidence, started_at=1.0, alive=2, finished=True)
    budgets = {"acme": (Decimal("0.5"), Decimal("0.1"), Decimal("0.2"), 0.6)}

    def read() -> Board:
        return Board(reg.get_statistics(), budgets)

    stream = io.StringIO()
    with LiveView(stream, read, scenario, [reg.get_model(k) for k in scenario.models]) as live:
        live(status)
    shown = stream.getvalue()
    assert "openai:gpt-5.2" in shown
    assert "acme" in shown
    assert "60%" in shown

    from registry.cli.output import Output

    out = Output(stdout=io.StringIO())
    plain = PlainView(out, read, every=0.0)
    with plain:
        plain(FleetStatus(2.0, evidence))  # not started: nothing
        plain(status)
    assert out.stdout.getvalue().startswith("[ 2.0 s of 2 s, 2 workers running, 0 died and were replaced] admitted 1")
