"""Threads sharing one blocking ``Registry``: acquires per second against the one-connection floor.

    python benchmarks/threads.py [--seconds 3] [--threads 1 8 32 64] [--redis-url URL]

A threaded gateway (a WSGI server's thread pool, a ThreadPoolExecutor of workers) shares one
client. Its concurrent script calls share round trips (``registry.batching.ThreadBatcher``):
while one is in flight the others queue, and the next pipeline carries them all, their
acquires of one model merged into one script call. Each row runs T threads for --seconds,
with the batcher off (each thread its own round trip, as without it) and on;
``×floor`` is over the no-op EVALSHA floor on one connection measured in the same run (the
median of a measurement before and one after the rows). The peers are not run here.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import redis

from benchmarks import ours
from registry import Registry, embedded


def floor(url: str, seconds: float) -> float:
    r = redis.Redis.from_url(url)
    sha = r.script_load("return redis.call('EXISTS', KEYS[1])")
    calls, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        r.evalsha(sha, 1, "x")
        calls += 1
    r.close()
    return calls / seconds


def threaded(url: str, threads: int, seconds: float, *, batched: bool = True) -> dict[str, float]:
    reg = Registry.from_url(url, namespace=ours.NAMESPACE)
    reg.get_model(ours.MODEL)
    if not batched:  # every thread its own round trip, on a pool connection of its own
        reg._batcher.call = reg._evalsha  # type: ignore[method-assign]
    counts = [0] * threads
    start, stop = threading.Barrier(threads + 1), threading.Event()

    def work(i: int) -> None:
        start.wait()
        while not stop.is_set():
            decision = reg.acquire(ours.MODEL, ours.INPUT, ours.OUTPUT)
            assert decision.allowed, decision
            counts[i] += 1

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    before = (reg._batcher.batches, reg._batcher.calls, reg._batcher.scripts)
    start.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - began
    batches, calls, scripts = (
        now - then
        for now, then in zip((reg._batcher.batches, reg._batcher.calls, reg._batcher.scripts), before, strict=True)
    )
    reg.close()
    return {
        "ops_per_s": sum(counts) / elapsed,
        "pipelines": batches,
        "batched": calls,
        "scripts": scripts,
        "total": sum(counts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--redis-url")
    args = parser.parse_args()
    server = None if args.redis_url else embedded.start()
    url = args.redis_url or server.url  # type: ignore[union-attr]
    try:
        ours.setup(url)
        floors = [floor(url, args.seconds)]
        rows = [(n, b, threaded(url, n, args.seconds, batched=b)) for n in args.threads for b in (False, True)]
        floors.append(floor(url, args.seconds))
        base = statistics.median(floors)
        print(f"floor: no-op EVALSHA, 1 connection: {base:,.0f}/s (before {floors[0]:,.0f}, after {floors[1]:,.0f})")
        print(f"{'threads':>8} {'batcher':>8} {'acquires/s':>12} {'×floor':>7}  what went")
        for n, batched, row in rows:
            if batched:
                alone = row["total"] - row["batched"]
                per = row["batched"] / row["pipelines"] if row["pipelines"] else 0
                note = f"{alone:,.0f} alone, {row['batched']:,.0f} in {row['pipelines']:,.0f} pipelines"
                note += f" ({per:.1f} per pipeline, {row['scripts']:,.0f} script calls)"
            else:
                note = "one round trip each, on the pool's connections"
            ratio = row["ops_per_s"] / base
            print(
                f"{n:>8} {'on' if batched else 'off':>8} {row['ops_per_s']:>12,.0f} {ratio:>7.2f}  {note}", flush=True
            )
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    main()
