"""Peers on the same Redis: the ``limits`` library and throttled-py, from
benchmarks/requirements.txt (installed into the benchmark environment only; never a
dependency of ``registry``). Each limits one key by ``cost=`` a token weight; neither has a
notion of several limits checked at once, so "two limits" is two calls (two round trips, not
atomic: the first is consumed even when the second refuses).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import redis

from benchmarks.harness import Bench

__all__ = [
    "LIMITS_MW",
    "LIMITS_SWC",
    "SEMANTICS",
    "THROTTLED_GCRA",
    "THROTTLED_SW",
    "available",
    "clear",
    "clear_one",
    "limits_bench",
    "limits_mw_full",
    "throttled_bench",
    "versions",
]

LIMITS_MW = "limits moving window"
LIMITS_SWC = "limits sliding window counter"
THROTTLED_SW = "throttled sliding window"
THROTTLED_GCRA = "throttled GCRA"

SEMANTICS = {
    LIMITS_MW: "exact: a list entry (timestamp) per unit of cost; a hit pushes `cost` entries",
    LIMITS_SWC: "approximate: this and the previous fixed window's counters, the previous weighted",
    THROTTLED_SW: "approximate: this and the previous period's counters, the previous weighted",
    THROTTLED_GCRA: "GCRA: one stored arrival time; a smooth rate with burst = limit, not a window count",
}

_DIST = {"limits": "limits", "throttled": "throttled-py"}


def versions() -> dict[str, str | None]:
    """Installed peer versions (None: not installed)."""
    found: dict[str, str | None] = {}
    for module, dist in _DIST.items():
        try:
            found[dist] = metadata.version(dist)
            __import__(module)
        except (metadata.PackageNotFoundError, ImportError):
            found[dist] = None
    return found


def available(name: str) -> bool:
    dist = "limits" if name.startswith("limits") else "throttled-py"
    return versions()[dist] is not None


def clear(url: str) -> None:
    """Delete every peer key (between rounds: a moving window's list grows with each hit)."""
    r = redis.Redis.from_url(url)
    for pattern in ("LIMITS:*", "throttled:*"):
        batch = list(r.scan_iter(match=pattern, count=1000))
        for i in range(0, len(batch), 1000):
            r.unlink(*batch[i : i + 1000])
    r.close()


def clear_one(url: str, identifier: str) -> Callable[[int], None]:
    """A ``prepare`` hook that deletes one identifier's peer keys (a fresh start per run)."""
    r = redis.Redis.from_url(url)

    def clear(_n: int = 0) -> None:
        keys = [k for p in ("LIMITS:*", "throttled:*") for k in r.scan_iter(match=f"{p}{identifier}*", count=1000)]
        if keys:
            r.unlink(*keys)

    return clear


def _limits(url: str, strategy: str) -> tuple[Any, Any]:
    from limits import strategies
    from limits.storage import RedisStorage

    storage = RedisStorage(url)
    cls = strategies.MovingWindowRateLimiter if strategy == LIMITS_MW else strategies.SlidingWindowCounterRateLimiter
    return storage, cls(storage)


def limits_bench(
    url: str,
    strategy: str,
    limit: int,
    weight: int,
    *,
    rpm: int | None = None,
    identifier: str = "bench",
    counter: list[int] | None = None,
) -> Bench:
    """``hit(item, identifier, cost=weight)`` on a per-minute ``limit``; with ``rpm`` first a
    hit of cost 1 on a requests-per-minute item (two limits: two round trips)."""
    from limits import RateLimitItemPerMinute

    _, limiter = _limits(url, strategy)
    tokens = RateLimitItemPerMinute(limit)
    hit = limiter.hit
    call: Callable[[], Any]
    if rpm is None:

        def call() -> bool:
            return hit(tokens, identifier, cost=weight)
    else:
        requests = RateLimitItemPerMinute(rpm)

        def call() -> bool:
            return hit(requests, identifier, cost=1) and hit(tokens, identifier, cost=weight)

    if counter is not None:
        inner = call

        def call() -> bool:
            ok = inner()
            counter[0] += bool(ok)
            return ok

    if not call():
        raise RuntimeError(f"{strategy}: the first hit was refused")
    return Bench(call)


def limits_key(url: str, strategy: str, limit: int, identifier: str) -> str:
    """The moving window's list key for ``identifier`` (the sliding window counter has two)."""
    from limits import RateLimitItemPerMinute

    storage, _ = _limits(url, strategy)
    return str(storage.prefixed_key(RateLimitItemPerMinute(limit).key_for(identifier)))


_FULL_MW = """
redis.call('DEL', KEYS[1])
local limit, expired, now, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local live = limit - expired
local chunk = {}
for i = 1, limit do
  local ts
  if i <= live then ts = now - 1 - (window - 2) * (i - 1) / live else ts = now - window - 10 end
  chunk[#chunk + 1] = string.format('%.17g', ts)
  if #chunk == 5000 then
    redis.call('RPUSH', KEYS[1], unpack(chunk))
    chunk = {}
  end
end
if #chunk > 0 then redis.call('RPUSH', KEYS[1], unpack(chunk)) end
redis.call('EXPIRE', KEYS[1], window)
return redis.call('LLEN', KEYS[1])
"""


def limits_mw_full(r: redis.Redis, key: str, limit: int, expired: int, window_s: int = 60) -> int:
    """Put a moving window's list in its steady full state: ``limit`` entries (newest first),
    the oldest ``expired`` of them just out of the window, the rest spread over it. Each hit
    then is admitted, pushes its cost in entries and trims as many: the state a limit used at
    its full rate stays in. Returns the list's length."""
    return int(r.eval(_FULL_MW, 1, key, limit, expired, time.time(), window_s))  # type: ignore[arg-type]


def throttled_bench(
    url: str, algorithm: str, limit: int, weight: int, *, key: str = "bench", counter: list[int] | None = None
) -> Bench:
    """``Throttled(using=algorithm, quota=per_min(limit)).limit(key, cost=weight)``."""
    from throttled import RateLimiterType, RedisStore, Throttled, per_min

    using = {THROTTLED_SW: RateLimiterType.SLIDING_WINDOW, THROTTLED_GCRA: RateLimiterType.GCRA}[algorithm]
    throttle = Throttled(key=key, using=using.value, quota=per_min(limit), store=RedisStore(server=url, options={}))
    limit_call = throttle.limit

    def call() -> Any:
        result = limit_call(key, cost=weight)
        if counter is not None:
            counter[0] += not result.limited
        return result

    if call().limited:
        raise RuntimeError(f"{algorithm}: the first call was refused")
    return Bench(call)
