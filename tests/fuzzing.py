"""What the fuzz tests (``tests/test_fuzz_*.py``) share: their hypothesis budget, hostile values,
and a snapshot of Redis that proves a refused call wrote nothing.

The budget is a hypothesis profile chosen by the environment, not by conftest.py, so that it
applies to these tests only (other property tests keep their own settings):

* ``ci`` (the default): a fixed seed (``derandomize``) and a bounded number of examples, so
  the default run is fast and the same every time;
* ``long``: thousands of examples from a new seed each run, for hunting::

      HYPOTHESIS_PROFILE=long python -m pytest tests/test_fuzz_*.py --no-cov

Neither profile keeps an example database (no ``.hypothesis/`` in the tree): a failure prints
the example (and, in a long run, the ``@reproduce_failure`` that replays it); the ``ci``
profile finds the same one again on every run.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

__all__ = [
    "HOSTILE_ARGS",
    "HOSTILE_NAMES",
    "HOSTILE_VALUES",
    "LONG",
    "TIMEOUT",
    "RedisState",
    "as_bytes",
    "fuzz_settings",
    "hostile_arg",
    "hostile_name",
    "hostile_value",
]

_HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile(
    "ci", max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=_HEALTH
)
settings.register_profile(
    "long",
    max_examples=3_000,
    deadline=None,
    derandomize=False,
    database=None,
    print_blob=True,  # a failure prints the @reproduce_failure(...) that replays it
    suppress_health_check=_HEALTH,
)
LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
_PROFILE = settings.get_profile("long" if LONG else "ci")
# The suite's per-test timeout (pyproject.toml) stays for the bounded run; a long run has none.
TIMEOUT = pytest.mark.timeout(0 if LONG else 120)


def fuzz_settings(share: float = 1.0) -> settings:
    """The chosen profile, with ``share`` of its examples (slow targets take fewer)."""
    return settings(_PROFILE, max_examples=max(5, int(_PROFILE.max_examples * share)))


# -- hostile values ----------------------------------------------------------------------------

# What a script argument may be given instead of what it expects: numbers in every spelling Lua's
# tonumber (strtod) reads or almost reads, bounds around 2^53 and 2^63, words the scripts treat
# as keywords, separators and braces, binary junk and a long string.
HOSTILE_ARGS: list[str | bytes | int] = [
    "",
    " ",
    "-1",
    "-0",
    "0",
    "1",
    "1.5",
    "-1.5",
    "1e3",
    "1e400",
    "-1e400",
    "nan",
    "-nan",
    "inf",
    "-inf",
    "Infinity",
    "0x10",
    " 5",
    "5 ",
    "+5",
    "007",
    "9007199254740991",
    "9007199254740992",
    "9007199254740993",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "18446744073709551616",
    "99999999999999999999999",
    "abc",
    "a b",
    "a|b",
    "\t",
    "\n",
    "\x00",
    b"\xff\xfe\x00junk",
    "{",
    "}",
    ":",
    "*",
    "ledger",
    "acquire",
    "peek",
    "shadow",
    "settle",
    "release",
    "spend",
    "create",
    "put",
    "delete",
    "{}",
    "[]",
    "null",
    '{"a":1}',
    '{"_revision":"1"}',
    '{"a":"b"}',
    "50:100 80:x",
    "x" * 70_000,
    "é",
    "\U0001f642",
    -1,
    0,
    2**53,
    2**64,
]


def hostile_arg() -> st.SearchStrategy[Any]:
    """One script argument of the wrong kind."""
    return st.one_of(
        st.sampled_from(HOSTILE_ARGS),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.text(max_size=12),
        st.binary(max_size=12),
    )


# Names (model ids, tenants, request ids, providers) that try to leave their place in a key:
# separators, hash-tag braces, glob characters, whitespace, other namespaces' prefixes.
HOSTILE_NAMES: list[str] = [
    "",
    ":",
    "::",
    "a:b",
    "x:r:y",
    "y:w:rpm",
    ":t:a",
    "a:l:b",
    "x:s:y",
    "{",
    "}",
    "{x}",
    "a{b}c",
    "}{",
    "{registry:catalog}",
    "{fuzz:catalog}:model:openai:gpt-4",
    "@budget:acme",
    "*",
    "?",
    "[a]",
    "a b",
    "\n",
    "\t",
    "\x00",
    "\u200b",
    "\u2028",
    "é",
    "\U0001f642",
    "\udcff",
    "-",
    ".",
    "..",
    "/",
    "a/../b",
    "x" * 300,
    "nan",
    "-1",
]


def hostile_name() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(HOSTILE_NAMES), st.text(max_size=10))


# Values of the wrong type or range for any parameter of the public API.
HOSTILE_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**31,
    2**53,
    2**63,
    10**30,
    -(10**30),
    0.5,
    -0.0,
    1e300,
    math.nan,
    math.inf,
    -math.inf,
    Decimal("1.5"),
    Decimal("NaN"),
    Decimal("-Infinity"),
    Decimal("1e-30"),
    "",
    "5",
    "-5",
    "nan",
    "1e400",
    b"bytes",
    [],
    [1, "a"],
    {},
    {"a": 1},
    (),
    object(),
]


def hostile_value() -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(HOSTILE_VALUES), hostile_name(), st.integers(), st.floats())


# -- what Redis holds ----------------------------------------------------------------------------


@dataclass
class RedisState:
    """Every key of a database with its DUMP (type, encoding and contents) and PTTL.

    Comparing two states says which keys a call changed: a key made, deleted, rewritten, or
    whose TTL was set, dropped or pushed later. A TTL that only ran down meanwhile is no change.
    """

    keys: dict[bytes, tuple[bytes | None, int]]
    started: float  # monotonic seconds before the first read and after the last
    ended: float

    @classmethod
    def of(cls, client: redis.Redis) -> RedisState:
        started = time.monotonic()
        names = sorted(client.scan_iter(count=1_000))
        pipe = client.pipeline(transaction=True)
        for name in names:
            pipe.dump(name)
            pipe.pttl(name)
        replies = pipe.execute() if names else []
        keys = {name: (replies[2 * i], replies[2 * i + 1]) for i, name in enumerate(names)}
        return cls(keys, started, time.monotonic())

    def changed(self, later: RedisState) -> set[bytes]:
        """The keys that differ in ``later``."""
        slack_ms = (later.ended - self.started) * 1_000 + 2  # the most a TTL may have run down
        # A key gone whose TTL ran out meanwhile expired: Redis removed it, not the call.
        expired = {name for name, (_, pttl) in self.keys.items() if 0 <= pttl <= slack_ms}
        out = set(self.keys.keys() ^ later.keys.keys()) - expired
        for name in self.keys.keys() & later.keys.keys():
            (dump, pttl), (dump_after, pttl_after) = self.keys[name], later.keys[name]
            if (
                dump != dump_after
                or (pttl < 0) != (pttl_after < 0)
                or (pttl >= 0 and not pttl - slack_ms <= pttl_after <= pttl)
            ):
                out.add(name)
        return out


def as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
