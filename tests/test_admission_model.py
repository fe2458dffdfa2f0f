"""The admission scripts against a reference model of the sliding-window algorithm.

The reference below is written from the algorithm's description, not from the library: each
limit is a dict of sub-window buckets (index = now // bucket_ms); at time ``now`` a bucket
counts in full while ``(index + 1) * bucket_ms > now - window_ms``; a request is admitted only
if every limit's total + cost <= limit, and then each limit is charged in its current bucket
(expired buckets are dropped at that moment). A request costs a requests limit 1 and a tokens
limit its input plus output tokens, an input tokens limit its input and an output tokens limit
its output (at acquire the max output, at settle the real one). Its retry_after is found by brute force: the
first instant, among those at which a bucket leaves the window, where the request fits.

An admitted acquire's handle holds its time and, per limit, the bucket and amount charged. Only
a caller-given request id is recorded ("...:r:<id>", the token, time and charges), so that a
retry under it is a duplicate handed the same handle; an acquire without one is named after its
own token and writes nothing but the windows. A settle or release moves each charged amount to
its real value once per acquire token (a marker "...:s:<token>"), within the reservation TTL
after the admission, and frees the id if its record still holds that token. The reference
learns each token from the real decision (it is random).

Redis expires keys by its own clock, not the fake one the scripts are given: a record or a
marker lives for its PX in real time, so the reference keeps them and checks their PTTL; only
a marker written in the last moments of a TTL (a PX of a few ms) may vanish during a test.

A hypothesis state machine drives a real :class:`Registry` (on the test redis-server, with an
injected :class:`FakeClock`) and the reference through the same random operations, and
compares every reply and the whole window and reservation state after every step.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from registry import Registry
from registry.admission.types import Decision, Reservation
from registry.errors import RequestTooLargeError
from registry.testing import FakeClock, use_clock
from tests.conftest import model

MINUTE_MS = 60_000
DAY_MS = 86_400_000
BASE_MS = 1_700_000_000_000  # the clock starts a random part of a day after this

# field name -> (key suffix, what it counts, window ms, bucket ms); in the order limits apply
SPANS: dict[str, tuple[str, str, int, int]] = {
    "requests_per_minute": ("rpm", "requests", MINUTE_MS, 1_000),
    "tokens_per_minute": ("tpm", "tokens", MINUTE_MS, 1_000),
    "input_tokens_per_minute": ("itpm", "input_tokens", MINUTE_MS, 1_000),
    "output_tokens_per_minute": ("otpm", "output_tokens", MINUTE_MS, 1_000),
    "requests_per_day": ("rpd", "requests", DAY_MS, 900_000),
}
ALL_NAMES = (*SPANS, *(f"tenant.{name}" for name in SPANS))

# Small limits, so that refusals (and requests too large ever to fit) are frequent.
MODELS: dict[str, dict[str, Any]] = {
    "openai:gpt-4": model(
        "openai",
        "gpt-4",
        max_output_tokens=400,
        rate_limit={"requests_per_minute": 5, "tokens_per_minute": 2000, "requests_per_day": 20},
        tenant_limits={"*": {"requests_per_minute": 3}},
    ),
    "anthropic:claude-3": model(
        "anthropic",
        "claude-3",
        rate_limit={"tokens_per_minute": 1500, "requests_per_day": 12},
        tenant_limits={
            "acme": {"tokens_per_minute": 700, "requests_per_day": 4},
            "zero": {"tokens_per_minute": 0},
            "*": {"requests_per_minute": 2},
        },
    ),
    # input and output tokens limited apart (Anthropic's ITPM and OTPM), no limit on their sum
    "anthropic:claude-4": model(
        "anthropic",
        "claude-4",
        max_output_tokens=300,
        rate_limit={"requests_per_minute": 6, "input_tokens_per_minute": 1800, "output_tokens_per_minute": 600},
        tenant_limits={
            "acme": {"output_tokens_per_minute": 350, "tokens_per_minute": 1000},
            "*": {"input_tokens_per_minute": 900},
        },
    ),
}
MODEL_KEYS = sorted(MODELS)
TENANTS = (None, None, "acme", "beta", "beta", "zero")
REQUEST_IDS = ("req-a", "req-b", "req-c")
RESERVATION_TTL_MS = 3_600_000  # the client's default: how long after its admission a handle settles


# -- the reference model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    name: str  # "tokens_per_minute", "tenant.requests_per_day", ...
    key: str  # its window hash in Redis
    counts: str  # "requests" | "tokens" | "input_tokens" | "output_tokens"
    limit: int
    window: int
    bucket: int


def adm_tag(model_key: str) -> str:
    return f"{{registry:adm:{model_key}}}"


def window_key(model_key: str, name: str, tenant: str | None) -> str:
    short = SPANS[name.removeprefix("tenant.")][0]
    scope = f":t:{tenant}" if name.startswith("tenant.") else ""
    return f"{adm_tag(model_key)}{scope}:w:{short}"


def reservation_key(model_key: str, request_id: str, tenant: str | None) -> str:
    """A tenant's request ids live apart from other tenants' (and from untenanted ones)."""
    scope = f":t:{tenant}" if tenant is not None else ""
    return f"{adm_tag(model_key)}{scope}:r:{request_id}"


def settled_key(model_key: str, token: str, tenant: str | None) -> str:
    """The marker of an acquire (by its token) settled or released, in its tenant's scope."""
    scope = f":t:{tenant}" if tenant is not None else ""
    return f"{adm_tag(model_key)}{scope}:s:{token}"


