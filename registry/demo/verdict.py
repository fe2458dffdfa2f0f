"""The demo's verdict: the workers' logs checked against the limits and the ledger. No I/O.

What is checked, and why the library guarantees each (README, "The algorithm"):

- **Windows.** For every limit of every model (and of every tenant on it), the most requests
  (or tokens) admitted in any interval ``(t - window, t]``, over the admissions' *server*
  times, is at most the limit. Why: when the last admission of such an interval was made, its
  window ``(a - window, a]`` held every earlier admission of the interval (the server's clock
  does not run backwards), each bucket overlapping the window counts in full, and admission
  never lets the total pass the limit. A request counts 1 in a requests window whatever
  happens to it (a settle leaves 1, a dead worker's reservation stays). In a tokens window
  (input plus output tokens, input tokens only or output tokens only, as the limit counts) a
  request counts its reservation until it is settled, then its real tokens, which are never
  more (the workers settle the input they reserved and at most their max output): so the sum
  of each request's *final* charge, real tokens if settled and its reservation if never, is at
  most what the window held at that last admission, hence at most the limit. That is what is
  checked for tokens.
- **Spend.** The workers price every request they settled or recorded themselves (once per
  request id) and round it once to nano-units, half to even, as the ledger does; the ledger's
  requests, tokens and cost per model, per tenant and in total must equal those sums exactly.
  The exact decimal sum is shown too: it is within half a nano-unit per request of the ledger.
  A dead worker's request was never settled, so it costs nothing on either side.
- **Budgets.** Spent plus held never passes a budget (acquire refuses when the estimate does
  not fit, a settle replaces a hold by a real cost that is never larger), and what a tenant's
  budget says it spent equals what its workers settled and recorded (while the run stayed in
  one period).
- **Duplicates.** Every acquire, settle or record sent again under the same id was answered
  as a duplicate.
- **Fleet.** No worker crashed or hung, no worker hit an unexpected error, and every settle
  and record the workers made counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from registry.admission.types import applicable_limits
from registry.cli.output import cost_text, render_table
from registry.demo.evidence import Admission, Evidence
from registry.ledger.money import from_units
from registry.models import ModelSpec

__all__ = ["BudgetView", "Check", "LedgerView", "Tally", "Verdict", "judge", "window_max"]

HALF_UNIT = Decimal("0.0000000005")


def window_max(events: Iterable[tuple[int, int]], window_ms: int) -> tuple[int, int]:
    """The largest sum of ``(time_ms, amount)`` events in any interval ``(t - window_ms, t]``,
    and the ``t`` (an event's time) where it is reached; ``(0, 0)`` for no events."""
    ordered = sorted(events)
    best = best_at = total = low = i = 0
    while i < len(ordered):
        t = ordered[i][0]
        while i < len(ordered) and ordered[i][0] == t:  # every event at t is in the window
            total += ordered[i][1]
            i += 1
        while ordered[low][0] <= t - window_ms:
            total -= ordered[low][1]
            low += 1
        if total > best:
            best, best_at = total, t
    return best, best_at


@dataclass(frozen=True, slots=True)
class Tally:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    units: int = 0

    def plus(self, input_tokens: int, output_tokens: int, units: int) -> Tally:
        return Tally(
            self.requests + 1, self.input_tokens + input_tokens, self.output_tokens + output_tokens, self.units + units
        )


@dataclass(frozen=True)
class LedgerView:
    """What the ledger holds (from ``get_statistics``)."""

    models: Mapping[str, Tally]
    tenants: Mapping[str, Tally]
    total: Tally


@dataclass(frozen=True, slots=True)
class BudgetView:
    """A budget's state at the end (from ``budget_status``), in nano-units."""

    tenant: str
    amount: int
    spent: int
    held: int
    period_start_ms: int
    currency: str = "USD"


@dataclass(frozen=True)
class Check:
    group: str  # window, spend, budget, duplicates, fleet
    subject: str
    text: str  # the figures
    passed: bool
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    checks: tuple[Check, ...]
    totals: Mapping[str, int]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def document(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks], "totals": dict(self.totals)}

    def lines(self) -> list[str]:
        rows = [(c.group, c.subject, c.text, "PASS" if c.passed else "FAIL") for c in self.checks]
        t = self.totals
        return [
            *render_table(("CHECK", "OF", "EVIDENCE", "RESULT"), rows),
            "",
            f"survived: {t['denials']:,} denials ({t['limit_denials']:,} by a limit, {t['budget_denials']:,} by a "
            f"budget), {t['waits']:,} retries after a short retry_after, {t['rejected']:,} requests every model "
            f"refused, {t['failures']:,} failed calls, {t['duplicates_caught']:,} duplicate sends caught, "
            f"{t['dead_workers']:,} dead worker{'' if t['dead_workers'] == 1 else 's'} replaced",
            f"verdict: {'PASS' if self.passed else 'FAIL'} ({len(self.checks) - len(self.failed)} of "
            f"{len(self.checks)} checks passed; {t['admitted']:,} admissions, {t['records']:,} ledger records)",
        ]


