"""The asyncio client on a Redis Cluster: a lone script call sent by ``execute_command`` against
the one-call pipeline it used to be, in one run, side by side.

- throughput of acquires on a healthy cluster with 1 and 64 tasks (one model: 64 concurrent
  acquires merge into one script call), and 64 tasks over 8 models (a node's calls go as a
  pipeline either way; ``gather``: each call by its own ``execute_command``, concurrently);
- the time of an acquire of a model whose primary is dead, and what happens meanwhile to
  calls for a healthy node (their errors).

Starts a private cluster (3 primaries, no replicas, ``cluster-require-full-coverage no``)::

    python -m benchmarks.async_cluster [--seconds 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from typing import Any

from registry import AsyncRegistry, Registry
from registry.batching import ScriptBatcher
from registry.embedded_cluster import EmbeddedCluster, start_cluster
from registry.errors import BackendUnavailable
from registry.faults import FaultPolicy
from registry.keys import Keys

NAMESPACE = "async-cluster-bench"
HUGE = 10**12
WAYS = ("pipeline", "direct")  # before (a one-call pipeline), after (execute_command)


def _model(model_id: str) -> dict[str, Any]:
    limits = {"requests_per_minute": HUGE, "tokens_per_minute": HUGE, "requests_per_day": HUGE}
    return {
        "provider": "bench",
        "id": model_id,
        "context_window": 128_000,
        "max_output_tokens": 512,
        "capabilities": ["chat"],
        "cost": {"input": "1", "output": "2"},
        "rate_limit": limits,
    }


def _way(reg: AsyncRegistry, way: str) -> AsyncRegistry:
    batcher: ScriptBatcher = reg._batcher
    if way == "pipeline":
        batcher._cluster = False  # every step as a pipeline, as before
    elif way == "gather":

        async def calls(requests: list[Any]) -> list[Any]:
            return list(await asyncio.gather(*(batcher._alone(r) for r in requests)))

        batcher._calls = calls  # type: ignore[method-assign]
    return reg


async def _throughput(url: str, way: str, tasks: int, models: list[str], seconds: float) -> float:
    reg = _way(AsyncRegistry.from_url(url, namespace=NAMESPACE), way)
    try:
        for m in models:
            await reg.get_model(m)
            await reg.acquire(m, 300, 200)
        done = 0
        stop = time.perf_counter() + seconds

        async def worker(i: int) -> None:
            nonlocal done
            m = models[i % len(models)]
            while time.perf_counter() < stop:
                await reg.acquire(m, 300, 200)
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(tasks)))
        return done / (time.perf_counter() - start)
    finally:
        await reg.aclose()


async def _dead(url: str, victim: Any, doomed: str, healthy: str, calls: int) -> dict[str, tuple[float, int, int]]:
    """For each way: the median seconds of an acquire of ``doomed`` once its primary (``victim``)
    is killed, and the calls for ``healthy`` made meanwhile (made, failed). The clients are made
    and learn the slot map while every node is up."""
    policy = FaultPolicy(failures_to_open=10**6)  # the breaker never opens: every call goes
    regs = {
        way: _way(AsyncRegistry.from_url(url, namespace=NAMESPACE, watch=False, fault_policy=policy), way)
        for way in WAYS
    }
    try:
        for reg in regs.values():
            await reg.acquire(doomed, 1, 1)
            await reg.acquire(healthy, 1, 1)
        victim.kill()
        return {way: await _dead_calls(reg, doomed, healthy, calls) for way, reg in regs.items()}
    finally:
        for reg in regs.values():
            await reg.aclose()


async def _dead_calls(reg: AsyncRegistry, doomed: str, healthy: str, calls: int) -> tuple[float, int, int]:
    times: list[float] = []
    made = failed = 0
    busy = True

    async def meanwhile() -> None:
        nonlocal made, failed
        while busy:
            try:
                await reg.acquire(healthy, 1, 1)
            except BackendUnavailable:
                failed += 1
            made += 1
            await asyncio.sleep(0.001)

    side = asyncio.ensure_future(meanwhile())
    for _ in range(calls):
        start = time.perf_counter()
        with contextlib.suppress(BackendUnavailable):
            await reg.acquire(doomed, 1, 1)
        times.append(time.perf_counter() - start)
    busy = False
    await side
    return statistics.median(times), made, failed


def _model_on(cluster: EmbeddedCluster, node: Any, prefix: str) -> str:
    keys = Keys(NAMESPACE)
    return next(
        f"{prefix}{i}" for i in range(1000) if cluster.node_of(keys.window(f"bench:{prefix}{i}", "rpm")) is node
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per throughput row and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (the best is kept)")
    parser.add_argument("--dead-calls", type=int, default=5, help="acquires of the dead primary's model")
    args = parser.parse_args(argv)
    cluster = start_cluster(primaries=3, replicas=0)
    try:
        for node in cluster.nodes:
            with node.client() as client:
                client.config_set("cluster-require-full-coverage", "no")
        catalog = cluster.node_of(Keys(NAMESPACE).meta)
        victim, other = (n for n in cluster.nodes if n is not catalog)
        doomed, healthy = f"bench:{_model_on(cluster, victim, 'd')}", f"bench:{_model_on(cluster, other, 'h')}"
        many = [f"bench:m{i}" for i in range(8)]
        with Registry.from_url(cluster.url, namespace=NAMESPACE, watch=False) as reg:
            reg.sync_models([_model(m.split(":")[1]) for m in [doomed, healthy, *many]])

        rows: list[tuple[str, int, list[str], tuple[str, ...]]] = [
            ("acquire, 1 model", 1, ["bench:m0"], WAYS),
            ("acquire, 1 model", 64, ["bench:m0"], WAYS),
            ("acquire, 8 models", 64, many, (*WAYS, "gather")),
        ]
        print(f"{cluster.description}; best of {args.rounds} rounds of {args.seconds} s, acquires/s")
        for label, tasks, models, ways in rows:
            best = dict.fromkeys(ways, 0.0)
            for _ in range(args.rounds):
                for way in ways:
                    best[way] = max(best[way], asyncio.run(_throughput(cluster.url, way, tasks, models, args.seconds)))
            base = best["pipeline"]
            cells = "  ".join(f"{w} {best[w]:8.0f} (x{best[w] / base:.2f})" for w in ways)
            print(f"{label:18} {tasks:3} tasks: {cells}")

        dead = asyncio.run(_dead(cluster.url, victim, doomed, healthy, args.dead_calls))
        for way, (median, made, failed) in dead.items():
            print(
                f"dead primary, {way:8}: acquire {median * 1000:7.1f} ms (median of {args.dead_calls}); "
                f"healthy calls meanwhile {made}, failed {failed}"
            )
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