def limits_for(model_key: str, tenant: str | None) -> list[Limit]:
    """The model's limits, then (with a tenant) the tenant's entry on it, else its ``"*"``."""
    spec = MODELS[model_key]
    scopes: list[tuple[str, dict[str, Any]]] = [("", spec.get("rate_limit", {}))]
    if tenant is not None:
        tenants = spec.get("tenant_limits", {})
        rate = tenants.get(tenant, tenants.get("*"))
        if rate is not None:
            scopes.append(("tenant.", rate))
    out = []
    for prefix, rate in scopes:
        for name, (_short, counts, window, bucket) in SPANS.items():
            if rate.get(name) is not None:
                out.append(
                    Limit(
                        prefix + name, window_key(model_key, prefix + name, tenant), counts, rate[name], window, bucket
                    )
                )
    return out


def live(index: int, bucket: int, window: int, now: int) -> bool:
    return (index + 1) * bucket > now - window


@dataclass
class Charge:
    name: str
    key: str
    index: int
    cost: int
    window: int
    bucket: int


@dataclass
class Admission:
    """One admitted request, for the invariant: its time and, per window key, its amount now."""

    at: int
    amounts: dict[str, int]
    estimates: dict[str, int]
    limits: dict[str, Limit]


@dataclass
class Acquired:
    """One admitted acquire: what its handle holds and, under a caller-given id, its record."""

    at: int
    charges: list[Charge]
    admission: Admission
    token: str = ""  # the acquire's token, random: learnt from the real decision
    since: float = 0.0  # time.monotonic() before the acquire: its record's PX runs from then

    def as_charges(self) -> tuple[tuple[str, int, int, int, int], ...]:
        """As the handle carries them: (name, bucket index, amount, window_ms, bucket_ms)."""
        return tuple((c.name, c.index, c.cost, c.window, c.bucket) for c in self.charges)


@dataclass
class Marker:
    """A settle marker, written with what was left of the TTL (``px``, ms of Redis' own clock)."""

    px: int
    since: float  # time.monotonic() before the settle that wrote it

    def left_ms(self, at: float) -> float:
        """At most what Redis has left of it at monotonic time ``at`` (it was set after ``since``)."""
        return self.px - (at - self.since) * 1000


