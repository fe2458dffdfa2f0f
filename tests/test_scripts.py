"""Each Lua script called directly: its KEYS/ARGV contract, its reply, and its argument checks.

A script that refuses its arguments must do so before writing anything.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from registry import scripts
from registry.keys import Keys
from tests.test_catalog import dump

K = Keys()
FIELDS = json.dumps({"provider": "openai", "id": "gpt-4", "cost": "{}"})


def call(r: redis.Redis, models: list[str], args: list[Any]) -> Any:
    source = scripts.load("catalog_write").source
    return r.eval(source, 3 + len(models), *K.catalog_keys(), *(K.model(m) for m in models), *args)


def test_every_script_has_a_contract_header() -> None:
    assert scripts.names() == ["acquire", "budget_reserve", "budget_settle", "catalog_write", "record_usage", "settle"]
    for name in scripts.names():
        source = scripts.load(name).source
        for part in ("-- KEYS[1]", "-- ARGV[1]", "-- returns"):
            assert part in source, f"{name}.lua lacks {part!r}"


def test_put_then_delete(r: redis.Redis) -> None:
    assert call(r, ["openai:gpt-4"], [100, "chan", 1, "create", "openai:gpt-4", "", FIELDS]) == [0, 1]
    assert r.hget(K.model("openai:gpt-4"), "_revision") == "1"
    assert r.hget(K.meta, "revision") == "1"
    assert r.hget(K.meta, "epoch")
    assert r.zscore(K.models, "openai:gpt-4") == 1
    assert call(r, ["openai:gpt-4"], [100, "chan", 1, "create", "openai:gpt-4", "", FIELDS]) == [2, 1]
    assert call(r, ["openai:gpt-4"], [100, "chan", 1, "put", "openai:gpt-4", "7", FIELDS]) == [1, 1, 1]
    assert call(r, ["openai:gpt-4"], [100, "chan", 1, "put", "openai:gpt-4", "1", FIELDS]) == [0, 2]
    assert call(r, ["openai:x"], [100, "chan", 1, "delete", "openai:x", "", ""]) == [3, 1]
    assert call(r, ["openai:gpt-4"], [100, "chan", 1, "delete", "openai:gpt-4", "2", ""]) == [0, 3]
    assert r.exists(K.model("openai:gpt-4")) == 0
    assert r.zcard(K.models) == 0
    assert [e[0] for e in r.xrange(K.events)] == ["1-0", "2-0", "3-0"]


def test_a_conflict_in_a_batch_writes_nothing(r: redis.Redis) -> None:
    call(r, ["openai:a"], [100, "chan", 1, "create", "openai:a", "", FIELDS])
    before = dump(r)
    reply = call(
        r,
        ["openai:b", "openai:a"],
        [100, "chan", 2, "create", "openai:b", "", FIELDS, "create", "openai:a", "", FIELDS],
    )
    assert reply == [2, 2]
    assert dump(r) == before


@pytest.mark.parametrize(
    ("models", "args", "message"),
    [
        (["openai:a"], [100, "chan", 0], "n must be a positive integer"),
        (["openai:a"], [100, "chan", "x"], "n must be a positive integer"),
        (["openai:a"], [100, "chan", 2, "put", "openai:a", "", FIELDS], "expected"),
        (["openai:a"], [0, "chan", 1, "put", "openai:a", "", FIELDS], "stream cap"),
        (["openai:a"], [100, "chan", 1, "upsert", "openai:a", "", FIELDS], "unknown op"),
        (["openai:a"], [100, "chan", 1, "put", "openai:a", "", "not json"], "not a JSON object"),
        (["openai:a"], [100, "chan", 1, "put", "openai:a", "", "{}"], "no fields"),
        (["openai:a"], [100, "chan", 1, "put", "openai:a", "", '{"_revision": "9"}'], "not a plain string"),
        (["openai:a"], [100, "chan", 1, "put", "openai:a", "", '{"n": 5}'], "not a plain string"),
        (["openai:a"], [100, "chan", 1, "put", "", "", FIELDS], "empty model key"),
        (["openai:a"], [100, "chan", 1, "put", "openai:a", "abc", FIELDS], "not a number"),
        (
            ["openai:a", "openai:a"],
            [100, "chan", 2, "put", "openai:a", "", FIELDS, "put", "openai:a", "", FIELDS],
            "twice",
        ),
        # the second write is bad: the first must not have been applied
        (
            ["openai:a", "openai:b"],
            [100, "chan", 2, "put", "openai:a", "", FIELDS, "bogus", "openai:b", "", FIELDS],
            "unknown op",
        ),
    ],
)
def test_bad_arguments_fail_before_any_write(r: redis.Redis, models: list[str], args: list[Any], message: str) -> None:
    call(r, ["openai:z"], [100, "chan", 1, "create", "openai:z", "", FIELDS])
    before = dump(r)
    with pytest.raises(redis.ResponseError, match=message):
        call(r, models, args)
    assert dump(r) == before


def test_shared_fragments_are_inlined_once_per_script() -> None:
    common = (scripts.lua_dir() / "lib" / "common.lua").read_text()
    for name in ("acquire", "settle"):
        source = scripts.load(name).source
        assert "--! include" not in source
        assert source.count("local function clock(") == 1
        assert common.strip() in source
