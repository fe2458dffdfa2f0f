"""A reply lost after Redis did the work: a redis-py client that retries (``retry=`` given, and
the cluster client by default) sends the same command again on a new connection, and the
answer must still be the truth.

Found by the soak (benchmarks/soak.py): a settle or a record whose reply was lost came back
"already settled" / "not recorded" from the re-sent command, though it had counted. Each call
now carries a nonce its marker keeps, so the very same call sent again is told it counted,
while any other call for the same acquire or request id is told it did not.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from registry import AsyncRegistry, Registry, scripts
from tests.conftest import model
from tests.lossy import LossyProxy

LIMITED = model(id="lossy", rate_limit={"requests_per_minute": 100, "tokens_per_minute": 100_000})
KEY = "openai:lossy"


@pytest.fixture
def upstream(redis_url: str, real_redis: None) -> tuple[str, int]:
    """The test Redis (clean), with the model registered: where the proxy forwards to."""
    with Registry.from_url(redis_url, watch=False) as admin:
        admin.register_model(LIMITED)
    with redis.Redis.from_url(redis_url) as client:  # loaded: the lost reply is the call's, not a NOSCRIPT
        for name in ("settle", "record_usage"):
            client.script_load(scripts.load(name).source)
    address = urlsplit(redis_url)
    return address.hostname or "127.0.0.1", address.port or 6379


def _ledger(url: str) -> dict[str, Any]:
    with Registry.from_url(url, watch=False) as reg:
        totals = reg.get_statistics(KEY)
    return {"requests": totals.requests, "input": totals.input_tokens, "output": totals.output_tokens}


def test_a_settle_whose_reply_is_lost_says_it_settled(upstream: tuple[str, int], redis_url: str) -> None:
    with LossyProxy(upstream, scripts.load("settle").sha.encode()) as proxy:
        reg = Registry.from_url(proxy.url, watch=False, retry=Retry(NoBackoff(), 2))
        first = reg.acquire(KEY, 100, 50, request_id="one")
        second = reg.acquire(KEY, 100, 50)
        assert reg.settle(first.reservation, 90, 40) is True  # its reply was lost, then re-sent
        assert proxy.dropped == 1
        assert reg.settle(first.reservation, 90, 40) is False  # another call: already settled
        assert reg.settle(second.reservation, 80, 30) is True
        reg.close()
    assert _ledger(redis_url) == {"requests": 2, "input": 170, "output": 70}


def test_a_record_whose_reply_is_lost_says_it_counted(upstream: tuple[str, int], redis_url: str) -> None:
    with LossyProxy(upstream, scripts.load("record_usage").sha.encode()) as proxy:
        reg = Registry.from_url(proxy.url, watch=False, retry=Retry(NoBackoff(), 2))
        assert reg.record_usage(KEY, 100, 50, request_id="r-1").recorded
        assert proxy.dropped == 1
        assert reg.record_usage(KEY, 100, 50, request_id="r-1").duplicate  # another call
        reg.close()
    assert _ledger(redis_url) == {"requests": 1, "input": 100, "output": 50}


def test_async_calls_whose_replies_are_lost(upstream: tuple[str, int], redis_url: str) -> None:
    async def scenario(url: str) -> tuple[bool, bool, bool]:
        reg = AsyncRegistry.from_url(url, watch=False, retry=AsyncRetry(NoBackoff(), 2))
        try:
            decision = await reg.acquire(KEY, 100, 50, request_id="a-1")
            settled = await reg.settle(decision.reservation, 100, 50)
            recorded = (await reg.record_usage(KEY, 10, 5, request_id="a-2")).recorded
            again = (await reg.record_usage(KEY, 10, 5, request_id="a-2")).recorded
        finally:
            await reg.aclose()
        return settled, recorded, again

    settle_sha, record_sha = scripts.load("settle").sha.encode(), scripts.load("record_usage").sha.encode()
    with LossyProxy(upstream, settle_sha, record_sha) as proxy:
        assert asyncio.run(scenario(proxy.url)) == (True, True, False)
        assert proxy.dropped == 2
    assert _ledger(redis_url) == {"requests": 2, "input": 110, "output": 55}