@dataclass
class Reference:
    windows: dict[str, dict[int, int]] = field(default_factory=dict)
    records: dict[str, Acquired] = field(default_factory=dict)  # a caller-given id's key -> its acquire
    acquires: dict[str, Acquired] = field(default_factory=dict)  # token -> every admitted acquire
    markers: dict[str, Marker] = field(default_factory=dict)  # the acquires settled or released
    admissions: list[Admission] = field(default_factory=list)
    # Window keys whose buckets a settle of a token no acquire drew has moved: settle trusts the
    # handle it is given, so such a copy settles the charges a second time (a release then takes
    # back what other requests hold) and the interval invariant no longer holds there.
    forged: set[str] = field(default_factory=set)
    shadow: bool = False
    ttl: int = RESERVATION_TTL_MS
    last: Acquired | None = None  # the acquire the last call admitted, or the duplicate's

    def total(self, limit: Limit, now: int) -> int:
        buckets = self.windows.get(limit.key, {})
        return sum(v for i, v in buckets.items() if live(i, limit.bucket, limit.window, now))

    def wait(self, limit: Limit, cost: int, now: int) -> int:
        """Milliseconds until ``cost`` fits ``limit`` if nothing else is admitted (0: fits now)."""
        if self.total(limit, now) + cost <= limit.limit:
            return 0
        buckets = self.windows.get(limit.key, {})
        leaving = sorted((i + 1) * limit.bucket + limit.window for i in buckets)
        for t in leaving:
            if t > now and self.total(limit, t) + cost <= limit.limit:
                return t - now
        raise AssertionError("a request no larger than its limit always fits eventually")

    def acquire(
        self, now: int, res_key: str | None, limits: list[Limit], costs: list[int], mode: str = "acquire"
    ) -> tuple[int, int, int, list[int]]:
        """(status, binding, wait_ms, remaining) exactly as the script's reply documents them.

        ``res_key`` is the key of a caller-given request id (None without one: the acquire is
        named after its own token, never looked up nor recorded). ``last`` is then the acquire
        admitted, or the one whose record makes this a duplicate.
        """
        n = len(limits)
        self.last = None
        if mode != "peek" and res_key is not None and res_key in self.records:
            self.last = self.records[res_key]
            return 2, 0, 0, [-1] * n
        for i, (limit, cost) in enumerate(zip(limits, costs, strict=True)):
            if cost > limit.limit:
                return 3, i + 1, -1, [-1] * n
        binding, wait = 0, 0
        for i, (limit, cost) in enumerate(zip(limits, costs, strict=True)):
            ms = self.wait(limit, cost, now)
            if ms > 0 and (binding == 0 or ms > wait):
                binding, wait = i + 1, ms
        totals = [self.total(limit, now) for limit in limits]
        status = 1 if binding == 0 else (4 if mode == "shadow" else 0)
        if mode != "peek" and status != 0:
            charges = []
            for limit, cost in zip(limits, costs, strict=True):
                buckets = self.windows.setdefault(limit.key, {})
                for i in [i for i in buckets if not live(i, limit.bucket, limit.window, now)]:
                    del buckets[i]
                index = now // limit.bucket
                if cost > 0:
                    buckets[index] = buckets.get(index, 0) + cost
                if not buckets:
                    del self.windows[limit.key]
                charges.append(Charge(limit.name, limit.key, index, cost, limit.window, limit.bucket))
            amounts = {lim.key: c for lim, c in zip(limits, costs, strict=True)}
            admission = Admission(now, amounts, dict(amounts), {lim.key: lim for lim in limits})
            self.admissions.append(admission)
            self.last = Acquired(now, charges, admission)
            if res_key is not None:
                self.records[res_key] = self.last
            totals = [t + c for t, c in zip(totals, costs, strict=True)]
            if status == 1:
                self.check_admitted_at(now)
        remaining = [max(limit.limit - t, 0) for limit, t in zip(limits, totals, strict=True)]
        return status, binding, wait, remaining

    def learn(self, acquired: Acquired, token: str, since: float) -> None:
        """The token the real acquire drew for what the reference admitted last."""
        assert token not in self.acquires  # new for each acquire
        acquired.token, acquired.since = token, since
        self.acquires[token] = acquired

    def settle(
        self,
        now: int,
        handle: Reservation,
        origin: Acquired,
        targets: dict[str, tuple[str, int]],
        since: float = 0.0,
    ) -> bool:
        """Settle ``handle``, a handle of the acquire ``origin`` (or a copy of it with another
        token): move each charged amount to ``targets[name]``'s amount. False, changing nothing,
        once the TTL after its admission has passed or if its token has settled before."""
        token = handle.token or "-"
        left = origin.at + self.ttl - now
        marker = settled_key(handle.model_key, token, handle.tenant)
        if left <= 0 or marker in self.markers:
            return False
        self.markers[marker] = Marker(min(left, self.ttl), since)
        res_key = reservation_key(handle.model_key, handle.id, handle.tenant)
        record = self.records.get(res_key)
        if handle.id != token and record is not None and record.token == token:
            del self.records[res_key]  # the id is free again
        for charge in origin.charges:
            target = targets.get(charge.name)
            if target is None or not live(charge.index, charge.bucket, charge.window, now):
                continue
            key, amount = target
            assert key == charge.key
            buckets = self.windows.setdefault(key, {})
            held = buckets.get(charge.index, 0)
            new = max(held + amount - charge.cost, 0)
            if new:
                buckets[charge.index] = new
            else:
                buckets.pop(charge.index, None)
            if not buckets:
                del self.windows[key]
            if token == origin.token:
                origin.admission.amounts[key] = amount
            elif new != held:
                self.forged.add(key)
        return True

    # -- the invariant -----------------------------------------------------------------------

    def check_admitted_at(self, now: int) -> None:
        """At an admission: per limit, what the window (now - W, now] holds is within the limit.

        Every interval of length W is covered by checking those that end at an admission, and
        at that moment the amounts are as they then stood (a later settle may raise them).
        """
        last = self.admissions[-1]
        for key, limit in last.limits.items():
            if key in self.forged:
                continue
            inside = sum(a.amounts.get(key, 0) for a in self.admissions if now - limit.window < a.at <= now)
            assert inside <= limit.limit, (key, inside, limit.limit)

    def check_every_interval(self) -> None:
        """Over every interval of length W, admitted amounts (released ones count 0, settled
        ones at most their estimate) stay within the limit."""
        limits = {k: lim for a in self.admissions for k, lim in a.limits.items() if k not in self.forged}
        for key, limit in limits.items():
            times = sorted({a.at for a in self.admissions if key in a.amounts})
            for end in times:
                inside = sum(
                    min(a.amounts[key], a.estimates[key])
                    for a in self.admissions
                    if key in a.amounts and end - limit.window < a.at <= end
                )
                assert inside <= limit.limit, (key, end, inside, limit.limit)


# -- comparing the real client with the reference ------------------------------------------------


def part(counts: str, requests: int, input_tokens: int, output_tokens: int) -> int:
    """What a limit is charged: the requests, or the input plus output, input or output tokens."""
    return {
        "requests": requests,
        "tokens": input_tokens + output_tokens,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
    }[counts]


def costs_of(limits: list[Limit], input_tokens: int, output_tokens: int) -> list[int]:
    """What one request of ``input_tokens`` and (at most) ``output_tokens`` costs on each limit."""
    return [part(lim.counts, 1, input_tokens, output_tokens) for lim in limits]


def check_decision(
    decision: Decision,
    expected: tuple[int, int, int, list[int]],
    limits: list[Limit],
    *,
    peek: bool = False,
) -> None:
    status, binding, wait, remaining = expected
    assert status in (0, 1, 2), expected
    assert decision.allowed == (status != 0)
    assert decision.duplicate == (status == 2)
    assert decision.would_deny is None
    assert decision.denied_by == (limits[binding - 1].name if status == 0 else None)
    assert decision.retry_after == (wait / 1000 if status == 0 else 0.0)
    assert round(decision.retry_after * 1000) == (wait if status == 0 else 0)
    assert dict(decision.remaining) == {
        lim.name: left for lim, left in zip(limits, remaining, strict=True) if left >= 0
    }
    if status == 0 or peek:
        assert decision.reservation is None
    else:
        assert decision.reservation is not None


def redis_windows(r: redis.Redis) -> dict[str, dict[int, int]]:
    """Every window's buckets; a hash with none is as good as absent.

    Fields named ``_...`` are the script's own bookkeeping (a running ``_sum`` of the buckets and
    the oldest one, ``_low``): not buckets, but they must agree with them.
    """
    out = {}
    keys = r.keys("{registry:adm:*}*:w:*")
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    for key, fields in zip(keys, pipe.execute(), strict=True):
        held = {int(i): int(v) for i, v in fields.items() if not i.startswith("_")}
        # _sum is the total of the buckets, _low at or below the oldest (equal unless a settle
        # emptied it since): while _low is in the window nothing has expired, _sum is the total.
        assert "_sum" in fields, (key, fields)
        assert int(fields["_sum"]) == sum(held.values()), (key, fields)
        if held:
            assert "_low" in fields, (key, fields)
            assert int(fields["_low"]) <= min(held), (key, fields)
            out[key] = held
    return out


