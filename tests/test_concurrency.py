"""Many real processes writing the catalog at once, counted exactly."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

import pytest

from registry import ModelExistsError, Registry, RevisionConflictError
from tests.conftest import model

WORKERS = 8
# fork is fast and the workers only use what they create after the fork.
pytestmark = pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")


def _create(url: str, barrier: Any, results: Any) -> None:
    reg = Registry.from_url(url, watch=False)
    barrier.wait()
    try:
        reg.register_model(model(id="contested"))
        results.put("won")
    except ModelExistsError:
        results.put("lost")
    finally:
        reg.close()


def _increment(url: str, times: int, barrier: Any, results: Any) -> None:
    """Read-modify-write a counter in metadata with compare-and-set, retrying on conflict."""
    reg = Registry.from_url(url, watch=False)
    barrier.wait()
    conflicts = 0
    for _ in range(times):
        while True:
            entry = reg.get_entry("openai:counter")
            count = int(entry.model.metadata["count"])  # type: ignore[call-overload]
            try:
                reg.update_model("openai:counter", {"metadata": {"count": count + 1}}, expected_revision=entry.revision)
                break
            except RevisionConflictError:
                conflicts += 1
    results.put(conflicts)
    reg.close()


def _run(target: Any, *args: Any) -> list[Any]:
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(WORKERS), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, results)) for _ in range(WORKERS)]
    for p in procs:
        p.start()
    out = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    results.close()
    results.join_thread()
    return out


def test_exactly_one_of_many_concurrent_creates_wins(redis_url: str) -> None:
    outcomes = _run(_create, redis_url)
    assert sorted(outcomes) == ["lost"] * (WORKERS - 1) + ["won"]
    reg = Registry.from_url(redis_url, watch=False)
    assert reg.get_entry("openai:contested").revision == 1
    reg.close()


def test_compare_and_set_loses_no_update(redis_url: str) -> None:
    reg = Registry.from_url(redis_url, watch=False)
    reg.register_model(model(id="counter", metadata={"count": 0}))
    times = 15
    conflicts = _run(_increment, redis_url, times)
    entry = reg.get_entry("openai:counter")
    assert entry.model.metadata["count"] == WORKERS * times
    assert entry.revision == 1 + WORKERS * times  # one revision per successful update, no more
    assert sum(conflicts) >= 0
    reg.close()
