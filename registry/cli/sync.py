"""``registry sync FILE [--watch]``: make the catalog match a config file, once or on every edit.

The watcher polls the file every ``interval`` seconds. It compares size and modification
time first, and reads and hashes the content only when those changed or are too recent to be
trusted (a file rewritten twice within the clock's granularity keeps its mtime, the "racily
clean" case git handles the same way). It syncs only when the *content* changed, and it syncs
the very bytes it hashed, so an edit landing during a sync is picked up on the next poll.

A broken file (bad JSON, a bad field, a file removed mid-save) prints the error, with the
file, the entry and the field, and leaves Redis alone; the watcher keeps going and syncs again
once the file is fixed. A Redis error leaves the content unsynced, so it is retried each poll.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.catalog.sync import SyncPlan, parse_catalog, read_catalog_file
from registry.cli.context import Context
from registry.cli.output import Output
from registry.cli.progress import Steps
from registry.client import Registry
from registry.errors import ConfigError, RegistryError

__all__ = ["ConfigWatcher", "cmd_sync", "plan_lines", "watch_config"]

# An mtime closer than this to "now" may still be shared by a later write of the same size.
_RACY_NS = 2_000_000_000


def plan_lines(plan: SyncPlan, *, dry_run: bool = False) -> list[str]:
    """The difference (``+``, ``~``, ``-`` lines) or ``no changes``, then a one-line tally."""
    if not plan.changed:
        return [f"no changes ({len(plan.unchanged)} unchanged); revision {plan.revision}"]
    tally = (
        f"{len(plan.added)} added, {len(plan.updated)} updated, {len(plan.retired)} retired, "
        f"{len(plan.unchanged)} unchanged"
    )
    if dry_run:
        return [*plan.lines(), f"dry run: {tally}; nothing written (catalog at revision {plan.revision})"]
    return [*plan.lines(), f"{tally}; revision {plan.revision}"]


def plan_document(plan: SyncPlan, path: Path | str, *, dry_run: bool = False) -> dict[str, Any]:
    return {"file": str(path), "dry_run": dry_run, **plan.summary()}


@dataclass
class ConfigWatcher:
    """Polls one config file and syncs it into a :class:`Registry` when its content changes."""

    registry: Registry
    path: Path
    out: Output
    prune: bool = False
    dry_run: bool = False
    _stat: tuple[int, int] | None = None  # (mtime_ns, size) at the last read
    _read_ns: int = 0  # wall clock of the last read
    _digest: str | None = None  # hash of the content last handled (synced, or refused)
    _retry: bool = False  # the last content met a Redis error: sync it again
    _read_error: str | None = None
    _sync_error: str | None = None

    def poll(self) -> SyncPlan | None:
        """Sync if the content changed since it was last handled; the plan, or None."""
        try:
            stat = os.stat(self.path)
            signature = (stat.st_mtime_ns, stat.st_size)
            racy = self._read_ns - stat.st_mtime_ns <= _RACY_NS
            if signature == self._stat and not racy and not self._retry:
                return None
            read_ns = time.time_ns()
            data = self.path.read_bytes()
        except OSError as exc:
            message = f"{self.path}: cannot read: {exc.strerror or exc}"
            if message != self._read_error:
                self.out.error(message)
            self._stat, self._read_error = None, message
            return None
        self._stat, self._read_ns, self._read_error = signature, read_ns, None
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._digest and not self._retry:
            return None
        self._digest = digest
        try:
            models = parse_catalog(data, where=str(self.path))
            plan = self.registry.sync_models(models, prune=self.prune, dry_run=self.dry_run)
        except ConfigError as exc:  # reported once: this content is not read again
            self._retry, self._sync_error = False, None
            self.out.error(str(exc))
            return None
        except RegistryError as exc:  # Redis down, or lost every compare-and-set: retried
            # every poll, reported once
            self._retry = True
            if str(exc) != self._sync_error:
                self.out.error(str(exc))
            self._sync_error = str(exc)
            return None
        self._retry, self._sync_error = False, None
        return plan

    def show(self, plan: SyncPlan, *, first: bool) -> None:
        if self.out.json:
            self.out.document(plan_document(plan, self.path, dry_run=self.dry_run), compact=True)
            return
        if not first:
            self.out.line(f"{time.strftime('%H:%M:%S')} {self.path} changed:")
        self.out.lines(plan_lines(plan, dry_run=self.dry_run))


def watch_config(
    registry: Registry,
    path: str | Path,
    out: Output,
    *,
    prune: bool = False,
    dry_run: bool = False,
    interval: float = 0.5,
    stop: threading.Event | None = None,
    max_polls: int | None = None,
) -> int:
    """Sync ``path`` now and again whenever its content changes, until ``stop`` is set.

    ``max_polls`` ends the loop after that many polls (the first sync included). Returns the
    number of syncs written (or planned, with ``dry_run``).
    """
    watcher = ConfigWatcher(registry, Path(path), out, prune=prune, dry_run=dry_run)
    stop = stop or threading.Event()
    syncs = polls = 0
    if not out.json:
        out.line(f"watching {path} every {interval:g}s (Ctrl-C to stop)")
    while not stop.is_set():
        plan = watcher.poll()
        if plan is not None:
            watcher.show(plan, first=polls == 0)
            syncs += 1
        polls += 1
        if max_polls is not None and polls >= max_polls:
            break
        stop.wait(interval)
    return syncs


def cmd_sync(ctx: Context) -> int:
    """Sync once (exit 2 on a bad file), or keep watching with ``--watch``."""
    args = ctx.args
    with ctx.registry() as reg:
        if args.watch:
            reg.ping()  # an unreachable Redis is an error at start, not something to wait for
            try:
                watch_config(reg, args.file, ctx.out, prune=args.prune, dry_run=args.dry_run, interval=args.interval)
            except KeyboardInterrupt:
                if not ctx.out.json:
                    ctx.out.line("stopped")
            return 0
        steps = Steps(ctx.out)
        with steps.step(f"reading {Path(args.file).name}"):
            models = read_catalog_file(args.file)
        with steps.step(f"{'comparing' if args.dry_run else 'syncing'} {len(models)} models"):
            plan = reg.sync_models(models, prune=args.prune, dry_run=args.dry_run)
    if ctx.out.json:
        ctx.out.document(plan_document(plan, args.file, dry_run=args.dry_run))
    else:
        ctx.out.lines(plan_lines(plan, dry_run=args.dry_run))
    return 0
