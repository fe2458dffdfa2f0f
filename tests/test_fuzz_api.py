"""Every public method of both clients called with hostile arguments (hypothesis).

Each argument is drawn either from values the method takes or from hostile ones: names with
key separators, hash-tag braces, glob characters, newlines and other scripts' characters; huge,
negative and fractional numbers, NaN and infinities, floats for money, ``None``, bytes, lists,
mappings and objects of no use at all; models whose fields are any of those; reservations
whose every field was tampered with; documents to restore and config files that are not what
they claim.

Whatever the call, it returns, or raises an error of the library's tree (:class:`RegistryError`,
never a bare ``TypeError``, ``ValueError``, ``KeyError`` or ``AttributeError`` from deep inside),
and when it raises, Redis is exactly as before (every key's DUMP and TTL). Refusals are the
exception that proves the rule: :class:`RequestTooLargeError` and :class:`RateLimitedError` are
refused admissions, which count in the model's denial counters as a returned refusal does. A
call that waits (``acquire(wait=True)``) sleeps only for as long as its timeout allows.

The keys any call writes stay in its namespace: they start with ``{<namespace>:``, and a key
named after a tenant is only ever written by a call for that tenant (see also test_keys.py).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
from hypothesis import event, given
from hypothesis import strategies as st
from redis.crc import key_slot

from registry import AsyncRegistry, Registry, RegistryError
from registry.admission.types import Reservation
from registry.errors import ConfigError, RateLimitedError, RequestTooLargeError
from tests.conftest import SyncFacade, model
from tests.fuzzing import TIMEOUT, RedisState, fuzz_settings, hostile_name, hostile_value

pytestmark = TIMEOUT

NS = "fuzz"
GPT = "openai:gpt-4"
CLAUDE = "bedrock:anthropic.claude-v1:0"
MODELS = [
    model(
        "openai",
        "gpt-4",
        max_output_tokens=100,
        rate_limit={"requests_per_minute": 5, "tokens_per_minute": 2_000},
        tenant_limits={"*": {"requests_per_minute": 3}, "acme": {"tokens_per_minute": 1_000}},
    ),
    model(
        "bedrock",
        "anthropic.claude-v1:0",
        cost={"input": "3", "output": "15", "per": 1_000_000},
        rate_limit={"input_tokens_per_minute": 3_000, "output_tokens_per_minute": 500},
        tenant_limits={"acme": {"output_tokens_per_minute": 200}},
    ),
]
REFUSALS = (RequestTooLargeError, RateLimitedError)  # refused admissions: counted like any refusal


def maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a value the parameter takes, sometimes a hostile one."""
    return st.one_of(valid, valid, hostile_value())


KEYS = maybe(st.one_of(st.sampled_from([GPT, CLAUDE, "openai:nope"]), hostile_name().map(lambda n: f"openai:{n}")))
TOKENS = maybe(st.integers(0, 3_000))
TENANTS = maybe(st.sampled_from([None, "acme", "beta"]))
IDS = maybe(st.sampled_from([None, "r1", "r2"]))
MONEY = maybe(st.sampled_from(["0.5", "1", Decimal("2.25"), 3]))
TIMES = maybe(st.sampled_from([datetime(2024, 1, 1, tzinfo=UTC), datetime.now(UTC), 1_700_000_000.0, 0]))
FIELD_PATHS = [
    ("provider",),
    ("id",),
    ("name",),
    ("version",),
    ("status",),
    ("context_window",),
    ("max_output_tokens",),
    ("capabilities",),
    ("tags",),
    ("metadata",),
    ("metadata", "x"),
    ("cost",),
    ("cost", "input"),
    ("cost", "output"),
    ("cost", "per"),
    ("cost", "currency"),
    ("cost", "tiers"),
    ("rate_limit",),
    ("rate_limit", "requests_per_minute"),
    ("rate_limit", "tokens_per_minute"),
    ("rate_limit", "input_tokens_per_minute"),
    ("rate_limit", "output_tokens_per_minute"),
    ("tenant_limits",),
    ("unknown_field",),
]


@st.composite
def models(draw: st.DrawFn) -> Any:
    """A model mapping with up to two fields (maybe nested) replaced by hostile values."""
    data = model("openai", draw(st.sampled_from(["gpt-4", "new", "a:b/c@d.e-1"]) | hostile_name()))
    for _ in range(draw(st.integers(0, 2))):
        *parents, leaf = draw(st.sampled_from(FIELD_PATHS))
        node = data
        for name in parents:
            node = node.setdefault(name, {}) if isinstance(node.get(name, {}), dict) else {}
        node[leaf] = draw(hostile_value())
    return draw(st.one_of(st.just(data), st.just(data), hostile_value()))


