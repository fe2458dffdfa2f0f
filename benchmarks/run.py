"""Every benchmark of issue 6 in one run, against one private redis-server.

    python benchmarks/run.py [--quick] [--seconds S] [--rounds R] [--procs 1 2 4 8]
                             [--json results/run.json] [--redis-url URL] [--only SECTION ...]

Starts its own private ``redis-server`` (registry.embedded) unless given ``--redis-url``, then
runs, in this order, and prints each row as it finishes:

  floor     PING and a no-op EVALSHA (one key), 1 connection per process, in each --procs
  rounds    alternating rounds on one connection: the floor, acquire, and the peers (limits,
            throttled-py) at weights 1 and 500; medians over --rounds rounds
  ours      acquire (3 limits; 1 limit; tenant limits; tenant budget), check_rate_limit, route,
            settle, acquire + settle, record_usage: sync client, in each --procs
  async     AsyncRegistry: 1 and 64 tasks on one connection pool per process; the auto-batching
            slot (item 7)
  catalog   get_model, estimate_cost, search_models, most_cost_effective_models over 5,000
            models, from the local copy, with the Redis commands they issued (none expected)
  work      round trips, scripts, inner Redis commands and server time per call (INFO
            commandstats) at full windows, ours and the peers'
  sweeps    server time per acquire as the TPM limit and the token weight grow; limits' moving
            window as the weight grows
  memory    MEMORY USAGE per limited model after a full window, ours and limits' moving window

and writes one JSON document (machine facts, every row, the done-when targets) to --json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
import redis.utils

import registry
from benchmarks import floor, ours, peers, reads, rounds, work
from benchmarks import memory as memory_section
from benchmarks.harness import Report, clients, run_procs
from registry import AsyncRegistry, embedded

SECTIONS = ("floor", "rounds", "ours", "async", "catalog", "work", "sweeps", "memory")
NEEDS_INFO = {"catalog", "work", "sweeps", "memory"}  # INFO, MEMORY USAGE: redis-server only
ROOT = Path(__file__).resolve().parent.parent
FLAT = 1.25  # "flat": the sweep's largest server time at most 1.25x its smallest


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short durations everywhere (a smoke run, < 60 s)")
    parser.add_argument("--seconds", type=float, help="seconds per throughput row (default 2; quick 0.2)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 5; quick 2)")
    parser.add_argument("--round-seconds", type=float, help="seconds per bench per round (default 1; quick 0.2)")
    parser.add_argument("--procs", type=int, nargs="+", help="process counts (default 1 2 4 8; quick 1 2)")
    parser.add_argument("--tasks", type=int, default=64, help="asyncio tasks per process (default 64)")
    parser.add_argument("--calls", type=int, help="calls per work measurement run (default 500; quick 200)")
    parser.add_argument(
        "--reps", type=int, help="alternating runs per work/sweep row, median kept (default 9; quick 1)"
    )
    parser.add_argument("--models", type=int, default=5000, help="catalog size (default 5000)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "run.json")
    parser.add_argument("--redis-url", help="use this Redis, not a private one (never reset or emptied)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    args = parser.parse_args(argv)
    quick = args.quick
    args.seconds = args.seconds or (0.2 if quick else 2.0)
    args.rounds = args.rounds or (2 if quick else 5)
    args.round_seconds = args.round_seconds or (0.2 if quick else 1.0)
    args.procs = args.procs or ([1, 2] if quick else [1, 2, 4, 8])
    args.calls = args.calls or (200 if quick else 500)
    args.reps = args.reps or (1 if quick else 9)
    args.only = args.only or list(SECTIONS)
    return args


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine(url: str, server: embedded.EmbeddedRedis | None) -> dict[str, Any]:
    info = redis.Redis.from_url(url, decode_responses=True).info("server") if not _fake(server) else {}
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
        "redis_server": info.get("redis_version", server.version if server else "?"),
        "redis_server_kind": server.description if server else f"given: {url}",
        "redis_py": redis.__version__,
        "hiredis": _version("hiredis"),
        "hiredis_in_use": bool(redis.utils.HIREDIS_AVAILABLE),
        "registry": registry.__version__,
        "peers": peers.versions(),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_changes": [line for line in _git("status", "--porcelain", "--", "lua", "registry").splitlines()],
    }


def _fake(server: embedded.EmbeddedRedis | None) -> bool:
    return server is not None and server.kind != "redis-server"


# -- sections -----------------------------------------------------------------------------------


def section_floor(report: Report, url: str, args: argparse.Namespace) -> None:
    report.section("floor", "a. floor: redis-py round trips, 1 connection per process", "throughput")
    for procs in args.procs:
        for name, factory in (("PING", floor.ping_bench), ("EVALSHA no-op (one key)", floor.evalsha_bench)):
            row = run_procs(factory, (url,), procs, args.seconds)
            report.add(operation=name, clients=clients(procs), **row, ratio=1.0 if "EVALSHA" in name else None)


def _floor_ops(report: Report, procs: int) -> float | None:
    row = report.find("floor", "EVALSHA no-op (one key)", clients(procs))
    return row["ops_per_s"] if row else None


def section_rounds(report: Report, url: str, args: argparse.Namespace) -> None:
    report.section(
        "rounds",
        f"b. alternating rounds, 1 connection, median of {args.rounds} × {args.round_seconds:g} s "
        "(×floor: over the no-op EVALSHA of the same round)",
        "throughput",
    )
    rounds.run_rounds(report, url, rounds=args.rounds, seconds=args.round_seconds)


def section_ours(report: Report, url: str, args: argparse.Namespace) -> None:
    report.section(
        "ours",
        "c. this project, sync client, 1 connection per process (×floor: over the EVALSHA floor, same processes)",
        "throughput",
    )
    for procs in args.procs:
        base = _floor_ops(report, procs)
        for name, what in ours.OPERATIONS.items():
            row = run_procs(ours.bench, (url, name), procs, args.seconds)
            report.add(
                operation=name,
                clients=clients(procs),
                **row,
                ratio=row["ops_per_s"] / base if base else None,
                note=what,
            )


def _auto_batching(url: str) -> bool:
    """Does this AsyncRegistry batch concurrent script calls (item 7)?"""

    async def check() -> bool:
        reg = AsyncRegistry.from_url(url, namespace=ours.NAMESPACE, watch=False)
        try:
            return getattr(reg, "_batcher", None) is not None or hasattr(reg, "acquire_many")
        finally:
            await reg.aclose()

    return asyncio.run(check())


def _per_pipeline(row: dict[str, Any]) -> str:
    if not row.get("pipelines"):
        return ""
    calls = row.get("batched_calls", row["scripts"])
    return f"; {calls / row['pipelines']:.1f} calls in {row['scripts'] / row['pipelines']:.1f} scripts per pipeline"


def section_async(report: Report, url: str, args: argparse.Namespace) -> None:
    report.section(
        "async",
        "c. this project, asyncio client, one client (connection pool) per process (×floor: over the asyncio "
        "EVALSHA floor, same processes and tasks: a pool of up to that many connections, not batched)",
        "throughput",
    )
    for procs in args.procs:
        for tasks in [1, args.tasks] if procs == 1 else [args.tasks]:
            label = clients(procs, tasks)
            base = run_procs(floor.async_evalsha_bench, (url,), procs, args.seconds, tasks=tasks)
            report.add(operation="floor: EVALSHA no-op (asyncio)", clients=label, **base, ratio=1.0)
            for name in ours.ASYNC_OPERATIONS:
                row = run_procs(ours.async_bench, (url, name), procs, args.seconds, tasks=tasks)
                report.add(
                    operation=f"{name} (asyncio)",
                    clients=label,
                    **row,
                    ratio=row["ops_per_s"] / base["ops_per_s"],
                    note=f"{tasks} task{'s' if tasks > 1 else ''} per process{_per_pipeline(row)}",
                )

    # Item 7: concurrent acquires of one process sharing round trips.
    if not _auto_batching(url):
        report.add(
            kind="info",
            operation="item 7: asyncio auto-batching",
            value="not built",
            note="AsyncRegistry does not batch (no _batcher, no acquire_many): slot left for it",
        )
        return
    floor_1 = _floor_ops(report, 1)
    report.note("item 7: auto-batched acquires, 1 process (×floor: over the sync single-connection EVALSHA floor)")
    for tasks in ITEM7_TASKS:
        row = run_procs(ours.async_bench, (url, ours.ACQUIRE), 1, args.seconds, tasks=tasks)
        report.add(
            operation=f"item 7: {ours.ACQUIRE}, auto-batched (asyncio)",
            clients=clients(1, tasks),
            **row,
            ratio=row["ops_per_s"] / floor_1 if floor_1 else None,
            item7=True,
            note=f"{tasks} tasks{_per_pipeline(row)}",
        )


ITEM7_TASKS = (64, 256, 1024)


def section_catalog(report: Report, url: str, args: argparse.Namespace) -> None:
    report.section(
        "catalog",
        f"d. catalog reads from the local copy, {args.models:,} models, 1 process (×floor: over PING's ops/s)",
        "throughput",
    )
    ping = report.find("floor", "PING", clients(1))
    reads.run_reads(report, url, count=args.models, seconds=args.seconds, ping_ops=ping["ops_per_s"] if ping else None)


def section_work(report: Report, url: str, args: argparse.Namespace) -> None:
    report.section(
        "work",
        f"e. work per call at full windows (median of {args.reps} alternating runs of {args.calls:,} calls): round "
        "trips, scripts and their inner commands per call; server µs per call (INFO commandstats: the scripts' "
        "time), of it the inner commands'; redis-server CPU µs and client CPU µs per call (whole requests)",
        "work",
    )
    work.run_work(report, url, calls=args.calls, reps=args.reps)


def section_sweeps(report: Report, url: str, args: argparse.Namespace) -> None:
    report.section("sweeps", "f. server µs per call as the limit and the weight grow, full windows", "work")
    work.run_sweeps(report, url, calls=args.calls, reps=args.reps)


def section_memory(report: Report, url: str, args: argparse.Namespace) -> None:
    report.section("memory", "g. memory after a full window (MEMORY USAGE ... SAMPLES 0)", "memory")
    memory_section.run_memory(report, url)


RUNNERS = {
    "floor": section_floor,
    "rounds": section_rounds,
    "ours": section_ours,
    "async": section_async,
    "catalog": section_catalog,
    "work": section_work,
    "sweeps": section_sweeps,
    "memory": section_memory,
}


def _empty(url: str, *, private: bool) -> int:
    """Empty our private server before the server-time sections: the throughput rows leave
    hundreds of thousands of reservations (acquired, never settled, kept an hour) and ledger
    keys behind, and a bigger keyspace slows every key lookup, ours (4 keys per acquire) more
    than a one-key peer's. A server given by --redis-url is left as it is."""
    r = redis.Redis.from_url(url)
    keys = int(r.dbsize())  # type: ignore[arg-type]
    if private:
        r.flushall()
        print(f"\n# emptied the private server before the work sections ({keys:,} keys left by the rows above)")
    else:
        print(f"\n# {keys:,} keys on the given server: work sections measure with them in place")
    r.close()
    return keys