def check_fast_path(r: redis.Redis, ref: Reference, now: int) -> None:
    """Where acquire would trust ``_sum`` (``_low`` still in the window), it is the live total."""
    for key, buckets in ref.windows.items():
        sample = next(lim for a in ref.admissions for k, lim in a.limits.items() if k == key)
        total, low = r.hmget(key, "_sum", "_low")
        if total is not None and (low is None or live(int(low), sample.bucket, sample.window, now)):
            assert int(total) == ref.total(sample, now), (key, total, low, buckets)


def redis_reservations(r: redis.Redis) -> dict[str, str]:
    keys = r.keys("{registry:adm:*}*:r:*")
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
    return dict(zip(keys, pipe.execute(), strict=True))


def redis_pttls(r: redis.Redis, pattern: str) -> dict[str, tuple[str | None, int]]:
    """Each key's value and PTTL (a key that expires meanwhile is left out)."""
    keys = r.keys(pattern)
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
        pipe.pttl(key)
    got = pipe.execute()
    return {key: (got[2 * i], got[2 * i + 1]) for i, key in enumerate(keys) if got[2 * i + 1] != -2}


def reference_reservations(ref: Reference) -> dict[str, str]:
    """The caller-given ids' records, whole: the token, the time and per charged limit
    ``|name bucket amount window_ms bucket_ms`` (as test_admission_scripts.py pins it)."""
    return {
        key: f"{held.token} {held.at}"
        + "".join(f"|{c.name} {c.index} {c.cost} {c.window} {c.bucket}" for c in held.charges)
        for key, held in ref.records.items()
    }


def without_token(reservation: Reservation) -> Reservation:
    return msgspec.structs.replace(reservation, token="")


def settle_targets(
    reservation: Reservation, requests: int, input_tokens: int, output_tokens: int
) -> dict[str, tuple[str, int]]:
    names = ALL_NAMES if reservation.tenant is not None else ALL_NAMES[: len(SPANS)]
    return {
        name: (
            window_key(reservation.model_key, name, reservation.tenant),
            part(SPANS[name.removeprefix("tenant.")][1], requests, input_tokens, output_tokens),
        )
        for name in names
    }


SURE_MS = 2_000  # a marker with more left than this (by Redis' clock) outlives any settle call
SLACK_MS = 50  # Redis' clock (whole ms of wall time) against time.monotonic()