@st.composite
def reservations(draw: st.DrawFn, held: Reservation) -> Any:
    """The handle of a real acquire, as is or with one or two fields tampered with."""
    out: Any = held
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(list(Reservation.__struct_fields__)))
        value = draw(
            st.one_of(
                hostile_value(),
                st.just(()),
                st.lists(
                    st.tuples(hostile_name(), st.integers(), st.integers(), st.integers(), st.integers()), max_size=2
                ).map(tuple),
                st.lists(st.tuples(st.sampled_from(["*", GPT, "x}{"]), hostile_name(), st.integers()), max_size=2).map(
                    tuple
                ),
            )
        )
        out = msgspec.structs.replace(out, **{name: value})
    return draw(st.one_of(st.just(out), st.just(out), hostile_value()))


def documents(export: dict[str, Any]) -> st.SearchStrategy[Any]:
    """An export of another namespace, as is or with a part replaced by something hostile."""

    @st.composite
    def tampered(draw: st.DrawFn) -> Any:
        document = json.loads(json.dumps(export))
        for _ in range(draw(st.integers(0, 2))):
            where = draw(st.sampled_from(["format", "catalog", "budgets", "ledger", "entry", "counters", "suffix"]))
            value = draw(hostile_value())
            ledger = document.get("ledger")
            if where in ("entry", "counters", "suffix") and isinstance(ledger, dict) and ledger:
                suffix = draw(st.sampled_from(sorted(ledger)))
                if where == "entry":
                    ledger[suffix] = value
                elif where == "counters" and isinstance(ledger[suffix], dict):
                    ledger[suffix]["counters" if "counters" in ledger[suffix] else "members"] = value
                else:
                    name = draw(st.sampled_from(["catalog}:meta", "adm:openai:gpt-4}:w:rpm", "x", "", "bud:a}:r:x"]))
                    ledger[name] = ledger.pop(suffix)
            elif where == "catalog" and draw(st.booleans()):
                document["catalog"] = [*document["catalog"], *document["catalog"]]  # the same key twice
            else:
                document[where if where in document else "format"] = value
        return document

    return st.one_of(tampered(), hostile_value())


CONFIG_FILES: list[bytes | None] = [
    None,  # no such file
    b"",
    b"{",
    b"\xff\xfe\x00",
    b"[]",
    b'{"models": 5}',
    b'{"models": [{"provider": "openai"}]}',
    b'{"models": [' + json.dumps(model(id="a{b}")).encode() + b"]}",
    b'{"models": [' + json.dumps(model()).encode() + b"," + json.dumps(model()).encode() + b"]}",
    b'{"models": [' + json.dumps(model(id="fine")).encode() + b"]}",
    b'{"models": [], "extra": 1}',
    b"1e999999",
    b'{"models": [{"provider": "openai", "id": "x", "cost": {"input": 1e999, "output": "1"}}]}',
]


class Context:
    """What one example's calls work on: a client and the state set up for it."""

    def __init__(self, reg: Any, client: redis.Redis, tmp: Path) -> None:
        self.reg, self.client, self.tmp = reg, client, tmp
        reg.register_models(MODELS)
        reg.set_budget("acme", "0.5", "day")
        decision = reg.acquire(GPT, 10, 20, tenant="acme", request_id="held")
        assert decision.reservation is not None
        self.held: Reservation = decision.reservation
        reg.record_usage(GPT, 10, 20, tenant="acme", request_id="seen")

    def path(self, content: bytes | None) -> Any:
        path = self.tmp / "models.json"
        path.unlink(missing_ok=True)
        if content is not None:
            path.write_bytes(content)
        return path


class Slept(Exception):
    """Raised by the fake sleep of a waiting acquire: how long it would have slept."""


Plan = Callable[[st.DataObject, Context], tuple[tuple[Any, ...], dict[str, Any]]]


def _acquire_plan(d: st.DataObject, c: Context) -> tuple[tuple[Any, ...], dict[str, Any]]:
    kwargs = {"wait": d.draw(maybe(st.booleans())), "timeout": d.draw(maybe(st.sampled_from([None, 0, 0.5, 30])))}
    return (d.draw(KEYS), d.draw(TOKENS), d.draw(maybe(st.none() | st.integers(0, 3_000))), d.draw(TENANTS)), {
        "request_id": d.draw(IDS),
        **kwargs,
    }


