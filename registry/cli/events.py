"""``registry events [--follow] [--type TYPE ...] [--last N] [--since-id ID]``: the event streams.

One line per event, oldest first: the time (UTC), the type and a compact summary::

    2025-03-01T12:00:00.123Z catalog.changed rev 12 put openai:gpt-4o
    2025-03-01T12:00:01.456Z usage.recorded openai:gpt-4o tenant=acme in=1000 out=200 cost=0.0045 USD
    2025-03-01T12:00:01.502Z usage.recorded anthropic:claude-sonnet-4 in=1200 cached=1024 out=90 cost=0.0021852 USD
    2025-03-01T12:00:01.655Z usage.recorded openai:gpt-4o in=0 out=0 cost=0 USD failed throttled
    2025-03-01T12:00:02.789Z budget.threshold acme */day 80% spent 8.00 of 10.00 USD

With ``--json``, one JSON object per line (Decimals as exact strings). ``--follow`` prints the
events written from then on (after ``--last N`` or ``--since-id`` ones, if asked) until Ctrl-C.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from registry.cli.context import Context
from registry.cli.output import Output, cost_text
from registry.client import Registry
from registry.events import (
    ANY,
    BUDGET_THRESHOLD,
    CATALOG_CHANGED,
    EVENT_TYPES,
    MAX_LAST,
    USAGE_RECORDED,
    Event,
    event_types,
)

__all__ = ["cmd_events", "event_line", "follow_events"]

DEFAULT_LAST = 20
_FEW = 5


def _few(items: Sequence[str]) -> str:
    shown = ",".join(items[:_FEW])
    return shown + (f" (+{len(items) - _FEW} more)" if len(items) > _FEW else "")


def _money(value: Any) -> str:
    """An amount with at least two decimals (``8.00``), exact beyond (``0.0045``)."""
    if not isinstance(value, Decimal):
        return "?"
    whole, _, cents = cost_text(value).partition(".")
    return f"{whole}.{cents.ljust(2, '0')}"


def _summary(event: Event) -> str:
    data = event.data
    if event.type == CATALOG_CHANGED:
        parts = [f"rev {data.get('revision')}"]
        for label, name in (
            ("put", "put"),
            ("deleted", "deleted"),
            ("budgets", "budgets_put"),
            ("budgets deleted", "budgets_deleted"),
        ):
            if data.get(name):
                parts.append(f"{label} {_few(data[name])}")
        return " ".join(parts)
    if event.type == USAGE_RECORDED:
        parts = [str(event.model)]
        if event.tenant:
            parts.append(f"tenant={event.tenant}")
        parts.append(f"in={data.get('input_tokens', 0)}")
        for label, name in (("cached", "cached_input_tokens"), ("cache_write", "cache_write_tokens")):
            if data.get(name):  # parts of the input
                parts.append(f"{label}={data[name]}")
        parts.append(f"out={data.get('output_tokens', 0)}")
        cost = data.get("cost")
        if isinstance(cost, Decimal):
            parts.append(f"cost={cost_text(cost)}" + (f" {data['currency']}" if data.get("currency") else ""))
        if data.get("failures"):
            parts.append("failed")
        if data.get("throttled"):
            parts.append("throttled")  # the provider's own 429 (a failure too)
        us, count = data.get("latency_us_sum"), data.get("latency_count")
        if isinstance(us, int) and isinstance(count, int) and count > 0:
            parts.append(f"latency={cost_text(Decimal(us).scaleb(-3) / count)}ms")
        return " ".join(parts)
    if event.type == BUDGET_THRESHOLD:
        spent, amount = _money(data.get("spent")), _money(data.get("amount"))
        return (
            f"{event.tenant} {data.get('scope', '?')}/{data.get('period', '?')} {data.get('threshold', '?')}% "
            f"spent {spent} of {amount} {data.get('currency', '')}"
        ).rstrip()
    return " ".join(f"{name}={value}" for name, value in data.items())


def event_line(event: Event) -> str:
    """``time type summary``; the time is ``-`` when unknown (see :class:`registry.events.Event`)."""
    when = "-"
    if event.time is not None:
        when = event.time.strftime("%Y-%m-%dT%H:%M:%S.") + f"{event.time.microsecond // 1000:03d}Z"
    return f"{when:<24} {event.type} {_summary(event)}"


def show_event(out: Output, event: Event) -> None:
    if out.json:
        out.document(event.to_dict(), compact=True)
    else:
        out.line(event_line(event))


def _position(entry_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in entry_id.split("-"))


def follow_events(
    registry: Registry,
    types: Iterable[str],
    out: Output,
    *,
    last: int | None = None,
    since_id: str | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Print the events of ``types`` as they are written, until ``stop`` is set (or Ctrl-C).

    It subscribes first, then prints the ``last`` ones (or those after ``since_id``), so that
    nothing written in between is missed; an event both listed and delivered prints once.
    Returns the number of events printed.
    """
    chosen = [t for t in EVENT_TYPES if t in event_types(list(types))]
    stop = stop or threading.Event()
    delivered: queue.Queue[Event] = queue.Queue()
    subscriptions = [registry.on(t, delivered.put) for t in chosen]
    printed = 0
    try:
        if not out.json:
            out.line(f"following {', '.join(chosen)} (Ctrl-C to stop)")
        listed: dict[str, tuple[int, ...]] = {}  # stream -> last id printed from the history
        if last is not None or since_id is not None:
            for event in registry.events(chosen, last=last or MAX_LAST, since_id=since_id):
                show_event(out, event)
                printed += 1
                listed[event.stream] = max(listed.get(event.stream, ()), _position(event.id))
        while not stop.is_set():
            try:
                event = delivered.get(timeout=0.1)
            except queue.Empty:
                continue
            if _position(event.id) <= listed.get(event.stream, ()):
                continue
            show_event(out, event)
            printed += 1
    finally:
        for subscription in subscriptions:
            subscription()
    return printed


def cmd_events(ctx: Context) -> int:
    """The last events (default 20), or ``--follow`` them until Ctrl-C (exit 0)."""
    args = ctx.args
    types = args.type or [ANY]
    with ctx.registry() as reg:
        if args.follow:
            reg.ping()  # an unreachable Redis is an error at start, not something to wait for
            try:
                follow_events(reg, types, ctx.out, last=args.last, since_id=args.since_id)
            except KeyboardInterrupt:
                if not ctx.out.json:
                    ctx.out.line("stopped")
            return 0
        last = args.last or (MAX_LAST if args.since_id is not None else DEFAULT_LAST)
        events = reg.events(types, last=last, since_id=args.since_id)
    for event in events:
        show_event(ctx.out, event)
    if not events and not ctx.out.json:
        ctx.out.line("(no events)")
    return 0
