"""The floor: what one round trip to this Redis costs from redis-py, measured in the same run.

* ``PING``: the smallest command there is.
* ``EVALSHA no-op``: a script with one key that calls ``EXISTS`` once, the least any
  script-based limiter can do (our acquire, ``limits`` and throttled-py are all one EVALSHA).
"""

from __future__ import annotations

import redis
import redis.asyncio as aredis

from benchmarks.harness import AsyncBench, Bench

__all__ = ["NOOP", "NOOP_KEY", "async_evalsha_bench", "evalsha_bench", "ping_bench"]

NOOP = "return redis.call('EXISTS', KEYS[1])"
NOOP_KEY = "{bench}:noop"


def ping_bench(url: str) -> Bench:
    client = redis.Redis.from_url(url)
    return Bench(client.ping, close=client.close)


def evalsha_bench(url: str) -> Bench:
    client = redis.Redis.from_url(url)
    script = client.register_script(NOOP)
    keys = [NOOP_KEY]
    return Bench(lambda: script(keys=keys), close=client.close)


async def async_evalsha_bench(url: str) -> AsyncBench:
    client = aredis.Redis.from_url(url)
    script = client.register_script(NOOP)
    keys = [NOOP_KEY]
    return AsyncBench(lambda: script(keys=keys), close=client.aclose)
