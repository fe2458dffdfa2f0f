"""lua/budget_reserve.lua and lua/budget_settle.lua called directly: KEYS, ARGV and replies;
bad arguments raise before anything is written."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from registry import scripts
from tests.test_admission_scripts import dump

NOW = 1_000_000
HOLD, SPEND, SPEND2, EVENTS = "{bud:a}:r:x", "{bud:a}:s:*:day:0", "{bud:a}:s:*:week:0", "{bud:a}:events"
DAY = 86_400_000


def reserve(r: redis.Redis, *args: Any, keys: tuple[str, ...] = (HOLD, SPEND)) -> Any:
    return r.eval(scripts.load("budget_reserve").source, len(keys), *keys, *args)


def settle(r: redis.Redis, *args: Any, keys: tuple[str, ...] = (HOLD, SPEND, EVENTS)) -> Any:
    return r.eval(scripts.load("budget_settle").source, len(keys), *keys, *args)


def ok_reserve(r: redis.Redis, token: str = "t1", estimate: int = 300, now: int = NOW, hold: str = HOLD) -> Any:
    return reserve(r, now, "acquire", 1000, token, estimate, 1, 1000, DAY, 0, DAY, keys=(hold, SPEND))


def test_reserve_holds_and_refuses(r: redis.Redis) -> None:
    assert ok_reserve(r) == [1, NOW, 0, 0, "", "0", "300"]
    assert r.hgetall(SPEND) == {"held": "300", "h:t1": f"{NOW + 1000} 300", "next": str(NOW + 1000)}
    assert r.hgetall(HOLD) == {"tok": "t1", "est": "300", "keys": SPEND}
    assert 0 < r.pttl(HOLD) <= 1000 + DAY
    assert ok_reserve(r, token="t2") == [2, NOW, 0, 0, "t1", "0", "300"]  # the same record: held
    assert ok_reserve(r, token="t3", estimate=701, hold="{bud:a}:r:y") == [0, NOW, 1, 1000, "", "0", "300"]
    assert ok_reserve(r, token="t3", estimate=1001, hold="{bud:a}:r:y") == [3, NOW, 1, -1, "", "0", "300"]
    # the period does not contain now: nothing written, the server's time returned
    assert reserve(r, DAY, "acquire", 1000, "t4", 1, 1, 1000, DAY, 0, DAY, keys=("{bud:a}:r:z", SPEND))[:2] == [5, DAY]


def test_settle_spends_once_and_announces_each_mark_once(r: redis.Redis) -> None:
    ok_reserve(r)
    reply = settle(r, NOW, "t1", "settle", 550, 1, 100, "a", "USD", "x", "*", "day", 0, 1000, "50:500 80:800", DAY)
    assert reply == [1, NOW, 1]
    # `next` may name a hold gone since: the next sweep finds nothing to release and drops it
    assert r.hgetall(SPEND) == {"held": "0", "spent": "550", "t:50": str(NOW), "next": str(NOW + 1000)}
    assert not r.exists(HOLD)
    assert settle(r, NOW, "t1", "settle", 550, 1, 100, "a", "USD", "x", "*", "day", 0, 1000, "50:500", DAY)[:3] == [
        0,
        NOW,
        0,
    ]
    assert [f["threshold"] for _, f in r.xrange(EVENTS)] == ["50"]


def test_a_lapsed_hold_is_swept_once_and_a_late_settle_still_spends(r: redis.Redis) -> None:
    ok_reserve(r)
    later = NOW + 1000
    reply = reserve(r, later, "acquire", 1000, "t2", 700, 1, 1000, DAY, 0, DAY, keys=("{bud:a}:r:y", SPEND))
    assert reply == [1, later, 0, 0, "", "0", "700"]  # the lapsed 300 no longer counts
    assert "h:t1" not in r.hgetall(SPEND)
    assert settle(r, later, "t1", "settle", 100, 1, 100, "a", "USD", "x", "*", "day", 0, "", "", DAY) == [1, later, 0]
    assert r.hget(SPEND, "held") == "700"
    assert r.hget(SPEND, "spent") == "100"


def test_spend_adds_a_cost_never_held(r: redis.Redis) -> None:
    ok_reserve(r)  # a hold of 300 under t1, which "spend" must leave alone
    reply = settle(r, NOW, "-", "spend", 600, 1, 100, "a", "USD", "rec-1", "*", "day", 0, 1000, "50:500", DAY)
    assert reply == [1, NOW, 1]
    assert r.hgetall(SPEND)["spent"] == "600"
    assert r.hgetall(SPEND)["held"] == "300"
    assert r.hgetall(HOLD)["tok"] == "t1"  # the hold record is not read nor deleted
    assert [f["request_id"] for _, f in r.xrange(EVENTS)] == ["rec-1"]
    fresh = "{bud:a}:s:*:month:0"  # a spend hash made by "spend" alone gets its TTL too
    settle(
        r, NOW, "-", "spend", 1, 1, 100, "a", "USD", "rec-2", "*", "month", 0, "", "", DAY, keys=(HOLD, fresh, EVENTS)
    )
    assert 0 < r.pttl(fresh) <= DAY


def test_peek_writes_nothing(r: redis.Redis) -> None:
    ok_reserve(r)
    before = dump(r)
    assert reserve(r, NOW + 5000, "peek", 1000, "t9", 1000, 1, 1000, DAY, 0, DAY)[:2] == [1, NOW + 5000]
    assert dump(r) == before


@pytest.mark.parametrize(
    "args",
    [
        (NOW, "acquire", 1000, "t", 1, 2, 1000, DAY, 0, DAY),  # n disagrees with the keys
        (NOW, "grab", 1000, "t", 1, 1, 1000, DAY, 0, DAY),
        (NOW, "acquire", 0, "t", 1, 1, 1000, DAY, 0, DAY),
        (NOW, "acquire", 1000, "", 1, 1, 1000, DAY, 0, DAY),
        (NOW, "acquire", 1000, "a b", 1, 1, 1000, DAY, 0, DAY),
        (NOW, "acquire", 1000, "t", -1, 1, 1000, DAY, 0, DAY),
        (NOW, "acquire", 1000, "t", "1.5", 1, 1000, DAY, 0, DAY),
        (NOW, "acquire", 1000, "t", 2**53, 1, 1000, DAY, 0, DAY),
        (NOW, "acquire", 1000, "t", 1, 1, 0, DAY, 0, DAY),
        (NOW, "acquire", 1000, "t", 1, 1, 1000, DAY, DAY, DAY),
        ("soon", "acquire", 1000, "t", 1, 1, 1000, DAY, 0, DAY),
    ],
)
def test_reserve_refuses_bad_arguments_and_writes_nothing(r: redis.Redis, args: tuple[Any, ...]) -> None:
    ok_reserve(r, hold="{bud:a}:r:seed")
    before = dump(r)
    with pytest.raises(redis.ResponseError, match="ERR_ARGS"):
        reserve(r, *args)
    assert dump(r) == before


@pytest.mark.parametrize(
    "args",
    [
        (NOW, "t1", "spent", 1, 1, 100, "a", "USD", "x", "*", "day", 0, 1000, "", DAY),
        (NOW, "t1", "settle", "-1", 1, 100, "a", "USD", "x", "*", "day", 0, 1000, "", DAY),
        (NOW, "t1", "settle", 2**53, 1, 100, "a", "USD", "x", "*", "day", 0, 1000, "", DAY),
        (NOW, "t1", "settle", 1, 1, 0, "a", "USD", "x", "*", "day", 0, 1000, "", DAY),
        (NOW, "t1", "settle", 1, 1, 100, "a", "USD", "x", "*", "day", 0, "1e3", "", DAY),
        (NOW, "t1", "settle", 1, 2, 100, "a", "USD", "x", "*", "day", 0, 1000, "", DAY),
        (NOW, "t1", "settle", 1, 1, 100, "a", "USD", "x", "*", "day", 0, 1000, "", 0),
        (NOW, "t1", "settle", 1, 1, 100, "a", "USD", "x", "*", "day", 0, 1000, ""),
    ],
)
def test_settle_refuses_bad_arguments_and_writes_nothing(r: redis.Redis, args: tuple[Any, ...]) -> None:
    ok_reserve(r)
    before = dump(r)
    with pytest.raises(redis.ResponseError, match="ERR_ARGS"):
        settle(r, *args)
    with pytest.raises(redis.ResponseError, match="ERR_ARGS the spend keys differ"):
        settle(
            r,
            NOW,
            "t1",
            "settle",
            1,
            1,
            100,
            "a",
            "USD",
            "x",
            "*",
            "week",
            0,
            1000,
            "",
            DAY,
            keys=(HOLD, SPEND2, EVENTS),
        )
    assert dump(r) == before


def test_a_spend_that_would_overflow_is_refused_whole(r: redis.Redis) -> None:
    ok_reserve(r)
    r.hset(SPEND, "spent", 2**63 - 10)
    before = dump(r)
    with pytest.raises(redis.ResponseError, match="ERR_OVERFLOW"):
        settle(r, NOW, "t1", "settle", 100, 1, 100, "a", "USD", "x", "*", "day", 0, 1000, "", DAY)
    assert dump(r) == before
