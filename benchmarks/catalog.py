"""Catalog benchmarks: reads from the local copy, snapshot loads and cross-process visibility.

    python benchmarks/catalog.py [--models 5000] [--json out.json]

Starts its own private redis-server (or uses --redis-url), imports the LiteLLM price map
(../shared/data/litellm_model_prices.json, else synthetic models) and measures, in one run:

* the floor: a redis-py PING round trip on one connection;
* get_model / search_models / estimate_cost / most_cost_effective_models served from the
  local copy (no round trip), and with watch=False (one revision check per read);
* a full snapshot load of every model, and an incremental refresh after one write;
* how long after a write returns another process's local copy shows it (pub/sub notice).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from benchmarks.reads import catalog_models
from registry import Registry, embedded
from registry.catalog import ops
from registry.models import ModelSpec

ROOT = Path(__file__).resolve().parent.parent


def timed(fn: Callable[[], Any], *, seconds: float = 1.0, min_runs: int = 5) -> dict[str, float]:
    """ops/s and p50/p99 latency (microseconds) of ``fn`` run repeatedly for about ``seconds``."""
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < min_runs:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return {
        "runs": len(samples),
        "ops_per_s": len(samples) / sum(samples),
        "p50_us": samples[len(samples) // 2] * 1e6,
        "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e6,
    }


READER = r"""
import sys, time
from registry import Registry, ModelNotFoundError
reg = Registry.from_url(sys.argv[1], refresh_interval=0.5)
reg.list_models()
while reg.redis.pubsub_numsub(reg._channel)[0][1] < 1:
    time.sleep(0.001)
print("ready", flush=True)
for line in sys.stdin:
    key, written = line.split()
    while True:
        try:
            reg.get_model(key)
            break
        except ModelNotFoundError:
            time.sleep(0.0002)
    print(time.time() - float(written), flush=True)
"""


def visibility(url: str, trials: int) -> dict[str, float]:
    child = subprocess.Popen(
        [sys.executable, "-c", READER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin
    assert child.stdout
    assert child.stdout.readline().strip() == "ready"
    writer = Registry.from_url(url, watch=False)
    seen = []
    for i in range(trials):
        spec = ModelSpec(provider="bench", id=f"visible-{i}", context_window=1, cost={"input": 0, "output": 0})
        writer.register_model(spec)
        child.stdin.write(f"{spec.key} {time.time()}\n")
        child.stdin.flush()
        seen.append(float(child.stdout.readline()))
    child.stdin.close()
    child.wait()
    writer.close()
    seen.sort()
    return {
        "trials": trials,
        "p50_ms": statistics.median(seen) * 1e3,
        "p99_ms": seen[min(len(seen) - 1, int(len(seen) * 0.99))] * 1e3,
        "max_ms": seen[-1] * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=5000)
    parser.add_argument("--redis-url")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()

    server = None if args.redis_url else embedded.start()
    url = args.redis_url or server.url  # type: ignore[union-attr]
    results: dict[str, Any] = {"redis": server.description if server else url, "models": args.models}
    try:
        raw = redis.Redis.from_url(url)
        raw.flushall()
        results["floor: PING round trip"] = timed(raw.ping, seconds=args.seconds)

        models, _ = catalog_models(args.models)
        reg = Registry.from_url(url)
        t0 = time.perf_counter()
        reg.sync_models(models)
        results["sync_models (all, one script)"] = {"seconds": time.perf_counter() - t0}

        fresh = Registry.from_url(url, watch=False)
        t0 = time.perf_counter()
        snapshot = fresh._run(ops.load_snapshot(fresh.keys))
        results["full snapshot load"] = {"seconds": time.perf_counter() - t0, "models": len(snapshot.entries)}

        key = models[len(models) // 2].key
        reg.get_model(key)
        fresh.get_model(key)
        results["get_model (local copy)"] = timed(lambda: reg.get_model(key), seconds=args.seconds)
        results["get_model (watch=False: revision check)"] = timed(lambda: fresh.get_model(key), seconds=args.seconds)
        results["estimate_cost (local copy)"] = timed(lambda: reg.estimate_cost(key, 12_000, 800), seconds=args.seconds)
        results["search_models capability=vision, min ctx 100k"] = timed(
            lambda: reg.search_models(capability="vision", min_context_window=100_000), seconds=args.seconds
        )
        results["search_models name_pattern=*gpt-4o*"] = timed(
            lambda: reg.search_models(name_pattern="*gpt-4o*"), seconds=args.seconds
        )
        results["most_cost_effective_models chat, 5"] = timed(
            lambda: reg.most_cost_effective_models("chat", 5), seconds=args.seconds
        )

        def one_write_then_refresh() -> None:
            reg.update_model(key, {"tags": ["bench", str(time.perf_counter_ns())]})

        results["update_model + own incremental refresh"] = timed(one_write_then_refresh, seconds=args.seconds)
        results["visibility in another process"] = visibility(url, 50)
        reg.close()
        fresh.close()
        raw.close()
    finally:
        if server:
            server.stop()

    floor = results["floor: PING round trip"]["p50_us"]
    for name, row in results.items():
        if isinstance(row, dict) and "p50_us" in row:
            print(
                f"{name:50s} {row['ops_per_s']:>12,.0f} ops/s  p50 {row['p50_us']:>9.1f} us  "
                f"p99 {row['p99_us']:>9.1f} us  p50/floor {row['p50_us'] / floor:6.2f}"
            )
        elif isinstance(row, dict):
            print(f"{name:50s} {json.dumps(row)}")
        else:
            print(f"{name:50s} {row}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
