"""Admission benchmark: acquire and settle against the Redis round-trip floor, one run.

    python benchmarks/admission.py [--seconds 2] [--procs 1 4] [--json out.json]

Starts its own private redis-server (or --redis-url). Each row runs for --seconds in P
processes of one connection each and reports total ops/s, p50/p99 latency and p50 / floor,
the floor being a PING and a no-op EVALSHA with one key measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from registry import Registry, embedded

MODEL = {
    "provider": "bench",
    "id": "m",
    "context_window": 128_000,
    "max_output_tokens": 512,
    "cost": {"input": "1", "output": "2"},
    "rate_limit": {"requests_per_minute": 10**9, "tokens_per_minute": 10**12, "requests_per_day": 10**12},
    "tenant_limits": {"*": {"requests_per_minute": 10**9, "tokens_per_minute": 10**12}},
}
NOOP = "return redis.call('EXISTS', KEYS[1])"


def _operation(name: str, url: str) -> Callable[[], Any]:
    if name in ("PING", "EVALSHA no-op"):
        client = redis.Redis.from_url(url)
        if name == "PING":
            return client.ping
        script = client.register_script(NOOP)
        return lambda: script(keys=["{bench}:k"])
    reg = Registry.from_url(url)
    reg.get_model("bench:m")
    if name == "acquire":
        return lambda: reg.acquire("bench:m", 1000, 200)
    if name == "acquire (tenant)":
        return lambda: reg.acquire("bench:m", 1000, 200, tenant="acme")
    if name == "acquire (budget)":
        return lambda: reg.acquire("bench:m", 1000, 200, tenant="rich")
    if name == "acquire + settle":
        return lambda: reg.settle(reg.acquire("bench:m", 1000, 200).reservation, 1000, 150)
    if name == "acquire + settle (budget)":
        return lambda: reg.settle(reg.acquire("bench:m", 1000, 200, tenant="rich").reservation, 1000, 150)
    if name == "record_usage":
        return lambda: reg.record_usage("bench:m", 1000, 150, tenant="acme", latency_ms=300)
    if name == "route":
        return lambda: reg.route(input_tokens=1000, max_output_tokens=200)
    if name == "check_rate_limit":
        return lambda: reg.check_rate_limit("bench:m", 1200)
    raise ValueError(name)


def _worker(name: str, url: str, seconds: float, start: Any, out: Any) -> None:
    op = _operation(name, url)
    for _ in range(50):
        op()
    start.wait()
    samples = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        op()
        samples.append(time.perf_counter() - t0)
    out.put(samples)


def run(name: str, url: str, procs: int, seconds: float) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(name, url, seconds, start, out)) for _ in range(procs)]
    for w in workers:
        w.start()
    samples = [s for _ in workers for s in out.get()]
    for w in workers:
        w.join()
    samples.sort()
    return {
        "ops_per_s": len(samples) / seconds,
        "p50_us": samples[len(samples) // 2] * 1e6,
        "p99_us": samples[int(len(samples) * 0.99)] * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--redis-url")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    server = None if args.redis_url else embedded.start()
    url = args.redis_url or server.url  # type: ignore[union-attr]
    rows = []
    try:
        setup = Registry.from_url(url, watch=False)
        setup.register_model(MODEL, replace=True)
        setup.set_budget("rich", "9000000", "day")  # never reached: measures the budget's round trip
        setup.close()
        for procs in args.procs:
            floor = None
            for name in (
                "PING",
                "EVALSHA no-op",
                "acquire",
                "acquire (tenant)",
                "acquire (budget)",
                "check_rate_limit",
                "route",
                "record_usage",
                "acquire + settle",
                "acquire + settle (budget)",
            ):
                row = {"operation": name, "processes": procs, **run(name, url, procs, args.seconds)}
                floor = floor or row["p50_us"]
                row["p50_over_ping"] = row["p50_us"] / floor
                rows.append(row)
                print(
                    f"{name:26s} x{procs:<2d} {row['ops_per_s']:>10,.0f} ops/s  p50 {row['p50_us']:7.1f} us  "
                    f"p99 {row['p99_us']:7.1f} us  p50/PING {row['p50_over_ping']:5.2f}",
                    flush=True,
                )
    finally:
        if server:
            server.stop()
    if args.json:
        args.json.write_text(json.dumps({"redis": server.description if server else url, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