def _search_filters(d: st.DataObject) -> dict[str, Any]:
    names = [
        "provider",
        "capability",
        "min_context_window",
        "max_context_window",
        "name_pattern",
        "tags",
        "status",
        "max_cost_per_token",
        "min_version",
        "max_version",
        "exclude_deprecated",
        "currency",
    ]  # an unknown one is a TypeError, as for any call (test_search.py pins it)
    chosen = d.draw(st.lists(st.sampled_from(names), unique=True, max_size=3))
    valid = st.sampled_from(["openai", "chat", 1000, "*gpt*", "[", "1.0.0", "USD", "active", True])
    return {name: d.draw(maybe(valid)) for name in chosen}


def _cache_counts(d: st.DataObject) -> dict[str, Any]:
    """Some of settle's and record_usage's cache counts (parts of the input: a sum above it is a
    ConfigError, with nothing written), and ``throttled``."""
    names = ["cached_input_tokens", "cache_write_tokens", "throttled"]
    chosen = d.draw(st.lists(st.sampled_from(names), unique=True, max_size=3))
    return {name: d.draw(maybe(st.booleans() if name == "throttled" else st.integers(0, 100))) for name in chosen}


PLANS: dict[str, Plan] = {
    "register_model": lambda d, c: ((d.draw(models()),), {"replace": d.draw(maybe(st.booleans()))}),
    "register_models": lambda d, c: (
        (d.draw(maybe(st.lists(models(), max_size=3))),),
        {"replace": d.draw(maybe(st.booleans()))},
    ),
    "update_model": lambda d, c: (
        (d.draw(KEYS), d.draw(maybe(st.sampled_from([{"cost": {"input": "1"}}, {"status": "beta"}])) | models())),
        {"expected_revision": d.draw(maybe(st.none() | st.integers(0, 5)))},
    ),
    "delete_model": lambda d, c: (
        (d.draw(KEYS),),
        {"expected_revision": d.draw(maybe(st.none() | st.integers(0, 5)))},
    ),
    "sync_models": lambda d, c: (
        (d.draw(maybe(st.lists(models(), max_size=3))),),
        {"prune": d.draw(maybe(st.booleans())), "dry_run": d.draw(maybe(st.booleans()))},
    ),
    "load_config": lambda d, c: (
        (d.draw(maybe(st.sampled_from(CONFIG_FILES).map(c.path))),),
        {"prune": d.draw(maybe(st.booleans())), "dry_run": d.draw(maybe(st.booleans()))},
    ),
    "get_model": lambda d, c: ((d.draw(KEYS),), {}),
    "get_entry": lambda d, c: ((d.draw(KEYS),), {}),
    "list_models": lambda d, c: (
        (),
        {"provider": d.draw(maybe(st.sampled_from(["openai", ["a", "b"]]))), "status": d.draw(maybe(st.just("beta")))},
    ),
    "search_models": lambda d, c: ((), _search_filters(d)),
    "most_cost_effective_models": lambda d, c: (
        (d.draw(maybe(st.sampled_from([None, "chat"]))), d.draw(maybe(st.sampled_from([None, 1, 5])))),
        {"input_tokens": d.draw(TOKENS), "output_tokens": d.draw(TOKENS), "currency": d.draw(maybe(st.just("USD")))},
    ),
    "estimate_cost": lambda d, c: ((d.draw(KEYS), *(d.draw(TOKENS) for _ in range(5))), {}),
    "ping": lambda d, c: ((), {}),
    "load_functions": lambda d, c: ((), {}),
    "flush_spool": lambda d, c: ((), {}),
    "refresh": lambda d, c: ((), {}),
    "compare_versions": lambda d, c: ((d.draw(maybe(st.just("1.0.0"))), d.draw(maybe(st.just("2.0.0-rc.1")))), {}),
    "acquire": _acquire_plan,
    "route": lambda d, c: (
        (),
        {
            "input_tokens": d.draw(TOKENS),
            "max_output_tokens": d.draw(maybe(st.none() | st.integers(0, 100))),
            "capability": d.draw(maybe(st.sampled_from([None, "chat"]))),
            "candidates": d.draw(maybe(st.sampled_from([None, [GPT, CLAUDE], [GPT, GPT]]))),
            "max_cost": d.draw(MONEY),
            "tenant": d.draw(TENANTS),
            "request_id": d.draw(IDS),
            "currency": d.draw(maybe(st.just("USD"))),
        },
    ),
    "check_rate_limit": lambda d, c: ((d.draw(KEYS), d.draw(TOKENS), d.draw(TENANTS)), {}),
    "settle": lambda d, c: (
        (
            d.draw(reservations(c.held)),
            d.draw(maybe(st.none() | st.integers(0, 100))),
            d.draw(maybe(st.none() | st.integers(0, 100))),
            d.draw(maybe(st.booleans())),
            d.draw(maybe(st.none() | st.floats(0, 1e5))),
        ),
        _cache_counts(d),
    ),
    "release": lambda d, c: ((d.draw(reservations(c.held)),), {}),
    "events": lambda d, c: (
        (d.draw(maybe(st.sampled_from(["*", "usage.recorded", ["catalog.changed", "budget.threshold"]]))),),
        {"last": d.draw(maybe(st.integers(1, 50))), "since_id": d.draw(maybe(st.sampled_from([None, "0-0", "1"])))},
    ),
    "record_usage": lambda d, c: (
        (
            d.draw(KEYS),
            d.draw(TOKENS),
            d.draw(TOKENS),
            d.draw(maybe(st.booleans())),
            d.draw(maybe(st.none() | st.floats(0, 1e5))),
        ),
        {"tenant": d.draw(TENANTS), "request_id": d.draw(IDS), **_cache_counts(d)},
    ),
    "get_statistics": lambda d, c: (
        (
            d.draw(maybe(st.sampled_from([None, GPT]))),
            d.draw(TENANTS),
            d.draw(maybe(st.none())),
            d.draw(maybe(st.none())),
        ),
        {"provider": d.draw(maybe(st.sampled_from([None, "openai"]))), "currency": d.draw(maybe(st.just("USD")))},
    ),
    "usage": lambda d, c: (
        (d.draw(KEYS), d.draw(TIMES), d.draw(TIMES), d.draw(maybe(st.sampled_from(["minute", "hour", "day"])))),
        {"tenant": d.draw(TENANTS)},
    ),
    "model_performance": lambda d, c: ((d.draw(KEYS),), {}),
    "rank_models": lambda d, c: (
        (d.draw(maybe(st.sampled_from(["cost_efficiency", "latency", "throughput", "success_rate"]))),),
        {
            "provider": d.draw(maybe(st.none())),
            "capability": d.draw(maybe(st.none())),
            "min_requests": d.draw(maybe(st.integers(0, 3))),
            "limit": d.draw(maybe(st.none() | st.integers(1, 3))),
        },
    ),
    "set_budget": lambda d, c: (
        (
            d.draw(maybe(st.sampled_from(["acme", "beta"]))),
            d.draw(MONEY),
            d.draw(maybe(st.sampled_from(["day", "week"]))),
        ),
        {
            "model": d.draw(maybe(st.sampled_from([None, GPT]))),
            "currency": d.draw(maybe(st.just("USD"))),
            "thresholds": d.draw(maybe(st.sampled_from([(50, 80, 100), (10,)]))),
        },
    ),
    "delete_budget": lambda d, c: (
        (d.draw(maybe(st.sampled_from(["acme", "beta"]))), d.draw(maybe(st.sampled_from(["day", "week"])))),
        {"model": d.draw(maybe(st.sampled_from([None, GPT])))},
    ),
    "get_budgets": lambda d, c: ((d.draw(TENANTS),), {}),
    "budget_status": lambda d, c: ((d.draw(maybe(st.just("acme"))),), {}),
    "fleet_view": lambda d, c: ((), {}),
    "export": lambda d, c: ((), {}),
}
# Called apart: restore (it needs an export of another namespace), on (a callback), admit (a
# context manager); close and aclose end the client.
APART = {"restore", "on", "admit", "close", "aclose"}


