"""EVALSHA against FCALL: the same acquires, one client each way, in one run.

    python benchmarks/functions.py [--acquires 2000] [--rounds 9] [--redis-url URL]

Two blocking ``Registry`` clients with a watched local catalog (no read round trip) acquire on
``benchmarks.ours``' three-limit model, one with ``scripts="eval"`` (EVALSHA) and one with
``scripts="functions"`` (FCALL of the library, loaded first). Each round times ``--acquires``
sequential acquires of each, the order alternating between rounds so that drift of the machine
hits both alike. Printed: the median time per acquire each way and their ratio, and Redis' own
time per call of each command (INFO commandstats: no client or network in it).
"""

from __future__ import annotations

import argparse
import statistics
import time

import redis

from benchmarks import ours
from registry import Registry, embedded
from registry.functions import ScriptsMode


def _timed(reg: Registry, acquires: int) -> float:
    """Microseconds per acquire over ``acquires`` sequential acquires."""
    began = time.perf_counter()
    for _ in range(acquires):
        decision = reg.acquire(ours.MODEL, ours.INPUT, ours.OUTPUT)
        assert decision.allowed, decision
    return (time.perf_counter() - began) / acquires * 1e6


def compare(url: str, acquires: int, rounds: int) -> dict[str, float]:
    """Median µs per acquire each way, their ratio (functions over eval), and Redis' µs per call."""
    ours.setup(url)
    clients: dict[ScriptsMode, Registry] = {
        mode: Registry.from_url(url, namespace=ours.NAMESPACE, scripts=mode) for mode in ("eval", "functions")
    }
    server = redis.Redis.from_url(url, decode_responses=True)
    try:
        for reg in clients.values():  # the local copy, the script or library loaded, a warm connection
            reg.get_model(ours.MODEL)
            _timed(reg, 50)
        server.config_resetstat()
        timings: dict[ScriptsMode, list[float]] = {"eval": [], "functions": []}
        for i in range(rounds):
            order: tuple[ScriptsMode, ...] = ("eval", "functions") if i % 2 == 0 else ("functions", "eval")
            for mode in order:
                timings[mode].append(_timed(clients[mode], acquires))
        stats = server.info("commandstats")
    finally:
        for reg in clients.values():
            reg.close()
        server.close()
    evalsha, fcall = statistics.median(timings["eval"]), statistics.median(timings["functions"])
    return {
        "evalsha_us": evalsha,
        "fcall_us": fcall,
        "ratio": fcall / evalsha,
        "redis_evalsha_us": float(stats["cmdstat_evalsha"]["usec_per_call"]),
        "redis_fcall_us": float(stats["cmdstat_fcall"]["usec_per_call"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acquires", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--redis-url")
    args = parser.parse_args()
    server = None if args.redis_url else embedded.start()
    url = args.redis_url or server.url  # type: ignore[union-attr]
    try:
        row = compare(url, args.acquires, args.rounds)
    finally:
        if server:
            server.stop()
    print(f"{args.acquires} acquires x {args.rounds} rounds each way, one blocking client each, medians:")
    print(f"  EVALSHA {row['evalsha_us']:8.1f} us/acquire   (Redis: {row['redis_evalsha_us']:.2f} us/call)")
    print(f"  FCALL   {row['fcall_us']:8.1f} us/acquire   (Redis: {row['redis_fcall_us']:.2f} us/call)")
    print(f"  FCALL / EVALSHA = {row['ratio']:.3f}")


if __name__ == "__main__":
    main()
