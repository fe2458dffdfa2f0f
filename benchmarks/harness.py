"""What every section of ``benchmarks/run.py`` shares: one timing loop (blocking and asyncio),
the multi-process runner, the server's own counters, and the rows and their tables.

Throughput: a :class:`Bench` is a callable timed once per call (``time.perf_counter`` around
each call, so the loop's own overhead, about 0.1 µs a call, is counted against the operation).
``ops/s`` is calls over the active time of each process, summed over the processes, which run
at once (they start together at a barrier); p50 and p99 are of every call of every process.

Work: :func:`measure_work` runs an operation a number of times and reads what the server did
for it from ``INFO commandstats`` deltas: the scripts (EVALSHA) it received, the commands
those scripts called (Redis 7 counts a script's ``redis.call`` in commandstats too) and the
server time of the scripts, plus the client's round trips (counted in redis-py's
``send_packed_command``).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import queue
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.connection

__all__ = [
    "AsyncBench",
    "Bench",
    "Report",
    "Timing",
    "commandstats",
    "measure_work",
    "run_procs",
    "summarize",
    "time_loop",
    "time_loop_async",
    "total_commands",
    "wait_quiet",
]

# Commands a client sends; everything else a measured operation adds to commandstats was
# called by its scripts. The harness's own INFO calls are left out.
SCRIPTS = frozenset({"evalsha", "evalsha_ro", "eval", "eval_ro", "fcall", "fcall_ro"})
TOP_LEVEL = SCRIPTS | {"ping"}
HARNESS = frozenset({"info"})


@dataclass
class Bench:
    """One operation to time. ``call`` is timed; ``refill`` is not: the loop runs it whenever
    ``due()`` is true, with the clock stopped (``settle`` needs reservations to settle)."""

    call: Callable[[], Any]
    due: Callable[[], bool] | None = None
    refill: Callable[[], Any] | None = None
    close: Callable[[], Any] | None = None


@dataclass
class AsyncBench:
    """An asyncio operation to time, run by ``tasks`` concurrent tasks of one event loop."""

    call: Callable[[], Awaitable[Any]]
    close: Callable[[], Awaitable[Any]] | None = None
    stats: Callable[[], dict[str, float]] | None = None  # counters; the timed loop's deltas are reported


@dataclass
class Timing:
    """One process's loop: its calls, its active seconds (refills excluded), each call's time."""

    calls: int
    seconds: float
    samples: list[float]
    extra: dict[str, float] = field(default_factory=dict)


def warm(bench: Bench, calls: int) -> None:
    for _ in range(calls):
        if bench.due is not None and bench.due():
            assert bench.refill is not None
            bench.refill()
        bench.call()


def time_loop(bench: Bench, seconds: float) -> Timing:
    """Call ``bench.call`` for ``seconds`` of active time; every call timed."""
    samples: list[float] = []
    append = samples.append
    clock = time.perf_counter
    call, due, refill = bench.call, bench.due, bench.refill
    paused = 0.0
    start = clock()
    deadline = start + seconds
    while True:
        if due is not None and due():
            assert refill is not None
            t = clock()
            refill()
            paused += clock() - t
        t0 = clock()
        if t0 - paused >= deadline:
            break
        call()
        append(clock() - t0)
    return Timing(len(samples), clock() - start - paused, samples)


async def warm_async(bench: AsyncBench, tasks: int, rounds: int = 5) -> None:
    for _ in range(rounds):
        await asyncio.gather(*(bench.call() for _ in range(tasks)))


async def time_loop_async(bench: AsyncBench, seconds: float, tasks: int) -> Timing:
    """``tasks`` tasks each calling ``bench.call`` in a loop for ``seconds``; every call timed."""
    samples: list[float] = []
    clock = time.perf_counter
    deadline = clock() + seconds

    async def one() -> None:
        while clock() < deadline:
            t0 = clock()
            await bench.call()
            samples.append(clock() - t0)

    start = clock()
    await asyncio.gather(*(one() for _ in range(tasks)))
    return Timing(len(samples), clock() - start, samples)


def summarize(timings: list[Timing]) -> dict[str, float]:
    """ops/s (summed over processes running at once), p50 and p99 (µs) of every call."""
    samples = sorted(s for t in timings for s in t.samples)
    if not samples:
        raise RuntimeError("no call completed")
    row = {
        "calls": len(samples),
        "ops_per_s": sum(t.calls / t.seconds for t in timings if t.seconds > 0),
        "p50_us": samples[len(samples) // 2] * 1e6,
        "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e6,
    }
    for t in timings:  # a bench's own counters, summed over the processes
        for name, value in t.extra.items():
            row[name] = row.get(name, 0) + value
    return row


# -- processes ----------------------------------------------------------------------------------


def _worker(
    factory: Callable[..., Any], args: tuple[Any, ...], seconds: float, tasks: int, barrier: Any, out: Any
) -> None:
    try:
        if tasks:
            timing = asyncio.run(_async_worker(factory, args, seconds, tasks, barrier))
        else:
            bench = factory(*args)
            warm(bench, 50)
            barrier.wait(timeout=300)
            timing = time_loop(bench, seconds)
            if bench.close is not None:
                bench.close()
        out.put(("ok", timing))
    except BaseException as exc:  # report it to the parent, never hang it
        barrier.abort()
        out.put(("error", f"{type(exc).__name__}: {exc}"))


async def _async_worker(
    factory: Callable[..., Awaitable[AsyncBench]], args: tuple[Any, ...], seconds: float, tasks: int, barrier: Any
) -> Timing:
    bench = await factory(*args)
    await warm_async(bench, tasks)
    barrier.wait(timeout=300)
    before = bench.stats() if bench.stats else {}
    timing = await time_loop_async(bench, seconds, tasks)
    if bench.stats is not None:
        timing.extra = {name: value - before.get(name, 0) for name, value in bench.stats().items()}
    if bench.close is not None:
        await bench.close()
    return timing


def run_procs(
    factory: Callable[..., Any], args: tuple[Any, ...], procs: int, seconds: float, *, tasks: int = 0
) -> dict[str, float]:
    """Run ``factory(*args)``'s bench in ``procs`` fresh processes at once (spawned, so each
    starts clean), each for ``seconds``; with ``tasks`` the factory is a coroutine function
    returning an :class:`AsyncBench` that many tasks run concurrently in each process."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(factory, args, seconds, tasks, barrier, out), daemon=True)
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    results: list[tuple[str, Any]] = []
    deadline = time.monotonic() + seconds + 600
    try:
        while len(results) < procs:
            try:
                results.append(out.get(timeout=1.0))
            except queue.Empty:
                dead = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"benchmark worker failed: exit code {dead[0]}" if dead else "benchmark workers timed out"
                    ) from None
    finally:
        for w in workers:
            w.join(timeout=60 if len(results) == procs else 1)
            if w.is_alive():
                w.terminate()
    errors = [detail for status, detail in results if status != "ok"]
    if errors:
        raise RuntimeError(f"benchmark worker failed: {errors[0]}")
    return summarize([timing for _, timing in results])


