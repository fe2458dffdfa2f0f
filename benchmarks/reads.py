"""Catalog reads, served from the client's local copy of the catalog.

5,000 models: the LiteLLM price map (``../shared/data/litellm_model_prices.json`` beside the
repo) through :func:`registry.importers.litellm.import_litellm_map`, padded with synthetic
models if the map yields fewer (or is missing), then ``sync_models``.

That a read issues no Redis command is checked on the server: ``total_commands_processed``
(INFO stats) before and after each timed loop, less the one INFO itself. The reading client
keeps the default ``watch=True`` but with ``refresh_interval=3600``, so its watcher (which
otherwise checks the catalog revision every 0.5 s, one command, whatever the reads do) stays
quiet and any command counted would be the reads' own. One loop with the default interval
shows what the watcher itself costs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from benchmarks import ours
from benchmarks.harness import Bench, Report, Timing, clients, summarize, time_loop, total_commands, wait_quiet
from registry import AsyncRegistry, Registry
from registry.importers.litellm import import_litellm_map
from registry.models import ModelSpec

__all__ = ["LITELLM", "catalog_models", "run_reads"]

ROOT = Path(__file__).resolve().parent.parent
LITELLM = ROOT.parent / "shared" / "data" / "litellm_model_prices.json"
NAMESPACE = "catalog"


def catalog_models(count: int, path: Path = LITELLM) -> tuple[list[ModelSpec], str]:
    """``count`` models and where they came from."""
    imported = import_litellm_map(path).models[:count] if path.exists() else []
    models = list(imported)
    while len(models) < count:
        i = len(models)
        models.append(
            ModelSpec(
                provider="synthetic",
                id=f"m-{i}",
                context_window=8192 + i,
                cost={"input": f"{i % 50}.5", "output": f"{i % 70}.25"},
                capabilities=["chat"] if i % 2 else ["chat", "vision"],
            )
        )
    if not path.exists():
        source = f"{count:,} synthetic models: {path} is missing"
    elif len(imported) < count:
        source = f"{len(imported):,} from the LiteLLM map (all it yields) + {count - len(imported):,} synthetic"
    else:
        source = f"{count:,} from the LiteLLM map"
    return models, source


def _reads(reg: Registry, key: str) -> dict[str, Callable[[], Any]]:
    return {
        "get_model": lambda: reg.get_model(key),
        "estimate_cost (12,000 in / 800 out)": lambda: reg.estimate_cost(key, 12_000, 800),
        "search_models capability=vision, ctx >= 100k": lambda: reg.search_models(
            capability="vision", min_context_window=100_000
        ),
        "search_models name_pattern=*gpt-4o*": lambda: reg.search_models(name_pattern="*gpt-4o*"),
        "most_cost_effective_models chat, 5": lambda: reg.most_cost_effective_models("chat", 5),
    }


def _quiet_loop(raw: redis.Redis, bench: Bench, seconds: float) -> tuple[Timing, int]:
    before = total_commands(raw)
    timing = time_loop(bench, seconds)
    commands = total_commands(raw) - before - 1  # the first INFO is counted in the second's total
    return timing, commands


def run_reads(report: Report, url: str, *, count: int, seconds: float, ping_ops: float | None) -> None:
    """The catalog section: one process, one client (sync, then asyncio)."""
    raw = redis.Redis.from_url(url, decode_responses=True)
    models, source = catalog_models(count)
    with Registry.from_url(url, namespace=NAMESPACE, watch=False) as writer:
        t0 = time.perf_counter()
        writer.sync_models(models)
        synced = time.perf_counter() - t0
    report.add(
        kind="info", operation=f"sync_models of {count:,} models (one script)", value=f"{synced:.2f} s", note=source
    )

    key = next((m.key for m in models if "gpt-4o" in m.key), models[len(models) // 2].key)
    reg = Registry.from_url(url, namespace=NAMESPACE, refresh_interval=3600)
    t0 = time.perf_counter()
    reg.get_model(key)  # loads the whole snapshot, starts the watcher
    loaded = time.perf_counter() - t0
    wait_quiet(raw)  # the watcher's first refresh done
    report.add(kind="info", operation=f"first read: load the local copy ({count:,} models)", value=f"{loaded:.2f} s")
    for name, fn in _reads(reg, key).items():
        timing, commands = _quiet_loop(raw, Bench(fn), seconds)
        row = summarize([timing])
        report.add(
            operation=f"{name} (sync)",
            clients=clients(1, 1),
            **row,
            ratio=row["ops_per_s"] / ping_ops if ping_ops else None,
            redis_commands=commands,
            note=f"{commands} Redis commands in {timing.calls:,} reads",
        )
    ours.close(reg)

    # The default watcher: what its own revision checks cost while reads go on.
    reg = Registry.from_url(url, namespace=NAMESPACE)
    reg.get_model(key)
    wait_quiet(raw, period=0.05)
    timing, commands = _quiet_loop(raw, Bench(lambda: reg.get_model(key)), max(seconds, 1.0))
    row = summarize([timing])
    report.add(
        operation="get_model (sync, default watcher: refresh 0.5 s)",
        clients=clients(1, 1),
        **row,
        ratio=row["ops_per_s"] / ping_ops if ping_ops else None,
        redis_commands=commands,
        note=f"{commands} commands in {timing.seconds:.1f} s: the watcher's revision checks, not the reads",
    )
    reg.close()

    for name, row, commands in asyncio.run(_async_reads(url, key, seconds, raw)):
        report.add(
            operation=f"{name} (asyncio)",
            clients=clients(1, 1),
            **row,
            ratio=row["ops_per_s"] / ping_ops if ping_ops else None,
            redis_commands=commands,
            note=f"{commands} Redis commands in {row['calls']:,} reads",
        )
    raw.close()


async def _async_reads(url: str, key: str, seconds: float, raw: redis.Redis) -> list[tuple[str, Any, int]]:
    reg = AsyncRegistry.from_url(url, namespace=NAMESPACE, refresh_interval=3600)
    await reg.get_model(key)
    await asyncio.sleep(0.3)
    await asyncio.to_thread(wait_quiet, raw)
    out = []
    for name, make in (
        ("get_model", lambda: reg.get_model(key)),
        ("estimate_cost (12,000 in / 800 out)", lambda: reg.estimate_cost(key, 12_000, 800)),
    ):
        samples: list[float] = []
        clock = time.perf_counter
        before = total_commands(raw)
        start = clock()
        deadline = start + seconds
        while clock() < deadline:
            t0 = clock()
            await make()
            samples.append(clock() - t0)
        elapsed = clock() - start
        commands = total_commands(raw) - before - 1
        out.append((name, summarize([Timing(len(samples), elapsed, samples)]), commands))
    await reg.aclose()
    return out