def _dollars(units: int) -> str:
    return f"${cost_text(from_units(units))}"


def _span(window_ms: int) -> str:
    return f"{window_ms // 1000} s" if window_ms < 3_600_000 else f"{window_ms // 3_600_000} h"


def _window_checks(models: Mapping[str, ModelSpec], admissions: Sequence[Admission]) -> list[Check]:
    checks = []
    for key, model in sorted(models.items()):
        mine = [a for a in admissions if a.model == key]
        groups: list[tuple[str | None, list[Admission]]] = [(None, mine)]
        groups += [(t, [a for a in mine if a.tenant == t]) for t in sorted({a.tenant for a in mine if a.tenant})]
        for tenant, group in groups:
            for spec in applicable_limits(model, tenant):
                if (spec.tenant is None) != (tenant is None):
                    continue
                peak, at = window_max(((a.server_ms, a.charge(spec.counts)) for a in group), spec.window_ms)
                subject = key if tenant is None else f"{key} {tenant}"
                what = spec.counts.replace("_", " ")  # requests, tokens, input tokens, output tokens
                text = f"{spec.name}: max {peak:,} {what} in any {_span(spec.window_ms)} window, limit {spec.limit:,}"
                data = {"model": key, "tenant": tenant, "limit_name": spec.name, "max": peak, "at_ms": at}
                checks.append(Check("window", subject, text, peak <= spec.limit, {**data, "limit": spec.limit}))
    return checks


def _spend_checks(evidence: Evidence, ledger: LedgerView) -> list[Check]:
    by_model: dict[str, Tally] = {}
    by_tenant: dict[str | None, Tally] = {}
    total = Tally()
    for r in evidence.records:
        by_model[r.model] = by_model.get(r.model, Tally()).plus(r.input, r.output, r.units)
        by_tenant[r.tenant] = by_tenant.get(r.tenant, Tally()).plus(r.input, r.output, r.units)
        total = total.plus(r.input, r.output, r.units)

    def check(subject: str, workers: Tally, books: Tally) -> Check:
        same = workers == books
        if same:
            text = (
                f"workers {_dollars(workers.units)} = ledger {_dollars(books.units)} ({workers.requests:,} requests, "
                f"{workers.input_tokens:,} + {workers.output_tokens:,} tokens)"
            )
        else:
            text = f"workers {_dollars(workers.units)} != ledger {_dollars(books.units)} ({workers} != {books})"
        return Check("spend", subject, text, same, {"workers": asdict(workers), "ledger": asdict(books)})

    checks = [
        check(key, by_model.get(key, Tally()), ledger.models.get(key, Tally()))
        for key in sorted(set(by_model) | {k for k, v in ledger.models.items() if v.requests})
    ]
    for tenant in sorted({t for t in by_tenant if t} | {t for t, v in ledger.tenants.items() if v.requests}):
        checks.append(check(f"tenant {tenant}", by_tenant.get(tenant, Tally()), ledger.tenants.get(tenant, Tally())))
    checks.append(check("total", total, ledger.total))
    exact = sum((r.cost for r in evidence.records), Decimal(0))
    gap = abs(exact - from_units(ledger.total.units))
    bound = HALF_UNIT * len(evidence.records)
    text = (
        f"exact sum ${cost_text(exact)}: {float(gap.scaleb(9)):.1f} nano-units from the ledger "
        f"(at most ½ per request: {len(evidence.records) / 2:g})"
    )
    checks.append(Check("spend", "rounding", text, gap <= bound, {"exact": str(exact), "gap": str(gap)}))
    return checks


