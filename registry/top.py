"""What ``registry top`` draws: one frame from a :class:`~registry.ledger.view.FleetView`.

No I/O here: :func:`render_frame` turns the view just read (and the one before it, for the
per-minute rates) into a ``rich`` renderable; :mod:`registry.cli.top` reads and redraws.

A frame is a header line, a table of models (the RPM, TPM and RPD windows in use as bars, TPM
being the fullest of the model's token windows: input plus output, or ``in`` or ``out`` for
a limit on input or output tokens alone; requests, refusals and the provider's own 429s per
minute, spend today and this month, the share of today's input tokens read from the prompt
cache, latency percentiles, success rate), busiest first (spend today, then requests today,
then key), cut to the height given (the title says how many are left out) and, on a narrow
terminal, without its least needed columns; then a table of the tenants' budgets. Per-minute
rates are the change of the all-time counters between the two views over the time between
them, ``-`` on the first frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from registry.budgets.types import BudgetStatus
from registry.ledger.view import FleetView, ModelView, WindowUse

__all__ = ["BAR_WIDTH", "DROP_ORDER", "Rates", "bar", "frame_models", "money", "rates", "render_frame"]

BAR_WIDTH = 6
_WINDOWS = (("RPM", "requests_per_minute"), ("RPD", "requests_per_day"))
# The token windows, with how the TPM column marks each: it shows the fullest of a model's.
_TOKEN_WINDOWS = (("tokens_per_minute", ""), ("input_tokens_per_minute", "in "), ("output_tokens_per_minute", "out "))
# Lines a frame takes besides the model and budget rows: the header and an error line; per table
# its title (which says what is hidden), the column headings, the rule under them, a blank line.
_HEADER_LINES = 2
_TABLE_CHROME = 4


@dataclass(frozen=True)
class Rates:
    """A model's requests, refusals and provider 429s per minute between two views (None: not
    known yet)."""

    requests: float | None = None
    denials: float | None = None
    throttled: float | None = None


def rates(view: FleetView, previous: FleetView | None) -> dict[str, Rates]:
    """Per model, the change of its all-time requests, refusals and provider 429s from
    ``previous`` to ``view``, per minute of the time between them (the views' own ``at_ms``).

    A model absent from ``previous``, no previous view, no time between them, or a counter
    that went down (the namespace was emptied) gives None.
    """
    elapsed_min = (view.at_ms - previous.at_ms) / 60_000 if previous is not None else 0.0
    before = {m.model.key: m for m in previous.models} if previous is not None else {}
    out = {}
    for m in view.models:
        old = before.get(m.model.key)
        if old is None or elapsed_min <= 0:
            out[m.model.key] = Rates()
            continue
        requests = m.total.requests - old.total.requests
        denials = sum(m.denials.values()) - sum(old.denials.values())
        throttled = m.total.throttled - old.total.throttled
        out[m.model.key] = Rates(*(n / elapsed_min if n >= 0 else None for n in (requests, denials, throttled)))
    return out


def _style(fraction: float) -> str:
    return "red" if fraction >= 1 else "yellow" if fraction >= 0.8 else "green"


def bar(fraction: float, width: int = BAR_WIDTH) -> Text:
    """``███░░░  45%``: ``fraction`` of ``width`` cells filled, coloured by how full."""
    filled = min(width, max(0, round(fraction * width)))
    text = Text()
    text.append("█" * filled, style=_style(fraction))
    text.append("░" * (width - filled), style="dim")
    text.append(f" {fraction:>4.0%}")
    return text


def _short(n: int) -> str:
    """A count in at most four characters: 950, 1.5K, 12K, 1.5M."""
    if n < 1_000:
        return str(n)
    for size, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "K")):
        if n >= size:
            value = n / size
            return f"{value:.1f}".removesuffix(".0") + suffix if value < 10 else f"{value:.0f}{suffix}"
    return str(n)  # pragma: no cover - n < 1,000 returned above


def _window(use: WindowUse | None, mark: str = "") -> Text:
    if use is None:
        return Text("-", style="dim")
    text = bar(use.fraction)
    text.append(f" {mark}{_short(use.used)}/{_short(use.limit)}")
    return text


def _tokens(windows: Mapping[str, WindowUse]) -> Text:
    """The fullest of the token windows (the first of equals), marked ``in`` or ``out`` when it
    counts input or output tokens alone; ``-`` for none."""
    held = [(windows[name], mark) for name, mark in _TOKEN_WINDOWS if name in windows]
    if not held:
        return _window(None)
    return _window(*max(held, key=lambda pair: pair[0].fraction))


def money(value: Decimal) -> str:
    """Spend at a glance: 2 decimals from 100 up; below, up to 4 (``0.0609``, ``0.06``, ``3.00``);
    ``<0.0001`` for a tiny amount. Rounded half up: the ledger itself keeps every digit."""
    if value >= 100:
        return f"{value.quantize(Decimal('0.01'), ROUND_HALF_UP):,}"
    shown = value.quantize(Decimal("0.0001"), ROUND_HALF_UP)
    if shown == 0 and value > 0:
        return "<0.0001"
    whole, _, decimals = f"{shown:f}".partition(".")
    return f"{whole}.{decimals.rstrip('0').ljust(2, '0')}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return ">60s" if value == float("inf") else f"{value:,.0f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}".replace(".0%", "%")


def frame_models(view: FleetView) -> list[ModelView]:
    """The models in the order shown: most spent today first, then most requests today, then by key."""
    return sorted(view.models, key=lambda m: (-m.today.total_cost, -m.today.requests, m.model.key))


def _table(title: str) -> Table:
    """Columns two spaces apart, a rule under the headings, no borders: plain on any terminal."""
    return Table(
        title=Text(title, no_wrap=True, overflow="ellipsis"),  # one line, whatever the width
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0),
    )


# On a narrow terminal these columns go first, in this order, rather than every column being cut.
# CACHED and 429/MIN first: a terminal too narrow for them shows the table it showed before them.
DROP_ORDER = ("CACHED", "429/MIN", "MONTH", "RPD", "P50 MS", "OK", "TPM", "P95 MS")
_MODEL_MIN, _MODEL_SQUEEZED, _MODEL_MAX = 16, 24, 36


def _model_cells(m: ModelView, speed: Rates) -> dict[str, RenderableType]:
    windows = {w.name: w for w in m.windows}
    currency = m.model.cost.currency
    ok = m.performance.success_rate
    today = m.today
    return {
        **{label: _window(windows.get(name)) for label, name in _WINDOWS},
        "TPM": _tokens(windows),
        "REQ/MIN": _rate(speed.requests),
        "DENY/MIN": Text(_rate(speed.denials), style="red" if speed.denials else ""),
        "429/MIN": Text(_rate(speed.throttled), style="red" if speed.throttled else ""),
        "TODAY": f"{money(today.total_cost)} {currency}",
        "MONTH": f"{money(m.month.total_cost)} {currency}",
        # of today's input tokens, those read from the prompt cache
        "CACHED": _percent(today.cached_input_tokens / today.input_tokens if today.input_tokens else None),
        "P50 MS": _ms(m.performance.p50_ms),
        "P95 MS": _ms(m.performance.p95_ms),
        "OK": Text(_percent(ok), style="" if ok is None or ok >= 0.99 else "yellow" if ok >= 0.9 else "red"),
    }


_MODEL_COLUMNS = (
    *("RPM", "TPM", "RPD", "REQ/MIN", "DENY/MIN", "429/MIN"),
    *("TODAY", "MONTH", "CACHED", "P50 MS", "P95 MS", "OK"),
)


def _models_table(
    shown: Sequence[ModelView],
    speeds: Mapping[str, Rates],
    hidden: int,
    dropped: Sequence[str] = (),
    model_width: int = _MODEL_MAX,
) -> Table:
    title = f"models ({len(shown) + hidden})" + (f", {hidden} more not shown: enlarge the terminal" if hidden else "")
    if dropped:
        title += f" (too narrow for {', '.join(dropped)})"
    table = _table(title)
    # A key has no spaces: cut with an ellipsis, never wrapped.
    table.add_column("MODEL", overflow="ellipsis", min_width=_MODEL_MIN, max_width=model_width, style="bold")
    columns = [label for label in _MODEL_COLUMNS if label not in dropped]
    for label in columns:
        table.add_column(label, justify="left" if label in ("RPM", "TPM", "RPD") else "right", no_wrap=True)
    for m in shown:
        cells = _model_cells(m, speeds.get(m.model.key, Rates()))
        table.add_row(m.model.key, *(cells[label] for label in columns))
    if not shown and not hidden:
        table.add_row(Text("(no models in the catalog)", style="dim"))
    return table


@dataclass(frozen=True)
class _Models:
    """The models table, with as many of its columns as the width it is given holds.

    Keys longer than 24 characters are cut first (rich narrows the one wrapping column), then
    columns are left out in :data:`DROP_ORDER`, then, on a very narrow terminal, rich cuts them all.
    """

    shown: Sequence[ModelView]
    speeds: Mapping[str, Rates]
    hidden: int

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        unbounded = options.update_width(10_000)  # a table measures itself within the width it is given
        for count in range(len(DROP_ORDER) + 1):
            dropped = DROP_ORDER[:count]
            squeezed = _models_table(self.shown, self.speeds, self.hidden, dropped, _MODEL_SQUEEZED)
            if Measurement.get(console, unbounded, squeezed).maximum <= options.max_width:
                break
        yield _models_table(self.shown, self.speeds, self.hidden, dropped)


def _budget_rows(budgets: Mapping[str, Sequence[BudgetStatus]]) -> list[tuple[str, BudgetStatus]]:
    return [(tenant, status) for tenant in sorted(budgets) for status in budgets[tenant]]


def _tenants_table(rows: Sequence[tuple[str, BudgetStatus]], hidden: int) -> Table:
    title = f"budgets ({len(rows) + hidden})" + (f", {hidden} more not shown" if hidden else "")
    table = _table(title)
    table.add_column("TENANT", overflow="ellipsis", max_width=30, style="bold")
    table.add_column("BUDGET", overflow="ellipsis", max_width=40)
    table.add_column("SPENT", justify="right", no_wrap=True)
    table.add_column("HELD", justify="right", no_wrap=True)
    table.add_column("USED", no_wrap=True)
    table.add_column("THRESHOLDS", no_wrap=True)
    table.add_column("DENIED", justify="right", no_wrap=True)
    for tenant, s in rows:
        b = s.budget
        reached = " ".join(f"{p}%" for p in s.thresholds_reached)
        table.add_row(
            tenant,
            f"{b.scope}/{b.period}",
            f"{money(s.spent)} / {money(b.amount)} {b.currency}",
            money(s.held),
            bar(s.used_fraction),
            Text(reached or "-", style=_style(max(s.thresholds_reached, default=0) / 100) if reached else "dim"),
            Text(f"{s.denied:,}", style="red" if s.denied else ""),
        )
    if not rows and not hidden:
        table.add_row(Text("(no budgets set)", style="dim"))
    return table


def _header(view: FleetView | None, namespace: str, url: str, interval: float | None) -> Text:
    header = Text("registry top", style="bold", no_wrap=True, overflow="ellipsis")
    at = datetime.fromtimestamp(view.at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if view else "-"
    models = f"{len(view.models)} models" if view else "no data yet"
    header.append(f"  {namespace} @ {url}  {at}  {models}")
    if interval is not None:
        header.append(f"  every {interval:g}s  ")
        header.append("q quits", style="dim")
    return header


def render_frame(
    view: FleetView | None,
    previous: FleetView | None = None,
    *,
    namespace: str,
    url: str,
    interval: float | None = 1.0,
    height: int | None = None,
    error: str | None = None,
) -> RenderableType:
    """One frame of ``registry top``.

    ``view`` is the latest good reading (None before the first), ``previous`` the one before
    it; ``url`` is shown as given (redact it first); ``interval`` None: a single frame, not a
    live one (the header names no refresh and no key). ``height``: the terminal's lines; the
    budgets table gets up to half of them, the models what is left (the rest are counted as
    hidden); None shows everything. ``error``: the last reading failed; the frame says so
    and still shows ``view`` (stale).
    """
    parts: list[RenderableType] = [_header(view, namespace, url, interval)]
    if error:
        stale = " (showing the last good reading)" if view else ""
        parts.append(Text(f"error: {error}{stale}", style="bold red"))
    if view is None:
        return Group(*parts)
    models = frame_models(view)
    budget_rows = _budget_rows(view.budgets)
    model_room, budget_room = len(models), len(budget_rows)
    if height is not None:
        room = max(0, height - _HEADER_LINES - 2 * _TABLE_CHROME)
        budget_room = min(len(budget_rows), max(1, room // 2))
        model_room = min(len(models), max(1, room - budget_room))
        budget_room = min(len(budget_rows), max(1, room - model_room))
    parts += [
        _Models(models[:model_room], rates(view, previous), len(models) - model_room),
        Text(),
        _tenants_table(budget_rows[:budget_room], len(budget_rows) - budget_room),
    ]
    return Group(*parts)
