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
            bad = Script("acquire", ("{x}:d", "{x}:r"), ("", "grab", 1, 0, 1, "t"))
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
            calls = [reg._execute(Script("acquire", ("{x}:d", "{x}:r"), ("", "peek", 1, 0, 1, "t"))) for _ in range(3)]
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


# -- acquires merged into one script call ---------------------------------------------------------


def test_merged_acquires_admit_in_order_and_never_past_a_token_limit(redis_url: str) -> None:
    """Requests of different sizes in one merged call: what is admitted fits the limit, and no
    refused request would fit even at the end (the total only grows within the call)."""
    sizes = [(7 * i) % 130 + 1 for i in range(200)]

    async def main() -> tuple[list[Any], int, int]:
        async with AsyncRegistry.from_url(redis_url) as reg:
            await reg.register_model(model(rate_limit={"tokens_per_minute": 5_000}))
            await reg.refresh()
            scripts, calls = reg._batcher.scripts, reg._batcher.calls
            decisions = await asyncio.gather(*(reg.acquire("openai:gpt-4", size, 0) for size in sizes))
            return decisions, reg._batcher.scripts - scripts, reg._batcher.calls - calls

    decisions, scripts, calls = asyncio.run(main())
    admitted = sum(size for size, d in zip(sizes, decisions, strict=True) if d.allowed)
    refused = [size for size, d in zip(sizes, decisions, strict=True) if not d.allowed]
    assert admitted <= 5_000
    assert refused
    assert min(refused) > 5_000 - admitted
    assert {d.denied_by for d in decisions if not d.allowed} == {"tokens_per_minute"}
    # Each admitted decision's remaining is what was left after it: all different, never below 0.
    left = [d.remaining["tokens_per_minute"] for d in decisions if d.allowed]
    assert len(set(left)) == len(left)
    assert min(left) == 5_000 - admitted
    assert calls == 200
    assert scripts < calls / 10  # merged: a few script calls, not 200


def test_merged_acquires_keep_models_and_tenants_apart(redis_url: str) -> None:
    """Calls of two models and two tenants in one pipeline: each group is its own script call,
    each limit admits exactly its own count."""
    limits = {"requests_per_minute": 1_000}
    tenant_limits = {"*": {"requests_per_minute": 10}}

    async def main() -> list[tuple[str, str, bool]]:
        async with AsyncRegistry.from_url(redis_url) as reg:
            for key in ("a", "b"):
                await reg.register_model(model(id=key, rate_limit=limits, tenant_limits=tenant_limits))
            await reg.refresh()
            asks = [(m, t) for _ in range(30) for m in ("openai:a", "openai:b") for t in ("acme", "beta")]
            decisions = await asyncio.gather(*(reg.acquire(m, 1, 1, tenant=t) for m, t in asks))
            return [(m, t, d.allowed) for (m, t), d in zip(asks, decisions, strict=True)]

    results = asyncio.run(main())
    for m in ("openai:a", "openai:b"):
        for t in ("acme", "beta"):
            assert sum(ok for mm, tt, ok in results if (mm, tt) == (m, t)) == 10


def test_one_request_id_twice_in_one_merged_call_is_admitted_once(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)

    async def main() -> list[Any]:
        async with AsyncRegistry.from_url(redis_url) as reg:
            await reg.register_model(model(rate_limit={"tokens_per_minute": 1_000}))
            await reg.refresh()
            return await asyncio.gather(
                reg.acquire("openai:gpt-4", 100, 0, request_id="req-1"),
                reg.acquire("openai:gpt-4", 100, 0, request_id="req-1"),
                reg.acquire("openai:gpt-4", 100, 0),
            )

    first, again, other = asyncio.run(main())
    assert first.allowed
    assert not first.duplicate
    assert again.allowed
    assert again.duplicate
    assert again.reservation.token == first.reservation.token  # the handle of the one admitted
    assert other.allowed
    assert other.remaining["tokens_per_minute"] == 800  # req-1 counted once
    windows = [k for k in r.keys("*:w:tpm")]
    assert len(windows) == 1
    assert r.hget(windows[0], "_sum") == "200"


def test_a_bad_call_in_a_merged_group_fails_alone(redis_url: str) -> None:
    """A merged call that fails is sent again as its single calls: only the bad one fails."""

    def call(token: str) -> Script:
        return Script(
            "acquire",
            ("{x}:w", "{x}:d", f"{{x}}:r:{token}"),
            ("", "acquire", 1_000, 1, 1, "rpm", 10, 60_000, 1_000, token, 1),
        )

    async def main() -> tuple[list[Any], int]:
        async with AsyncRegistry.from_url(redis_url, watch=False) as reg:
            before = reg._batcher.scripts
            replies = await asyncio.gather(
                reg._execute(call("good-1")),
                reg._execute(call("bad token")),
                reg._execute(call("good-2")),
                return_exceptions=True,
            )
            return replies, reg._batcher.scripts - before

    (good_1, bad, good_2), scripts = asyncio.run(main())
    assert isinstance(bad, ScriptError)
    assert "token" in str(bad)
    assert [good_1[1], good_2[1]] == [1, 1]  # admitted, each with its own reply
    assert good_2[5] == 8  # the second good call counted after the first: 10 - 2
    assert scripts == 4  # the merged call, then the three alone


@pytest.mark.parametrize("reply", [None, [], [1, 2, 3, 4]])
def test_a_malformed_merged_reply_is_a_script_error(reply: Any) -> None:
    from registry.admission.ops import split_acquires

    with pytest.raises(ScriptError):
        split_acquires(reply, 2)