# -- the done-when targets ----------------------------------------------------------------------


def _target(name: str, measured: float | None, threshold: float, *, at_most: bool = False, detail: str = "") -> dict:
    if measured is None:
        status = "NOT RUN"
    else:
        status = "PASS" if (measured <= threshold if at_most else measured >= threshold) else "MISS"
    return {
        "target": name,
        "measured": measured,
        "threshold": threshold,
        "at_most": at_most,
        "status": status,
        "detail": detail,
    }


def _server_us(report: Report, section: str, operation: str) -> float | None:
    row = report.find(section, operation)
    return row["server_us_per_op"] if row else None


def targets(report: Report) -> list[dict[str, Any]]:
    out = []
    acquire = report.find("rounds", f"ours: {ours.ACQUIRE} w={rounds.WEIGHT}")
    out.append(
        _target(
            "acquire on one connection >= 0.8x the no-op EVALSHA floor (median of rounds)",
            acquire["ratio"] if acquire else None,
            0.8,
            detail="per round: " + ", ".join(f"{x:.2f}" for x in acquire["ratios"]) if acquire else "",
        )
    )
    one = report.find("rounds", f"ours: acquire TPM only w={rounds.WEIGHT}")
    peer = rounds.fastest_single_limit_peer(report.rows)
    same = rounds.fastest_single_limit_peer(report.rows, weight=rounds.WEIGHT)
    out.append(
        _target(
            "acquire >= 1.0x the fastest peer checking a single limit (ops/s, rounds)",
            acquire["ops_per_s"] / peer["ops_per_s"] if acquire and peer else None,
            1.0,
            detail=(
                f"fastest: {peer['operation']} {peer['ops_per_s']:,.0f} ops/s; at w=500 the fastest is "
                f"{same['operation']}: {acquire['ops_per_s'] / same['ops_per_s']:.2f}x; "
                f"acquire TPM only (1 limit): {one['ops_per_s'] / peer['ops_per_s']:.2f}x"
                if acquire and peer and same and one
                else "rounds not run, or no peer installed"
            ),
        )
    )
    ours_us = _server_us(report, "work", "acquire RPM+TPM+RPD, full windows")
    mw_us = _server_us(report, "work", work.MW_500)
    out.append(
        _target(
            "Redis time per acquire <= 1/5 of limits' moving window at w=500 (full windows)",
            ours_us / mw_us if ours_us and mw_us else None,
            0.2,
            at_most=True,
            detail=f"{ours_us:.2f} µs vs {mw_us:.2f} µs" if ours_us and mw_us else "",
        )
    )
    for kind, label in (("limit", "TPM limit 1,000 -> 10,000,000"), ("weight", "weight 1 -> 100,000")):
        rows = [
            r
            for r in report.rows
            if r["section"] == "sweeps"
            and r["operation"].startswith(f"acquire, {'TPM limit' if kind == 'limit' else 'weight'}")
        ]
        values = [r["server_us_per_op"] for r in rows]
        out.append(
            _target(
                f"server time per acquire flat as the {label} (max/min <= {FLAT})",
                max(values) / min(values) if values else None,
                FLAT,
                at_most=True,
                detail=" / ".join(f"{v:.2f}" for v in values) + " µs" if values else "",
            )
        )
    for name in ("get_model (sync)", "estimate_cost (12,000 in / 800 out) (sync)"):
        row = report.find("catalog", name)
        out.append(
            _target(
                f"{name.removesuffix(' (sync)')}: >= 200,000 reads/s per process",
                row["ops_per_s"] if row else None,
                200_000,
                detail=f"p50 {row['p50_us']:.2f} µs" if row else "",
            )
        )
        out.append(
            _target(
                f"{name.removesuffix(' (sync)')}: no Redis command issued",
                row["redis_commands"] if row else None,
                0,
                at_most=True,
                detail=f"{row['calls']:,} reads" if row else "",
            )
        )
    model = report.find(
        "memory", f"ours: per model at {memory_section.RPM:,} RPM + {memory_section.TPM:,} TPM, full windows"
    )
    out.append(
        _target(
            "memory per limited model < 2 KB at 1,000,000 TPM after a full window",
            model["bytes"] if model else None,
            2047,
            at_most=True,
            detail="RPM + TPM window hashes",
        )
    )
    item7 = [r for r in report.rows if r.get("item7")]
    at_256 = next((r for r in item7 if r["clients"] == clients(1, 256)), None)
    detail = "; ".join(f"{r['clients']}: {r['ratio']:.2f}x{_per_pipeline(r)}" for r in item7 if r["ratio"])
    if report.find("async", "item 7: asyncio auto-batching"):
        detail = "AsyncRegistry does not batch"
    target = _target(
        "item 7: asyncio auto-batching, 256 concurrent acquires, 1 process >= 3x the 1-connection floor",
        at_256["ratio"] if at_256 else None,
        3.0,
        detail=f"{detail}; every decision exact: tests/test_batching.py",
    )
    out.append(target)
    return out


