"""``registry top [--interval SECONDS] [--once]``: a live dashboard of the fleet, against any Redis.

Once per interval it reads :meth:`~registry.client.Registry.fleet_view` (two pipelined round
trips whatever the number of models; the catalog itself is followed by the client's watcher)
and redraws the frame of :func:`registry.top.render_frame`. ``q`` or Ctrl-C quits, exit 0.

On a terminal the frame is drawn by ``rich.live`` on the alternate screen, and stdin, if it is
a terminal too, is put in cbreak mode (keys arrive one by one, unechoed) and always put back.
With stdout not a terminal, a frame is printed each interval, one after the other. A Redis
that cannot be reached is shown in the frame and tried again at the next interval.

``--once`` prints one frame (every model) and exits: 1, with ``registry: error: ...``, when
Redis cannot be read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from registry.cli.context import CONNECT_TIMEOUT, Context, redact
from registry.client import Registry
from registry.errors import BackendUnavailable, ConfigError, RegistryError
from registry.ledger.view import FleetView

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

__all__ = ["Top", "cmd_top"]

QUIT_KEYS = frozenset("qQ")
PRINT_WIDTH = 160  # a frame printed to a pipe or a file: as wide as the models table wants


RATE_WINDOW_MS = 10_000


@dataclass
class Top:
    """The dashboard's state between frames: the last good view, the one before, the last error."""

    read: Callable[[], FleetView]
    namespace: str
    url: str  # as shown: redacted
    interval: float
    view: FleetView | None = None
    previous: FleetView | None = None
    error: str | None = None
    # Views of the last RATE_WINDOW_MS: rates are taken against the oldest, so they average a
    # few seconds instead of jumping with each one-second frame.
    history: deque[FleetView] = field(default_factory=deque)

    def refresh(self) -> None:
        """Read the fleet once; on failure keep the last view and remember why."""
        try:
            view = self.read()
        except BackendUnavailable as exc:
            self.error = f"{' '.join(str(exc).split())} (is Redis running at {self.url}?)"
        except RegistryError as exc:
            self.error = " ".join(str(exc).split())
        else:
            self.history.append(view)
            while len(self.history) > 2 and view.at_ms - self.history[1].at_ms >= RATE_WINDOW_MS:
                self.history.popleft()
            self.previous = self.history[0] if len(self.history) > 1 else None
            self.view, self.error = view, None

    def frame(self, height: int | None = None) -> RenderableType:
        from registry.top import render_frame  # rich: imported by this command only

        return render_frame(
            self.view,
            self.previous,
            namespace=self.namespace,
            url=self.url,
            interval=self.interval,
            height=height,
            error=self.error,
        )


class Keys:
    """Keys typed on stdin, read without blocking, in cbreak mode while in use (a terminal only)."""

    def __init__(self, stream: TextIO) -> None:
        try:
            self.fd: int | None = stream.fileno() if stream.isatty() else None
        except (AttributeError, OSError, ValueError):  # replaced or closed stdin
            self.fd = None
        self._saved: list[object] | None = None

    def __enter__(self) -> Keys:
        if self.fd is not None:
            import termios
            import tty

            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd, termios.TCSANOW)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def wait(self, timeout: float) -> str:
        """What was typed within ``timeout`` seconds ('' if nothing); sleeps without a terminal."""
        if self.fd is None:
            time.sleep(max(0.0, timeout))
            return ""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return ""
        try:
            data = os.read(self.fd, 64)
        except OSError:  # EIO: the terminal hung up
            data = b""
        if not data:
            raise EOFError
        return data.decode(errors="replace")


@contextlib.contextmanager
def _quiet_watcher() -> Iterator[None]:
    """The client's watcher logs its reconnects; on a full-screen frame they would scribble."""
    logger = logging.getLogger("registry")
    handler = logging.NullHandler()
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.propagate = propagate
        logger.removeHandler(handler)


def _loop(top: Top, keys: Keys, draw: Callable[[], None]) -> None:
    """Read and draw every interval (on the monotonic clock, no drift) until a quit key."""
    due = time.monotonic()
    while True:
        if time.monotonic() >= due:
            top.refresh()
            draw()
            due = max(due + top.interval, time.monotonic())
        typed = keys.wait(due - time.monotonic())
        if QUIT_KEYS.intersection(typed):
            return


def _console(stream: TextIO) -> Console:
    """A terminal's own size; elsewhere ``$COLUMNS``, else as wide as the models table wants."""
    from rich.console import Console

    terminal = stream.isatty()
    return Console(file=stream, width=None if terminal or os.environ.get("COLUMNS") else PRINT_WIDTH)


def cmd_top(ctx: Context) -> int:
    from rich.live import Live  # imported here: every other command starts without rich

    from registry.top import render_frame

    args = ctx.args
    if args.json:
        raise ConfigError("top draws for people; for a document use `registry export` or the Python API")
    url = redact(ctx.url)
    if args.once:
        with ctx.registry() as reg:
            view = reg.fleet_view()  # an error reaches main(): exit 1, `registry: error: ...`
        console = _console(ctx.out.stdout)
        console.print(render_frame(view, namespace=ctx.namespace, url=url, interval=None))
        return 0

    reg = Registry.from_url(
        ctx.url,
        namespace=ctx.namespace,
        watch=True,  # the catalog is followed in the background: a frame reads the ledger only
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=CONNECT_TIMEOUT,
    )
    top = Top(reg.fleet_view, ctx.namespace, url, args.interval)
    console = _console(ctx.out.stdout)
    try:
        with _quiet_watcher(), Keys(sys.stdin) as keys:
            if console.is_terminal:
                with Live(console=console, screen=True, auto_refresh=False, redirect_stderr=False) as live:
                    _loop(top, keys, lambda: live.update(top.frame(console.size.height), refresh=True))
            else:
                _loop(top, keys, lambda: console.print(top.frame()))
    except (KeyboardInterrupt, EOFError):
        pass
    finally:
        reg.close()
    return 0