def test_every_public_method_is_fuzzed() -> None:
    public = {name for name, _ in inspect.getmembers(Registry, callable) if not name.startswith("_")}
    public -= {"from_url"}  # a constructor: test_fuzz_cli.py gives it hostile URLs and namespaces
    assert public == set(PLANS) | (APART - {"aclose"})
    async_public = {name for name, _ in inspect.getmembers(AsyncRegistry, callable) if not name.startswith("_")}
    assert async_public - {"from_url"} == set(PLANS) | (APART - {"close"})


@pytest.fixture
def rb(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    yield client
    client.close()


@pytest.fixture
def fuzz_registry(make_registry: Any) -> Any:
    """A client (sync or async) on namespace ``fuzz`` that remembers refusals, whose sleeps
    raise :class:`Slept`."""
    reg = make_registry(namespace=NS, cache_denials=True)

    def sleep(seconds: float) -> None:
        raise Slept(seconds)

    async def asleep(seconds: float) -> None:
        raise Slept(seconds)

    target = reg._target if isinstance(reg, SyncFacade) else reg
    target._sleep, target._asleep = sleep, asleep
    return reg


def tenant_of(key: str) -> str | None:
    """The tenant a key is named after, read from its name (tenants hold no ':', '{' or '}')."""
    if key.startswith(f"{{{NS}:bud:"):
        return key[len(NS) + 6 : key.index("}")]
    if key.startswith(f"{{{NS}:catalog}}:budget:"):
        return key.rsplit(":", 1)[1]
    match = re.match(r"^\{[^{}]*\}:t:([^:]*):", key)
    return match[1] if match else None


def check_call(c: Context, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Call ``name``; assert the properties of the module docstring."""
    before = RedisState.of(c.client)
    slept: float | None = None
    try:
        getattr(c.reg, name)(*args, **kwargs)
    except REFUSALS:
        pass
    except Slept as exc:
        slept = exc.args[0]
    except RegistryError:
        changed = before.changed(RedisState.of(c.client))
        assert not changed, f"{name} raised after writing {sorted(changed)}"
        return
    timeout = kwargs.get("timeout")
    assert slept is None or timeout is None or timeout == math.inf or slept <= timeout, (timeout, slept)
    changed = {key.decode(errors="replace") for key in before.changed(RedisState.of(c.client))}
    outside = {key for key in changed if not key.startswith(f"{{{NS}:")}
    assert not outside, f"{name} wrote keys outside its namespace: {outside}"
    self_ = () if isinstance(inspect.getattr_static(Registry, name), staticmethod) else (None,)
    bound = inspect.signature(getattr(Registry, name)).bind(*self_, *args, **kwargs).arguments
    if "tenant" not in bound and "reservation" not in bound:
        return  # not a call for one tenant (restore writes every tenant's books)
    tenant = bound.get("tenant", getattr(bound.get("reservation"), "tenant", None))
    strangers = {key for key in changed if tenant_of(key) not in (None, tenant)}
    assert not strangers, f"{name} for tenant {tenant!r} wrote other tenants' keys: {strangers}"


@pytest.mark.parametrize("name", sorted(PLANS))
@fuzz_settings(0.5)
@given(data=st.data())
def test_a_method_returns_or_raises_a_registry_error_having_written_nothing(
    fuzz_registry: Any, rb: redis.Redis, tmp_path: Path, name: str, data: st.DataObject
) -> None:
    rb.flushall()
    c = Context(fuzz_registry, rb, tmp_path)
    for _ in range(data.draw(st.integers(1, 2), label="calls")):
        args, kwargs = PLANS[name](data, c)
        check_call(c, name, args, kwargs)


@fuzz_settings(0.5)
@given(data=st.data())
def test_restore_takes_an_export_or_refuses_it_having_written_nothing(
    fuzz_registry: Any, make_registry: Any, rb: redis.Redis, tmp_path: Path, data: st.DataObject
) -> None:
    """An export of another namespace, as is or tampered with: restored whole, or refused with
    nothing written (not even the ledger counters, which go first)."""
    rb.flushall()
    source = Context(make_registry(namespace="source"), rb, tmp_path)
    export = source.reg.export()
    rb.flushall()
    c = Context.__new__(Context)
    c.reg, c.client, c.tmp = fuzz_registry, rb, tmp_path
    check_call(c, "restore", (data.draw(documents(export), label="document"),), {})


@fuzz_settings(0.25)
@given(data=st.data())
def test_on_and_admit_take_hostile_arguments(
    fuzz_registry: Any, rb: redis.Redis, tmp_path: Path, data: st.DataObject
) -> None:
    """Subscribing (a hostile event type or callback) and the admit context manager (hostile
    arguments, hostile counts reported inside)."""
    rb.flushall()
    c = Context(fuzz_registry, rb, tmp_path)
    event_type = data.draw(maybe(st.sampled_from(["*", "usage.recorded"])))
    callback = data.draw(maybe(st.just(print)))
    try:
        subscription = c.reg.on(event_type, callback)
    except RegistryError:
        pass
    else:
        subscription()
    if isinstance(c.reg, SyncFacade):
        return  # the asyncio client's admit is an async context manager: test_admission.py
    args, kwargs = _acquire_plan(data, c)
    before = RedisState.of(rb)
    try:
        with c.reg.admit(*args, **kwargs) as ticket:
            ticket.add_output(data.draw(TOKENS))
            ticket.usage(input_tokens=data.draw(maybe(st.none())), output_tokens=data.draw(maybe(st.none())))
    except (*REFUSALS, Slept):
        pass
    except RegistryError:
        changed = before.changed(RedisState.of(rb))
        assert all(key.startswith(f"{{{NS}:".encode()) for key in changed), changed


# Names made of the characters that structure keys, and a few others.
NAMES = st.text(alphabet=st.sampled_from("ab:/@.-_{}*|?[ \n\u00e9\U0001f642"), min_size=1, max_size=10)


@fuzz_settings(0.5)
@given(
    ids=st.lists(NAMES, min_size=2, max_size=3, unique=True),
    tenants=st.lists(NAMES, min_size=2, max_size=3, unique=True),
    request_ids=st.lists(NAMES, min_size=1, max_size=2),
)
def test_model_ids_tenants_and_request_ids_cannot_leave_their_namespace(
    fuzz_registry: Any, rb: redis.Redis, ids: list[str], tenants: list[str], request_ids: list[str]
) -> None:
    """Whatever a model's id, a tenant's name or a request id holds, each key a call writes is
    in the namespace and in the hash slot of what it belongs to (the catalog, the model it is
    for, the tenant it is for), and a key named after a tenant is written only for that tenant.
    Names the library refuses raise ConfigError and write nothing."""
    rb.flushall()
    reg = fuzz_registry
    keys = reg.keys
    good_ids: list[str] = []
    for model_id in ids:
        limits = {name: {"requests_per_minute": 100} for name in tenants}
        spec = model("openai", model_id, rate_limit={"requests_per_minute": 100}, tenant_limits=limits)
        try:
            with expect_in_namespace(rb, keys.catalog_tag, None):
                reg.register_model(spec)
        except RegistryError:
            spec = model("openai", model_id, rate_limit={"requests_per_minute": 100})
            try:
                with expect_in_namespace(rb, keys.catalog_tag, None):
                    reg.register_model(spec)
            except RegistryError:
                continue
        good_ids.append(f"openai:{model_id}")
    event(f"{len(good_ids)} models registered")
    for tenant in tenants:
        for key in good_ids:
            for request_id in request_ids:
                try:
                    with expect_in_namespace(rb, keys.admission_tag(key), tenant, keys.budget_tag(tenant)):
                        decision = reg.acquire(key, 10, 5, tenant=tenant, request_id=request_id)
                    with expect_in_namespace(rb, keys.admission_tag(key), tenant, keys.budget_tag(tenant)):
                        assert decision.reservation is not None
                        reg.settle(decision.reservation, 8, 4)
                    with expect_in_namespace(rb, keys.admission_tag(key), tenant, keys.budget_tag(tenant)):
                        reg.record_usage(key, 10, 5, tenant=tenant, request_id=request_id)
                except RegistryError:
                    pass
            try:
                with expect_in_namespace(rb, keys.catalog_tag, tenant):
                    reg.set_budget(tenant, "1", model=key)
            except RegistryError:
                pass


@contextmanager
def expect_in_namespace(client: redis.Redis, tag: str, tenant: str | None, *other_tags: str) -> Iterator[None]:
    """The block writes keys only in the slots of ``tag`` (or ``other_tags``), all starting with
    the namespace's "{fuzz:", none named after a tenant but ``tenant``; or it raises
    RegistryError having written nothing."""
    before = RedisState.of(client)
    try:
        yield
    except RegistryError:
        assert not before.changed(RedisState.of(client))
        raise
    slots = {key_slot(t.encode()) for t in (tag, *other_tags)}
    for key in before.changed(RedisState.of(client)):
        name = key.decode()
        assert name.startswith(f"{{{NS}:"), name
        assert key_slot(key) in slots, (name, tag, other_tags)
        assert tenant_of(name) in (None, tenant), (name, tenant)


# -- what the fuzzing found: each case once, by hand ----------------------------------------------

FOUND: dict[str, Callable[[Context], Any]] = {
    # TypeError, or a NaN deadline that never passes: an endless wait
    "acquire timeout NaN": lambda c: c.reg.acquire(GPT, 10, tenant="beta", wait=True, timeout=math.nan),
    "acquire timeout str": lambda c: c.reg.acquire(GPT, 10, wait=True, timeout="5"),
    "acquire timeout Decimal": lambda c: c.reg.acquire(GPT, 10, wait=True, timeout=Decimal(1)),
    # forged handles: a TypeError, a key named after tenant "a:b", or the budgets settled first
    "settle tenant with ':'": lambda c: c.reg.settle(msgspec.structs.replace(c.held, tenant="a:b")),
    "settle model key with braces": lambda c: c.reg.settle(msgspec.structs.replace(c.held, model_key="openai:a}{b")),
    "settle bad at_ms after budgets": lambda c: c.reg.settle(msgspec.structs.replace(c.held, at_ms=-1)),
    "release charges None": lambda c: c.reg.release(msgspec.structs.replace(c.held, charges=None)),
    "release bad budget period": lambda c: c.reg.release(msgspec.structs.replace(c.held, budgets=(("*",),))),
    "settle latency str": lambda c: c.reg.settle(c.held, 1, 1, True, "5"),
    # sent as the script's expected revision: a ScriptError, a bare DataError or UnicodeEncodeError
    "delete_model expected_revision str": lambda c: c.reg.delete_model(GPT, expected_revision="1"),
    "delete_model expected_revision bool": lambda c: c.reg.delete_model(GPT, expected_revision=True),
    "update_model expected_revision float": lambda c: c.reg.update_model(GPT, {"name": "x"}, expected_revision=1.5),
    # InvalidOperation from quantizing 10^108 units
    "set_budget amount 1e99": lambda c: c.reg.set_budget("acme", "1e99"),
    # a lone surrogate (argv bytes that are not UTF-8) passed as a name: UnicodeEncodeError
    "budget_status tenant surrogate": lambda c: c.reg.budget_status("\udcff"),
    "acquire tenant surrogate": lambda c: c.reg.acquire(GPT, 1, tenant="a\udcff"),
    "register_model id surrogate": lambda c: c.reg.register_model(model(id="x\udcff")),
    "delete_model key surrogate": lambda c: c.reg.delete_model("openai:\udcff"),
    "record_usage request id surrogate": lambda c: c.reg.record_usage(GPT, 1, 1, request_id="\udcff"),
    "record_usage latency str": lambda c: c.reg.record_usage(GPT, 1, 1, True, "5"),
    # AttributeError / TypeError / InvalidOperation from inside
    "get_statistics currency None": lambda c: c.reg.get_statistics(currency=None),
    "get_statistics since NaN": lambda c: c.reg.get_statistics(since=math.nan, until=1.0),
    "usage until inf": lambda c: c.reg.usage(GPT, 0, math.inf),
    "usage until 10**30": lambda c: c.reg.usage(GPT, 0, 10**30),
    "usage granularity list": lambda c: c.reg.usage(GPT, 0, 1, []),
    # three million day keys asked for (ten billion up to 10**12 s): memory, a pipeline without end
    "get_statistics over 8,000 years": lambda c: c.reg.get_statistics(since=0, until=253_402_300_799),
    "get_statistics until 10**12": lambda c: c.reg.get_statistics(since=0, until=10**12),
    "search_models provider int": lambda c: c.reg.search_models(provider=5),
    "search_models currency int": lambda c: c.reg.search_models(currency=5),
    "list_models status bool": lambda c: c.reg.list_models(status=True),
    "register_models None": lambda c: c.reg.register_models(None),
    "sync_models None": lambda c: c.reg.sync_models(None),
    "set_budget thresholds None": lambda c: c.reg.set_budget("acme", "1", thresholds=None),
    "load_config None": lambda c: c.reg.load_config(None),
    "load_config NUL": lambda c: c.reg.load_config("a\x00b"),
    "route max_cost bytes": lambda c: c.reg.route(input_tokens=1, max_cost=b"x"),
    "route candidates int": lambda c: c.reg.route(input_tokens=1, candidates=5),
    "route candidates of lists": lambda c: c.reg.route(input_tokens=1, candidates=[[GPT]]),
    "events None": lambda c: c.reg.events(None),
    "events since_id bool": lambda c: c.reg.events(since_id=True),
    # restore: a bare TypeError, a catalog hash overwritten as a "ledger" key, the ledger
    # written before a duplicate model failed the catalog's write
    "restore catalog None": lambda c: c.reg.restore({"format": "registry-export/1", "catalog": None}),
    "restore a catalog key as ledger": lambda c: c.reg.restore(
        {"format": "registry-export/1", "ledger": {"catalog}:meta": {"counters": {"revision": 1}}}}
    ),
    "restore a surrogate": lambda c: c.reg.restore(
        {"format": "registry-export/1", "ledger": {"adm:openai:gpt-4}:l:total": {"counters": {"\udcff": 1}}}}
    ),
    "restore an empty counter name": lambda c: c.reg.restore(
        {"format": "registry-export/1", "ledger": {"adm:openai:gpt-4}:l:total": {"counters": {"": 1}}}}
    ),
    "restore a ttl of text": lambda c: c.reg.restore(
        {"format": "registry-export/1", "ledger": {"adm:a:b}:l:total": {"counters": {"x": 1}, "ttl_ms": "1"}}}
    ),
    "restore members of a set not a list": lambda c: c.reg.restore(
        {"format": "registry-export/1", "ledger": {"adm:a:b}:l:tenants": {"members": "acme"}}}
    ),
    "restore a model twice": lambda c: c.reg.restore(
        {
            "format": "registry-export/1",
            "catalog": [model(), model()],
            "ledger": {"adm:openai:gpt-4}:l:total": {"counters": {"requests": 1}}},
        }
    ),
}


@pytest.mark.parametrize("case", list(FOUND))
def test_what_the_fuzzing_found_raises_config_error_having_written_nothing(
    fuzz_registry: Any, rb: redis.Redis, tmp_path: Path, case: str
) -> None:
    c = Context(fuzz_registry, rb, tmp_path)
    if case.startswith("restore"):
        rb.flushall()
    before = RedisState.of(rb)
    with pytest.raises(ConfigError):
        FOUND[case](c)
    assert not before.changed(RedisState.of(rb))


def test_export_skips_keys_that_only_look_like_ledger_keys(fuzz_registry: Any, rb: redis.Redis, tmp_path: Path) -> None:
    """A request id (or a model id) holding ":l:" named a reservation record the export's SCAN
    pattern matched: HGETALL of a string failed the whole export with WRONGTYPE."""
    c = Context(fuzz_registry, rb, tmp_path)
    c.reg.acquire(GPT, 10, request_id="x:l:total")
    c.reg.register_model(model("openai", "a:l:b", rate_limit={"requests_per_minute": 5}))
    c.reg.acquire("openai:a:l:b", 10)
    ledger = c.reg.export()["ledger"]
    assert "adm:openai:gpt-4}:l:total" in ledger
    assert not [key for key in ledger if ":r:" in key or ":w:" in key]


@fuzz_settings(0.5)
@given(
    client=st.sampled_from([Registry, AsyncRegistry]),
    url=maybe(st.just("redis://127.0.0.1:1/0")),
    options=st.fixed_dictionaries(
        {},
        optional={
            "namespace": maybe(st.sampled_from(["fuzz", "a.b-c_d"])),
            "watch": maybe(st.booleans()),
            "refresh_interval": maybe(st.sampled_from([0.5, 1, 10])),
            "shadow": maybe(st.booleans()),
            "cache_denials": maybe(st.booleans()),
            "usage_event_rate": maybe(st.sampled_from([0.0, 0.5, 1])),
        },
    ),
)
def test_a_client_is_made_or_refused_with_config_error(client: Any, url: Any, options: dict[str, Any]) -> None:
    """``from_url`` with hostile options (no connection is made until a call needs one)."""
    try:
        reg = client.from_url(url, **options)
    except RegistryError:
        return
    if isinstance(reg, Registry):
        reg.close()
    else:
        asyncio.run(reg.aclose())


FOUND_OPTIONS = [{"refresh_interval": "1"}, {"refresh_interval": math.nan}, {"usage_event_rate": "1"}]


@pytest.mark.parametrize("options", FOUND_OPTIONS, ids=str)
def test_what_the_fuzzing_found_in_client_options(options: dict[str, Any]) -> None:
    """A TypeError from a comparison, or a NaN interval the watcher would wait on forever."""
    with pytest.raises(ConfigError):
        Registry.from_url("redis://127.0.0.1:1/0", **options)
