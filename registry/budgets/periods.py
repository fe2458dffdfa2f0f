"""Calendar periods of budgets, in UTC: their numbers and their bounds.

A period is numbered so that its spend key changes when it ends, and a new period starts
from zero without a reset job:

- ``day``: days since 1970-01-01;
- ``week``: ISO weeks (Monday 00:00 to Monday 00:00), counted from the week of 1970-01-01
  (which began on Monday 1969-12-29);
- ``month``: calendar months since January 1970.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

__all__ = ["PERIODS", "Period", "bounds", "index_at", "keep_ms"]

Period = Literal["day", "week", "month"]
PERIODS: tuple[Period, ...] = ("day", "week", "month")
DAY_MS = 86_400_000
_WEEK_SHIFT = 3  # 1970-01-01 was a Thursday: day 0 is the 4th day of its week


def index_at(period: Period, ms: int) -> int:
    """The number of the ``period`` that contains the instant ``ms`` (epoch milliseconds)."""
    day = ms // DAY_MS
    if period == "day":
        return day
    if period == "week":
        return (day + _WEEK_SHIFT) // 7
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return (moment.year - 1970) * 12 + moment.month - 1


def bounds(period: Period, index: int) -> tuple[int, int]:
    """``[start, end)`` of a period, in epoch milliseconds."""
    if period == "day":
        return index * DAY_MS, (index + 1) * DAY_MS
    if period == "week":
        start = (index * 7 - _WEEK_SHIFT) * DAY_MS
        return start, start + 7 * DAY_MS

    def month_start(i: int) -> int:
        year, month = divmod(i, 12)
        return int(datetime(1970 + year, month + 1, 1, tzinfo=UTC).timestamp()) * 1000

    return month_start(index), month_start(index + 1)


def keep_ms(period: Period) -> int:
    """How long a period's spend hash is kept after its last write (for budget_status history)."""
    return {"day": 40, "week": 120, "month": 400}[period] * DAY_MS