# -- the server's counters ----------------------------------------------------------------------


def commandstats(r: redis.Redis) -> dict[str, tuple[int, int]]:
    """``INFO commandstats`` as name -> (calls, usec)."""
    return {
        name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in r.info("commandstats").items()
    }


def server_cpu(r: redis.Redis) -> float:
    """redis-server's CPU seconds so far (its main thread's user + system time)."""
    info = r.info("cpu")
    main = (info.get("used_cpu_user_main_thread"), info.get("used_cpu_sys_main_thread"))
    if None not in main:
        return float(main[0]) + float(main[1])  # type: ignore[arg-type]
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def total_commands(r: redis.Redis) -> int:
    """``total_commands_processed`` (a script's inner calls included), before this INFO."""
    return int(r.info("stats")["total_commands_processed"])


def wait_quiet(r: redis.Redis, *, period: float = 0.1, timeout: float = 10.0) -> None:
    """Wait until no client issues a command for ``period`` seconds (a watcher's first refresh)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = total_commands(r)
        time.sleep(period)
        if total_commands(r) - before - 1 == 0:
            return
    raise RuntimeError(f"Redis never went quiet for {period} s")


_sends = [0]


@contextlib.contextmanager
def counting_round_trips() -> Iterator[list[int]]:
    """Count what every redis-py connection of this process sends (one per command or pipeline)."""
    cls = redis.connection.AbstractConnection
    original = cls.send_packed_command

    def send(self: Any, command: Any, check_health: bool = True) -> Any:
        _sends[0] += 1
        return original(self, command, check_health)

    cls.send_packed_command = send  # type: ignore[method-assign]
    try:
        yield _sends
    finally:
        cls.send_packed_command = original  # type: ignore[method-assign]


def measure_work(
    r: redis.Redis,
    call: Callable[[], Any],
    calls: int,
    *,
    batch: int | None = None,
    prepare: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """What the server did per call of ``call``, from ``INFO commandstats`` deltas.

    The deltas are taken around each batch of at most ``batch`` calls; ``prepare(n)`` runs
    before each batch, outside them (restoring a window to its full state, acquiring the
    reservations a batch of settles needs), so its commands are never counted.
    """
    counts: Counter[str] = Counter()
    usec: Counter[str] = Counter()
    round_trips = 0
    cpu = 0.0
    server_cpu_s = 0.0
    done = 0
    while done < calls:
        n = min(batch or calls, calls - done)
        if prepare is not None:
            prepare(n)
        cpu_before = server_cpu(r)
        before = commandstats(r)
        with counting_round_trips() as sends:
            sent = sends[0]
            t0 = time.process_time()
            for _ in range(n):
                call()
            cpu += time.process_time() - t0
            round_trips += sends[0] - sent
        after = commandstats(r)
        server_cpu_s += server_cpu(r) - cpu_before
        for name, (c, u) in after.items():
            c0, u0 = before.get(name, (0, 0))
            if name not in HARNESS and c > c0:
                counts[name] += c - c0
                usec[name] += u - u0
        done += n
    top = {name: c for name, c in counts.items() if name in TOP_LEVEL}
    inner = {name: c for name, c in counts.items() if name not in TOP_LEVEL}
    return {
        "calls": calls,
        "round_trips_per_op": round_trips / calls,
        "scripts_per_op": sum(c for name, c in top.items() if name in SCRIPTS) / calls,
        "inner_per_op": sum(inner.values()) / calls,
        "server_us_per_op": sum(usec[name] for name in top) / calls,
        # the scripts' own commands; the rest of server_us is the script itself (Lua, arguments)
        "inner_us_per_op": sum(usec[name] for name in inner) / calls,
        # redis-server's CPU per call (INFO cpu): the script and everything around it (reading the
        # request, writing the reply, the event loop), but never time it spent descheduled
        "server_cpu_us_per_op": server_cpu_s * 1e6 / calls,
        # this process's CPU per call: the client library, redis-py, the reply's parsing
        "client_cpu_us_per_op": cpu * 1e6 / calls,
        "top_level": {name: c / calls for name, c in sorted(top.items())},
        "inner": {name: c / calls for name, c in sorted(inner.items(), key=lambda kv: -kv[1])},
    }


# -- rows and tables ----------------------------------------------------------------------------


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


_FORMATS: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "throughput": (
        f"{'operation':<50} {'clients':>7} {'ops/s':>11} {'p50 µs':>8} {'p99 µs':>9} {'×floor':>7}  note",
        lambda r: (
            f"{r['operation']:<50} {r['clients']:>7} {_num(r.get('ops_per_s'), ',.0f'):>11} "
            f"{_num(r.get('p50_us'), '.1f'):>8} {_num(r.get('p99_us'), '.1f'):>9} "
            f"{_num(r.get('ratio'), '.2f'):>7}  {r.get('note', '')}"
        ),
    ),
    "work": (
        f"{'operation':<52} {'trips':>5} {'scripts':>7} {'inner':>5} {'srv µs':>7} {'of it cmds':>10} "
        f"{'srv CPU':>7} {'client':>6} {'ratio':>6}  inner commands per call [note]",
        lambda r: (
            f"{r['operation']:<52} {_num(r.get('round_trips_per_op'), '.2f'):>5} "
            f"{_num(r.get('scripts_per_op'), '.2f'):>7} {_num(r.get('inner_per_op'), '.1f'):>5} "
            f"{_num(r.get('server_us_per_op'), '.2f'):>7} {_num(r.get('inner_us_per_op'), '.2f'):>10} "
            f"{_num(r.get('server_cpu_us_per_op'), '.1f'):>7} {_num(r.get('client_cpu_us_per_op'), '.1f'):>6} "
            f"{_num(r.get('ratio'), '.2f'):>6}  "
            + " ".join(f"{k}:{v:g}" for k, v in list(r.get("inner", {}).items())[:8])
            + (f"  [{r['note']}]" if r.get("note") else "")
        ),
    ),
    "memory": (
        f"{'what':<64} {'bytes':>11}  note",
        lambda r: f"{r['operation']:<64} {_num(r.get('bytes'), ',d'):>11}  {r.get('note', '')}",
    ),
    "info": (
        f"{'what':<64} {'value':>11}  note",
        lambda r: f"{r['operation']:<64} {r.get('value', ''):>11}  {r.get('note', '')}",
    ),
}


class Report:
    """Rows of every section, printed as each finishes and kept for the JSON document.

    A section has a default kind of row (throughput, work, memory or info); a row may be of
    another kind, and a table header is printed whenever the kind changes.
    """

    def __init__(self, stream: Any = None) -> None:
        self.rows: list[dict[str, Any]] = []
        self._stream = stream or sys.stdout
        self._current: str | None = None
        self._kind = "info"
        self._printed: str | None = None

    def section(self, name: str, title: str, kind: str) -> None:
        self._current, self._kind, self._printed = name, kind, None
        print(f"\n## {title}", file=self._stream, flush=True)

    def add(self, *, kind: str | None = None, **row: Any) -> dict[str, Any]:
        assert self._current is not None, "call section() first"
        kind = kind or self._kind
        row = {"section": self._current, "kind": kind, **row}
        self.rows.append(row)
        if kind != self._printed:
            print(_FORMATS[kind][0], file=self._stream, flush=True)
            self._printed = kind
        print(_FORMATS[kind][1](row).rstrip(), file=self._stream, flush=True)
        return row

    def note(self, text: str) -> None:
        """A line of explanation under the current section (printed, not a row)."""
        print(f"   {text}", file=self._stream, flush=True)
        self._printed = None

    def find(self, section: str, operation: str, clients: str | None = None) -> dict[str, Any] | None:
        for row in self.rows:
            if (
                row["section"] == section
                and row["operation"] == operation
                and (clients is None or row.get("clients") == clients)
            ):
                return row
        return None


def clients(processes: int, connections: int | str = 1) -> str:
    """The "processes × connections" label of a row."""
    return f"{processes}×{connections}"