class Harness:
    """One client and the reference, driven in step; every call compares their answers."""

    def __init__(self, reg: Any, r: redis.Redis, start_ms: int) -> None:
        self.reg, self.r = reg, r
        self.clock = FakeClock(start_ms)
        use_clock(reg, self.clock)
        self.ref = Reference()
        self.handed: list[Reservation] = []
        self.last_wait: int | None = None
        self.lapsed = False  # the last settle found its token's marker expired by Redis' clock

    @property
    def now(self) -> int:
        return self.clock.now_ms

    def acquire(
        self,
        model_key: str,
        input_tokens: int,
        max_output: int | None,
        tenant: str | None = None,
        request_id: str | None = None,
    ) -> Decision | None:
        limits = limits_for(model_key, tenant)
        out = max_output if max_output is not None else MODELS[model_key].get("max_output_tokens") or 0
        res_key = reservation_key(model_key, request_id, tenant) if request_id is not None else None
        expected = self.ref.acquire(self.now, res_key, limits, costs_of(limits, input_tokens, out))
        if expected[0] == 3:
            with pytest.raises(RequestTooLargeError) as info:
                self.reg.acquire(model_key, input_tokens, max_output, tenant, request_id)
            too_large = limits[expected[1] - 1]
            assert (info.value.limit, info.value.allowed) == (too_large.name, too_large.limit)
            assert info.value.cost == costs_of([too_large], input_tokens, out)[0]
            return None
        since = time.monotonic()
        decision = self.reg.acquire(model_key, input_tokens, max_output, tenant, request_id)
        check_decision(decision, expected, limits)
        assert decision.server_ms == self.now
        if decision.reservation is not None:
            got = decision.reservation
            held = self.ref.last  # the acquire admitted now, or the one holding the id
            assert held is not None
            assert isinstance(got.token, str)
            assert 0 < len(got.token) <= 64
            if expected[0] == 2:
                assert got.token == held.token  # the handle of the acquire that holds the id
            else:
                self.ref.learn(held, got.token, since)  # a fresh token
            # Without a caller-given id the request is named after its own token.
            assert got.id == (got.token if request_id is None else request_id)
            assert without_token(got) == Reservation(
                model_key,
                got.id,
                tenant,
                input_tokens,
                out,
                at_ms=held.at,
                ttl_ms=self.ref.ttl,
                charges=held.as_charges(),
            )
            self.handed.append(got)
        self.last_wait = expected[2] if expected[0] == 0 else None
        return decision

    def peek(self, model_key: str, tokens: int, tenant: str | None = None) -> Decision | None:
        limits = limits_for(model_key, tenant)
        # check_rate_limit's tokens: input tokens, no output reserved
        expected = self.ref.acquire(self.now, None, limits, costs_of(limits, tokens, 0), mode="peek")
        if expected[0] == 3:
            with pytest.raises(RequestTooLargeError):
                self.reg.check_rate_limit(model_key, tokens, tenant)
            return None
        decision = self.reg.check_rate_limit(model_key, tokens, tenant)
        check_decision(decision, expected, limits, peek=True)
        assert decision.server_ms == self.now
        return decision

    def settle(
        self, reservation: Reservation, input_tokens: int | None, output_tokens: int | None, origin: str = ""
    ) -> bool:
        used_in = reservation.input_tokens if input_tokens is None else input_tokens
        targets = settle_targets(reservation, 1, used_in, output_tokens or 0)
        return self._settle(
            reservation, targets, origin, lambda: self.reg.settle(reservation, input_tokens, output_tokens)
        )

    def release(self, reservation: Reservation, origin: str = "") -> bool:
        return self._settle(
            reservation, settle_targets(reservation, 0, 0, 0), origin, lambda: self.reg.release(reservation)
        )

    def _settle(self, reservation: Reservation, targets: dict[str, tuple[str, int]], origin: str, call: Any) -> bool:
        """``origin`` is the token of the acquire ``reservation`` is a handle of (by default its
        own token; another for a copy of a handle given a token no acquire drew).

        Redis counts a marker's PX on its own clock while the fake one may stand still: a marker
        written in the last moments of its TTL may be gone by the next settle of its token. Only
        then (``lapsed``) may that settle succeed again, as Redis' answer shows.
        """
        key = settled_key(reservation.model_key, reservation.token or "-", reservation.tenant)
        marker = self.ref.markers.get(key)
        since = time.monotonic()
        short = marker is not None and marker.left_ms(since) <= SURE_MS
        got = call()
        self.lapsed = short and got is True
        if self.lapsed:
            del self.ref.markers[key]
        expected = self.ref.settle(
            self.now, reservation, self.ref.acquires[origin or reservation.token], targets, since
        )
        assert got is expected
        return got

    def check_state(self) -> None:
        assert redis_windows(self.r) == {k: v for k, v in self.ref.windows.items() if v}
        assert redis_reservations(self.r) == reference_reservations(self.ref)
        self.check_expiries()
        check_fast_path(self.r, self.ref, self.now)
        self.ref.check_every_interval()

    def check_expiries(self) -> None:
        """A record lives the TTL from its acquire, a marker what was left of the TTL at its
        settle (PX, on Redis' clock), and the markers are exactly those of the acquires (by
        token, in their tenant's scope) settled or released, but for one whose PX has run out."""
        records = redis_pttls(self.r, "{registry:adm:*}*:r:*")
        markers = redis_pttls(self.r, "{registry:adm:*}*:s:*")
        after = time.monotonic()
        assert set(records) == set(self.ref.records)
        for key, (_, pttl) in records.items():
            since = self.ref.records[key].since
            assert self.ref.ttl - (after - since) * 1000 - SLACK_MS <= pttl <= self.ref.ttl, (key, pttl)
        for key, marker in list(self.ref.markers.items()):
            if key not in markers:
                assert marker.left_ms(after) <= SLACK_MS, (key, marker)  # run out on Redis' clock
                del self.ref.markers[key]
        assert set(markers) <= set(self.ref.markers)
        for key, (value, pttl) in markers.items():
            marker = self.ref.markers[key]
            assert re.fullmatch(r"[0-9A-Za-z]{1,32}", value), value  # the settling call's nonce
            assert marker.left_ms(after) - SLACK_MS <= pttl <= marker.px, (key, pttl, marker)


# -- the state machine ---------------------------------------------------------------------------

tokens_st = st.one_of(st.just(0), st.integers(0, 50), st.integers(0, 1_200))
small_step_ms = st.one_of(st.integers(0, 1_500), st.integers(0, 20_000))


