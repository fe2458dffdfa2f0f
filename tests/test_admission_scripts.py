"""lua/acquire.lua and lua/settle.lua called directly: KEYS, ARGV, replies and what they write.

A refusal, a peek, a repeat, a settle under the wrong token and every bad argument must write
nothing: each such test compares a full dump of Redis (contents and TTLs) before and after.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from registry import scripts

NOW = 1_700_000_123_456  # 456 ms into its second, 123_456 ms into its quarter of an hour
SEC = NOW // 1_000
QUARTER = NOW // 900_000
TTL = 3_600_000
MAX = 2**53 - 1
RES = "{adm:m}:r:one"
TOKEN = "tok-one"  # the token every acquire below passes unless it says otherwise
HELD, HELD_TOKEN = "{adm:m}:r:held", "tok-held"  # the reservation seed() writes
RPM, TPM, RPD = "{adm:m}:w:rpm", "{adm:m}:w:tpm", "{adm:m}:w:rpd"


def rpm(cost: int = 1, limit: int = 5) -> tuple[str, str, int, int, int, int]:
    return (RPM, "requests_per_minute", limit, 60_000, 1_000, cost)


def tpm(cost: int, limit: int = 2_000) -> tuple[str, str, int, int, int, int]:
    return (TPM, "tokens_per_minute", limit, 60_000, 1_000, cost)


def rpd(cost: int = 1, limit: int = 20) -> tuple[str, str, int, int, int, int]:
    return (RPD, "requests_per_day", limit, 86_400_000, 900_000, cost)


def acquire(
    r: redis.Redis,
    limits: list[tuple[str, str, int, int, int, int]],
    now: int | str = NOW,
    mode: str = "acquire",
    ttl: int | str = TTL,
    res: str = RES,
    token: str = TOKEN,
) -> list[Any]:
    args: list[Any] = [now, mode, ttl, len(limits), token]
    for _key, *spec in limits:
        args += spec
    return r.eval(scripts.load("acquire").source, 1 + len(limits), res, *(lim[0] for lim in limits), *args)


def settle(
    r: redis.Redis, amounts: list[tuple[str, str, int]], now: int | str = NOW, res: str = RES, token: str = TOKEN
) -> list[int]:
    args: list[Any] = [now, len(amounts), token]
    for _key, name, amount in amounts:
        args += [name, amount]
    return r.eval(scripts.load("settle").source, 1 + len(amounts), res, *(a[0] for a in amounts), *args)


def charge(name: str, index: int, cost: int, window: int, bucket: int) -> str:
    """A reservation's ``l<i>`` field: what settle needs to move one limit's amount."""
    return f"{name} {index} {cost} {window} {bucket}"


def buckets(r: redis.Redis, key: str) -> dict[str, str]:
    """A window hash's buckets (fields named ``_...`` are the script's own bookkeeping)."""
    return {k: v for k, v in r.hgetall(key).items() if not k.startswith("_")}


def check_bookkeeping(r: redis.Redis, key: str) -> None:
    """A window written by the scripts keeps ``_sum`` = the total of its buckets and ``_low`` at
    or below its oldest bucket (equal, unless a settle emptied that bucket since): so while
    ``_low`` is inside the window nothing has expired and ``_sum`` is the live total."""
    fields = r.hgetall(key)
    held = {int(k): int(v) for k, v in buckets(r, key).items()}
    if not fields:
        return
    assert "_sum" in fields, (key, fields)
    assert int(fields["_sum"]) == sum(held.values()), (key, fields)
    if held:
        assert "_low" in fields, (key, fields)
        assert int(fields["_low"]) <= min(held), (key, fields)


def dump(r: redis.Redis) -> dict[str, tuple[str, Any, int]]:
    """Every key: its type, contents and PTTL (rounded to seconds: real time passes)."""
    out = {}
    for key in sorted(r.keys("*")):
        kind = r.type(key)
        value = r.hgetall(key) if kind == "hash" else r.get(key)
        pttl = r.pttl(key)
        out[key] = (kind, value, pttl if pttl < 0 else round(pttl / 1000))
    return out


def seed(r: redis.Redis) -> None:
    """Some window state and a held reservation, with TTLs no script sets (to see a refresh)."""
    r.hset(RPM, mapping={str(SEC - 1): 2, str(SEC - 61): 1, "_sum": 3, "_low": SEC - 61})
    r.hset(TPM, mapping={str(SEC - 1): 900, "_sum": 900, "_low": SEC - 1})
    record = {
        "n": 1,
        "at": NOW - 1_000,
        "tok": HELD_TOKEN,
        "l1": charge("requests_per_minute", SEC - 1, 1, 60_000, 1_000),
    }
    r.hset(HELD, mapping=record)
    for key in (RPM, TPM, HELD):
        r.pexpire(key, 5_000_000)
    r.set("unrelated", "x")


# -- acquire ---------------------------------------------------------------------------------------


def test_admitted_reply_reservation_and_ttls(r: redis.Redis) -> None:
    reply = acquire(r, [rpm(), tpm(300), rpd()])
    assert reply == [1, NOW, 0, 0, "", 4, 1_700, 19]
    assert r.hgetall(RES) == {
        "n": "3",
        "at": str(NOW),
        "tok": TOKEN,
        "l1": charge("requests_per_minute", SEC, 1, 60_000, 1_000),
        "l2": charge("tokens_per_minute", SEC, 300, 60_000, 1_000),
        "l3": charge("requests_per_day", QUARTER, 1, 86_400_000, 900_000),
    }
    assert r.hgetall(RPM) == {str(SEC): "1", "_sum": "1", "_low": str(SEC)}
    assert r.hgetall(TPM) == {str(SEC): "300", "_sum": "300", "_low": str(SEC)}
    assert r.hgetall(RPD) == {str(QUARTER): "1", "_sum": "1", "_low": str(QUARTER)}
    assert 60_000 < r.pttl(RPM) <= 61_000
    assert 60_000 < r.pttl(TPM) <= 61_000
    assert 87_200_000 < r.pttl(RPD) <= 87_300_000
    assert TTL - 1_000 < r.pttl(RES) <= TTL
    # A second request a little later: the same bucket adds up, the next second starts one.
    second = acquire(r, [rpm(), tpm(200), rpd()], now=NOW + 100, res="{adm:m}:r:two", token="t2")
    assert second == [1, NOW + 100, 0, 0, "", 3, 1_500, 18]
    assert r.hget("{adm:m}:r:two", "tok") == "t2"
    third = acquire(r, [rpm(), tpm(50), rpd()], now=NOW + 600, res="{adm:m}:r:three", token="t3")
    assert third[4:] == ["", 2, 1_450, 17]
    assert r.hgetall(TPM) == {str(SEC): "500", str(SEC + 1): "50", "_sum": "550", "_low": str(SEC)}
    assert r.hgetall(RPD) == {str(QUARTER): "3", "_sum": "3", "_low": str(QUARTER)}


def test_the_reservation_ttl_is_the_argument(r: redis.Redis) -> None:
    acquire(r, [rpm()], ttl=1_234_567)
    assert 1_233_000 < r.pttl(RES) <= 1_234_567
    # The bounds: 1 ms, and 30 days.
    acquire(r, [rpm()], ttl=2_592_000_000, res="{adm:m}:r:month")
    assert 2_591_990_000 < r.pttl("{adm:m}:r:month") <= 2_592_000_000
    assert acquire(r, [rpm()], ttl=1, res="{adm:m}:r:brief")[0] == 1


def test_tokens_and_limit_counts_at_their_bounds(r: redis.Redis) -> None:
    """A token of 64 characters, 64 limits, and numbers up to 2^53 - 1 are accepted."""
    token = "t" * 64
    acquire(r, [rpm()], token=token)
    assert r.hget(RES, "tok") == token
    many = [(f"{{adm:m}}:w:k{i}", f"k{i}", 5, 60_000, 1_000, 1) for i in range(64)]
    reply = acquire(r, many, res="{adm:m}:r:many")
    assert reply == [1, NOW, 0, 0, "", *[4] * 64]
    assert r.hget("{adm:m}:r:many", "l64") == charge("k63", SEC, 1, 60_000, 1_000)
    huge = ("{adm:m}:w:huge", "huge", MAX, MAX - MAX % 1_000, 1_000, MAX)
    assert acquire(r, [huge], mode="peek") == [1, NOW, 0, 0, "", MAX]  # a peek takes no cost off
    end = ("{adm:m}:w:end", "end", 5, 60_000, 1_000, 1)
    assert acquire(r, [end], now=MAX, res="{adm:m}:r:end") == [1, MAX, 0, 0, "", 4]
    assert r.hgetall("{adm:m}:w:end") == {str(MAX // 1_000): "1", "_sum": "1", "_low": str(MAX // 1_000)}


def test_a_zero_cost_charges_no_bucket_but_is_recorded(r: redis.Redis) -> None:
    assert acquire(r, [rpm(), tpm(0)]) == [1, NOW, 0, 0, "", 4, 2_000]
    assert buckets(r, TPM) == {}
    assert r.hget(TPM, "_sum") == "0"
    check_bookkeeping(r, TPM)
    assert r.hget(RES, "l2") == charge("tokens_per_minute", SEC, 0, 60_000, 1_000)


def test_no_limits_admits_and_records(r: redis.Redis) -> None:
    assert acquire(r, []) == [1, NOW, 0, 0, ""]
    assert r.hgetall(RES) == {"n": "0", "at": str(NOW), "tok": TOKEN}


def test_an_empty_now_reads_the_server_time(r: redis.Redis) -> None:
    seconds, micros = r.time()
    reply = acquire(r, [rpm()], now="")
    server_ms = seconds * 1_000 + micros // 1_000
    assert server_ms <= reply[1] < server_ms + 5_000
    assert buckets(r, RPM) == {str(reply[1] // 1_000): "1"}
    check_bookkeeping(r, RPM)
    assert r.hget(RES, "at") == str(reply[1])


def test_a_refusal_writes_nothing_and_says_when_to_retry(r: redis.Redis) -> None:
    for i in range(5):
        acquire(r, [rpm(), tpm(100)], res=f"{{adm:m}}:r:{i}")
    before = dump(r)
    # Every request of the minute sits in second SEC, which leaves the window at (SEC+1) s + 60 s.
    wait = (SEC + 1) * 1_000 + 60_000 - NOW
    assert acquire(r, [rpm(), tpm(100)]) == [0, NOW, 1, wait, "", 0, 1_500]
    assert dump(r) == before
    # Not a ms early: 1 ms before the bucket leaves it is still refused, then admitted.
    assert acquire(r, [rpm(), tpm(100)], now=NOW + wait - 1) == [0, NOW + wait - 1, 1, 1, "", 0, 1_500]
    assert dump(r) == before
    assert acquire(r, [rpm(), tpm(100)], now=NOW + wait) == [1, NOW + wait, 0, 0, "", 4, 1_900]
    # That admission recounted: the old bucket is gone and the bookkeeping starts again.
    assert r.hgetall(RPM) == {str(SEC + 61): "1", "_sum": "1", "_low": str(SEC + 61)}


def test_retry_after_waits_for_enough_buckets_to_leave(r: redis.Redis) -> None:
    acquire(r, [tpm(400, 1_000)], now=NOW, res="{adm:m}:r:a")  # second SEC
    acquire(r, [tpm(400, 1_000)], now=NOW + 2_000, res="{adm:m}:r:b")  # second SEC + 2
    acquire(r, [tpm(100, 1_000)], now=NOW + 5_000, res="{adm:m}:r:c")  # second SEC + 5
    later = NOW + 6_000
    # 900 held: 500 more needs the first bucket gone, 700 more the first two.
    assert acquire(r, [tpm(500, 1_000)], now=later) == [0, later, 1, (SEC + 1) * 1_000 + 60_000 - later, "", 100]
    assert acquire(r, [tpm(700, 1_000)], now=later) == [0, later, 1, (SEC + 3) * 1_000 + 60_000 - later, "", 100]
    assert acquire(r, [tpm(100, 1_000)], now=later)[:5] == [1, later, 0, 0, ""]


def test_binding_is_the_limit_refusing_longest_first_on_ties(r: redis.Redis) -> None:
    acquire(r, [rpm(limit=1), tpm(10, 10), rpd(limit=1)], res="{adm:m}:r:a")
    later = NOW + 10_000
    minute_wait = (SEC + 1) * 1_000 + 60_000 - later
    day_wait = (QUARTER + 1) * 900_000 + 86_400_000 - later
    assert acquire(r, [rpm(limit=1), tpm(10, 10), rpd(limit=1)], now=later) == [0, later, 3, day_wait, "", 0, 0, 0]
    assert acquire(r, [rpm(limit=1), tpm(10, 10)], now=later) == [0, later, 1, minute_wait, "", 0, 0]
    assert acquire(r, [tpm(10, 10), rpm(limit=1)], now=later) == [0, later, 1, minute_wait, "", 0, 0]
    assert acquire(r, [tpm(0, 10), rpm(limit=2)], now=later) == [1, later, 0, 0, "", 0, 0]


def test_expired_buckets_stop_counting_and_are_deleted_only_on_admission(r: redis.Redis) -> None:
    # Expired when (index + 1) * bucket <= now - window = (SEC - 60) s + 456 ms: bucket SEC - 61
    # ends at (SEC - 60) s, so it is out; bucket SEC - 60 overlaps the window: it counts in full.
    # No _sum/_low yet: the script recounts.
    r.hset(RPM, mapping={str(SEC - 62): 4, str(SEC - 61): 4, str(SEC - 60): 2})
    before = dump(r)
    assert acquire(r, [rpm()], mode="peek")[5:] == [3]
    assert acquire(r, [rpm(limit=2)]) == [0, NOW, 1, (SEC - 59) * 1_000 + 60_000 - NOW, "", 0]
    assert dump(r) == before  # a refusal keeps even the expired buckets
    assert acquire(r, [rpm()]) == [1, NOW, 0, 0, "", 2]
    assert r.hgetall(RPM) == {str(SEC - 60): "2", str(SEC): "1", "_sum": "3", "_low": str(SEC - 60)}
    # The exact edge: at now = (SEC - 59) s + 60 s = (SEC + 1) s, bucket SEC - 60 has just left.
    edge = (SEC - 59) * 1_000 + 60_000
    assert acquire(r, [rpm(limit=3)], now=edge - 1, mode="peek")[5:] == [0]
    assert acquire(r, [rpm(limit=3)], now=edge, res="{adm:m}:r:edge") == [1, edge, 0, 0, "", 1]
    assert r.hgetall(RPM) == {str(SEC): "1", str(SEC + 1): "1", "_sum": "2", "_low": str(SEC)}


def test_the_window_total_is_read_from_sum_while_low_is_in_the_window(r: redis.Redis) -> None:
    """The fast path reads ``_sum`` and ``_low`` only; once ``_low`` has left, it recounts."""
    # _sum says 4 while the buckets hold 1: trusted as long as _low (SEC) is live.
    r.hset(RPM, mapping={str(SEC): 1, "_sum": 4, "_low": SEC})
    assert acquire(r, [rpm()], mode="peek")[5:] == [1]
    leaves = (SEC + 1) * 1_000 + 60_000  # bucket SEC leaves the window
    assert acquire(r, [rpm()], now=leaves - 1, mode="peek")[5:] == [1]
    # With _low out of the window the buckets are recounted: nothing live is left.
    assert acquire(r, [rpm()], now=leaves, mode="peek")[5:] == [5]
    # A recount on admission drops the expired buckets and writes the bookkeeping afresh.
    r.hset(RPM, mapping={str(SEC + 30): 2, "_low": SEC - 100})
    assert acquire(r, [rpm()], now=leaves, res="{adm:m}:r:b") == [1, leaves, 0, 0, "", 2]
    assert r.hgetall(RPM) == {str(SEC + 30): "2", str(SEC + 61): "1", "_sum": "3", "_low": str(SEC + 30)}
    # Then the fast path again: adds the cost to _sum and keeps _low.
    assert acquire(r, [rpm()], now=leaves + 5_000, res="{adm:m}:r:c") == [1, leaves + 5_000, 0, 0, "", 1]
    assert r.hgetall(RPM) == {
        **{str(SEC + 30): "2", str(SEC + 61): "1", str(SEC + 66): "1"},
        **{"_sum": "4", "_low": str(SEC + 30)},
    }


def test_bookkeeping_follows_the_buckets_through_acquires_and_settles(r: redis.Redis) -> None:
    """``_sum`` is always the buckets' total and ``_low`` at or below the oldest, over a run that
    recounts, refunds, empties the oldest bucket and charges a zero estimate."""
    acquire(r, [tpm(100)], now=NOW, res="{adm:m}:r:a", token="a")
    acquire(r, [tpm(0)], now=NOW + 1_000, res="{adm:m}:r:b", token="b")  # bucket SEC + 1, none made
    acquire(r, [tpm(30)], now=NOW + 2_000, res="{adm:m}:r:c", token="c")
    assert r.hgetall(TPM) == {str(SEC): "100", str(SEC + 2): "30", "_sum": "130", "_low": str(SEC)}
    # a refunds 60: the bucket and _sum move together.
    assert settle(r, [(TPM, "tokens_per_minute", 40)], res="{adm:m}:r:a", token="a")[0] == 1
    assert r.hgetall(TPM) == {str(SEC): "40", str(SEC + 2): "30", "_sum": "70", "_low": str(SEC)}
    check_bookkeeping(r, TPM)
    # Bucket SEC leaves: the next admission recounts, _low moves up to the oldest live bucket.
    later = (SEC + 1) * 1_000 + 60_000
    acquire(r, [tpm(5)], now=later, res="{adm:m}:r:d", token="d")
    assert r.hgetall(TPM) == {str(SEC + 2): "30", str(SEC + 61): "5", "_sum": "35", "_low": str(SEC + 2)}
    # Releasing c empties what is now the oldest bucket: _low may stay below the buckets (the
    # next admission just recounts sooner), never above them.
    assert settle(r, [(TPM, "tokens_per_minute", 0)], now=later, res="{adm:m}:r:c", token="c")[0] == 1
    assert buckets(r, TPM) == {str(SEC + 61): "5"}
    check_bookkeeping(r, TPM)
    # b's estimate was 0, so its bucket (SEC + 1, still live) was never made and is older than
    # every bucket: settling it makes the bucket and lowers _low to it.
    assert settle(r, [(TPM, "tokens_per_minute", 7)], now=later, res="{adm:m}:r:b", token="b")[0] == 1
    assert r.hgetall(TPM) == {str(SEC + 1): "7", str(SEC + 61): "5", "_sum": "12", "_low": str(SEC + 1)}
    # So it counts until it leaves, and no longer after.
    assert acquire(r, [tpm(0)], now=later, mode="peek")[5:] == [2_000 - 12]
    gone = (SEC + 2) * 1_000 + 60_000
    assert acquire(r, [tpm(0)], now=gone - 1, mode="peek")[5:] == [2_000 - 12]
    assert acquire(r, [tpm(0)], now=gone, mode="peek")[5:] == [2_000 - 5]
    # The next admission recounts: exact again.
    acquire(r, [tpm(1)], now=gone, res="{adm:m}:r:e", token="e")
    assert r.hgetall(TPM) == {str(SEC + 61): "5", str(SEC + 62): "1", "_sum": "6", "_low": str(SEC + 61)}


def test_peek_writes_nothing(r: redis.Redis) -> None:
    seed(r)
    before = dump(r)
    # What is left now (the cost is not taken off): 5 - 2 live; 2000 - 900.
    assert acquire(r, [rpm(), tpm(1_100)], mode="peek") == [1, NOW, 0, 0, "", 3, 1_100]
    assert acquire(r, [rpm(), tpm(1_101)], mode="peek") == [0, NOW, 2, (SEC) * 1_000 + 60_000 - NOW, "", 3, 1_100]
    # A peek ignores any reservation of the same key (and says no token).
    assert acquire(r, [rpm()], mode="peek", res=HELD)[:5] == [1, NOW, 0, 0, ""]
    assert dump(r) == before


def test_shadow_admits_and_reports(r: redis.Redis) -> None:
    acquire(r, [rpm(limit=1)], res="{adm:m}:r:a")
    wait = (SEC + 1) * 1_000 + 60_000 - NOW
    assert acquire(r, [rpm(limit=1), tpm(10)], mode="shadow") == [4, NOW, 1, wait, "", 0, 1_990]
    assert r.hgetall(RPM) == {str(SEC): "2", "_sum": "2", "_low": str(SEC)}
    assert r.hget(RES, "n") == "2"
    assert r.hget(RES, "tok") == TOKEN
    assert acquire(r, [tpm(10)], mode="shadow", res="{adm:m}:r:c") == [1, NOW, 0, 0, "", 1_980]
    # Too large is still status 3, shadow or not, and writes nothing.
    before = dump(r)
    assert acquire(r, [tpm(2_001)], mode="shadow", res="{adm:m}:r:d") == [3, NOW, 1, -1, "", -1]
    assert dump(r) == before


def test_a_repeated_acquire_consumes_nothing_and_returns_the_held_token(r: redis.Redis) -> None:
    assert acquire(r, [rpm(), tpm(100)])[0] == 1
    before = dump(r)
    # A retry draws a token of its own; the reply hands back the one the reservation holds.
    assert acquire(r, [rpm(), tpm(100)], token="retry") == [2, NOW, 0, 0, TOKEN, -1, -1]
    assert acquire(r, [rpm(), tpm(100)], now=NOW + 5, mode="shadow", token="x") == [2, NOW + 5, 0, 0, TOKEN, -1, -1]
    # Even when it would now be refused, or could never fit: the reservation answers first.
    assert acquire(r, [rpm(limit=1), tpm(5_000)], now=NOW + 7, token="y") == [2, NOW + 7, 0, 0, TOKEN, -1, -1]
    assert dump(r) == before
    # The token it returned settles the reservation; the retry's own does not.
    amounts = [(RPM, "requests_per_minute", 0), (TPM, "tokens_per_minute", 0)]
    assert settle(r, amounts, token="retry") == [0, NOW]
    assert settle(r, amounts, token=TOKEN) == [1, NOW]


def test_cost_above_the_limit_is_refused_for_good(r: redis.Redis) -> None:
    seed(r)
    before = dump(r)
    assert acquire(r, [rpm(), tpm(2_001)]) == [3, NOW, 2, -1, "", -1, -1]
    assert acquire(r, [rpm(2, 1), tpm(5_000)]) == [3, NOW, 1, -1, "", -1, -1]  # the first that cannot fit
    assert acquire(r, [rpm(1, 0)]) == [3, NOW, 1, -1, "", -1]
    assert dump(r) == before
    zero = ("{adm:m}:w:zero", "tokens_per_minute", 0, 60_000, 1_000, 0)
    assert acquire(r, [zero], res="{adm:m}:r:free") == [1, NOW, 0, 0, "", 0]  # 0 against 0 fits


# -- settle ----------------------------------------------------------------------------------------


def test_settle_moves_each_amount_once(r: redis.Redis) -> None:
    acquire(r, [rpm(), tpm(300), rpd()])
    acquire(r, [rpm(), tpm(100)], res="{adm:m}:r:other", token="other")
    amounts = [(RPM, "requests_per_minute", 1), (TPM, "tokens_per_minute", 120), (RPD, "requests_per_day", 1)]
    later = NOW + 30_000
    assert settle(r, amounts, now=later) == [1, later]
    assert r.exists(RES) == 0
    assert r.hgetall(TPM) == {str(SEC): "220", "_sum": "220", "_low": str(SEC)}
    assert r.hgetall(RPM) == {str(SEC): "2", "_sum": "2", "_low": str(SEC)}
    assert 60_000 < r.pttl(TPM) <= 61_000
    before = dump(r)
    assert settle(r, amounts, now=later + 1) == [0, later + 1]
    assert dump(r) == before


def test_settle_charges_extra(r: redis.Redis) -> None:
    acquire(r, [rpm(), tpm(300)])
    assert settle(r, [(RPM, "requests_per_minute", 1), (TPM, "tokens_per_minute", 2_500)]) == [1, NOW]
    assert r.hgetall(TPM) == {str(SEC): "2500", "_sum": "2500", "_low": str(SEC)}  # more than the limit
    assert acquire(r, [tpm(0)], res="{adm:m}:r:next")[:3] == [0, NOW, 1]  # so the next request waits


def test_settle_charges_a_zero_estimate_in_full(r: redis.Redis) -> None:
    """A request admitted with an estimate of 0 tokens is charged what it really used: its
    bucket, never made by acquire, is made by settle (with the window's bookkeeping)."""
    acquire(r, [rpm(), tpm(0)])
    assert buckets(r, TPM) == {}
    assert settle(r, [(RPM, "requests_per_minute", 1), (TPM, "tokens_per_minute", 2_500)], now=NOW + 500) == [
        1,
        NOW + 500,
    ]
    assert r.hgetall(TPM) == {str(SEC): "2500", "_sum": "2500", "_low": str(SEC)}
    assert 60_000 < r.pttl(TPM) <= 61_000
    assert acquire(r, [tpm(0)], res="{adm:m}:r:next", token="n")[:3] == [0, NOW, 1]
    # The same into a window that has no bookkeeping at all (its hash gone, say): made from scratch.
    r.flushall()
    acquire(r, [tpm(0)])
    r.delete(TPM)
    assert settle(r, [(TPM, "tokens_per_minute", 3)])[0] == 1
    assert r.hgetall(TPM) == {str(SEC): "3", "_sum": "3", "_low": str(SEC)}


def test_release_gives_all_back(r: redis.Redis) -> None:
    acquire(r, [rpm()], res="{adm:m}:r:a", token="a")
    acquire(r, [rpm()], res="{adm:m}:r:rel", token="rel")
    assert settle(r, [(RPM, "requests_per_minute", 0)], res="{adm:m}:r:rel", token="rel") == [1, NOW]
    assert buckets(r, RPM) == {str(SEC): "1"}
    acquire(r, [rpm(), tpm(10)], res="{adm:m}:r:last", token="last")
    acquire(r, [rpm()], res="{adm:m}:r:x", token="x")
    # Release of "last": rpm goes down by one, its tpm bucket empties.
    amounts = [(RPM, "requests_per_minute", 0), (TPM, "tokens_per_minute", 0)]
    assert settle(r, amounts, res="{adm:m}:r:last", token="last")[0] == 1
    assert r.hgetall(RPM) == {str(SEC): "2", "_sum": "2", "_low": str(SEC)}
    assert buckets(r, TPM) == {}
    assert r.hget(TPM, "_sum") == "0"
    check_bookkeeping(r, TPM)


def test_settle_skips_limits_not_passed_and_buckets_out_of_the_window(r: redis.Redis) -> None:
    acquire(r, [rpm(), tpm(300), rpd()])
    # Bucket SEC leaves the minute window at (SEC + 1) s + 60 s; the day bucket stays.
    gone = (SEC + 1) * 1_000 + 60_000
    assert settle(r, [(RPD, "requests_per_day", 0), (TPM, "tokens_per_minute", 0)], now=gone) == [1, gone]
    assert buckets(r, TPM) == {str(SEC): "300"}  # out of its window: nothing to move
    assert r.hget(TPM, "_sum") == "300"
    assert buckets(r, RPM) == {str(SEC): "1"}  # not passed: untouched
    assert buckets(r, RPD) == {}  # released
    assert r.hget(RPD, "_sum") == "0"
    # One ms earlier the minute bucket still counts, so it would have moved.
    r.flushall()
    acquire(r, [tpm(300)])
    assert settle(r, [(TPM, "tokens_per_minute", 0)], now=gone - 1) == [1, gone - 1]
    assert buckets(r, TPM) == {}
    # Likewise a zero estimate whose bucket has left is not charged: it no longer counts anyway.
    r.flushall()
    acquire(r, [tpm(0)])
    assert settle(r, [(TPM, "tokens_per_minute", 50)], now=gone) == [1, gone]
    assert buckets(r, TPM) == {}
    assert r.hget(TPM, "_sum") == "0"


def test_settle_never_takes_a_bucket_below_zero(r: redis.Redis) -> None:
    acquire(r, [tpm(300)])
    r.hset(TPM, mapping={str(SEC): 100, "_sum": 100})  # lowered behind the script's back
    assert settle(r, [(TPM, "tokens_per_minute", 0)]) == [1, NOW]
    assert buckets(r, TPM) == {}
    assert r.hget(TPM, "_sum") == "0"


def test_settle_with_another_token_changes_nothing(r: redis.Redis) -> None:
    acquire(r, [rpm(), tpm(300)])
    amounts = [(RPM, "requests_per_minute", 0), (TPM, "tokens_per_minute", 0)]
    before = dump(r)
    for token in ("tok-other", TOKEN + "x", TOKEN[:-1], "", TOKEN.upper()):
        assert settle(r, amounts, now=NOW + 1, token=token) == [0, NOW + 1]
        assert dump(r) == before
    assert settle(r, amounts, token=TOKEN) == [1, NOW]
    assert buckets(r, RPM) == buckets(r, TPM) == {}


def test_a_stale_handle_never_settles_a_later_reservation_under_the_same_id(r: redis.Redis) -> None:
    """Released, then the id reused by another acquire: a retry of the first release is a no-op."""
    amounts = [(RPM, "requests_per_minute", 0), (TPM, "tokens_per_minute", 0)]
    acquire(r, [rpm(), tpm(300)], token="first")
    assert settle(r, amounts, token="first") == [1, NOW]
    assert acquire(r, [rpm(), tpm(200)], now=NOW + 10, token="second")[0] == 1
    assert r.hget(RES, "tok") == "second"
    before = dump(r)
    assert settle(r, amounts, now=NOW + 20, token="first") == [0, NOW + 20]  # the retried release
    assert settle(r, [(RPM, "requests_per_minute", 1), (TPM, "tokens_per_minute", 999)], token="first")[0] == 0
    assert dump(r) == before
    assert r.hgetall(TPM) == {str(SEC): "200", "_sum": "200", "_low": str(SEC)}
    assert settle(r, amounts, now=NOW + 30, token="second") == [1, NOW + 30]
    assert buckets(r, RPM) == buckets(r, TPM) == {}


@pytest.mark.parametrize("name", ["tokens\tper_minute", "tokens per_minute", "tokens\nper", ""])
def test_a_limit_name_settle_could_not_read_is_refused(r: redis.Redis, name: str) -> None:
    """Names go into the record space-separated: acquire refuses any whitespace, writing nothing."""
    before = dump(r)
    with pytest.raises(redis.ResponseError, match="ERR_ARGS limit 1: bad name"):
        acquire(r, [("{adm:m}:w:tab", name, 2_000, 60_000, 1_000, 300)])
    assert dump(r) == before


# -- bad arguments ---------------------------------------------------------------------------------

GOOD = [NOW, "acquire", TTL, 2, TOKEN, "requests_per_minute", 5, 60_000, 1_000, 1]
GOOD += ["tokens_per_minute", 2_000, 60_000, 1_000, 9]
# ARGV positions (0-based here) in GOOD
A_NOW, A_MODE, A_TTL, A_N, A_TOKEN = range(5)
A_NAME, A_LIMIT, A_WINDOW, A_BUCKET, A_COST = range(5, 10)  # the first limit; the second is 5 on


def with_arg(index: int, value: Any) -> list[Any]:
    args = list(GOOD)
    args[index] = value
    return args


def limits_args(n: int) -> tuple[list[str], list[Any]]:
    keys = [f"{{adm:m}}:w:k{i}" for i in range(n)]
    args: list[Any] = [NOW, "acquire", TTL, n, TOKEN]
    for i in range(n):
        args += [f"k{i}", 5, 60_000, 1_000, 1]
    return keys, args


BAD_ACQUIRE: dict[str, tuple[int, list[Any]]] = {
    "one key too few": (2, GOOD),
    "two keys too many (one is the denial counters)": (5, GOOD),
    "one arg too many": (3, [*GOOD, 1]),
    "one arg too few": (3, GOOD[:-1]),
    "no token arg (the old layout)": (3, [*GOOD[:A_TOKEN], *GOOD[A_TOKEN + 1 :]]),
    "n not a number": (3, with_arg(A_N, "two")),
    "n negative": (3, with_arg(A_N, -1)),
    "n fractional": (3, with_arg(A_N, 1.5)),
    "n inf": (3, with_arg(A_N, "inf")),
    "n nan": (3, with_arg(A_N, "nan")),
    "unknown mode": (3, with_arg(A_MODE, "take")),
    "empty mode": (3, with_arg(A_MODE, "")),
    "token empty": (3, with_arg(A_TOKEN, "")),
    "token of 65 characters": (3, with_arg(A_TOKEN, "t" * 65)),
    "ttl zero": (3, with_arg(A_TTL, 0)),
    "ttl negative": (3, with_arg(A_TTL, -5)),
    "ttl fractional": (3, with_arg(A_TTL, 1.5)),
    "ttl not a number": (3, with_arg(A_TTL, "soon")),
    "ttl empty": (3, with_arg(A_TTL, "")),
    "ttl inf": (3, with_arg(A_TTL, "inf")),
    "ttl nan": (3, with_arg(A_TTL, "nan")),
    "ttl above 30 days": (3, with_arg(A_TTL, 2_592_000_001)),
    "ttl above int64": (3, with_arg(A_TTL, "1e19")),
    "now negative": (3, with_arg(A_NOW, -1)),
    "now fractional": (3, with_arg(A_NOW, 1.5)),
    "now not a number": (3, with_arg(A_NOW, "noon")),
    "now nan": (3, with_arg(A_NOW, "nan")),
    "now inf": (3, with_arg(A_NOW, "inf")),
    "now above 2^53 - 1": (3, with_arg(A_NOW, 2**53)),
    "name empty": (3, with_arg(A_NAME, "")),
    "name with a space": (3, with_arg(A_NAME, "requests per minute")),
    "limit negative": (3, with_arg(A_LIMIT, -5)),
    "limit not a number": (3, with_arg(A_LIMIT, "five")),
    "limit inf": (3, with_arg(A_LIMIT, "inf")),
    "limit above 2^53 - 1": (3, with_arg(A_LIMIT, 2**53)),
    "window fractional": (3, with_arg(A_WINDOW, 60_000.5)),
    "window not a number": (3, with_arg(A_WINDOW, "x")),
    "window empty": (3, with_arg(A_WINDOW, "")),
    "bucket not a number": (3, with_arg(A_BUCKET, "sec")),
    "bucket nan": (3, with_arg(A_BUCKET, "nan")),
    "cost negative": (3, with_arg(A_COST, -1)),
    "cost above 2^53 - 1": (3, with_arg(A_COST, 2**53)),
    "cost inf": (3, with_arg(A_COST, "inf")),
    "bucket zero": (3, with_arg(A_BUCKET, 0)),
    "window not a multiple of the bucket": (3, with_arg(A_WINDOW, 61_500)),
    "window shorter than the bucket": (3, with_arg(A_WINDOW, 500)),
    "second limit's name with a space": (3, with_arg(A_NAME + 5, "tokens per minute")),
    "second limit's name empty": (3, with_arg(A_NAME + 5, "")),
    "second limit's limit negative": (3, with_arg(A_LIMIT + 5, -1)),
    "second limit's cost fractional": (3, with_arg(A_COST + 5, 0.5)),
    "second limit's cost not a number": (3, with_arg(A_COST + 5, "nine")),
    "second limit's window not a multiple": (3, with_arg(A_WINDOW + 5, 59_999)),
    "second limit's bucket zero": (3, with_arg(A_BUCKET + 5, 0)),
}


def test_good_arguments_are_good(r: redis.Redis) -> None:
    """The base the bad cases change one thing of."""
    reply = r.eval(scripts.load("acquire").source, 3, RES, RPM, TPM, *GOOD)
    assert reply == [1, NOW, 0, 0, "", 4, 1_991]


@pytest.mark.parametrize(("nkeys", "args"), list(BAD_ACQUIRE.values()), ids=list(BAD_ACQUIRE))
@pytest.mark.parametrize("reserved", [False, True], ids=["fresh", "reserved"])
def test_bad_acquire_arguments_write_nothing(r: redis.Redis, nkeys: int, args: list[Any], reserved: bool) -> None:
    seed(r)
    res = HELD if reserved else RES  # an error, not status 2, even for a held key
    keys = [res, RPM, TPM, "{adm:m}:l:denied", RPD][:nkeys]
    before = dump(r)
    with pytest.raises(redis.ResponseError, match="ERR_ARGS"):
        r.eval(scripts.load("acquire").source, len(keys), *keys, *args)
    assert dump(r) == before


def test_at_most_64_limits(r: redis.Redis) -> None:
    keys, args = limits_args(64)
    assert r.eval(scripts.load("acquire").source, 65, RES, *keys, *args)[0] == 1
    r.flushall()
    keys, args = limits_args(65)
    with pytest.raises(redis.ResponseError, match="ERR_ARGS"):
        r.eval(scripts.load("acquire").source, 66, RES, *keys, *args)
    assert r.keys("*") == []


SETTLE_GOOD = [NOW, 2, HELD_TOKEN, "requests_per_minute", 1, "tokens_per_minute", 10]
S_NOW, S_N, S_TOKEN, S_AMOUNT, S_AMOUNT2 = 0, 1, 2, 4, 6


def with_settle_arg(index: int, value: Any) -> list[Any]:
    args = list(SETTLE_GOOD)
    args[index] = value
    return args


BAD_SETTLE: dict[str, tuple[int, list[Any]]] = {
    "one key too few": (2, SETTLE_GOOD),
    "one key too many": (4, SETTLE_GOOD),
    "one arg too many": (3, [*SETTLE_GOOD, 1]),
    "one arg too few": (3, SETTLE_GOOD[:-1]),
    "no token arg (the old layout)": (3, [*SETTLE_GOOD[:S_TOKEN], *SETTLE_GOOD[S_TOKEN + 1 :]]),
    "n not a number": (3, with_settle_arg(S_N, "two")),
    "n negative": (3, with_settle_arg(S_N, -2)),
    "n inf": (3, with_settle_arg(S_N, "inf")),
    "now negative": (3, with_settle_arg(S_NOW, -1)),
    "now fractional": (3, with_settle_arg(S_NOW, 0.5)),
    "now not a number": (3, with_settle_arg(S_NOW, "noon")),
    "now inf": (3, with_settle_arg(S_NOW, "inf")),
    "now nan": (3, with_settle_arg(S_NOW, "nan")),
    "now above 2^53 - 1": (3, with_settle_arg(S_NOW, 2**53)),
    "amount negative": (3, with_settle_arg(S_AMOUNT, -1)),
    "amount fractional": (3, with_settle_arg(S_AMOUNT, 0.5)),
    "amount not a number": (3, with_settle_arg(S_AMOUNT, "one")),
    "amount inf": (3, with_settle_arg(S_AMOUNT, "inf")),
    "amount nan": (3, with_settle_arg(S_AMOUNT, "nan")),
    "second amount negative": (3, with_settle_arg(S_AMOUNT2, -10)),
    "second amount above 2^53 - 1": (3, with_settle_arg(S_AMOUNT2, 2**53)),
    "second amount empty": (3, with_settle_arg(S_AMOUNT2, "")),
}


@pytest.mark.parametrize(("nkeys", "args"), list(BAD_SETTLE.values()), ids=list(BAD_SETTLE))
@pytest.mark.parametrize("token", [HELD_TOKEN, "tok-wrong"], ids=["held token", "wrong token"])
def test_bad_settle_arguments_write_nothing(r: redis.Redis, nkeys: int, args: list[Any], token: str) -> None:
    seed(r)
    args = [token if i == S_TOKEN and a == HELD_TOKEN else a for i, a in enumerate(args)]
    keys = [HELD, RPM, TPM, RPD][:nkeys]
    before = dump(r)
    with pytest.raises(redis.ResponseError, match="ERR_ARGS"):  # checked before the token
        r.eval(scripts.load("settle").source, len(keys), *keys, *args)
    assert dump(r) == before
    # The same reservation settles with good arguments.
    assert r.eval(scripts.load("settle").source, 3, HELD, RPM, TPM, *SETTLE_GOOD)[0] == 1
    assert r.exists(HELD) == 0


def test_settle_arguments_at_their_bounds(r: redis.Redis) -> None:
    seed(r)
    # The held reservation charged 1 to bucket SEC - 1: settled at 2^53 - 1 it holds that much.
    args = [MAX - 1_000, 1, HELD_TOKEN, "requests_per_minute", MAX]
    assert r.eval(scripts.load("settle").source, 2, HELD, RPM, *args) == [1, MAX - 1_000]
    assert r.hgetall(RPM) == {str(SEC - 61): "1", str(SEC - 1): "2"} | {"_sum": "3", "_low": str(SEC - 61)}
    seed(r)
    assert r.eval(scripts.load("settle").source, 2, HELD, RPM, NOW, 1, HELD_TOKEN, "requests_per_minute", MAX)[0] == 1
    assert buckets(r, RPM) == {str(SEC - 61): "1", str(SEC - 1): str(MAX + 1)}
    check_bookkeeping(r, RPM)


@pytest.mark.parametrize("real", [120, 0], ids=["settle", "release"])
def test_the_same_settle_or_release_call_sent_twice_counts_once(r: redis.Redis, real: int) -> None:
    """redis-py may send a command again after a timeout: the byte-identical repeat is a no-op."""
    acquire(r, [rpm(), tpm(300)])
    amounts = [(RPM, "requests_per_minute", 1 if real else 0), (TPM, "tokens_per_minute", real)]
    assert settle(r, amounts) == [1, NOW]
    after_first = dump(r)
    assert settle(r, amounts) == [0, NOW]
    assert dump(r) == after_first
