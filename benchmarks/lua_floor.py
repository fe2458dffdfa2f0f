"""Where acquire's server time goes: acquire.lua against bare scripts doing parts of its work.

    python benchmarks/lua_floor.py [--calls 3000] [--reps 5] [--redis-url URL]

Each row is the median, over --reps runs of --calls calls, of INFO commandstats' usec_per_call
for EVALSHA (CONFIG RESETSTAT before each run), every call with a new token as a real acquire
makes. Rows: a script that returns 1 given 1 key and no args, then acquire's 5 keys and
21 args; a bare script doing acquire's Redis calls (TIME, 3 HMGET, 3 HSET) with no checks;
acquire.lua cut short after its header checks, its argument checks and its window reads; and
acquire.lua itself with 3 limits; and one call of 256 requests merged, as the asyncio client
sends concurrent acquires (its time divided by 256); then Lua's building blocks one by one
(tonumber, a table, string.format, a function call, TIME, an HMGET). The differences say what
the arguments, the Redis calls and the checks and formatting cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import redis

from registry import embedded, scripts

BARE = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000
local out = {1, now}
for i = 1, 3 do
  local key = KEYS[i]
  local field = tostring(math.floor(now / 1000))
  local m = redis.call('HMGET', key, '_sum', '_low', field)
  local sum = (tonumber(m[1]) or 0) + 1
  redis.call('HSET', key, field, (tonumber(m[3]) or 0) + 1, '_sum', sum)
  out[#out + 1] = sum
end
return out
"""
WINDOWS = ["{lf:adm:m}:w:rpm", "{lf:adm:m}:w:tpm", "{lf:adm:m}:w:rpd"]
DENIALS = "{lf:adm:m}:l:denied"
LIMITS = [
    ["requests_per_minute", 10**9, 60_000, 1_000],
    ["tokens_per_minute", 10**12, 60_000, 1_000],
    ["requests_per_day", 10**12, 86_400_000, 900_000],
]
COSTS = [1, 1_200, 1]
MERGED = 256  # requests in one call, as the asyncio client merges concurrent acquires


# Lua's building blocks, each done ten times in a script given acquire's keys and arguments:
# (its time - "return 1"'s) / 10 is what one costs inside Redis.
BLOCKS = (
    ("tonumber(ARGV[i])", "local s = 0 for i = 1, 10 do s = s + tonumber(ARGV[1]) end return 1"),
    (
        "a table of 8 fields",
        "local t for i = 1, 10 do t = {a = i, b = i, c = i, d = i, e = i, f = i, g = i, h = i} end return 1",
    ),
    ("string.format('%d', n)", "local t for i = 1, 10 do t = string.format('%d', 1700000000 + i) end return 1"),
    ("a Lua function call", "local function f(v) return v end local s = 0 for i = 1, 10 do s = s + f(i) end return 1"),
    ("redis.call('TIME')", "for i = 1, 10 do redis.call('TIME') end return 1"),
    (
        "HMGET of 3 fields (empty hash)",
        "for i = 1, 10 do redis.call('HMGET', KEYS[1], '_sum', '_low', '1700000000') end return 1",
    ),
)

# acquire.lua cut short after each of its stages (the comment that opens the next stage marks
# the cut), returning at once: what the checks and the reads cost on their own.
STAGES = (
    ("up to its header checks and TIME", "local limits = {}"),
    ("up to its argument checks", "-- Count each window once."),
    ("up to its window reads", "-- When `excess` more"),
)


def _prefixes(source: str) -> list[tuple[str, str]]:
    return [(label, source[: source.index(mark)] + "return {1}\n") for label, mark in STAGES if mark in source]


def server_us(r: redis.Redis, source: str, make: object, calls: int, reps: int) -> float:
    script = r.register_script(source)
    runs = []
    for _ in range(reps):
        r.config_resetstat()
        for _ in range(calls):
            keys, args = make()  # type: ignore[operator]
            script(keys=keys, args=args)
        runs.append(float(r.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]))
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--redis-url")
    args = parser.parse_args()
    server = None if args.redis_url else embedded.start()
    r = redis.Redis.from_url(args.redis_url or server.url, decode_responses=True)  # type: ignore[union-attr]
    now = int(time.time() * 1000)

    def fresh() -> str:
        return os.urandom(8).hex()

    def plain() -> tuple[list[str], list[object]]:
        return ["{lf:adm:m}:x"], []

    def wide() -> tuple[list[str], list[object]]:
        token = fresh()
        return [*WINDOWS, DENIALS, f"{{lf:adm:m}}:r:{token}"], [now, token, *(["x"] * 19)]

    def acquire() -> tuple[list[str], list[object]]:
        token = fresh()
        flat = [v for limit in LIMITS for v in limit]
        return [*WINDOWS, DENIALS, f"{{lf:adm:m}}:r:{token}"], ["", "acquire", 3_600_000, 3, 1, *flat, token, *COSTS]

    def merged() -> tuple[list[str], list[object]]:
        tokens = [fresh() for _ in range(MERGED)]
        flat = [v for limit in LIMITS for v in limit]
        tails = [v for token in tokens for v in (token, *COSTS)]
        keys = [*WINDOWS, DENIALS, *(f"{{lf:adm:m}}:r:{token}" for token in tokens)]
        return keys, ["", "acquire", 3_600_000, 3, MERGED, *flat, *tails]

    source = scripts.load("acquire").source
    rows = [
        ("return 1: 1 key, no args", "return 1", plain, 1),
        ("return 1: acquire's 5 keys, 21 args", "return 1", wide, 1),
        ("bare: TIME, 3 HMGET, 3 HSET, no checks", BARE, wide, 1),
        *((f"acquire.lua {label}", part, acquire, 1) for label, part in _prefixes(source)),
        ("acquire.lua, 3 limits", source, acquire, 1),
        (f"acquire.lua, {MERGED} requests merged", source, merged, MERGED),
    ]
    try:
        base = 0.0
        for name, source, make, per in rows:
            r.flushall()
            calls = max(10, args.calls // per)
            us = server_us(r, source, make, calls, args.reps) / per
            base = us if make is wide and source == "return 1" else base
            print(f"{name:46s} {us:7.2f} us per {'request' if per > 1 else 'call'}", flush=True)
        print("building blocks, one of each (over 'return 1' with acquire's keys and args):")
        for name, source in BLOCKS:
            us = (server_us(r, source, wide, args.calls, args.reps) - base) / 10
            print(f"  {name:44s} {us:7.2f} us", flush=True)
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    main()
