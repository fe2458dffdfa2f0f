"""lua/acquire.lua and lua/settle.lua called directly: KEYS, ARGV, replies and what they write.

A refusal, a peek, a repeat, a second settle of the same acquire, a settle after its TTL and
every bad argument must write nothing (a refusal of an acquire: nothing but its count in the
model's denial counters): each such test compares a full dump of Redis (contents and TTLs)
before and after.

An acquire writes a record only under a caller-given reservation id; a request named after its
own token writes nothing but the windows. Settle is told what the acquire charged, as the client
handle knows it (acquire's now_ms and the limits and costs sent, or a duplicate's record), and
marks the acquire's token as settled for what is left of the reservation TTL.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import redis

from registry import scripts

NOW = 1_700_000_123_456  # 456 ms into its second, 123_456 ms into its quarter of an hour
SEC = NOW // 1_000
QUARTER = NOW // 900_000
TTL = 3_600_000
MAX = 2**53 - 1
RES = "{adm:m}:r:one"  # a caller-given id (not named after the token): looked up
TOKEN = "tok-one"  # the token every acquire below passes unless it says otherwise
OWN = f"{{adm:m}}:r:{TOKEN}"  # no caller-given id: named after the token, never read nor written
HELD, HELD_TOKEN = "{adm:m}:r:held", "tok-held"  # the reservation seed() writes
HELD_MARKER = f"{{adm:m}}:s:{HELD_TOKEN}"  # its settle marker
NONCE = "n0nce1"  # a settle call's nonce (the marker keeps it)
CALLS = itertools.count(1)  # settle() calls are new calls, each with its own nonce
RPM, TPM, RPD = "{adm:m}:w:rpm", "{adm:m}:w:tpm", "{adm:m}:w:rpd"
WINDOWS = {"requests_per_minute": RPM, "tokens_per_minute": TPM, "requests_per_day": RPD}
DENIED = "{adm:m}:l:denied"  # the model's denial counters: every acquire passes them
EVENTS, TENANTS = "{adm:m}:events", "{adm:m}:l:tenants"  # a settle's ledger part: usage stream, tenant set

Limit = tuple[str, str, int, int, int, int]  # window key, name, limit, window_ms, bucket_ms, cost
Request = tuple[str, str, list[int]]  # reservation key, token, its cost on each limit
Charge = tuple[str, str, int, int, int, int]  # window key, name, bucket index, amount, window_ms, bucket_ms


def rpm(cost: int = 1, limit: int = 5) -> Limit:
    return (RPM, "requests_per_minute", limit, 60_000, 1_000, cost)


def tpm(cost: int, limit: int = 2_000) -> Limit:
    return (TPM, "tokens_per_minute", limit, 60_000, 1_000, cost)


def rpd(cost: int = 1, limit: int = 20) -> Limit:
    return (RPD, "requests_per_day", limit, 86_400_000, 900_000, cost)


def own(token: str) -> str:
    """The reservation key of a request without a caller-given id: named after its own token."""
    return f"{{adm:m}}:r:{token}"


def marker(token: str = TOKEN) -> str:
    """The settle marker of the acquire that drew ``token``."""
    return f"{{adm:m}}:s:{token}"


def acquire_many(
    r: redis.Redis,
    limits: list[Limit],
    requests: list[Request],
    now: int | str = NOW,
    mode: str = "acquire",
    ttl: int | str = TTL,
) -> list[Any]:
    """Several requests in one call, taken in order: ``[now, then for each request status,
    binding, retry_after_ms, record, remaining_1..n]``. Each request gives its own costs (the
    ``limits``' costs are not sent)."""
    args: list[Any] = [now, mode, ttl, len(limits), len(requests)]
    for _key, *spec, _cost in limits:
        args += spec
    for _res, token, costs in requests:
        args += [token, *costs]
    keys = [*(lim[0] for lim in limits), DENIED, *(q[0] for q in requests)]
    return r.eval(scripts.load("acquire").source, len(keys), *keys, *args)


def acquire(
    r: redis.Redis,
    limits: list[Limit],
    now: int | str = NOW,
    mode: str = "acquire",
    ttl: int | str = TTL,
    res: str = RES,
    token: str = TOKEN,
) -> list[Any]:
    """One request at the ``limits``' costs: ``[now, status, binding, retry_after_ms, record,
    remaining_1..n]``."""
    return acquire_many(r, limits, [(res, token, [lim[5] for lim in limits])], now, mode, ttl)


def replies(reply: list[Any], n: int) -> list[list[Any]]:
    """A call's reply cut into each request's, each as if sent alone (``[now, status, ...]``)."""
    size = 4 + n
    assert (len(reply) - 1) % size == 0, reply
    return [[reply[0], *reply[k : k + size]] for k in range(1, len(reply), size)]


def charged(limits: list[Limit], now: int = NOW) -> list[Charge]:
    """What the handle of a request admitted at ``now`` (acquire's now_ms) holds, as the client
    builds it from the limits and costs it sent: each limit's bucket floor(now / bucket_ms),
    charged with the cost."""
    return [(key, name, now // bucket, cost, window, bucket) for key, name, _limit, window, bucket, cost in limits]


def from_record(stored: str) -> tuple[str, int, list[Charge]]:
    """The handle a duplicate's reply hands back (the whole record): token, time and charges."""
    head, *parts = stored.split("|")
    token, at = head.split(" ")
    split = (part.split(" ") for part in parts)
    return token, int(at), [(WINDOWS[name], name, int(i), int(c), int(w), int(b)) for name, i, c, w, b in split]


def ledger_part(
    now: int = NOW, tenant: str = "", cap: int = 0, pairs: tuple[Any, ...] = ("requests", 1, "input_tokens", 120)
) -> tuple[list[str], list[Any]]:
    """A settle's optional ledger part: its keys (named after the minute, hour and day of ``now``)
    and its args."""
    minute, hour, day = now // 60_000, now // 3_600_000, now // 86_400_000
    periods = ("total", f"m:{minute}", f"h:{hour}", f"d:{day}")
    keys = [EVENTS, *(f"{{adm:m}}:l:{p}" for p in periods)]
    if tenant:
        keys += [*(f"{{adm:m}}:t:{tenant}:l:{p}" for p in periods), TENANTS]
    return keys, ["ledger", minute, hour, day, "req-1", cap, tenant, *pairs]


def settle(
    r: redis.Redis,
    charges: list[Charge],
    amounts: list[int],
    now: int | str = NOW,
    res: str = RES,
    token: str = TOKEN,
    at: int = NOW,
    ttl: int = TTL,
    ledger: tuple[list[str], list[Any]] | None = None,
    nonce: str | None = None,
) -> list[int]:
    """Settle the acquire that drew ``token`` (admitted ``at`` for ``ttl`` ms, under the
    reservation key ``res``), as the call ``nonce`` (a new call's by default): charge i moves
    to ``amounts[i]``."""
    args: list[Any] = [now, len(charges), token, at, ttl, nonce or f"call{next(CALLS)}"]
    for (_key, name, bucket, cost, window, size), amount in zip(charges, amounts, strict=True):
        args += [name, bucket, cost, window, size, amount]
    keys = [marker(token), res, *(c[0] for c in charges)]
    if ledger is not None:
        keys += ledger[0]
        args += ledger[1]
    return r.eval(scripts.load("settle").source, len(keys), *keys, *args)


def charge(name: str, index: int, cost: int, window: int, bucket: int) -> str:
    """One limit's part of a caller-given id's record: the bucket it charged, and how much."""
    return f"|{name} {index} {cost} {window} {bucket}"


def record(token: str, at: int, *charges: str) -> str:
    """A record as acquire writes it: its token, when, then one charge per limit in order."""
    return f"{token} {at}" + "".join(charges)


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
        if kind == "hash":
            value: Any = r.hgetall(key)
        elif kind == "set":
            value = sorted(r.smembers(key))
        elif kind == "stream":
            value = r.xrange(key)
        else:
            value = r.get(key)
        pttl = r.pttl(key)
        out[key] = (kind, value, pttl if pttl < 0 else round(pttl / 1000))
    return out


def plus_denials(before: dict[str, tuple[str, Any, int]], **refusals: int) -> dict[str, tuple[str, Any, int]]:
    """A dump as ``before`` with the denial counters up by ``refusals`` (limit name -> count): all
    that refusals may write. The counters are kept for all time (no TTL)."""
    counts = dict(before[DENIED][1]) if DENIED in before else {}
    for name, count in refusals.items():
        counts[name] = str(int(counts.get(name, 0)) + count)
    return {**before, DENIED: ("hash", counts, -1)}


def seed(r: redis.Redis) -> None:
    """Some window state and a reservation held under a caller-given id (its acquire charged 1
    and 900 to the buckets of second SEC - 1), with TTLs no script sets (to see a refresh)."""
    r.hset(RPM, mapping={str(SEC - 1): 2, str(SEC - 61): 1, "_sum": 3, "_low": SEC - 61})
    r.hset(TPM, mapping={str(SEC - 1): 900, "_sum": 900, "_low": SEC - 1})
    r.set(
        HELD,
        record(
            HELD_TOKEN,
            NOW - 1_000,
            charge("requests_per_minute", SEC - 1, 1, 60_000, 1_000),
            charge("tokens_per_minute", SEC - 1, 900, 60_000, 1_000),
        ),
    )
    for key in (RPM, TPM, HELD):
        r.pexpire(key, 5_000_000)
    r.set("unrelated", "x")


def calls(r: redis.Redis, command: str) -> int:
    """How often the server has run ``command`` (scripts' calls included): INFO commandstats."""
    return int(r.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


# -- acquire ---------------------------------------------------------------------------------------


def test_admitted_reply_reservation_and_ttls(r: redis.Redis) -> None:
    reply = acquire(r, [rpm(), tpm(300), rpd()])
    assert reply == [NOW, 1, 0, 0, "", 4, 1_700, 19]
    assert r.get(RES) == record(
        TOKEN,
        NOW,
        charge("requests_per_minute", SEC, 1, 60_000, 1_000),
        charge("tokens_per_minute", SEC, 300, 60_000, 1_000),
        charge("requests_per_day", QUARTER, 1, 86_400_000, 900_000),
    )
    assert r.hgetall(RPM) == {str(SEC): "1", "_sum": "1", "_low": str(SEC)}
    assert r.hgetall(TPM) == {str(SEC): "300", "_sum": "300", "_low": str(SEC)}
    assert r.hgetall(RPD) == {str(QUARTER): "1", "_sum": "1", "_low": str(QUARTER)}
    assert r.exists(DENIED) == 0  # nothing refused
    assert 60_000 < r.pttl(RPM) <= 61_000
    assert 60_000 < r.pttl(TPM) <= 61_000
    assert 87_200_000 < r.pttl(RPD) <= 87_300_000
    assert TTL - 1_000 < r.pttl(RES) <= TTL
    # A second request a little later: the same bucket adds up, the next second starts one.
    second = acquire(r, [rpm(), tpm(200), rpd()], now=NOW + 100, res="{adm:m}:r:two", token="t2")
    assert second == [NOW + 100, 1, 0, 0, "", 3, 1_500, 18]
    assert r.get("{adm:m}:r:two") == record(
        "t2",
        NOW + 100,
        charge("requests_per_minute", SEC, 1, 60_000, 1_000),
        charge("tokens_per_minute", SEC, 200, 60_000, 1_000),
        charge("requests_per_day", QUARTER, 1, 86_400_000, 900_000),
    )
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
    assert acquire(r, [rpm()], ttl=1, res="{adm:m}:r:brief")[1] == 1


def test_tokens_and_limit_counts_at_their_bounds(r: redis.Redis) -> None:
    """A token of 64 characters, 64 limits, and numbers up to 2^53 - 1 are accepted."""
    token = "t" * 64
    acquire(r, [rpm()], token=token)
    assert r.get(RES) == record(token, NOW, charge("requests_per_minute", SEC, 1, 60_000, 1_000))
    many = [(f"{{adm:m}}:w:k{i}", f"k{i}", 5, 60_000, 1_000, 1) for i in range(64)]
    reply = acquire(r, many, res="{adm:m}:r:many")
    assert reply == [NOW, 1, 0, 0, "", *[4] * 64]
    # One charge per limit, in the limits' order.
    assert r.get("{adm:m}:r:many") == record(TOKEN, NOW, *(charge(f"k{i}", SEC, 1, 60_000, 1_000) for i in range(64)))
    huge = ("{adm:m}:w:huge", "huge", MAX, MAX - MAX % 1_000, 1_000, MAX)
    assert acquire(r, [huge], mode="peek") == [NOW, 1, 0, 0, "", MAX]  # a peek takes no cost off
    end = ("{adm:m}:w:end", "end", 5, 60_000, 1_000, 1)
    assert acquire(r, [end], now=MAX, res="{adm:m}:r:end") == [MAX, 1, 0, 0, "", 4]
    assert r.hgetall("{adm:m}:w:end") == {str(MAX // 1_000): "1", "_sum": "1", "_low": str(MAX // 1_000)}


def test_a_zero_cost_charges_no_bucket_but_is_recorded(r: redis.Redis) -> None:
    assert acquire(r, [rpm(), tpm(0)]) == [NOW, 1, 0, 0, "", 4, 2_000]
    assert buckets(r, TPM) == {}
    assert r.hget(TPM, "_sum") == "0"
    check_bookkeeping(r, TPM)
    assert r.get(RES) == record(
        TOKEN,
        NOW,
        charge("requests_per_minute", SEC, 1, 60_000, 1_000),
        charge("tokens_per_minute", SEC, 0, 60_000, 1_000),
    )


def test_no_limits_admits_and_records(r: redis.Redis) -> None:
    assert acquire(r, []) == [NOW, 1, 0, 0, ""]
    assert r.get(RES) == record(TOKEN, NOW) == f"{TOKEN} {NOW}"
    # Without a caller-given id there is nothing to write at all.
    r.flushall()
    assert acquire(r, [], res=OWN) == [NOW, 1, 0, 0, ""]
    assert r.keys("*") == []


def test_an_empty_now_reads_the_server_time(r: redis.Redis) -> None:
    seconds, micros = r.time()
    reply = acquire(r, [rpm()], now="")
    server_ms = seconds * 1_000 + micros // 1_000
    assert server_ms <= reply[0] < server_ms + 5_000
    assert buckets(r, RPM) == {str(reply[0] // 1_000): "1"}
    check_bookkeeping(r, RPM)
    assert r.get(RES) == record(TOKEN, reply[0], charge("requests_per_minute", reply[0] // 1_000, 1, 60_000, 1_000))
    # Settle reads it likewise (and measures what is left of the TTL from it).
    settled = settle(r, charged([rpm()], reply[0]), [0], now="", at=reply[0])
    assert settled[0] == 1
    assert reply[0] <= settled[1] < reply[0] + 5_000
    assert buckets(r, RPM) == {}
    assert TTL - 10_000 < r.pttl(marker()) <= TTL


def test_a_reservation_named_after_its_own_token_is_not_looked_up(r: redis.Redis) -> None:
    """Without a caller-given id the reservation is named after the call's token, new for each
    call: it cannot exist yet, so acquire neither reads nor writes it (the client's handle knows
    what the request holds) and writes nothing but the windows. The proof it is not read: a key
    already under that name (which a real call never meets), even of another type, is not seen
    and stays as it was."""
    limits = [rpm(limit=10)]
    assert acquire(r, limits, res=OWN) == [NOW, 1, 0, 0, "", 9]
    assert r.keys("*") == [RPM]  # no reservation
    stale = record(TOKEN, NOW, charge("requests_per_minute", SEC, 1, 60_000, 1_000))
    r.set(OWN, stale)
    assert acquire(r, limits, now=NOW + 5, res=OWN) == [NOW + 5, 1, 0, 0, "", 8]  # not status 2
    assert r.get(OWN) == stale
    r.delete(OWN)
    r.hset(OWN, mapping={"tok": TOKEN})
    assert acquire(r, limits, now=NOW + 6, res=OWN) == [NOW + 6, 1, 0, 0, "", 7]  # no WRONGTYPE
    assert r.hgetall(OWN) == {"tok": TOKEN}
    assert buckets(r, RPM) == {str(SEC): "3"}
    # A tenant's reservation named after the token likewise.
    tenant = f"{{adm:m}}:t:acme:r:{TOKEN}"
    assert acquire(r, limits, res=tenant)[1] == 1
    assert r.exists(tenant) == 0
    # Any other name is a caller-given id, looked up and written: a name that merely ends in the
    # token too, or one named after another token. A repeat returns the whole record.
    for res in (f"{{adm:m}}:r:x{TOKEN}", own("tok-other")):
        assert acquire(r, limits, res=res)[1] == 1
        held = record(TOKEN, NOW, charge("requests_per_minute", SEC, 1, 60_000, 1_000))
        assert r.get(res) == held
        assert acquire(r, limits, res=res, token="again")[1:6] == [2, 0, 0, held, -1]
    assert buckets(r, RPM) == {str(SEC): "6"}


def test_requests_without_a_caller_given_id_write_only_the_windows(r: redis.Redis) -> None:
    """The common case: however many requests of one call are admitted, the windows (and the
    denial counters) are all it writes; the replies are those under caller-given ids."""
    limits = [rpm(limit=2), tpm(0)]
    costs = [[1, 100], [1, 200], [1, 300]]
    reply = acquire_many(r, limits, [(own(f"tok-{k}"), f"tok-{k}", c) for k, c in enumerate(costs)])
    assert [q[1] for q in replies(reply, 2)] == [1, 1, 0]
    assert sorted(r.keys("*")) == sorted([RPM, TPM, DENIED])
    windows = dump(r)
    r.flushall()
    assert acquire_many(r, limits, [(f"{{adm:m}}:r:{k}", f"tok-{k}", c) for k, c in enumerate(costs)]) == reply
    assert {k: v for k, v in dump(r).items() if ":r:" not in k} == windows


def test_a_refusal_writes_nothing_but_its_denial_and_says_when_to_retry(r: redis.Redis) -> None:
    for i in range(5):
        acquire(r, [rpm(), tpm(100)], res=f"{{adm:m}}:r:{i}")
    before = dump(r)
    # Every request of the minute sits in second SEC, which leaves the window at (SEC+1) s + 60 s.
    wait = (SEC + 1) * 1_000 + 60_000 - NOW
    assert acquire(r, [rpm(), tpm(100)]) == [NOW, 0, 1, wait, "", 0, 1_500]
    assert dump(r) == plus_denials(before, requests_per_minute=1)  # counted against the binding limit
    # Not a ms early: 1 ms before the bucket leaves it is still refused, then admitted.
    assert acquire(r, [rpm(), tpm(100)], now=NOW + wait - 1) == [NOW + wait - 1, 0, 1, 1, "", 0, 1_500]
    assert dump(r) == plus_denials(before, requests_per_minute=2)
    assert acquire(r, [rpm(), tpm(100)], now=NOW + wait) == [NOW + wait, 1, 0, 0, "", 4, 1_900]
    # That admission recounted: the old bucket is gone and the bookkeeping starts again.
    assert r.hgetall(RPM) == {str(SEC + 61): "1", "_sum": "1", "_low": str(SEC + 61)}


def test_retry_after_waits_for_enough_buckets_to_leave(r: redis.Redis) -> None:
    acquire(r, [tpm(400, 1_000)], now=NOW, res="{adm:m}:r:a")  # second SEC
    acquire(r, [tpm(400, 1_000)], now=NOW + 2_000, res="{adm:m}:r:b")  # second SEC + 2
    acquire(r, [tpm(100, 1_000)], now=NOW + 5_000, res="{adm:m}:r:c")  # second SEC + 5
    later = NOW + 6_000
    # 900 held: 500 more needs the first bucket gone, 700 more the first two.
    assert acquire(r, [tpm(500, 1_000)], now=later) == [later, 0, 1, (SEC + 1) * 1_000 + 60_000 - later, "", 100]
    assert acquire(r, [tpm(700, 1_000)], now=later) == [later, 0, 1, (SEC + 3) * 1_000 + 60_000 - later, "", 100]
    assert acquire(r, [tpm(100, 1_000)], now=later)[:5] == [later, 1, 0, 0, ""]


def test_binding_is_the_limit_refusing_longest_first_on_ties(r: redis.Redis) -> None:
    acquire(r, [rpm(limit=1), tpm(10, 10), rpd(limit=1)], res="{adm:m}:r:a")
    later = NOW + 10_000
    minute_wait = (SEC + 1) * 1_000 + 60_000 - later
    day_wait = (QUARTER + 1) * 900_000 + 86_400_000 - later
    assert acquire(r, [rpm(limit=1), tpm(10, 10), rpd(limit=1)], now=later) == [later, 0, 3, day_wait, "", 0, 0, 0]
    assert acquire(r, [rpm(limit=1), tpm(10, 10)], now=later) == [later, 0, 1, minute_wait, "", 0, 0]
    assert acquire(r, [tpm(10, 10), rpm(limit=1)], now=later) == [later, 0, 1, minute_wait, "", 0, 0]
    assert acquire(r, [tpm(0, 10), rpm(limit=2)], now=later) == [later, 1, 0, 0, "", 0, 0]
    # Each refusal counted once, against its binding limit only.
    assert r.hgetall(DENIED) == {"requests_per_day": "1", "requests_per_minute": "1", "tokens_per_minute": "1"}


def test_expired_buckets_stop_counting_and_are_deleted_only_on_admission(r: redis.Redis) -> None:
    # Expired when (index + 1) * bucket <= now - window = (SEC - 60) s + 456 ms: bucket SEC - 61
    # ends at (SEC - 60) s, so it is out; bucket SEC - 60 overlaps the window: it counts in full.
    # No _sum/_low yet: the script recounts.
    r.hset(RPM, mapping={str(SEC - 62): 4, str(SEC - 61): 4, str(SEC - 60): 2})
    before = dump(r)
    assert acquire(r, [rpm()], mode="peek")[5:] == [3]
    assert acquire(r, [rpm(limit=2)]) == [NOW, 0, 1, (SEC - 59) * 1_000 + 60_000 - NOW, "", 0]
    assert dump(r) == plus_denials(before, requests_per_minute=1)  # a refusal keeps even the expired buckets
    assert acquire(r, [rpm()]) == [NOW, 1, 0, 0, "", 2]
    assert r.hgetall(RPM) == {str(SEC - 60): "2", str(SEC): "1", "_sum": "3", "_low": str(SEC - 60)}
    # The exact edge: at now = (SEC - 59) s + 60 s = (SEC + 1) s, bucket SEC - 60 has just left.
    edge = (SEC - 59) * 1_000 + 60_000
    assert acquire(r, [rpm(limit=3)], now=edge - 1, mode="peek")[5:] == [0]
    assert acquire(r, [rpm(limit=3)], now=edge, res="{adm:m}:r:edge") == [edge, 1, 0, 0, "", 1]
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
    assert acquire(r, [rpm()], now=leaves, res="{adm:m}:r:b") == [leaves, 1, 0, 0, "", 2]
    assert r.hgetall(RPM) == {str(SEC + 30): "2", str(SEC + 61): "1", "_sum": "3", "_low": str(SEC + 30)}
    # Then the fast path again: adds the cost to _sum and keeps _low.
    assert acquire(r, [rpm()], now=leaves + 5_000, res="{adm:m}:r:c") == [leaves + 5_000, 1, 0, 0, "", 1]
    assert r.hgetall(RPM) == {
        **{str(SEC + 30): "2", str(SEC + 61): "1", str(SEC + 66): "1"},
        **{"_sum": "4", "_low": str(SEC + 30)},
    }


def test_peek_writes_nothing(r: redis.Redis) -> None:
    seed(r)
    before = dump(r)
    # What is left now (the cost is not taken off): 5 - 2 live; 2000 - 900.
    assert acquire(r, [rpm(), tpm(1_100)], mode="peek") == [NOW, 1, 0, 0, "", 3, 1_100]
    # Nor is a refusal counted.
    assert acquire(r, [rpm(), tpm(1_101)], mode="peek") == [NOW, 0, 2, (SEC) * 1_000 + 60_000 - NOW, "", 3, 1_100]
    assert acquire(r, [rpm(), tpm(2_001)], mode="peek") == [NOW, 3, 2, -1, "", -1, -1]
    # A peek ignores any reservation of the same key (and returns no record).
    assert acquire(r, [rpm()], mode="peek", res=HELD)[:5] == [NOW, 1, 0, 0, ""]
    assert dump(r) == before


def test_shadow_admits_and_reports(r: redis.Redis) -> None:
    acquire(r, [rpm(limit=1)], res="{adm:m}:r:a")
    wait = (SEC + 1) * 1_000 + 60_000 - NOW
    assert acquire(r, [rpm(limit=1), tpm(10)], mode="shadow") == [NOW, 4, 1, wait, "", 0, 1_990]
    assert r.hgetall(RPM) == {str(SEC): "2", "_sum": "2", "_low": str(SEC)}
    assert r.get(RES) == record(
        TOKEN,
        NOW,
        charge("requests_per_minute", SEC, 1, 60_000, 1_000),
        charge("tokens_per_minute", SEC, 10, 60_000, 1_000),
    )
    assert r.exists(DENIED) == 0  # admitted: no refusal to count
    assert acquire(r, [tpm(10)], mode="shadow", res="{adm:m}:r:c") == [NOW, 1, 0, 0, "", 1_980]
    # Too large is still status 3, shadow or not: a refusal, counted, and nothing else written.
    before = dump(r)
    assert acquire(r, [tpm(2_001)], mode="shadow", res="{adm:m}:r:d") == [NOW, 3, 1, -1, "", -1]
    assert dump(r) == plus_denials(before, tokens_per_minute=1)


def test_a_repeated_acquire_consumes_nothing_and_returns_the_held_record(r: redis.Redis) -> None:
    limits = [rpm(), tpm(100)]
    assert acquire(r, limits)[1] == 1
    held = record(
        TOKEN,
        NOW,
        charge("requests_per_minute", SEC, 1, 60_000, 1_000),
        charge("tokens_per_minute", SEC, 100, 60_000, 1_000),
    )
    before = dump(r)
    # A retry draws a token of its own; the reply hands back the whole record the id holds.
    assert acquire(r, limits, token="retry") == [NOW, 2, 0, 0, held, -1, -1]
    assert acquire(r, limits, now=NOW + 5, mode="shadow", token="x") == [NOW + 5, 2, 0, 0, held, -1, -1]
    # Even when it would now be refused, or could never fit: the reservation answers first (and
    # no refusal is counted).
    assert acquire(r, [rpm(limit=1), tpm(5_000)], now=NOW + 7, token="y") == [NOW + 7, 2, 0, 0, held, -1, -1]
    assert acquire(r, [rpm(limit=1), tpm(100)], now=NOW + 8, token="z") == [NOW + 8, 2, 0, 0, held, -1, -1]
    assert dump(r) == before
    # The record is the first acquire's handle (its token, time and charges): it settles the
    # reservation, once, whichever copy of the handle comes first.
    token, at, charges = from_record(held)
    assert (token, at, charges) == (TOKEN, NOW, charged(limits))
    assert settle(r, charges, [0, 0], now=NOW + 9, token=token, at=at) == [1, NOW + 9]
    assert r.exists(RES) == 0
    assert buckets(r, RPM) == buckets(r, TPM) == {}
    settled = dump(r)
    assert settle(r, charged(limits), [1, 100], now=NOW + 10) == [0, NOW + 10]
    assert dump(r) == settled


def test_cost_above_the_limit_is_refused_for_good(r: redis.Redis) -> None:
    seed(r)
    before = dump(r)
    assert acquire(r, [rpm(), tpm(2_001)]) == [NOW, 3, 2, -1, "", -1, -1]
    assert acquire(r, [rpm(2, 1), tpm(5_000)]) == [NOW, 3, 1, -1, "", -1, -1]  # the first that cannot fit
    assert acquire(r, [rpm(1, 0)]) == [NOW, 3, 1, -1, "", -1]
    assert dump(r) == plus_denials(before, requests_per_minute=2, tokens_per_minute=1)
    zero = ("{adm:m}:w:zero", "tokens_per_minute", 0, 60_000, 1_000, 0)
    assert acquire(r, [zero], res="{adm:m}:r:free") == [NOW, 1, 0, 0, "", 0]  # 0 against 0 fits


# -- several requests in one call ------------------------------------------------------------------


def test_requests_in_one_call_are_taken_in_order_each_as_if_alone(r: redis.Redis) -> None:
    """What auto-batching sends: a limit with room for two admits the first two and refuses the
    third, which waits for the bucket holding them; the windows hold the two costs and the
    denial counter counts the one refusal. Replies and writes are those of three calls."""
    limits = [rpm(limit=2), tpm(0)]
    requests: list[Request] = [
        ("{adm:m}:r:a", "tok-a", [1, 100]),
        ("{adm:m}:r:b", "tok-b", [1, 200]),
        ("{adm:m}:r:c", "tok-c", [1, 300]),
    ]
    wait = (SEC + 1) * 1_000 + 60_000 - NOW
    reply = acquire_many(r, limits, requests)
    assert reply == [
        *[NOW, 1, 0, 0, "", 1, 1_900],
        *[1, 0, 0, "", 0, 1_700],
        *[0, 1, wait, "", 0, 1_700],  # the third: refused by requests_per_minute
    ]
    assert r.hgetall(RPM) == {str(SEC): "2", "_sum": "2", "_low": str(SEC)}
    assert r.hgetall(TPM) == {str(SEC): "300", "_sum": "300", "_low": str(SEC)}
    assert 60_000 < r.pttl(RPM) <= 61_000
    assert 60_000 < r.pttl(TPM) <= 61_000
    assert r.hgetall(DENIED) == {"requests_per_minute": "1"}
    assert r.get("{adm:m}:r:a") == record(
        "tok-a",
        NOW,
        charge("requests_per_minute", SEC, 1, 60_000, 1_000),
        charge("tokens_per_minute", SEC, 100, 60_000, 1_000),
    )
    assert r.get("{adm:m}:r:b") == record(
        "tok-b",
        NOW,
        charge("requests_per_minute", SEC, 1, 60_000, 1_000),
        charge("tokens_per_minute", SEC, 200, 60_000, 1_000),
    )
    assert r.exists("{adm:m}:r:c") == 0
    assert TTL - 1_000 < r.pttl("{adm:m}:r:a") <= TTL
    batched = dump(r)
    # The same three requests sent one at a time: the same replies, the same Redis.
    r.flushall()
    alone = [acquire_many(r, limits, [q]) for q in requests]
    assert alone == replies(reply, 2)
    assert dump(r) == batched


def test_refusals_in_one_call_are_counted_at_once(r: redis.Redis) -> None:
    """Two refusals by the same limit in one call add 2 to its counter; each limit its own."""
    acquire(r, [rpm(limit=1), tpm(10, 10)], res="{adm:m}:r:a")
    requests: list[Request] = [
        ("{adm:m}:r:b", "tok-b", [1, 0]),  # requests_per_minute refuses
        ("{adm:m}:r:c", "tok-c", [0, 11]),  # could never fit tokens_per_minute: status 3
        ("{adm:m}:r:d", "tok-d", [1, 5]),  # both refuse, as long: the first, requests_per_minute
        ("{adm:m}:r:e", "tok-e", [0, 0]),  # fits
    ]
    wait = (SEC + 1) * 1_000 + 60_000 - NOW
    assert acquire_many(r, [rpm(limit=1), tpm(10, 10)], requests) == [
        *[NOW, 0, 1, wait, "", 0, 0],
        *[3, 2, -1, "", -1, -1],
        *[0, 1, wait, "", 0, 0],
        *[1, 0, 0, "", 0, 0],
    ]
    assert r.hgetall(DENIED) == {"requests_per_minute": "2", "tokens_per_minute": "1"}
    assert sorted(r.keys("{adm:m}:r:*")) == ["{adm:m}:r:a", "{adm:m}:r:e"]  # only the admitted


def test_one_call_writes_each_window_and_counter_once(r: redis.Redis, real_redis: None) -> None:
    """However many requests: one HSET per window, one HINCRBY per limit that refused (by the
    number of its refusals), one write per reservation admitted under a caller-given id (none for
    one named after its token)."""
    requests: list[Request] = [
        (f"{{adm:m}}:r:{i}" if i % 2 == 0 else own(f"tok-{i}"), f"tok-{i}", [1, 100]) for i in range(4)
    ]
    hset, hincrby, pexpire, sets = (calls(r, c) for c in ("hset", "hincrby", "pexpire", "set"))
    reply = acquire_many(r, [rpm(limit=2), tpm(0)], requests)
    assert [q[1] for q in replies(reply, 2)] == [1, 1, 0, 0]
    assert calls(r, "hset") - hset == 2  # RPM and TPM, once each
    assert calls(r, "pexpire") - pexpire == 2
    assert calls(r, "hincrby") - hincrby == 1
    assert calls(r, "set") - sets == 1  # the first admitted (the second is named after its token)
    assert r.hgetall(DENIED) == {"requests_per_minute": "2"}
    assert r.hgetall(RPM) == {str(SEC): "2", "_sum": "2", "_low": str(SEC)}
    assert r.hgetall(TPM) == {str(SEC): "200", "_sum": "200", "_low": str(SEC)}


def test_a_reservation_id_twice_in_one_call_is_admitted_once(r: redis.Redis) -> None:
    """The second request naming the same caller-given id is a retry of the first: status 2 with
    the first's record, consuming nothing and counting no refusal, as it would in a later call."""
    requests: list[Request] = [(RES, "tok-first", [1, 100]), (RES, "tok-second", [1, 200])]
    first = record(
        "tok-first",
        NOW,
        charge("requests_per_minute", SEC, 1, 60_000, 1_000),
        charge("tokens_per_minute", SEC, 100, 60_000, 1_000),
    )
    assert acquire_many(r, [rpm(), tpm(0)], requests) == [
        *[NOW, 1, 0, 0, "", 4, 1_900],
        *[2, 0, 0, first, -1, -1],
    ]
    assert r.get(RES) == first
    assert r.hgetall(RPM) == {str(SEC): "1", "_sum": "1", "_low": str(SEC)}
    assert r.hgetall(TPM) == {str(SEC): "100", "_sum": "100", "_low": str(SEC)}
    assert r.exists(DENIED) == 0
    # Even when the second could never fit, or the first is refused: the first admitted answers.
    r.flushall()
    requests = [(RES, "tok-first", [1, 100]), (RES, "tok-second", [1, 5_000])]
    assert acquire_many(r, [rpm(), tpm(0)], requests)[7:] == [2, 0, 0, first, -1, -1]
    assert r.exists(DENIED) == 0
    r.flushall()
    requests = [(RES, "tok-first", [6, 100]), (RES, "tok-second", [1, 100])]
    assert acquire_many(r, [rpm(), tpm(0)], requests) == [
        *[NOW, 3, 1, -1, "", -1, -1],
        *[1, 0, 0, "", 4, 1_900],
    ]
    assert r.get(RES).startswith("tok-second ")


def test_a_peek_of_several_requests_writes_nothing(r: redis.Redis) -> None:
    """A peek takes nothing off: each request sees the windows as they are."""
    seed(r)
    before = dump(r)
    requests: list[Request] = [(RES, "tok-a", [1, 1_100]), ("{adm:m}:r:two", "tok-b", [1, 1_100])]
    assert acquire_many(r, [rpm(), tpm(0)], requests, mode="peek") == [
        *[NOW, 1, 0, 0, "", 3, 1_100],
        *[1, 0, 0, "", 3, 1_100],
    ]
    # A held reservation is not looked up, a refusal not counted.
    requests = [(HELD, "tok-a", [1, 1_100]), (RES, "tok-b", [1, 1_101])]
    assert acquire_many(r, [rpm(), tpm(0)], requests, mode="peek") == [
        *[NOW, 1, 0, 0, "", 3, 1_100],
        *[0, 2, (SEC) * 1_000 + 60_000 - NOW, "", 3, 1_100],
    ]
    assert dump(r) == before


@pytest.mark.parametrize("name", ["tokens\tper_minute", "tokens per_minute", "tokens\nper", "tokens|per_minute", ""])
def test_a_limit_name_settle_could_not_read_is_refused(r: redis.Redis, name: str) -> None:
    """Names go into a caller-given id's record (a duplicate's handle is read from it) between
    spaces and '|', and settle refuses them: acquire refuses either, writing nothing."""
    before = dump(r)
    with pytest.raises(redis.ResponseError, match="ERR_ARGS limit 1: bad name"):
        acquire(r, [("{adm:m}:w:tab", name, 2_000, 60_000, 1_000, 300)])
    assert dump(r) == before


def test_a_key_of_another_type_fails_the_whole_call_before_any_write(r: redis.Redis) -> None:
    """Looked-up reservations are only read while requests are taken: a later request whose key
    cannot be read fails the call with nothing written, not even the first one's reservation."""
    r.hset("{adm:m}:r:old", mapping={"tok": "x"})
    before = dump(r)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        acquire_many(r, [rpm()], [("{adm:m}:r:a", "ta", [1]), ("{adm:m}:r:old", "tb", [1])])
    assert dump(r) == before


# -- settle ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("res", [RES, OWN], ids=["caller-given id", "own token"])
def test_settle_moves_each_amount_once(r: redis.Redis, res: str) -> None:
    """Each charge moves to its real value in the bucket the acquire charged. The marker then
    makes any other settle of the same acquire (a retry, a copy of the handle, a release) a
    no-op: it answers 0 and writes nothing."""
    limits = [rpm(), tpm(300), rpd()]
    acquire(r, limits, res=res)
    acquire(r, [rpm(), tpm(100)], res="{adm:m}:r:two", token="other")
    later = NOW + 30_000
    assert settle(r, charged(limits), [1, 120, 1], now=later, res=res, nonce=NONCE) == [1, later]
    assert r.exists(res) == 0  # a caller-given id is free again (an own-token one never existed)
    assert r.get(marker()) == NONCE
    assert r.hgetall(TPM) == {str(SEC): "220", "_sum": "220", "_low": str(SEC)}
    assert r.hgetall(RPM) == {str(SEC): "2", "_sum": "2", "_low": str(SEC)}
    assert r.hgetall(RPD) == {str(QUARTER): "1", "_sum": "1", "_low": str(QUARTER)}
    assert 60_000 < r.pttl(TPM) <= 61_000
    for key in (RPM, TPM, RPD):
        check_bookkeeping(r, key)
    assert r.get("{adm:m}:r:two").startswith("other ")  # the other acquire's record is its own
    before = dump(r)
    assert settle(r, charged(limits), [1, 120, 1], now=later + 1, res=res) == [0, later + 1]
    assert settle(r, charged(limits), [0, 0, 0], now=later + 2, res=res) == [0, later + 2]  # nor a release
    assert settle(r, charged(limits), [1, 5_000, 1], now=later + 3, res=res) == [0, later + 3]
    assert dump(r) == before
    # The very call sent again (its reply lost, re-sent by the client's retry): told it settled,
    # and nothing moves twice.
    assert settle(r, charged(limits), [1, 120, 1], now=later + 4, res=res, nonce=NONCE) == [1, later + 4]
    assert dump(r) == before


def test_the_marker_lives_what_is_left_of_the_ttl(r: redis.Redis) -> None:
    """A second settle can only come while the reservation would live: the marker lives that
    long (at + ttl - now), never longer than the TTL itself, and is gone when it no longer matters."""
    limits = [rpm(), tpm(300)]
    acquire(r, limits, ttl=1_234_567)
    later = NOW + 30_000
    assert settle(r, charged(limits), [1, 100], now=later, ttl=1_234_567) == [1, later]
    assert 1_234_567 - 30_000 - 1_000 < r.pttl(marker()) <= 1_234_567 - 30_000
    # Near the end of the TTL: a few seconds.
    acquire(r, [rpm()], res=own("late"), token="late")
    assert settle(r, charged([rpm()]), [1], now=NOW + TTL - 5_000, res=own("late"), token="late")[0] == 1
    assert 4_000 < r.pttl(marker("late")) <= 5_000
    # Settled "before" it was admitted (a clock hook behind the acquire's): the TTL, no more.
    acquire(r, [rpm()], res=own("early"), token="early")
    assert settle(r, charged([rpm()]), [1], now=NOW - 10_000, res=own("early"), token="early")[0] == 1
    assert TTL - 1_000 < r.pttl(marker("early")) <= TTL


def test_a_settle_after_the_ttl_changes_nothing(r: redis.Redis) -> None:
    """From at + ttl on the reservation is over: settle answers 0 and writes nothing, not even in
    a window whose bucket still counts (the day's), nor the caller-given id's record (left to
    expire). Its last ms still settles."""
    limits = [rpm(), tpm(300), rpd()]
    acquire(r, limits)
    before = dump(r)
    for now in (NOW + TTL, NOW + TTL + 1, NOW + 10 * TTL):
        assert settle(r, charged(limits), [0, 0, 0], now=now) == [0, now]
        assert dump(r) == before
    assert settle(r, charged(limits), [0, 0, 0], now=NOW + 1_000, ttl=1_000) == [0, NOW + 1_000]
    assert settle(r, charged(limits), [0, 0, 0], now=NOW + 5, at=NOW - TTL) == [0, NOW + 5]  # an older acquire
    assert dump(r) == before
    last = NOW + TTL - 1
    assert settle(r, charged(limits), [0, 0, 0], now=last) == [1, last]
    assert buckets(r, RPD) == {}
    assert r.hget(RPD, "_sum") == "0"
    assert r.exists(RES) == 0


def test_settle_charges_extra(r: redis.Redis) -> None:
    acquire(r, [rpm(), tpm(300)])
    assert settle(r, charged([rpm(), tpm(300)]), [1, 2_500]) == [1, NOW]
    assert r.hgetall(TPM) == {str(SEC): "2500", "_sum": "2500", "_low": str(SEC)}  # more than the limit
    assert acquire(r, [tpm(0)], res="{adm:m}:r:next")[:3] == [NOW, 0, 1]  # so the next request waits


def test_settle_charges_a_zero_estimate_in_full(r: redis.Redis) -> None:
    """A request admitted with an estimate of 0 tokens is charged what it really used: its
    bucket, never made by acquire, is made by settle (with the window's bookkeeping)."""
    limits = [rpm(), tpm(0)]
    acquire(r, limits, res=OWN)
    assert buckets(r, TPM) == {}
    assert settle(r, charged(limits), [1, 2_500], now=NOW + 500, res=OWN) == [1, NOW + 500]
    assert r.hgetall(TPM) == {str(SEC): "2500", "_sum": "2500", "_low": str(SEC)}
    assert 60_000 < r.pttl(TPM) <= 61_000
    assert acquire(r, [tpm(0)], res="{adm:m}:r:next", token="n")[:3] == [NOW, 0, 1]
    # The same into a window that has no bookkeeping at all (its hash gone, say): made from scratch.
    r.flushall()
    acquire(r, [tpm(0)], res=OWN)
    r.delete(TPM)
    assert settle(r, charged([tpm(0)]), [3], res=OWN)[0] == 1
    assert r.hgetall(TPM) == {str(SEC): "3", "_sum": "3", "_low": str(SEC)}


def test_release_gives_all_back(r: redis.Redis) -> None:
    acquire(r, [rpm()], res=own("a"), token="a")
    acquire(r, [rpm()], res=own("rel"), token="rel")
    assert settle(r, charged([rpm()]), [0], res=own("rel"), token="rel") == [1, NOW]
    assert buckets(r, RPM) == {str(SEC): "1"}
    acquire(r, [rpm(), tpm(10)], res="{adm:m}:r:last", token="last")
    acquire(r, [rpm()], res=own("x"), token="x")
    # Release of "last": rpm goes down by one, its tpm bucket empties.
    assert settle(r, charged([rpm(), tpm(10)]), [0, 0], res="{adm:m}:r:last", token="last")[0] == 1
    assert r.hgetall(RPM) == {str(SEC): "2", "_sum": "2", "_low": str(SEC)}
    assert buckets(r, TPM) == {}
    assert r.hget(TPM, "_sum") == "0"
    check_bookkeeping(r, TPM)
    assert r.exists("{adm:m}:r:last") == 0


def test_settle_skips_charges_not_passed_and_buckets_out_of_the_window(r: redis.Redis) -> None:
    limits = [rpm(), tpm(300), rpd()]
    acquire(r, limits)
    held = charged(limits)
    # Bucket SEC leaves the minute window at (SEC + 1) s + 60 s; the day bucket stays.
    gone = (SEC + 1) * 1_000 + 60_000
    assert settle(r, [held[2], held[1]], [0, 0], now=gone) == [1, gone]
    assert buckets(r, TPM) == {str(SEC): "300"}  # out of its window: nothing to move
    assert r.hget(TPM, "_sum") == "300"
    assert buckets(r, RPM) == {str(SEC): "1"}  # not passed: untouched
    assert buckets(r, RPD) == {}  # released
    assert r.hget(RPD, "_sum") == "0"
    # One ms earlier the minute bucket still counts, so it would have moved.
    r.flushall()
    acquire(r, [tpm(300)])
    assert settle(r, charged([tpm(300)]), [0], now=gone - 1) == [1, gone - 1]
    assert buckets(r, TPM) == {}
    # Likewise a zero estimate whose bucket has left is not charged: it no longer counts anyway.
    r.flushall()
    acquire(r, [tpm(0)])
    assert settle(r, charged([tpm(0)]), [50], now=gone) == [1, gone]
    assert buckets(r, TPM) == {}
    assert r.hget(TPM, "_sum") == "0"
    # The window is the charge's own (as the handle says), not anything stored: a day-long
    # window keeps that minute bucket in.
    r.flushall()
    acquire(r, [tpm(300)])
    day_long = [(TPM, "tokens_per_minute", SEC, 300, 86_400_000, 1_000)]
    assert settle(r, day_long, [100], now=gone) == [1, gone]
    assert buckets(r, TPM) == {str(SEC): "100"}
    check_bookkeeping(r, TPM)


def test_settle_never_takes_a_bucket_below_zero(r: redis.Redis) -> None:
    acquire(r, [tpm(300)])
    r.hset(TPM, mapping={str(SEC): 100, "_sum": 100})  # lowered behind the script's back
    assert settle(r, charged([tpm(300)]), [0]) == [1, NOW]
    assert buckets(r, TPM) == {}
    assert r.hget(TPM, "_sum") == "0"
    check_bookkeeping(r, TPM)
    # Nor a bucket the acquire's charge is no longer in at all.
    r.flushall()
    acquire(r, [tpm(300)], res=OWN)
    r.hdel(TPM, str(SEC))
    r.hset(TPM, "_sum", 0)
    assert settle(r, charged([tpm(300)]), [0], res=OWN) == [1, NOW]
    assert r.hgetall(TPM) == {"_sum": "0", "_low": str(SEC)}


def test_a_settle_under_another_token_is_another_acquires(r: redis.Redis) -> None:
    """The token names the acquire settled: a settle under another token (even one differing by
    a character) marks that token only, so this acquire's settle still comes through; and it
    leaves this acquire's record under the caller-given id alone."""
    limits = [rpm(), tpm(300)]
    acquire(r, limits)
    held = r.get(RES)
    for token in ("tok-other", TOKEN + "x", TOKEN[:-1], TOKEN.upper()):
        before = dump(r)
        # its amounts as charged: nothing to move in the windows
        assert settle(r, charged(limits), [1, 300], now=NOW + 1, token=token, nonce=NONCE) == [1, NOW + 1]
        after = dump(r)
        assert after.pop(marker(token))[:2] == ("string", NONCE)
        assert after == before
    assert r.get(RES) == held
    assert settle(r, charged(limits), [0, 0], token=TOKEN) == [1, NOW]
    assert r.exists(RES) == 0
    assert buckets(r, RPM) == buckets(r, TPM) == {}


def test_a_stale_handle_never_settles_a_later_reservation_under_the_same_id(r: redis.Redis) -> None:
    """Released, then the id reused by another acquire: a retry of the first release is a no-op
    (its marker), whatever amounts it says."""
    acquire(r, [rpm(), tpm(300)], token="first")
    assert settle(r, charged([rpm(), tpm(300)]), [0, 0], token="first") == [1, NOW]
    second = [rpm(), tpm(200)]
    assert acquire(r, second, now=NOW + 10, token="second")[1] == 1
    assert r.get(RES) == record(
        "second",
        NOW + 10,
        charge("requests_per_minute", SEC, 1, 60_000, 1_000),
        charge("tokens_per_minute", SEC, 200, 60_000, 1_000),
    )
    before = dump(r)
    assert settle(r, charged([rpm(), tpm(300)]), [0, 0], now=NOW + 20, token="first") == [0, NOW + 20]
    assert settle(r, charged([rpm(), tpm(300)]), [1, 999], token="first")[0] == 0
    assert dump(r) == before
    assert r.hgetall(TPM) == {str(SEC): "200", "_sum": "200", "_low": str(SEC)}
    assert settle(r, charged(second, NOW + 10), [0, 0], now=NOW + 30, token="second", at=NOW + 10) == [1, NOW + 30]
    assert buckets(r, RPM) == buckets(r, TPM) == {}
    assert r.exists(RES) == 0


def test_a_caller_given_ids_record_is_deleted_only_by_its_own_acquires_settle(r: redis.Redis) -> None:
    """A record lost while its handle lives (evicted, say), the id since taken by another
    acquire: the first handle's settle moves its own charges and leaves the later record alone,
    which its own acquire then settles (and frees) in full."""
    first, second = [rpm(), tpm(300)], [rpm(), tpm(200)]
    acquire(r, first, token="first")
    r.delete(RES)
    assert acquire(r, second, now=NOW + 10, token="second")[1] == 1  # not a repeat: the id was free
    later = record(
        "second",
        NOW + 10,
        charge("requests_per_minute", SEC, 1, 60_000, 1_000),
        charge("tokens_per_minute", SEC, 200, 60_000, 1_000),
    )
    assert r.get(RES) == later
    assert settle(r, charged(first), [0, 0], now=NOW + 20, token="first") == [1, NOW + 20]
    assert r.get(RES) == later
    assert TTL - 10_000 < r.pttl(RES) <= TTL  # not touched
    assert r.hgetall(TPM) == {str(SEC): "200", "_sum": "200", "_low": str(SEC)}
    assert r.hgetall(RPM) == {str(SEC): "1", "_sum": "1", "_low": str(SEC)}
    assert settle(r, charged(second, NOW + 10), [1, 150], now=NOW + 30, token="second", at=NOW + 10) == [1, NOW + 30]
    assert r.exists(RES) == 0
    assert r.hgetall(TPM) == {str(SEC): "150", "_sum": "150", "_low": str(SEC)}


@pytest.mark.parametrize(
    ("held", "deleted"),
    [
        ("", False),
        ("garbage", False),
        (f"{TOKEN}x {NOW}", False),
        (f" {TOKEN} {NOW}", False),
        (f"tok-other {NOW}|requests_per_minute {SEC} 1 60000 1000", False),
        (TOKEN, True),
        (f"{TOKEN} soon|garbage", True),
        (f"{TOKEN} {NOW}|requests_per_minute {SEC} 1 60000 1000", True),
    ],
)
def test_a_caller_given_ids_record_is_read_for_its_token_only(r: redis.Redis, held: str, deleted: bool) -> None:
    """Settle takes the charges from its arguments, never from the record: whatever the id
    holds, the charges move, and the record is deleted only when its first word is this
    acquire's token."""
    acquire(r, [rpm()])
    r.set(RES, held)
    assert settle(r, charged([rpm()]), [0]) == [1, NOW]
    assert buckets(r, RPM) == {}
    assert r.get(RES) == (None if deleted else held)


def test_a_caller_given_id_of_another_type_does_not_break_settle(r: redis.Redis) -> None:
    """A hash under the id (a reservation of an older version, say): settle moves its charges,
    writes its marker and leaves that key as it was."""
    acquire(r, [rpm()])
    r.delete(RES)
    r.hset(RES, mapping={"tok": TOKEN, "n": 0})
    r.pexpire(RES, 5_000_000)
    before = dump(r)
    assert settle(r, charged([rpm()]), [0], nonce=NONCE) == [1, NOW]
    after = dump(r)
    assert after[RES] == before[RES]
    assert after[marker()][:2] == ("string", NONCE)
    assert buckets(r, RPM) == {}


def test_each_reservation_of_one_call_settles_on_its_own(r: redis.Redis) -> None:
    """Requests admitted together, one under a caller-given id and one under its own token: each
    settles its own amounts under its own token, once, and only the first has a record to free."""
    requests: list[Request] = [("{adm:m}:r:a", "tok-a", [1, 100]), (own("tok-b"), "tok-b", [1, 200])]
    limits = [rpm(), tpm(0)]
    acquire_many(r, limits, requests)
    assert sorted(r.keys("{adm:m}:r:*")) == ["{adm:m}:r:a"]
    b = [(RPM, "requests_per_minute", SEC, 1, 60_000, 1_000), (TPM, "tokens_per_minute", SEC, 200, 60_000, 1_000)]
    assert settle(r, b, [0, 0], res=own("tok-b"), token="tok-b") == [1, NOW]
    assert r.hgetall(TPM) == {str(SEC): "100", "_sum": "100", "_low": str(SEC)}
    assert r.hgetall(RPM) == {str(SEC): "1", "_sum": "1", "_low": str(SEC)}
    assert r.get("{adm:m}:r:a") is not None
    before = dump(r)
    assert settle(r, b, [0, 0], res=own("tok-b"), token="tok-b") == [0, NOW]
    assert dump(r) == before
    a = [(RPM, "requests_per_minute", SEC, 1, 60_000, 1_000), (TPM, "tokens_per_minute", SEC, 100, 60_000, 1_000)]
    assert settle(r, a, [0, 0], res="{adm:m}:r:a", token="tok-a") == [1, NOW]
    assert r.exists("{adm:m}:r:a") == 0
    assert buckets(r, RPM) == buckets(r, TPM) == {}


def test_settle_records_the_usage_once(r: redis.Redis) -> None:
    """With its ledger part a settle adds the usage to the model's and the tenant's counters in
    the same call, under the same marker: a second settle adds nothing either, and the first
    one sent again (a lost reply, re-sent by the client) is told it counted, adding nothing."""
    limits = [rpm(), tpm(300)]
    acquire(r, limits)
    part = ledger_part(tenant="acme", cap=10)
    assert settle(r, charged(limits), [1, 120], ledger=part, nonce=NONCE) == [1, NOW]
    for key in part[0][1:9]:
        assert r.hgetall(key) == {"requests": "1", "input_tokens": "120"}, key
    assert r.smembers(TENANTS) == {"acme"}
    assert r.xlen(EVENTS) == 1
    assert buckets(r, TPM) == {str(SEC): "120"}
    assert r.exists(RES) == 0
    before = dump(r)
    assert settle(r, charged(limits), [1, 120], ledger=part) == [0, NOW]
    assert dump(r) == before
    # Re-sent a minute later: its ledger keys name the old minute, yet the marker answers first.
    assert settle(r, charged(limits), [1, 120], now=NOW + 60_000, ledger=part, nonce=NONCE) == [1, NOW + 60_000]
    assert dump(r) == before


def test_a_settle_whose_ledger_keys_name_another_minute_does_nothing(r: redis.Redis) -> None:
    """Ledger keys named after another minute than the server's: {2, now} and nothing written,
    not even the marker, so the call sent again with keys named after now settles."""
    limits = [rpm(), tpm(300)]
    acquire(r, limits)
    before = dump(r)
    for stale in (NOW - 60_000, NOW + 60_000, NOW - 86_400_000):
        assert settle(r, charged(limits), [1, 120], ledger=ledger_part(now=stale)) == [2, NOW]
        assert dump(r) == before
    assert settle(r, charged(limits), [1, 120], ledger=ledger_part()) == [1, NOW]
    assert buckets(r, TPM) == {str(SEC): "120"}


def test_a_window_of_another_type_fails_the_settle_before_any_write(r: redis.Redis) -> None:
    """settle.lua reads every window before it writes: a key it cannot read fails the call with
    nothing changed (no marker either), so the settle can come again once the key is fixed."""
    limits = [rpm(), tpm(300)]
    acquire(r, limits)
    tpm_window = r.hgetall(TPM)
    r.delete(TPM)
    r.set(TPM, "not a hash")
    before = dump(r)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        settle(r, charged(limits), [1, 120])
    assert dump(r) == before
    r.delete(TPM)
    r.hset(TPM, mapping=tpm_window)
    assert settle(r, charged(limits), [1, 120]) == [1, NOW]
    assert buckets(r, TPM) == {str(SEC): "120"}


@pytest.mark.parametrize("period", [0, 1, 2, 3], ids=["total", "minute", "hour", "day"])
def test_a_ledger_overflow_writes_nothing_and_takes_the_marker_back(r: redis.Redis, period: int) -> None:
    """A counter that would overflow fails the settle with nothing written: the marker is taken
    back (so the settle may come again), the windows and the record are as they were."""
    limits = [rpm(), tpm(300)]
    acquire(r, limits)
    part = ledger_part()
    counter = part[0][1 + period]
    r.hset(counter, "requests", 2**63 - 1)
    before = dump(r)
    with pytest.raises(redis.ResponseError, match="ERR_OVERFLOW"):
        settle(r, charged(limits), [1, 120], ledger=part)
    assert dump(r) == before
    r.delete(counter)
    assert settle(r, charged(limits), [1, 120], ledger=part) == [1, NOW]
    assert buckets(r, TPM) == {str(SEC): "120"}


# -- bad arguments ---------------------------------------------------------------------------------

TWO, TWO_TOKEN = "{adm:m}:r:two", "tok-two"  # the second request of GOOD
GOOD: list[Any] = [NOW, "acquire", TTL, 2, 2]
GOOD += ["requests_per_minute", 5, 60_000, 1_000, "tokens_per_minute", 2_000, 60_000, 1_000]
GOOD += [TOKEN, 1, 9, TWO_TOKEN, 1, 9]
# ARGV positions (0-based here) in GOOD
A_NOW, A_MODE, A_TTL, A_N, A_M = range(5)
A_NAME, A_LIMIT, A_WINDOW, A_BUCKET = range(5, 9)  # the first limit; the second is 4 on (L2)
A_TOKEN, A_COST = 13, 14  # the first request (its cost on the first limit); the second is 3 on (R2)
L2, R2 = 4, 3
# The layout before several requests: reservation first, the token as ARGV[5], costs per limit.
OLD = [NOW, "acquire", TTL, 2, TOKEN, "requests_per_minute", 5, 60_000, 1_000, 1]
OLD += ["tokens_per_minute", 2_000, 60_000, 1_000, 9]


def with_arg(index: int, value: Any) -> list[Any]:
    args = list(GOOD)
    args[index] = value
    return args


def limits_args(n: int) -> tuple[list[str], list[Any]]:
    """n limits, one request: the keys and the args."""
    keys = [*(f"{{adm:m}}:w:k{i}" for i in range(n)), DENIED, RES]
    args: list[Any] = [NOW, "acquire", TTL, n, 1]
    for i in range(n):
        args += [f"k{i}", 5, 60_000, 1_000]
    return keys, [*args, TOKEN, *[1] * n]


def requests_args(m: int) -> tuple[list[str], list[Any]]:
    """One limit, m requests: the keys and the args."""
    keys = [RPM, DENIED, *(f"{{adm:m}}:r:{j}" for j in range(m))]
    args: list[Any] = [NOW, "acquire", TTL, 1, m, "requests_per_minute", 5_000, 60_000, 1_000]
    for j in range(m):
        args += [f"tok-{j}", 1]
    return keys, args


BAD_ACQUIRE: dict[str, tuple[int, list[Any]]] = {
    "one key too few (no reservation for the second request)": (4, GOOD),
    "one key too many": (6, GOOD),
    "one arg too many": (5, [*GOOD, 1]),
    "one arg too few": (5, GOOD[:-1]),
    "the second request's args missing": (5, GOOD[:-R2]),
    "a third request's args": (5, [*GOOD, "tok-three", 1, 9]),
    "the old layout (token where m goes)": (4, OLD),
    "n not a number": (5, with_arg(A_N, "two")),
    "n negative": (5, with_arg(A_N, -1)),
    "n fractional": (5, with_arg(A_N, 1.5)),
    "n inf": (5, with_arg(A_N, "inf")),
    "n nan": (5, with_arg(A_N, "nan")),
    "n one more than the limits": (5, with_arg(A_N, 3)),
    "n above 64": (5, with_arg(A_N, 65)),
    "m not a number": (5, with_arg(A_M, "two")),
    "m empty": (5, with_arg(A_M, "")),
    "m zero": (5, with_arg(A_M, 0)),
    "m negative": (5, with_arg(A_M, -2)),
    "m fractional": (5, with_arg(A_M, 1.5)),
    "m inf": (5, with_arg(A_M, "inf")),
    "m nan": (5, with_arg(A_M, "nan")),
    "m one less than the requests": (5, with_arg(A_M, 1)),
    "m above 1024": (5, with_arg(A_M, 1_025)),
    "unknown mode": (5, with_arg(A_MODE, "take")),
    "empty mode": (5, with_arg(A_MODE, "")),
    "ttl zero": (5, with_arg(A_TTL, 0)),
    "ttl negative": (5, with_arg(A_TTL, -5)),
    "ttl fractional": (5, with_arg(A_TTL, 1.5)),
    "ttl not a number": (5, with_arg(A_TTL, "soon")),
    "ttl empty": (5, with_arg(A_TTL, "")),
    "ttl inf": (5, with_arg(A_TTL, "inf")),
    "ttl nan": (5, with_arg(A_TTL, "nan")),
    "ttl above 30 days": (5, with_arg(A_TTL, 2_592_000_001)),
    "ttl above int64": (5, with_arg(A_TTL, "1e19")),
    "now negative": (5, with_arg(A_NOW, -1)),
    "now fractional": (5, with_arg(A_NOW, 1.5)),
    "now not a number": (5, with_arg(A_NOW, "noon")),
    "now nan": (5, with_arg(A_NOW, "nan")),
    "now inf": (5, with_arg(A_NOW, "inf")),
    "now above 2^53 - 1": (5, with_arg(A_NOW, 2**53)),
    "name empty": (5, with_arg(A_NAME, "")),
    "name with a space": (5, with_arg(A_NAME, "requests per minute")),
    "name with a tab": (5, with_arg(A_NAME, "requests\tper_minute")),
    "name with a |": (5, with_arg(A_NAME, "requests|per_minute")),
    "limit negative": (5, with_arg(A_LIMIT, -5)),
    "limit not a number": (5, with_arg(A_LIMIT, "five")),
    "limit inf": (5, with_arg(A_LIMIT, "inf")),
    "limit above 2^53 - 1": (5, with_arg(A_LIMIT, 2**53)),
    "window fractional": (5, with_arg(A_WINDOW, 60_000.5)),
    "window not a number": (5, with_arg(A_WINDOW, "x")),
    "window empty": (5, with_arg(A_WINDOW, "")),
    "bucket not a number": (5, with_arg(A_BUCKET, "sec")),
    "bucket nan": (5, with_arg(A_BUCKET, "nan")),
    "bucket zero": (5, with_arg(A_BUCKET, 0)),
    "window not a multiple of the bucket": (5, with_arg(A_WINDOW, 61_500)),
    "window shorter than the bucket": (5, with_arg(A_WINDOW, 500)),
    "second limit's name with a space": (5, with_arg(A_NAME + L2, "tokens per minute")),
    "second limit's name with a |": (5, with_arg(A_NAME + L2, "tokens|per_minute")),
    "second limit's name empty": (5, with_arg(A_NAME + L2, "")),
    "second limit's limit negative": (5, with_arg(A_LIMIT + L2, -1)),
    "second limit's window not a multiple": (5, with_arg(A_WINDOW + L2, 59_999)),
    "second limit's bucket zero": (5, with_arg(A_BUCKET + L2, 0)),
    "token empty": (5, with_arg(A_TOKEN, "")),
    "token of 65 characters": (5, with_arg(A_TOKEN, "t" * 65)),
    "token with a space": (5, with_arg(A_TOKEN, "tok one")),
    "token with a newline": (5, with_arg(A_TOKEN, "tok\none")),
    "token with a |": (5, with_arg(A_TOKEN, "tok|one")),
    "cost negative": (5, with_arg(A_COST, -1)),
    "cost fractional": (5, with_arg(A_COST, 0.5)),
    "cost not a number": (5, with_arg(A_COST, "one")),
    "cost empty": (5, with_arg(A_COST, "")),
    "cost inf": (5, with_arg(A_COST, "inf")),
    "cost above 2^53 - 1": (5, with_arg(A_COST, 2**53)),
    "cost on the second limit nan": (5, with_arg(A_COST + 1, "nan")),
    # the first request is good: it must not have been admitted
    "second request's token empty": (5, with_arg(A_TOKEN + R2, "")),
    "second request's token of 65 characters": (5, with_arg(A_TOKEN + R2, "t" * 65)),
    "second request's token with a |": (5, with_arg(A_TOKEN + R2, "tok|two")),
    "second request's token with a tab": (5, with_arg(A_TOKEN + R2, "tok\ttwo")),
    "second request's cost negative": (5, with_arg(A_COST + R2, -1)),
    "second request's cost fractional": (5, with_arg(A_COST + R2, 1.5)),
    "second request's cost not a number": (5, with_arg(A_COST + R2, "one")),
    "second request's cost inf": (5, with_arg(A_COST + R2, "inf")),
    "second request's cost on the second limit above 2^53 - 1": (5, with_arg(A_COST + R2 + 1, 2**53)),
    "second request's cost on the second limit empty": (5, with_arg(A_COST + R2 + 1, "")),
}


def test_good_arguments_are_good(r: redis.Redis) -> None:
    """The base the bad cases change one thing of: two requests, both admitted."""
    reply = r.eval(scripts.load("acquire").source, 5, RPM, TPM, DENIED, RES, TWO, *GOOD)
    assert reply == [NOW, 1, 0, 0, "", 4, 1_991, 1, 0, 0, "", 3, 1_982]


@pytest.mark.parametrize(("nkeys", "args"), list(BAD_ACQUIRE.values()), ids=list(BAD_ACQUIRE))
@pytest.mark.parametrize("reserved", [False, True], ids=["fresh", "reserved"])
def test_bad_acquire_arguments_write_nothing(r: redis.Redis, nkeys: int, args: list[Any], reserved: bool) -> None:
    seed(r)
    res = HELD if reserved else RES  # an error, not status 2, even for a held key
    keys = [RPM, TPM, DENIED, res, TWO, RPD][:nkeys]
    before = dump(r)
    with pytest.raises(redis.ResponseError, match="ERR_ARGS"):
        r.eval(scripts.load("acquire").source, len(keys), *keys, *args)
    assert dump(r) == before


def test_at_most_64_limits(r: redis.Redis) -> None:
    keys, args = limits_args(64)
    assert r.eval(scripts.load("acquire").source, len(keys), *keys, *args)[1] == 1
    r.flushall()
    keys, args = limits_args(65)
    with pytest.raises(redis.ResponseError, match="ERR_ARGS"):
        r.eval(scripts.load("acquire").source, len(keys), *keys, *args)
    assert r.keys("*") == []


def test_at_most_1024_requests(r: redis.Redis) -> None:
    keys, args = requests_args(1_024)
    reply = r.eval(scripts.load("acquire").source, len(keys), *keys, *args)
    assert reply[1::5] == [1] * 1_024
    assert r.hgetall(RPM) == {str(SEC): "1024", "_sum": "1024", "_low": str(SEC)}
    r.flushall()
    keys, args = requests_args(1_025)
    with pytest.raises(redis.ResponseError, match="ERR_ARGS"):
        r.eval(scripts.load("acquire").source, len(keys), *keys, *args)
    assert r.keys("*") == []


SETTLE_KEYS = [HELD_MARKER, HELD, RPM, TPM]  # the held acquire's marker, its id, its two windows
SETTLE_GOOD: list[Any] = [NOW, 2, HELD_TOKEN, NOW - 1_000, TTL, NONCE]
SETTLE_GOOD += ["requests_per_minute", SEC - 1, 1, 60_000, 1_000, 1]
SETTLE_GOOD += ["tokens_per_minute", SEC - 1, 900, 60_000, 1_000, 10]
# ARGV positions (0-based here) in SETTLE_GOOD
S_NOW, S_N, S_TOKEN, S_AT, S_TTL, S_NONCE = range(6)
S_NAME, S_BUCKET, S_COST, S_WINDOW, S_SIZE, S_AMOUNT = range(6, 12)  # the first charge; the second is 6 on (C2)
C2 = 6
LEDGER_KEYS, LEDGER_ARGS = ledger_part()
TENANT_KEYS = ledger_part(tenant="acme")[0][len(LEDGER_KEYS) :]
LEDGER_GOOD = [*SETTLE_GOOD, *LEDGER_ARGS]
L_WORD, L_MINUTE, L_HOUR, L_DAY, L_ID, L_CAP, L_TENANT, L_FIELD, L_BY = range(18, 27)
# Keys are taken from the front of this list: 4 without a ledger part, 9 with one, 14 with a tenant.
KEY_POOL = [*SETTLE_KEYS, *LEDGER_KEYS, *TENANT_KEYS, "{adm:m}:extra"]
PLAIN, LEDGER, TENANT = 4, 9, 14
# The layout before the marker: reservation key first, then name and amount per limit.
SETTLE_OLD = [NOW, 2, HELD_TOKEN, "requests_per_minute", 1, "tokens_per_minute", 10]


def with_settle_arg(index: int, value: Any, base: list[Any] = SETTLE_GOOD) -> list[Any]:
    args = list(base)
    args[index] = value
    return args


BAD_NUMBERS: dict[str, Any] = {
    "negative": -1,
    "fractional": 1.5,
    "not a number": "one",
    "empty": "",
    "inf": "inf",
    "nan": "nan",
    "above 2^53 - 1": 2**53,
}

BAD_SETTLE: dict[str, tuple[int, list[Any]]] = {
    "one key too few (no window for the second charge)": (PLAIN - 1, SETTLE_GOOD),
    "one key too many": (PLAIN + 1, SETTLE_GOOD),
    "one arg too many": (PLAIN, [*SETTLE_GOOD, 1]),
    "one arg too few": (PLAIN, SETTLE_GOOD[:-1]),
    "the second charge's args missing": (PLAIN, SETTLE_GOOD[:-C2]),
    "a third charge's args without its key": (
        PLAIN,
        [*SETTLE_GOOD, "requests_per_day", QUARTER, 1, 86_400_000, 900_000, 0],
    ),
    "the old layout (name and amount per limit)": (PLAIN - 1, SETTLE_OLD),
    "the old layout with this one's keys": (PLAIN, SETTLE_OLD),
    "n not a number": (PLAIN, with_settle_arg(S_N, "two")),
    "n empty": (PLAIN, with_settle_arg(S_N, "")),
    "n negative": (PLAIN, with_settle_arg(S_N, -2)),
    "n fractional": (PLAIN, with_settle_arg(S_N, 1.5)),
    "n inf": (PLAIN, with_settle_arg(S_N, "inf")),
    "n nan": (PLAIN, with_settle_arg(S_N, "nan")),
    "n one less than the charges": (PLAIN, with_settle_arg(S_N, 1)),
    "n one more than the charges": (PLAIN, with_settle_arg(S_N, 3)),
    "n above 64": (PLAIN, with_settle_arg(S_N, 65)),
    "token empty": (PLAIN, with_settle_arg(S_TOKEN, "")),
    "token of 65 characters": (PLAIN, with_settle_arg(S_TOKEN, "t" * 65)),
    "token with a space": (PLAIN, with_settle_arg(S_TOKEN, "tok held")),
    "token with a tab": (PLAIN, with_settle_arg(S_TOKEN, "tok\theld")),
    "token with a newline": (PLAIN, with_settle_arg(S_TOKEN, "tok\nheld")),
    "token with a |": (PLAIN, with_settle_arg(S_TOKEN, "tok|held")),
    "nonce empty": (PLAIN, with_settle_arg(S_NONCE, "")),
    "nonce of 33 characters": (PLAIN, with_settle_arg(S_NONCE, "n" * 33)),
    "nonce with a space": (PLAIN, with_settle_arg(S_NONCE, "n 1")),
    "nonce with a colon": (PLAIN, with_settle_arg(S_NONCE, "n:1")),
    "the layout before the nonce": (PLAIN, [*SETTLE_GOOD[:S_NONCE], *SETTLE_GOOD[S_NONCE + 1 :]]),
    **{f"at {how}": (PLAIN, with_settle_arg(S_AT, bad)) for how, bad in BAD_NUMBERS.items()},
    "ttl zero": (PLAIN, with_settle_arg(S_TTL, 0)),
    "ttl negative": (PLAIN, with_settle_arg(S_TTL, -5)),
    "ttl fractional": (PLAIN, with_settle_arg(S_TTL, 1.5)),
    "ttl not a number": (PLAIN, with_settle_arg(S_TTL, "soon")),
    "ttl empty": (PLAIN, with_settle_arg(S_TTL, "")),
    "ttl inf": (PLAIN, with_settle_arg(S_TTL, "inf")),
    "ttl nan": (PLAIN, with_settle_arg(S_TTL, "nan")),
    "ttl above 30 days": (PLAIN, with_settle_arg(S_TTL, 2_592_000_001)),
    "ttl above int64": (PLAIN, with_settle_arg(S_TTL, "1e19")),
    "now negative": (PLAIN, with_settle_arg(S_NOW, -1)),
    "now fractional": (PLAIN, with_settle_arg(S_NOW, 0.5)),
    "now not a number": (PLAIN, with_settle_arg(S_NOW, "noon")),
    "now inf": (PLAIN, with_settle_arg(S_NOW, "inf")),
    "now nan": (PLAIN, with_settle_arg(S_NOW, "nan")),
    "now above 2^53 - 1": (PLAIN, with_settle_arg(S_NOW, 2**53)),
    **{
        f"{what} {how}": (PLAIN, with_settle_arg(index, bad))
        for what, index in (
            ("bucket index", S_BUCKET),
            ("amount charged", S_COST),
            ("window", S_WINDOW),
            ("bucket width", S_SIZE),
            ("new amount", S_AMOUNT),
        )
        for how, bad in BAD_NUMBERS.items()
    },
    "bucket width zero": (PLAIN, with_settle_arg(S_SIZE, 0)),
    "name empty": (PLAIN, with_settle_arg(S_NAME, "")),
    "name with a space": (PLAIN, with_settle_arg(S_NAME, "requests per_minute")),
    "name with a tab": (PLAIN, with_settle_arg(S_NAME, "requests\tper_minute")),
    "name with a |": (PLAIN, with_settle_arg(S_NAME, "requests|per_minute")),
    # the first charge is good: it must not have been moved
    "second charge's name with a |": (PLAIN, with_settle_arg(S_NAME + C2, "tokens|per_minute")),
    "second charge's name empty": (PLAIN, with_settle_arg(S_NAME + C2, "")),
    "second charge's bucket width zero": (PLAIN, with_settle_arg(S_SIZE + C2, 0)),
    "second charge's amount charged nan": (PLAIN, with_settle_arg(S_COST + C2, "nan")),
    "second charge's new amount negative": (PLAIN, with_settle_arg(S_AMOUNT + C2, -10)),
    "second charge's new amount above 2^53 - 1": (PLAIN, with_settle_arg(S_AMOUNT + C2, 2**53)),
    "second charge's new amount empty": (PLAIN, with_settle_arg(S_AMOUNT + C2, "")),
    # the ledger part
    "ledger: the word misspelled": (LEDGER, with_settle_arg(L_WORD, "ledgers", LEDGER_GOOD)),
    "ledger: no field and increment": (LEDGER, LEDGER_GOOD[:-4]),
    "ledger: a field without its increment": (LEDGER, LEDGER_GOOD[:-1]),
    "ledger: an increment fractional": (LEDGER, with_settle_arg(L_BY, "1.5", LEDGER_GOOD)),
    "ledger: an increment not a number": (LEDGER, with_settle_arg(L_BY, "one", LEDGER_GOOD)),
    "ledger: an increment empty": (LEDGER, with_settle_arg(L_BY, "", LEDGER_GOOD)),
    "ledger: an increment of 20 digits": (LEDGER, with_settle_arg(L_BY, "1" * 20, LEDGER_GOOD)),
    "ledger: the second increment not a number": (LEDGER, with_settle_arg(L_BY + 2, "x", LEDGER_GOOD)),
    "ledger: a field empty": (LEDGER, with_settle_arg(L_FIELD, "", LEDGER_GOOD)),
    "ledger: the event cap negative": (LEDGER, with_settle_arg(L_CAP, -1, LEDGER_GOOD)),
    "ledger: the event cap fractional": (LEDGER, with_settle_arg(L_CAP, 0.5, LEDGER_GOOD)),
    "ledger: the event cap not a number": (LEDGER, with_settle_arg(L_CAP, "ten", LEDGER_GOOD)),
    "ledger: the event cap above 10^8": (LEDGER, with_settle_arg(L_CAP, 100_000_001, LEDGER_GOOD)),
    "ledger: one key too few": (LEDGER - 1, LEDGER_GOOD),
    "ledger: one key too many": (LEDGER + 1, LEDGER_GOOD),
    "ledger: a tenant without its keys": (LEDGER, with_settle_arg(L_TENANT, "acme", LEDGER_GOOD)),
    "ledger: a tenant with one key too few": (TENANT - 1, with_settle_arg(L_TENANT, "acme", LEDGER_GOOD)),
    "ledger: the tenant's keys without a tenant": (TENANT, LEDGER_GOOD),
    "ledger: with a bad token": (LEDGER, with_settle_arg(S_TOKEN, "", LEDGER_GOOD)),
    "ledger: with a bad new amount": (LEDGER, with_settle_arg(S_AMOUNT, -1, LEDGER_GOOD)),
    "ledger: with n one more than the charges": (LEDGER, with_settle_arg(S_N, 3, LEDGER_GOOD)),
}


def test_good_settle_arguments_are_good(r: redis.Redis) -> None:
    """The bases the bad cases change one thing of: the held acquire settled (1 for 1 request,
    900 moved to 10 tokens) without, then with a ledger part, then with a tenant's."""
    seed(r)
    assert r.eval(scripts.load("settle").source, PLAIN, *KEY_POOL[:PLAIN], *SETTLE_GOOD) == [1, NOW]
    assert buckets(r, RPM) == {str(SEC - 61): "1", str(SEC - 1): "2"}
    assert r.hgetall(TPM) == {str(SEC - 1): "10", "_sum": "10", "_low": str(SEC - 1)}
    assert r.exists(HELD) == 0
    assert r.get(HELD_MARKER) == NONCE
    r.flushall()
    seed(r)
    assert r.eval(scripts.load("settle").source, LEDGER, *KEY_POOL[:LEDGER], *LEDGER_GOOD) == [1, NOW]
    assert r.hgetall(LEDGER_KEYS[1]) == {"requests": "1", "input_tokens": "120"}
    r.flushall()
    seed(r)
    args = with_settle_arg(L_TENANT, "acme", LEDGER_GOOD)
    assert r.eval(scripts.load("settle").source, TENANT, *KEY_POOL[:TENANT], *args) == [1, NOW]
    assert r.hgetall(TENANT_KEYS[0]) == {"requests": "1", "input_tokens": "120"}
    assert r.smembers(TENANTS) == {"acme"}


@pytest.mark.parametrize(("nkeys", "args"), list(BAD_SETTLE.values()), ids=list(BAD_SETTLE))
@pytest.mark.parametrize("settled", [False, True], ids=["unsettled", "settled"])
def test_bad_settle_arguments_write_nothing(r: redis.Redis, nkeys: int, args: list[Any], settled: bool) -> None:
    seed(r)
    if settled:  # an error still, not 0: the arguments are checked before the marker
        r.set(HELD_MARKER, "1", px=5_000_000)
    before = dump(r)
    with pytest.raises(redis.ResponseError, match="ERR_ARGS"):
        r.eval(scripts.load("settle").source, nkeys, *KEY_POOL[:nkeys], *args)
    assert dump(r) == before
    # The same acquire with good arguments: settled once (not again when it was already).
    assert r.eval(scripts.load("settle").source, PLAIN, *SETTLE_KEYS, *SETTLE_GOOD) == [0 if settled else 1, NOW]
    assert r.exists(HELD) == int(settled)


def test_at_most_64_charges(r: redis.Redis) -> None:
    many = [(f"{{adm:m}}:w:k{i}", f"k{i}", 5, 60_000, 1_000, 1) for i in range(65)]
    acquire(r, many[:64], res=OWN)
    assert settle(r, charged(many[:64]), [0] * 64, res=OWN) == [1, NOW]
    assert all(buckets(r, key) == {} for key, *_ in many)
    r.flushall()
    with pytest.raises(redis.ResponseError, match="ERR_ARGS"):
        settle(r, charged(many), [0] * 65, res=OWN)
    assert r.keys("*") == []


def test_settle_arguments_at_their_bounds(r: redis.Redis) -> None:
    seed(r)
    # The held acquire charged 1 to bucket SEC - 1: settled at 2^53 - 1 it holds that much more.
    args = [NOW, 1, HELD_TOKEN, NOW - 1_000, TTL, NONCE, "requests_per_minute", SEC - 1, 1, 60_000, 1_000, MAX]
    assert r.eval(scripts.load("settle").source, 3, HELD_MARKER, HELD, RPM, *args) == [1, NOW]
    assert buckets(r, RPM) == {str(SEC - 61): "1", str(SEC - 1): str(MAX + 1)}
    check_bookkeeping(r, RPM)
    # A token of 64 characters, admitted and settled at 2^53 - 1, with a TTL of 30 days.
    r.flushall()
    token = "t" * 64
    end = ("{adm:m}:w:end", "end", 5, 60_000, 1_000, 1)
    assert acquire(r, [end], now=MAX, res=own(token), token=token)[1] == 1
    month = 2_592_000_000
    assert settle(r, charged([end], MAX), [0], now=MAX, res=own(token), token=token, at=MAX, ttl=month) == [1, MAX]
    assert buckets(r, "{adm:m}:w:end") == {}
    assert month - 10_000 < r.pttl(marker(token)) <= month
    # Admitted at 0; a TTL of 1 ms settled in its only ms.
    r.flushall()
    assert settle(r, [], [], now=5, at=0) == [1, 5]
    assert settle(r, [], [], now=NOW, token="brief", ttl=1) == [1, NOW]
    assert settle(r, [], [], now=NOW + 1, token="late", ttl=1) == [0, NOW + 1]
    assert r.exists(marker("late")) == 0


@pytest.mark.parametrize("real", [120, 0], ids=["settle", "release"])
def test_the_same_settle_or_release_call_sent_twice_counts_once(r: redis.Redis, real: int) -> None:
    """redis-py may send a command again after a timeout: the byte-identical repeat is a no-op."""
    acquire(r, [rpm(), tpm(300)])
    amounts = [1 if real else 0, real]
    assert settle(r, charged([rpm(), tpm(300)]), amounts) == [1, NOW]
    after_first = dump(r)
    assert settle(r, charged([rpm(), tpm(300)]), amounts) == [0, NOW]
    assert dump(r) == after_first
