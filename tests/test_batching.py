"""The asyncio client's auto-batching: concurrent script calls share one pipeline, exactly."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from registry import AsyncRegistry, ScriptError
from registry._core import Script
from tests.conftest import model


def test_256_concurrent_acquires_share_pipelines_and_admit_exactly_the_limit(redis_url: str) -> None:
    async def main() -> tuple[list[Any], Any]:
        # watch=True (the default for workers): reads come from the local copy, no round trip
        async with AsyncRegistry.from_url(redis_url) as reg:
            await reg.register_model(model(rate_limit={"requests_per_minute": 100}))
            await reg.refresh()
            before = reg._batcher.batches
            decisions = await asyncio.gather(*(reg.acquire("openai:gpt-4", 10, 10) for _ in range(256)))
            return decisions, reg._batcher.batches - before

    decisions, batches = asyncio.run(main())
    assert sum(d.allowed for d in decisions) == 100
    assert {d.denied_by for d in decisions if not d.allowed} == {"requests_per_minute"}
    assert len({d.reservation.token for d in decisions if d.allowed}) == 100
    assert batches <= 4  # 256 calls of one turn: one pipeline (or a few), not 256 round trips


def test_a_failing_script_fails_its_caller_only_and_unknown_scripts_are_loaded(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)

    async def main() -> list[Any]:
        async with AsyncRegistry.from_url(redis_url, watch=False) as reg:
            await reg.register_model(model(rate_limit={"requests_per_minute": 10}))
            await reg.refresh()
            r.script_flush()  # every script unknown again: the batch must load and resend
            bad = Script("acquire", ("{x}:r",), ("", "grab", 1, 0, "t"))
            return await asyncio.gather(
                reg.acquire("openai:gpt-4", 1, 1),
                reg._execute(bad),
                reg.acquire("openai:gpt-4", 1, 1),
                return_exceptions=True,
            )

    first, error, third = asyncio.run(main())
    assert first.allowed
    assert third.allowed
    assert isinstance(error, ScriptError)
    assert "unknown mode" in str(error)


def test_a_lost_connection_fails_every_caller_of_the_batch() -> None:
    from registry import BackendUnavailable
    from registry.embedded import free_port

    async def main() -> list[Any]:
        async with AsyncRegistry.from_url(f"redis://127.0.0.1:{free_port()}/0", watch=False) as reg:
            calls = [reg._execute(Script("acquire", ("{x}:r",), ("", "peek", 1, 0, "t"))) for _ in range(3)]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(e, BackendUnavailable) for e in results)


@pytest.mark.parametrize("n", [1, 3])
def test_calls_one_after_another_each_go_at_once(redis_url: str, n: int) -> None:
    async def main() -> int:
        async with AsyncRegistry.from_url(redis_url, watch=False) as reg:
            await reg.register_model(model())
            await reg.refresh()
            before = reg._batcher.batches
            for _ in range(n):
                assert (await reg.acquire("openai:gpt-4", 1, 1)).allowed
            return reg._batcher.batches - before

    assert asyncio.run(main()) == n