def print_targets(found: list[dict[str, Any]]) -> None:
    print("\n## done-when targets")
    for t in found:
        m = t["measured"]
        measured = "-" if m is None else (f"{m:,.0f}" if abs(m) >= 100 else f"{m:.3f}")
        bound = "" if t["threshold"] is None else f"{'<=' if t.get('at_most') else '>='} {t['threshold']:,g}"
        print(f"{t['status']:<10} {t['target']:<84} {measured:>10} {bound:<12} {t['detail']}")


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    server = None if args.redis_url else embedded.start()
    url = args.redis_url or server.url  # type: ignore[union-attr]
    started = time.perf_counter()
    report = Report()
    doc: dict[str, Any] = {"meta": machine(url, server), "args": {k: str(v) for k, v in vars(args).items()}}
    meta = doc["meta"]
    print(
        f"# registry benchmarks {meta['date']}: {meta['redis_server_kind']}; {meta['cpu_count']} CPUs, "
        f"load {meta['loadavg_at_start'][0]:.2f}; Python {meta['python']}, redis-py {meta['redis_py']} "
        f"(hiredis {meta['hiredis'] if meta['hiredis_in_use'] else 'not in use'}); peers {meta['peers']}",
        flush=True,
    )
    if meta["git_changes"]:
        print(f"# uncommitted changes under lua/ and registry/: {meta['git_changes']}", flush=True)
    try:
        ours.setup(url)
        emptied = False
        for name in [n for n in SECTIONS if n in args.only]:  # always in this order
            if name in NEEDS_INFO and _fake(server):
                print(f"\n## {name}: skipped (fakeredis has no INFO commandstats / MEMORY USAGE)")
                continue
            if name in ("work", "sweeps", "memory") and not emptied:
                emptied = True
                doc["meta"]["keys_before_work"] = _empty(url, private=server is not None)
            RUNNERS[name](report, url, args)
    finally:
        if server is not None:
            server.stop()
    doc["rows"] = report.rows
    doc["targets"] = targets(report)
    doc["meta"]["loadavg_at_end"] = os.getloadavg()
    doc["meta"]["seconds"] = round(time.perf_counter() - started, 1)
    print_targets(doc["targets"])
    print(f"\n# {doc['meta']['seconds']:.0f} s; load at end {doc['meta']['loadavg_at_end'][0]:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"# JSON: {args.json}")
    return doc


if __name__ == "__main__":
    main()
