"""Progress of long commands, for a person at a terminal: each step with a spinner (or a bar
when its size is known) and its time, on stderr. Nothing at all when stderr is not a terminal
or ``--json`` is on, so pipes, scripts and logs get only the command's summary on stdout."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from registry.cli.output import Output

__all__ = ["Steps"]


class Steps:
    """``with steps.step("converting entries", total=n) as advance: ... advance(done)``."""

    def __init__(self, out: Output, *, force: bool = False) -> None:
        self.out = out
        isatty = getattr(out.stderr, "isatty", lambda: False)
        self.enabled = force or (not out.json and bool(isatty()))
        self._console: Any = None

    def _rich_console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.out.stderr, force_terminal=True, highlight=False)
        return self._console

    @contextmanager
    def step(self, description: str, total: int | None = None) -> Iterator[Callable[[int, int], None]]:
        """Show ``description`` while the block runs, then a line saying it is done and how long it took."""
        if not self.enabled:
            yield lambda _done, _total: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
        if total is not None:
            columns += [BarColumn(), MofNCompleteColumn()]
        columns.append(TimeElapsedColumn())
        started = time.monotonic()
        with Progress(*columns, console=self._rich_console(), transient=True) as bar:
            task = bar.add_task(description, total=total)

            def advance(done: int, size: int) -> None:
                bar.update(task, completed=done, total=size)

            yield advance
        self._rich_console().print(f"[green]✓[/green] {description} ({time.monotonic() - started:.1f} s)")