def _budget_checks(models: Mapping[str, ModelSpec], evidence: Evidence, budgets: Sequence[BudgetView]) -> list[Check]:
    checks = []
    for b in budgets:
        # settled and recorded (the demo records only for tenants without budgets: a record is
        # not admitted, so it could take a budget past its amount)
        settled = sum(
            r.units for r in evidence.records if r.tenant == b.tenant and models[r.model].cost.currency == b.currency
        )
        early = any(a.tenant == b.tenant and a.server_ms < b.period_start_ms for a in evidence.admissions.values())
        refusals = sum(n for (_, t, by), n in evidence.denials.items() if t == b.tenant and by.startswith("budget:"))
        fits = b.spent + b.held <= b.amount
        agrees = settled <= b.spent if early else settled == b.spent
        text = (
            f"spent {_dollars(b.spent)} + held {_dollars(b.held)} of {_dollars(b.amount)}; "
            f"workers spent {_dollars(settled)}{' (run crossed the period start)' if early else ''}; "
            f"{refusals:,} refusals"
        )
        data = {"tenant": b.tenant, "amount": b.amount, "spent": b.spent, "held": b.held, "workers": settled}
        checks.append(Check("budget", b.tenant, text, fits and agrees, {**data, "refusals": refusals}))
    return checks


def judge(
    evidence: Evidence,
    models: Mapping[str, ModelSpec],
    ledger: LedgerView,
    budgets: Sequence[BudgetView] = (),
    *,
    dead_workers: int = 0,
    lost_workers: Sequence[str] = (),
) -> Verdict:
    """Check the evidence: ``models`` as the catalog held them during the run (their limits),
    ``dead_workers`` the processes that exited on purpose, ``lost_workers`` those that crashed
    or had to be stopped (their logs may be incomplete)."""
    admissions = list(evidence.admissions.values())
    checks = _window_checks(models, admissions)
    untimed = sum(1 for a in admissions if a.server_ms <= 0)
    if untimed:
        checks.append(Check("window", "server times", f"{untimed:,} admissions without one", False))
    checks += _spend_checks(evidence, ledger)
    checks += _budget_checks(models, evidence, budgets)
    for kind, (sent, caught) in evidence.duplicates.items():
        if sent:
            text = f"{caught:,} of {sent:,} sent twice answered as duplicates"
            checks.append(Check("duplicates", kind, text, caught == sent, {"sent": sent, "caught": caught}))
    problems = [*evidence.errors, *(f"worker {w} crashed or hung" for w in lost_workers)]
    text = f"{len(problems)} errors, {evidence.uncounted} settles or records that did not count"
    if problems:
        first = " ".join(problems[0].split())
        text += f" (first: {first[:100]}{'...' if len(first) > 100 else ''})"
    checks.append(Check("fleet", "workers", text, not problems and not evidence.uncounted, {"errors": problems}))
    caught = sum(c for _, c in evidence.duplicates.values())
    totals = {
        "admitted": len(admissions),
        "records": len(evidence.records),
        "denials": sum(evidence.denials.values()),
        "limit_denials": evidence.limit_denials,
        "budget_denials": evidence.budget_denials,
        "waits": evidence.waits,
        "rejected": evidence.rejected,
        "failures": evidence.failures,
        "duplicates_caught": caught,
        "dead_workers": dead_workers,
    }
    return Verdict(tuple(checks), totals)