class AdmissionMachine(RuleBasedStateMachine):
    def __init__(self, reg: Registry, r: redis.Redis) -> None:
        super().__init__()
        r.flushall()
        reg.register_models(list(MODELS.values()))
        self.reg, self.r = reg, r
        self.h: Harness | None = None

    @initialize(start=st.integers(0, DAY_MS))
    def start(self, start: int) -> None:
        self.h = Harness(self.reg, self.r, BASE_MS + start)

    @property
    def harness(self) -> Harness:
        assert self.h is not None
        return self.h

    @rule(
        model_key=st.sampled_from(MODEL_KEYS),
        tenant=st.sampled_from(TENANTS),
        input_tokens=tokens_st,
        max_output=st.none() | tokens_st,
        request_id=st.none() | st.sampled_from(REQUEST_IDS),
    )
    def acquire(
        self, model_key: str, tenant: str | None, input_tokens: int, max_output: int | None, request_id: str | None
    ) -> None:
        # The few ids are shared by every tenant and model, and reused after a settle or release.
        self.harness.acquire(model_key, input_tokens, max_output, tenant, request_id)

    @precondition(lambda self: self.h is not None and bool(self.h.handed))
    @rule(pick=st.integers(0, 1_000), input_tokens=tokens_st, max_output=st.none() | tokens_st)
    def retry(self, pick: int, input_tokens: int, max_output: int | None) -> None:
        """A client retry: the id (and tenant) of a request admitted before, held or not."""
        held = self.harness.handed[pick % len(self.harness.handed)]
        self.harness.acquire(held.model_key, input_tokens, max_output, held.tenant, held.id)

    @rule(
        model_key=st.sampled_from(MODEL_KEYS),
        tenant=st.sampled_from(TENANTS),
        tokens=st.integers(0, 600),
        times=st.integers(2, 6),
        gap_ms=st.sampled_from([0, 1, 250, 1_000]),
    )
    def burst(self, model_key: str, tenant: str | None, tokens: int, times: int, gap_ms: int) -> None:
        """Several requests in a row, to fill windows up to their limits."""
        for _ in range(times):
            self.harness.acquire(model_key, tokens, 0, tenant)
            self.harness.clock.now_ms += gap_ms

    @rule(model_key=st.sampled_from(MODEL_KEYS), tenant=st.sampled_from(TENANTS), tokens=tokens_st)
    def peek(self, model_key: str, tenant: str | None, tokens: int) -> None:
        self.harness.peek(model_key, tokens, tenant)

    @precondition(lambda self: self.h is not None and bool(self.h.handed))
    @rule(
        pick=st.integers(0, 1_000),
        input_tokens=st.none() | tokens_st,
        output_tokens=st.none() | tokens_st,
        twice=st.booleans(),
        handle=st.sampled_from(["same", "copy", "forged"]),
    )
    def settle(self, pick: int, input_tokens: int | None, output_tokens: int | None, twice: bool, handle: str) -> None:
        reservation = self.harness.handed[pick % len(self.harness.handed)]
        origin = reservation.token
        if handle == "copy":  # as another process would have it
            reservation = Reservation.loads(reservation.dumps())
            assert reservation == self.harness.handed[pick % len(self.harness.handed)]
        elif handle == "forged":
            # A token no acquire drew, with a real handle's charges: settle trusts its handle, so
            # this settles them once more (once per tenant scope: its own marker), but it never
            # frees the id, whose record holds another token.
            reservation = msgspec.structs.replace(reservation, token="forged")
        self.harness.settle(reservation, input_tokens, output_tokens, origin)
        if twice:
            again = self.harness.settle(reservation, input_tokens, output_tokens, origin)
            assert again is False or self.harness.lapsed

    @precondition(lambda self: self.h is not None and bool(self.h.handed))
    @rule(pick=st.integers(0, 1_000), twice=st.booleans())
    def release(self, pick: int, twice: bool) -> None:
        reservation = self.harness.handed[pick % len(self.harness.handed)]
        self.harness.release(reservation)
        if twice:
            assert self.harness.release(reservation) is False or self.harness.lapsed

    @rule(ms=small_step_ms)
    def step(self, ms: int) -> None:
        self.harness.clock.now_ms += ms

    @rule(
        kind=st.sampled_from(["minute", "second_edge", "quarter_edge", "day"]),
        jitter=st.sampled_from([-1, 0, 1, 7, 999]),
    )
    def leap(self, kind: str, jitter: int) -> None:
        now = self.harness.clock.now_ms
        if kind == "minute":
            target = now + MINUTE_MS + jitter
        elif kind == "day":
            target = now + DAY_MS + jitter
        else:
            size = 1_000 if kind == "second_edge" else 900_000
            target = (now // size + 1) * size + jitter
        self.harness.clock.now_ms = max(now, target)

    @precondition(lambda self: self.h is not None and self.h.last_wait is not None)
    @rule(delta=st.sampled_from([-1, 0]))
    def wait_out_refusal(self, delta: int) -> None:
        """Sleep exactly the last retry_after (or 1 ms less)."""
        assert self.h is not None
        assert self.h.last_wait is not None
        self.h.clock.now_ms += self.h.last_wait + delta
        self.h.last_wait = None

    @invariant()
    def same_state(self) -> None:
        if self.h is not None:
            self.h.check_state()


@pytest.mark.timeout(400)  # passing takes seconds; a failure may shrink for up to 5 minutes
def test_scripts_match_the_reference(redis_url: str, r: redis.Redis) -> None:
    from hypothesis.stateful import run_state_machine_as_test

    reg = Registry.from_url(redis_url, watch=False)
    try:
        run_state_machine_as_test(
            lambda: AdmissionMachine(reg, r),
            settings=settings(
                max_examples=60,
                stateful_step_count=40,
                deadline=None,
                report_multiple_bugs=False,
                database=None,  # write nothing into the tree
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
            ),
        )
    finally:
        reg.close()


# -- fixed sequences -------------------------------------------------------------------------------


def test_retry_after_is_exact_to_the_ms(redis_url: str, r: redis.Redis) -> None:
    """Refused at t with retry_after w: still refused at t + w - 1 ms, admitted at t + w."""
    reg = Registry.from_url(redis_url, watch=False)
    try:
        reg.register_models(list(MODELS.values()))
        h = Harness(reg, r, BASE_MS + 123)
        for _ in range(3):
            assert h.acquire("openai:gpt-4", 10, 0, "beta").allowed  # type: ignore[union-attr]
            h.clock.now_ms += 400
        refused = h.acquire("openai:gpt-4", 10, 0, "beta")
        assert refused is not None
        assert not refused.allowed
        assert refused.denied_by == "tenant.requests_per_minute"
        wait = round(refused.retry_after * 1000)
        assert wait == ((BASE_MS + 123) // 1000 + 1) * 1000 + MINUTE_MS - h.now
        h.clock.now_ms += wait - 1
        again = h.acquire("openai:gpt-4", 10, 0, "beta")
        assert again is not None
        assert not again.allowed
        assert again.retry_after == 0.001
        h.clock.now_ms += 1
        assert h.acquire("openai:gpt-4", 10, 0, "beta").allowed  # type: ignore[union-attr]
        h.check_state()
    finally:
        reg.close()


def run_fixed_sequence(h: Harness) -> list[Any]:
    """A short mixed sequence; returns what the client answered, for comparing clients."""
    seen: list[Any] = []
    reservations = []
    for i in range(7):
        d = h.acquire("openai:gpt-4", 300 + 10 * i, 100, "acme" if i % 2 else None)
        seen.append(d)
        if d is not None and d.reservation is not None:
            reservations.append(d.reservation)
        h.clock.now_ms += 700
        h.check_state()
    seen.append(h.acquire("openai:gpt-4", 5, 5, "acme", "dup"))
    seen.append(h.acquire("openai:gpt-4", 5, 5, "acme", "dup"))
    seen.append(h.peek("anthropic:claude-3", 100, "acme"))
    seen.append(h.acquire("anthropic:claude-3", 800, None, "acme"))  # larger than acme's 700 tpm
    seen.append(h.settle(reservations[0], 50, 20))
    seen.append(h.settle(reservations[0], 50, 20))
    seen.append(h.release(reservations[1]))
    seen.append(h.release(reservations[1]))
    h.check_state()
    h.clock.now_ms += MINUTE_MS - 1
    seen.append(h.acquire("openai:gpt-4", 1500, 0))
    seen.append(h.settle(reservations[2], None, None))  # its bucket has left the window
    h.clock.now_ms += DAY_MS
    seen.append(h.peek("openai:gpt-4", 2000, "acme"))
    h.check_state()
    return [
        (d.allowed, d.retry_after, d.denied_by, dict(d.remaining), d.duplicate) if isinstance(d, Decision) else d
        for d in seen
    ]


def test_sync_and_async_clients_agree_with_the_reference(reg: Any, r: redis.Redis, redis_url: str) -> None:
    """The same fixed sequence through ``reg`` (sync or async) and a plain sync client."""
    reg.register_models(list(MODELS.values()))
    answers = run_fixed_sequence(Harness(reg, r, BASE_MS + 59_500))
    r.flushall()
    plain = Registry.from_url(redis_url, watch=False)
    try:
        plain.register_models(list(MODELS.values()))
        assert run_fixed_sequence(Harness(plain, r, BASE_MS + 59_500)) == answers
    finally:
        plain.close()


def test_reference_refuses_what_would_overflow_a_window() -> None:
    """The reference itself, with no Redis: its log never shows an overfull window."""
    ref = Reference()
    rpm = Limit("requests_per_minute", "k", "requests", 2, MINUTE_MS, 1_000)
    assert ref.acquire(0, "a", [rpm], [1])[0] == 1
    assert ref.acquire(59_999, "b", [rpm], [1])[0] == 1
    assert ref.acquire(60_000, "c", [rpm], [1]) == (0, 1, 1_000, [0])  # bucket 0 leaves at 61 s
    assert ref.acquire(61_000, "c", [rpm], [1])[0] == 1
    ref.check_every_interval()


# -- request ids shared by tenants, and reused ---------------------------------------------------
# A caller-given id's record is keyed by the model, the tenant and the id, and holds the token of
# the acquire that made it: two tenants' requests under one id are two reservations. A settle or
# release marks its acquire's token (once) and frees the id if the record still holds that token,
# so a handle settled before the id was reused (by a later acquire) settles nothing again.

CLAUDE = "anthropic:claude-3"
CLAUDE4 = "anthropic:claude-4"  # input and output tokens limited apart
GPT = "openai:gpt-4"  # every tenant has the "*" limit on it: tenant.requests_per_minute = 3


def test_a_request_id_reused_by_another_tenant_is_charged_to_that_tenant(redis_url: str, r: redis.Redis) -> None:
    acme_tpm = window_key(CLAUDE, "tenant.tokens_per_minute", "acme")
    beta_rpm = window_key(CLAUDE, "tenant.requests_per_minute", "beta")
    model_tpm = window_key(CLAUDE, "tokens_per_minute", None)
    second = BASE_MS // 1_000
    reg = Registry.from_url(redis_url, watch=False)
    try:
        reg.register_models(list(MODELS.values()))
        use_clock(reg, FakeClock(BASE_MS))
        acme = reg.acquire(CLAUDE, 10, 0, "acme", "req-1")
        assert acme.allowed
        assert not acme.duplicate
        # beta may make 2 requests a minute ("*"): its own req-1 is admitted and charged to beta.
        beta = reg.acquire(CLAUDE, 20, 0, "beta", "req-1")
        assert beta.allowed
        assert not beta.duplicate
        assert acme.reservation is not None
        assert beta.reservation is not None
        assert acme.reservation.token != beta.reservation.token
        assert r.exists(reservation_key(CLAUDE, "req-1", "acme"), reservation_key(CLAUDE, "req-1", "beta")) == 2
        assert buckets_of(r, acme_tpm) == {second: 10}
        assert buckets_of(r, beta_rpm) == {second: 1}
        assert buckets_of(r, model_tpm) == {second: 30}
        # A retry of beta's req-1 is beta's duplicate (with beta's token); beta's next is its
        # second request, its third is refused.
        again = reg.acquire(CLAUDE, 20, 0, "beta", "req-1")
        assert again.duplicate
        assert again.reservation == beta.reservation
        assert [reg.acquire(CLAUDE, 20, 0, "beta", f"req-{i}").allowed for i in (2, 3)] == [True, False]
        assert buckets_of(r, beta_rpm) == {second: 2}
        # Each settles its own: acme's settle moves acme's windows only.
        assert reg.settle(acme.reservation, 10, 90) is True
        assert buckets_of(r, acme_tpm) == {second: 100}
        assert buckets_of(r, model_tpm) == {second: 140}
        assert r.exists(reservation_key(CLAUDE, "req-1", "beta")) == 1
        assert reg.release(beta.reservation) is True
        assert buckets_of(r, beta_rpm) == {second: 1}
        assert buckets_of(r, model_tpm) == {second: 120}
        assert reg.release(acme.reservation) is False  # settled already
    finally:
        reg.close()


@pytest.mark.parametrize("reuser", ["beta", "acme"])
def test_a_repeated_release_after_the_id_was_reused_changes_nothing(
    redis_url: str, r: redis.Redis, reuser: str
) -> None:
    acme_rpm = window_key(GPT, "tenant.requests_per_minute", "acme")
    beta_rpm = window_key(GPT, "tenant.requests_per_minute", "beta")
    second = BASE_MS // 1_000
    reg = Registry.from_url(redis_url, watch=False)
    try:
        reg.register_models(list(MODELS.values()))
        use_clock(reg, FakeClock(BASE_MS))
        first = reg.acquire(GPT, 10, 0, "acme", "req-1").reservation
        assert first is not None
        assert reg.release(first) is True
        reused = reg.acquire(GPT, 10, 0, reuser, "req-1")  # the id is free again
        assert reused.allowed
        assert not reused.duplicate
        assert reused.reservation is not None
        assert reused.reservation.token != first.token
        assert reg.acquire(GPT, 10, 0, "acme").allowed  # another acme request, in flight
        expected = {acme_rpm: {second: 2 if reuser == "acme" else 1}, beta_rpm: {second: 1} if reuser == "beta" else {}}
        before = redis_dump(r)
        assert {key: buckets_of(r, key) for key in (acme_rpm, beta_rpm)} == expected
        # A client retry of the first release: a no-op, whoever reused the id.
        assert reg.release(first) is False
        assert reg.settle(first, 10, 500) is False
        assert redis_dump(r) == before
        # The new reservation is intact: its own handle releases it.
        assert reg.release(reused.reservation) is True
        expected[acme_rpm if reuser == "acme" else beta_rpm][second] -= 1
        assert {key: buckets_of(r, key) for key in (acme_rpm, beta_rpm)} == {
            key: {i: v for i, v in held.items() if v} for key, held in expected.items()
        }
    finally:
        reg.close()


def redis_dump(r: redis.Redis) -> dict[str, Any]:
    return {key: r.hgetall(key) if r.type(key) == "hash" else r.get(key) for key in sorted(r.keys("{registry:adm:*}*"))}


def buckets_of(r: redis.Redis, key: str) -> dict[int, int]:
    return {int(k): int(v) for k, v in r.hgetall(key).items() if not k.startswith("_")}


def test_input_and_output_limited_apart_follow_the_reference(redis_url: str, r: redis.Redis) -> None:
    """ITPM and OTPM, the model's and a tenant's (with a tenant TPM on top): charged, refused,
    settled and released as the reference says."""
    reg = Registry.from_url(redis_url, watch=False)
    try:
        reg.register_models(list(MODELS.values()))
        h = Harness(reg, r, BASE_MS + 400)
        steps: list[tuple[int, int | None, str | None, str | None]] = [
            (300, 120, "acme", None),  # acme: 120 of 350 OTPM, 420 of 1,000 TPM
            (100, 300, "acme", "tenant.output_tokens_per_minute"),  # 420 > 350
            (600, None, "beta", None),  # beta ("*"): 600 of 900 ITPM; the model's max output, 300
            (400, 0, "beta", "tenant.input_tokens_per_minute"),
            (500, 200, None, "output_tokens_per_minute"),  # 420 + 200 > 600
            (900, 100, None, None),  # the model's ITPM full: 1,800
            (1, 0, None, "input_tokens_per_minute"),
        ]
        held = []
        for input_tokens, max_output, tenant, denied_by in steps:
            d = h.acquire(CLAUDE4, input_tokens, max_output, tenant)
            assert d is not None
            assert d.denied_by == denied_by
            if d.reservation is not None:
                held.append(d.reservation)
            h.clock.now_ms += 300
        assert h.acquire(CLAUDE4, 1801, 0) is None  # larger than the ITPM itself: raises
        assert h.acquire(CLAUDE4, 0, 351, "acme") is None  # larger than acme's OTPM
        h.check_state()
        assert h.settle(held[0], 250, 40) is True
        assert h.settle(held[1], None, 400) is True  # the input as reserved, more output than reserved
        assert h.release(held[2]) is True
        h.check_state()
        h.peek(CLAUDE4, 500, "acme")
        h.peek(CLAUDE4, 0, "beta")
        h.clock.now_ms += MINUTE_MS
        assert h.release(held[0]) is False  # settled already
        h.check_state()
    finally:
        reg.close()


def test_a_zero_estimate_is_settled_in_full(redis_url: str, r: redis.Redis) -> None:
    """The shortest sequence the state machine finds against the _sum/_low settle.lua."""
    reg = Registry.from_url(redis_url, watch=False)
    try:
        reg.register_models(list(MODELS.values()))
        h = Harness(reg, r, BASE_MS)
        decision = h.acquire(CLAUDE, 0, None)  # no max_output_tokens on the model: 0 tokens
        assert decision is not None
        assert decision.reservation is not None
        assert h.settle(decision.reservation, 0, 1) is True
        h.check_state()  # the 1 real token must be in the tokens_per_minute window
    finally:
        reg.close()
