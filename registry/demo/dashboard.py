"""What the demo shows while it runs: a live view on a terminal, a few plain lines otherwise.

Both read the same things: the workers' logs so far (admitted, denied, failed; see
:mod:`registry.demo.evidence`) and the ledger (requests and spend per model, budgets).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from registry.cli.output import Output, cost_text, token_limits
from registry.demo.fleet import FleetStatus
from registry.demo.scenario import Scenario
from registry.ledger.stats import Statistics
from registry.models import ModelSpec

__all__ = ["Board", "LiveView", "PlainView"]


@dataclass(frozen=True)
class Board:
    """One reading of the ledger, for the view."""

    stats: Statistics
    budgets: Mapping[str, tuple[Any, ...]]  # tenant -> (amount, spent, held, used fraction)


def _header(status: FleetStatus) -> str:
    return (
        f"{status.elapsed:4.1f} s of {status.duration:g} s, {status.alive} workers running, "
        f"{status.dead} died and were replaced"
    )


class PlainView:
    """A line every ``every`` seconds, for logs and pipes."""

    def __init__(self, out: Output, read: Callable[[], Board], *, every: float = 5.0) -> None:
        self.out, self.read, self.every = out, read, every
        self._next = 0.0

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __call__(self, status: FleetStatus) -> None:
        if not status.started_at:
            return
        if not self._next:  # the first line after `every` seconds
            self._next = time.monotonic() + self.every
        if not status.finished and (time.monotonic() < self._next or status.elapsed >= status.duration):
            return
        self._next = time.monotonic() + self.every
        board = self.read()
        e = status.evidence
        budgets = ", ".join(f"{t} {used:.0%}" for t, (*_, used) in board.budgets.items())
        self.out.line(
            f"[{_header(status)}] admitted {len(e.admissions):,}, denied {e.limit_denials:,} by limits and "
            f"{e.budget_denials:,} by budgets, failed {e.failures:,}; ledger ${cost_text(board.stats.total_cost)} "
            f"for {board.stats.requests:,} requests" + (f"; budgets used: {budgets}" if budgets else "")
        )


class LiveView:
    """A ``rich`` table redrawn about twice a second, per model and per budgeted tenant."""

    def __init__(
        self, stream: TextIO, read: Callable[[], Board], scenario: Scenario, models: Sequence[ModelSpec]
    ) -> None:
        from rich.console import Console
        from rich.live import Live

        self.read, self.scenario, self.models = read, scenario, models
        self._live = Live(console=Console(file=stream), auto_refresh=False, transient=False)

    def __enter__(self) -> LiveView:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()

    def __call__(self, status: FleetStatus) -> None:
        if status.started_at:
            self._live.update(self._render(status, self.read()), refresh=True)

    def _render(self, status: FleetStatus, board: Board) -> Any:
        from rich.console import Group
        from rich.table import Table

        e = status.evidence
        admitted = Counter(a.model for a in e.admissions.values())
        denied: Counter[str] = Counter()
        for (model, _, _), n in e.denials.items():
            denied[model] += n
        table = Table(title=f"registry demo: {_header(status)}", title_justify="left")
        for name in ("model", "RPM", "tokens/min", "admitted", "denied", "ledger req", "spend"):
            table.add_column(name, justify="left" if name == "model" else "right", no_wrap=name == "model")
        for model in self.models:
            totals = board.stats.by_model.get(model.key)
            rate = model.rate_limit
            table.add_row(
                model.key,
                f"{rate.requests_per_minute or 0:,}",
                token_limits(rate),
                f"{admitted[model.key]:,}",
                f"{denied[model.key]:,}",
                f"{totals.requests if totals else 0:,}",
                f"${cost_text(totals.total_cost) if totals else '0'}",
            )
        tenants = Table(title="budgets (per UTC day)", title_justify="left")
        for name in ("tenant", "budget", "spent", "held", "used", "refused"):
            tenants.add_column(name, justify="left" if name == "tenant" else "right")
        refused = Counter(t for (_, t, by), n in e.denials.items() for _ in range(n) if by.startswith("budget:"))
        for tenant, (amount, spent, held, used) in board.budgets.items():
            tenants.add_row(
                tenant,
                f"${amount}",
                f"${cost_text(spent)}",
                f"${cost_text(held)}",
                f"{used:.0%}",
                f"{refused[tenant]:,}",
            )
        caught = sum(c for _, c in e.duplicates.values())
        footer = (
            f"failed calls {e.failures:,}, waits after retry_after {e.waits:,}, refused everywhere {e.rejected:,}, "
            f"duplicate sends caught {caught:,}; ledger total ${cost_text(board.stats.total_cost)}"
        )
        return Group(table, tenants, footer)
