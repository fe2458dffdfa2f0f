"""Admission through both clients: decisions, limits, reservations, and the conveniences."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
import redis

from registry import ConfigError, ModelNotFoundError
from registry.admission.types import Decision, Reservation
from registry.errors import RequestTooLargeError
from registry.keys import Keys
from registry.testing import FakeClock, use_clock
from tests.conftest import model
from tests.test_catalog import dump

T0 = 1_000_000.0  # seconds: a minute boundary (1,000,000 s = 16,666 min + 40 s; buckets are 1 s)
LIMITS = {"requests_per_minute": 5, "tokens_per_minute": 10_000, "requests_per_day": 20}


@pytest.fixture
def gated(reg: Any) -> Any:
    reg.register_model(
        model(
            max_output_tokens=1000,
            rate_limit=LIMITS,
            tenant_limits={"*": {"requests_per_minute": 2}, "vip": {"tokens_per_minute": 3000}},
        )
    )
    clock = FakeClock()
    clock.set(T0)
    use_clock(reg, clock)
    reg.clock = clock
    return reg


def test_admits_until_a_limit_then_refuses_with_retry_after(gated: Any) -> None:
    for left in (4, 3, 2, 1, 0):
        decision = gated.acquire("openai:gpt-4", 500, 500)
        assert decision.allowed
        assert decision.remaining["requests_per_minute"] == left
        assert decision.reservation is not None
        gated.clock.advance(0.1)
    assert decision.remaining["tokens_per_minute"] == 5000
    assert decision.remaining["requests_per_day"] == 15
    refused = gated.acquire("openai:gpt-4", 500, 500)
    assert not refused.allowed
    assert refused.denied_by == "requests_per_minute"
    assert refused.reservation is None
    # the first request sits in bucket [T0, T0+1): it leaves the window at T0 + 61; now is T0 + 0.5
    assert refused.retry_after == pytest.approx(60.5)
    gated.clock.set(T0 + 60.999)
    assert not gated.acquire("openai:gpt-4", 1, 0).allowed
    gated.clock.set(T0 + 61)
    assert gated.acquire("openai:gpt-4", 1, 0).allowed


def test_max_output_defaults_to_the_models(gated: Any) -> None:
    decision = gated.acquire("openai:gpt-4", 2000)
    assert decision.remaining["tokens_per_minute"] == 10_000 - 3000
    assert decision.reservation.max_output_tokens == 1000


def _without_denials(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if not k.endswith(":l:denied")}


def test_a_refusal_changes_nothing_but_the_denial_count(gated: Any, r: redis.Redis) -> None:
    for _ in range(5):
        gated.acquire("openai:gpt-4", 100, 100)
    before = dump(r)
    assert not gated.acquire("openai:gpt-4", 100, 100).allowed
    assert _without_denials(dump(r)) == _without_denials(before)
    assert r.hgetall(Keys().denials("openai:gpt-4")) == {"requests_per_minute": "1"}
    assert not gated.check_rate_limit("openai:gpt-4", 100).allowed  # a peek counts nothing
    assert r.hgetall(Keys().denials("openai:gpt-4")) == {"requests_per_minute": "1"}


def test_too_large_is_an_error_and_changes_nothing_but_the_denial_count(gated: Any, r: redis.Redis) -> None:
    gated.acquire("openai:gpt-4", 100, 100)
    before = dump(r)
    with pytest.raises(RequestTooLargeError, match="tokens_per_minute") as info:
        gated.acquire("openai:gpt-4", 9_500, 501)
    assert (info.value.cost, info.value.allowed) == (10_001, 10_000)
    assert _without_denials(dump(r)) == _without_denials(before)
    assert r.hgetall(Keys().denials("openai:gpt-4")) == {"tokens_per_minute": "1"}
    assert gated.acquire("openai:gpt-4", 9_000, 800).allowed  # 9,800 + 200 = the limit: fits


def test_tenant_limits_default_and_specific(gated: Any) -> None:
    assert gated.acquire("openai:gpt-4", 10, 10, tenant="acme").allowed
    assert gated.acquire("openai:gpt-4", 10, 10, tenant="acme").allowed
    refused = gated.acquire("openai:gpt-4", 10, 10, tenant="acme")
    assert (refused.allowed, refused.denied_by) == (False, "tenant.requests_per_minute")
    assert gated.acquire("openai:gpt-4", 10, 10, tenant="other").allowed  # its own window
    vip = gated.acquire("openai:gpt-4", 2000, 1000, tenant="vip")
    assert vip.remaining["tenant.tokens_per_minute"] == 0
    assert "tenant.requests_per_minute" not in vip.remaining  # vip has its own entry, not "*"
    assert gated.acquire("openai:gpt-4", 1, 0, tenant="vip").denied_by == "tenant.tokens_per_minute"
    with pytest.raises(ConfigError, match="tenant"):
        gated.acquire("openai:gpt-4", 1, 0, tenant="bad tenant")
    with pytest.raises(ConfigError, match="tenant"):
        gated.acquire("openai:gpt-4", 1, 0, tenant="*")


def test_settle_refunds_into_the_same_bucket_once(gated: Any) -> None:
    held = gated.acquire("openai:gpt-4", 4000, 4000).reservation
    assert gated.acquire("openai:gpt-4", 1000, 1000).remaining["tokens_per_minute"] == 0
    gated.clock.advance(30)
    assert gated.settle(held, input_tokens=4000, output_tokens=500, success=True, latency_ms=1200) is True
    assert gated.check_rate_limit("openai:gpt-4", 0).remaining["tokens_per_minute"] == 3500
    assert gated.settle(held, input_tokens=4000, output_tokens=0) is False  # the second time: nothing
    assert gated.check_rate_limit("openai:gpt-4", 0).remaining["tokens_per_minute"] == 3500
    # the refund went to the reservation's bucket: it leaves with it, 60 s after the acquire
    gated.clock.set(T0 + 61)
    assert gated.check_rate_limit("openai:gpt-4", 0).remaining["tokens_per_minute"] == 10_000


def test_settle_can_charge_more_than_reserved(gated: Any) -> None:
    held = gated.acquire("openai:gpt-4", 1000, 1000).reservation
    gated.settle(held, input_tokens=1000, output_tokens=3000)
    assert gated.check_rate_limit("openai:gpt-4", 0).remaining["tokens_per_minute"] == 6000


def test_release_gives_everything_back_once(gated: Any) -> None:
    held = gated.acquire("openai:gpt-4", 1000, 1000, tenant="acme").reservation
    assert gated.release(held) is True
    peek = gated.check_rate_limit("openai:gpt-4", 0, tenant="acme")
    assert peek.remaining == {
        "requests_per_minute": 5,
        "tokens_per_minute": 10_000,
        "requests_per_day": 20,
        "tenant.requests_per_minute": 2,
    }
    assert gated.release(held) is False
    assert gated.settle(held, 1, 1) is False


def test_a_retried_acquire_with_the_same_request_id_counts_once(gated: Any) -> None:
    first = gated.acquire("openai:gpt-4", 100, 100, request_id="req-1")
    again = gated.acquire("openai:gpt-4", 100, 100, request_id="req-1")
    assert first.allowed
    assert again.allowed
    assert again.duplicate
    assert again.reservation == first.reservation
    assert gated.check_rate_limit("openai:gpt-4", 0).remaining["requests_per_minute"] == 4


def test_check_rate_limit_consumes_nothing(gated: Any, r: redis.Redis) -> None:
    gated.acquire("openai:gpt-4", 100, 100)
    before = dump(r)
    peek = gated.check_rate_limit("openai:gpt-4", 9_800)
    assert peek.allowed
    assert peek.reservation is None
    assert not gated.check_rate_limit("openai:gpt-4", 9_801).allowed
    assert dump(r) == before


def test_reservations_pickle_and_serialise_for_another_process(gated: Any, make_registry: Any) -> None:
    held = gated.acquire("openai:gpt-4", 1000, 1000, tenant="acme").reservation
    assert pickle.loads(pickle.dumps(held)) == held
    text = held.dumps()
    assert Reservation.loads(text) == held
    other = make_registry()
    use_clock(other, gated.clock)
    assert other.settle(Reservation.loads(text), 1000, 10) is True
    assert gated.check_rate_limit("openai:gpt-4", 0).remaining["tokens_per_minute"] == 10_000 - 1010
    with pytest.raises(ConfigError, match="not a reservation"):
        Reservation.loads("{}")
    with pytest.raises(ConfigError, match="expected a Reservation"):
        gated.settle("nope")


def test_wait_sleeps_until_admitted_or_gives_up(gated: Any) -> None:
    for _ in range(5):
        gated.acquire("openai:gpt-4", 10, 10)
    gated.clock.advance(0.5)
    started = gated.clock.now_ms
    waited = gated.acquire("openai:gpt-4", 10, 10, wait=True, timeout=120)
    assert waited.allowed
    assert (gated.clock.now_ms - started) / 1000 == pytest.approx(60.5)  # slept exactly retry_after
    for _ in range(4):  # the window holds the waited one and these four: full again
        assert gated.acquire("openai:gpt-4", 10, 10).allowed
    refused = gated.acquire("openai:gpt-4", 10, 10, wait=True, timeout=5)
    assert not refused.allowed  # its retry_after is longer than the timeout: answered at once
    assert refused.retry_after > 5
    assert gated.clock.now_ms - started == 60_500
    with pytest.raises(ConfigError, match="timeout"):
        gated.acquire("openai:gpt-4", 10, 10, wait=True, timeout=-1)


def test_shadow_mode_counts_but_never_refuses(make_registry: Any) -> None:
    reg = make_registry(shadow=True)
    reg.register_model(model(rate_limit={"requests_per_minute": 1}))
    assert reg.acquire("openai:gpt-4", 1, 1).would_deny is None
    second = reg.acquire("openai:gpt-4", 1, 1)
    assert (second.allowed, second.would_deny) == (True, "requests_per_minute")
    assert second.reservation is not None
    assert reg.check_rate_limit("openai:gpt-4").remaining["requests_per_minute"] == 0


def test_cached_denials_skip_redis_until_retry_after(make_registry: Any, r: redis.Redis, real_redis: None) -> None:
    reg = make_registry(cache_denials=True)
    reg.register_model(model(rate_limit={"requests_per_minute": 1}))
    assert reg.acquire("openai:gpt-4", 1, 1).allowed
    refused = reg.acquire("openai:gpt-4", 1, 1)
    assert not refused.allowed
    calls = int(r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
    again = reg.acquire("openai:gpt-4", 1, 1)
    assert not again.allowed
    assert again.denied_by == "requests_per_minute"
    assert 0 < again.retry_after <= refused.retry_after
    assert int(r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)) == calls
    assert reg.acquire("openai:gpt-4", 1, 1, tenant="t").allowed is False  # other key: asks Redis


def test_unknown_model_and_bad_arguments(gated: Any) -> None:
    with pytest.raises(ModelNotFoundError):
        gated.acquire("openai:nope", 1)
    with pytest.raises(ConfigError, match="input_tokens"):
        gated.acquire("openai:gpt-4", -1)
    with pytest.raises(ConfigError, match="request_id"):
        gated.acquire("openai:gpt-4", 1, request_id="")
    with pytest.raises(ConfigError, match="latency_ms"):
        gated.settle(gated.acquire("openai:gpt-4", 1).reservation, latency_ms=-1)


def test_a_model_without_limits_is_always_admitted(reg: Any) -> None:
    reg.register_model(model())
    decision = reg.acquire("openai:gpt-4", 10**6, 10**6)
    assert decision == Decision(True, 0.0, None, {}, decision.reservation)
    assert reg.settle(decision.reservation, 10, 10) is True


# -- the admit context manager -----------------------------------------------------------------


@pytest.fixture
def sync_reg(redis_url: str) -> Any:
    from registry import Registry

    reg = Registry.from_url(redis_url, watch=False)
    reg.register_model(
        model(max_output_tokens=500, rate_limit={"requests_per_minute": 10, "tokens_per_minute": 10_000})
    )
    yield reg
    reg.close()


def tpm_left(reg: Any) -> int:
    return reg.check_rate_limit("openai:gpt-4").remaining["tokens_per_minute"]


def test_admit_settles_the_reported_usage(sync_reg: Any) -> None:
    with sync_reg.admit("openai:gpt-4", 1000, 2000) as ticket:
        assert tpm_left(sync_reg) == 7000
        ticket.usage(input_tokens=990, output_tokens=120)
    assert tpm_left(sync_reg) == 10_000 - 1110
    assert sync_reg.settle(ticket.reservation, 1, 1) is False  # already settled


def test_admit_without_a_report_keeps_the_estimate(sync_reg: Any) -> None:
    with sync_reg.admit("openai:gpt-4", 1000):
        pass
    assert tpm_left(sync_reg) == 10_000 - 1500  # max_output from the model: 500


def test_a_cut_off_stream_is_charged_for_what_it_produced(sync_reg: Any) -> None:
    def stream() -> None:
        with sync_reg.admit("openai:gpt-4", 1000, 2000) as ticket:
            for _ in range(3):
                ticket.add_output(40)
            raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        stream()
    assert tpm_left(sync_reg) == 10_000 - 1120


def test_admit_release_and_refusal(sync_reg: Any) -> None:
    from registry import RateLimitedError

    with sync_reg.admit("openai:gpt-4", 1000, 2000) as ticket:
        assert ticket.release() is True  # never sent
    assert tpm_left(sync_reg) == 10_000
    with sync_reg.admit("openai:gpt-4", 9000, 1000) as outer:
        with pytest.raises(RateLimitedError) as info, sync_reg.admit("openai:gpt-4", 1, 0):
            pass
        outer.release()
    assert info.value.denied_by == "tokens_per_minute"
    assert info.value.retry_after > 0
    with pytest.raises(ConfigError, match="tokens must be"), sync_reg.admit("openai:gpt-4", 1, 0) as ticket:
        ticket.add_output(-1)


class ProviderRateLimitError(Exception):
    """What the OpenAI and Anthropic SDKs raise for a 429: an exception with ``status_code``."""

    status_code = 429


def test_admit_settles_the_cache_split_it_was_told(sync_reg: Any) -> None:
    """``usage`` takes the prompt cache's reads and writes, part of the input: settled as
    ``settle`` takes them (priced as ``estimate_cost``, counted apart); each count given replaces
    the one before. A bad count raises at the call and changes nothing."""
    cost = {"input": "30", "output": "60", "cached_input": "3", "cache_write": "37.5", "per": 1_000_000}
    sync_reg.register_model(model(id="cached", cost=cost, rate_limit={"input_tokens_per_minute": 10_000}))
    with sync_reg.admit("openai:cached", 1000, 200) as ticket:
        ticket.usage(cached_input_tokens=1000)  # checked against the estimate: all of it, fine
        ticket.usage(input_tokens=1000, output_tokens=100, cached_input_tokens=600)
        ticket.usage(cache_write_tokens=300)
        for bad, message in [
            ({"cached_input_tokens": 701}, r"\(701 \+ 300\) exceed input_tokens \(1000\)"),
            ({"input_tokens": 899}, r"\(600 \+ 300\) exceed input_tokens \(899\)"),
            ({"cache_write_tokens": -1}, "cache_write_tokens must be between 0 and"),
            ({"cached_input_tokens": True}, "cached_input_tokens must be an integer, got bool"),
            ({"input_tokens": "1000", "cached_input_tokens": 0}, "input_tokens must be an integer, got str"),
            ({"output_tokens": 1.5}, "output_tokens must be an integer, got float"),
        ]:
            with pytest.raises(ConfigError, match=message):
                ticket.usage(**bad)
    stats = sync_reg.get_statistics(model="openai:cached")
    assert (stats.requests, stats.successes, stats.input_tokens, stats.output_tokens) == (1, 1, 1000, 100)
    assert (stats.cached_input_tokens, stats.cache_write_tokens) == (600, 300)
    assert stats.total_cost == sync_reg.estimate_cost(
        "openai:cached", 1000, 100, cached_input_tokens=600, cache_write_tokens=300
    )
    # the cache reads leave the input-tokens window, as settle does
    assert sync_reg.check_rate_limit("openai:cached").remaining["input_tokens_per_minute"] == 10_000 - 400


def test_a_providers_429_settles_the_ticket_throttled(sync_reg: Any) -> None:
    """An exception with ``status_code`` 429, or ``mark_throttled``: a failure counted as
    throttled, charged 0 tokens unless the block reported some; other exceptions are plain
    failures charged the prompt."""
    with pytest.raises(ProviderRateLimitError), sync_reg.admit("openai:gpt-4", 1000, 2000):
        raise ProviderRateLimitError("429 Too Many Requests")
    assert tpm_left(sync_reg) == 10_000  # the provider processed nothing
    with sync_reg.admit("openai:gpt-4", 1000, 2000) as ticket:
        ticket.mark_throttled()  # a client that returns the 429 instead of raising it
    assert tpm_left(sync_reg) == 10_000
    with sync_reg.admit("openai:gpt-4", 1000, 2000) as ticket:
        ticket.usage(input_tokens=10)  # what the provider says it counted, if it says
        ticket.mark_throttled()
    assert tpm_left(sync_reg) == 10_000 - 10
    with pytest.raises(ConnectionResetError), sync_reg.admit("openai:gpt-4", 1000, 2000):
        raise ConnectionResetError("not a 429")
    assert tpm_left(sync_reg) == 10_000 - 10 - 1000
    with sync_reg.admit("openai:gpt-4", 100, 0) as ticket:
        ticket.mark_throttled()
        assert ticket.release() is True  # never sent after all: released, not settled
    stats = sync_reg.get_statistics(model="openai:gpt-4")
    assert (stats.requests, stats.successes, stats.failures, stats.throttled) == (4, 0, 4, 3)
    assert (stats.input_tokens, stats.output_tokens) == (10 + 1000, 0)


def test_async_admit_settles_even_when_cancelled(redis_url: str) -> None:
    import asyncio

    from registry import AsyncRegistry

    async def main() -> None:
        reg = AsyncRegistry.from_url(redis_url, watch=False)
        await reg.register_model(model(rate_limit={"tokens_per_minute": 10_000}))
        streaming = asyncio.Event()

        async def stream() -> None:
            async with reg.admit("openai:gpt-4", 1000, 4000) as ticket:
                ticket.add_output(250)
                streaming.set()
                await asyncio.sleep(3600)  # the client hangs up while we wait for the model

        task = asyncio.create_task(stream())
        await streaming.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await reg.check_rate_limit("openai:gpt-4")).remaining["tokens_per_minute"] == 10_000 - 1250
        async with reg.admit("openai:gpt-4", 100, 100) as ticket:
            ticket.usage(output_tokens=10)
        assert (await reg.check_rate_limit("openai:gpt-4")).remaining["tokens_per_minute"] == 10_000 - 1250 - 110
        async with reg.admit("openai:gpt-4", 100, 100) as ticket:
            assert await ticket.release()
        # the cache split and a provider's 429 settle as the blocking ticket's do
        async with reg.admit("openai:gpt-4", 100, 100) as ticket:
            ticket.usage(input_tokens=100, output_tokens=0, cached_input_tokens=60, cache_write_tokens=40)
        with pytest.raises(ProviderRateLimitError):
            async with reg.admit("openai:gpt-4", 100, 100) as ticket:
                raise ProviderRateLimitError
        async with reg.admit("openai:gpt-4", 100, 100) as ticket:
            ticket.mark_throttled()
        stats = await reg.get_statistics(model="openai:gpt-4")
        assert (stats.cached_input_tokens, stats.cache_write_tokens, stats.throttled, stats.failures) == (60, 40, 2, 3)
        await reg.aclose()

    asyncio.run(main())


def test_the_window_boundary_at_59_9_and_60_1_seconds(gated: Any) -> None:
    """A full limit at t = 59.9 s, another attempt at t = 60.1 s: refused, retry_after 59.9 s.

    The exact sliding answer is 59.8 s (the 59.9 s requests leave at 119.9 s); buckets are 1 s
    wide and a partly expired bucket counts in full, so the answer is late by at most one
    bucket, never early: no interval of 60 s ever holds more than the limit.
    """
    start = T0  # t = 0
    gated.clock.set(start + 59.9)
    for _ in range(5):
        assert gated.acquire("openai:gpt-4", 10, 0).allowed
    gated.clock.set(start + 60.1)
    refused = gated.acquire("openai:gpt-4", 10, 0)
    assert (refused.allowed, refused.denied_by) == (False, "requests_per_minute")
    assert refused.retry_after == pytest.approx(59.9)
    exact = 59.8
    assert exact <= refused.retry_after <= exact + 1.0
    gated.clock.set(start + 60.1 + refused.retry_after - 0.001)
    assert not gated.acquire("openai:gpt-4", 10, 0).allowed  # 1 ms early: still refused
    gated.clock.set(start + 60.1 + refused.retry_after)
    assert gated.acquire("openai:gpt-4", 10, 0).allowed  # at retry_after: admitted


def test_a_limit_change_reaches_admission_within_a_second(redis_url: str) -> None:
    import time

    from registry import Registry

    writer = Registry.from_url(redis_url, watch=False)
    worker = Registry.from_url(redis_url)  # the default: a watched local copy of the catalog
    writer.register_model(model(rate_limit={"requests_per_minute": 1}))
    assert worker.acquire("openai:gpt-4", 1, 0).allowed
    assert not worker.acquire("openai:gpt-4", 1, 0).allowed
    writer.update_model("openai:gpt-4", {"rate_limit": {"requests_per_minute": 3}})
    changed = time.monotonic()
    while not worker.acquire("openai:gpt-4", 1, 0).allowed:
        assert time.monotonic() - changed < 1.0, "the new limit did not reach admission within a second"
        time.sleep(0.005)
    worker.close()
    writer.close()


def test_every_key_of_a_model_shares_its_slot(gated: Any, r: redis.Redis) -> None:
    from redis.crc import key_slot

    held = gated.acquire("openai:gpt-4", 10, 10, tenant="acme", request_id="x").reservation
    vip = gated.acquire("openai:gpt-4", 10, 10, tenant="vip").reservation
    gated.settle(vip, 10, 5)
    keys = [k for k in r.keys("*") if not k.startswith("{registry:catalog}")]
    # the caller-given id's record, model windows, 2 tenant windows, a settle marker, the ledger
    assert f"{{registry:adm:openai:gpt-4}}:t:acme:r:{held.id}" in keys
    assert f"{{registry:adm:openai:gpt-4}}:t:vip:s:{vip.token}" in keys
    assert not any(k.endswith(f":r:{vip.id}") for k in keys)  # no caller-given id: no record
    assert len([k for k in keys if ":w:" in k]) == 3 + 1 + 1
    assert len({key_slot(k.encode()) for k in keys}) == 1


def _child_ids(out: Any) -> None:
    out.put([Reservation.new_id() for _ in range(1000)])


def test_reservation_ids_never_repeat_across_a_fork() -> None:
    """Ids are a per-process random prefix and a counter: a forked child starts a prefix of its
    own, so it never hands out its parent's next ids."""
    import multiprocessing as mp

    mine = [Reservation.new_id() for _ in range(1000)]
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_child_ids, args=(out,))
    child.start()
    theirs = out.get(timeout=30)
    child.join(timeout=30)
    after = [Reservation.new_id() for _ in range(1000)]
    assert len(set(mine) | set(theirs) | set(after)) == 3000
    assert {i[:16] for i in theirs} != {i[:16] for i in mine}
    assert all(len(i) <= 64 for i in mine + theirs + after)


def test_only_a_caller_given_request_id_is_recorded_and_idempotent(gated: Any, r: redis.Redis) -> None:
    """An acquire without a request id is named after its own token and writes nothing but the
    windows: its handle holds when it was admitted and what each limit was charged, and settles
    once. A retry naming it (request_id=first.id) is a new request; a caller-given id is recorded,
    so that its retry is the duplicate, handed the original's handle, until a settle frees it."""
    tag = "{registry:adm:openai:gpt-4}"
    ttl = 3_600_000
    decision = gated.acquire("openai:gpt-4", 100, 100)
    first = decision.reservation
    assert first.id == first.token
    assert decision.server_ms == gated.clock.now_ms == 1_000_000_000
    assert (first.at_ms, first.ttl_ms) == (decision.server_ms, ttl)
    assert first.charges == (
        ("requests_per_minute", 1_000_000, 1, 60_000, 1_000),
        ("tokens_per_minute", 1_000_000, 200, 60_000, 1_000),
        ("requests_per_day", 1_111, 1, 86_400_000, 900_000),  # 1e9 // 900,000
    )
    assert r.keys(f"{tag}:r:*") == []
    # A retry naming it is not recognised: admitted again, and recorded under that id.
    again = gated.acquire("openai:gpt-4", 100, 100, request_id=first.id)
    assert (again.allowed, again.duplicate) == (True, False)
    assert again.reservation.token != first.token
    assert again.reservation.id == first.id
    assert again.reservation.charges == first.charges
    assert again.remaining["requests_per_minute"] == 3
    record = (
        f"{again.reservation.token} 1000000000|requests_per_minute 1000000 1 60000 1000"
        "|tokens_per_minute 1000000 200 60000 1000|requests_per_day 1111 1 86400000 900000"
    )
    assert r.keys(f"{tag}:r:*") == [f"{tag}:r:{first.id}"]
    assert r.get(f"{tag}:r:{first.id}") == record
    assert ttl - 1_000 < r.pttl(f"{tag}:r:{first.id}") <= ttl
    # The first settles once, into its own bucket, and leaves the record of the id it named alone.
    gated.clock.advance(1)
    assert gated.settle(first, 100, 20) is True
    assert r.exists(f"{tag}:s:{first.token}") == 1  # its settle marker (holding that call's nonce)
    assert ttl - 1_000 - 1_000 < r.pttl(f"{tag}:s:{first.token}") <= ttl - 1_000  # the TTL left
    assert gated.settle(first, 100, 20) is False
    assert gated.release(first) is False
    assert gated.check_rate_limit("openai:gpt-4").remaining["tokens_per_minute"] == 10_000 - 120 - 200
    assert r.hget(f"{tag}:w:tpm", "1000000") == "320"
    assert r.get(f"{tag}:r:{first.id}") == record
    assert gated.release(again.reservation) is True  # its id is free again
    assert r.keys(f"{tag}:r:*") == []
    # A caller-given id retried: the duplicate, with the original's token, time and charges.
    named = gated.acquire("openai:gpt-4", 50, 50, request_id="req-1").reservation
    retried = gated.acquire("openai:gpt-4", 50, 50, request_id="req-1")
    assert retried.duplicate
    assert retried.server_ms == 1_000_001_000
    held = retried.reservation
    assert (held.token, held.at_ms, held.ttl_ms) == (named.token, 1_000_001_000, ttl)
    assert (
        held.charges
        == named.charges
        == (
            ("requests_per_minute", 1_000_001, 1, 60_000, 1_000),
            ("tokens_per_minute", 1_000_001, 100, 60_000, 1_000),
            ("requests_per_day", 1_111, 1, 86_400_000, 900_000),
        )
    )
    assert held == named
    # first (settled: 1) + again (released: 0) + named once, not twice
    assert gated.check_rate_limit("openai:gpt-4").remaining["requests_per_minute"] == 5 - 2
    # Not after the TTL: a settle then changes nothing, the id stays taken; 1 ms earlier it settles.
    gated.clock.now_ms = named.at_ms + ttl
    before = dump(r)
    assert gated.settle(held, 50, 0) is False
    assert dump(r) == before
    gated.clock.now_ms -= 1
    assert gated.settle(held, 50, 0) is True
    assert r.keys(f"{tag}:r:*") == []
    fresh = gated.acquire("openai:gpt-4", 50, 50, request_id="req-1")
    assert (fresh.allowed, fresh.duplicate) == (True, False)
    assert fresh.reservation.token != named.token


# -- input and output tokens limited apart (Anthropic's ITPM and OTPM) ----------------------------

SPLIT = {"requests_per_minute": 50, "input_tokens_per_minute": 10_000, "output_tokens_per_minute": 2_000}
CLAUDE = "anthropic:claude"


@pytest.fixture
def split(reg: Any) -> Any:
    """A model with ITPM and OTPM (no TPM), and tenant limits of both kinds."""
    reg.register_model(
        model(
            "anthropic",
            "claude",
            max_output_tokens=1000,
            rate_limit=SPLIT,
            tenant_limits={"*": {"output_tokens_per_minute": 500}, "vip": {"input_tokens_per_minute": 3000}},
        )
    )
    clock = FakeClock()
    clock.set(T0)
    use_clock(reg, clock)
    reg.clock = clock
    return reg


def left(reg: Any, tenant: str | None = None) -> dict[str, int]:
    return dict(reg.check_rate_limit(CLAUDE, 0, tenant=tenant).remaining)


def test_acquire_charges_the_input_to_itpm_and_the_max_output_to_otpm(split: Any, r: redis.Redis) -> None:
    decision = split.acquire(CLAUDE, 4000, 600)
    assert dict(decision.remaining) == {
        "requests_per_minute": 49,
        "input_tokens_per_minute": 6000,
        "output_tokens_per_minute": 1400,
    }
    second = 1_000_000
    assert decision.reservation.charges == (
        ("requests_per_minute", second, 1, 60_000, 1_000),
        ("input_tokens_per_minute", second, 4000, 60_000, 1_000),
        ("output_tokens_per_minute", second, 600, 60_000, 1_000),
    )
    tag = "{registry:adm:anthropic:claude}"
    assert r.hget(f"{tag}:w:itpm", str(second)) == "4000"
    assert r.hget(f"{tag}:w:otpm", str(second)) == "600"
    assert not r.exists(f"{tag}:w:tpm")
    # the model's max output by default
    assert split.acquire(CLAUDE, 100).remaining["output_tokens_per_minute"] == 400


def test_settle_moves_each_to_the_real_input_and_output_and_release_to_zero(split: Any) -> None:
    held = split.acquire(CLAUDE, 4000, 1000).reservation
    other = split.acquire(CLAUDE, 1000, 1000).reservation
    assert left(split)["output_tokens_per_minute"] == 0
    split.clock.advance(30)
    assert split.settle(held, input_tokens=3500, output_tokens=250) is True
    assert left(split) == {
        "requests_per_minute": 48,
        "input_tokens_per_minute": 10_000 - 3500 - 1000,
        "output_tokens_per_minute": 2000 - 250 - 1000,
    }
    assert split.settle(held, input_tokens=1, output_tokens=1) is False  # once only
    assert split.settle(other, output_tokens=1500) is True  # input as reserved; more output than reserved
    assert left(split)["input_tokens_per_minute"] == 10_000 - 3500 - 1000
    assert left(split)["output_tokens_per_minute"] == 2000 - 250 - 1500
    third = split.acquire(CLAUDE, 500, 200).reservation
    assert split.release(third) is True
    assert left(split)["input_tokens_per_minute"] == 10_000 - 3500 - 1000
    assert left(split)["requests_per_minute"] == 48
    # the refunds went to the reservations' buckets: they leave with them, 60 s after the acquire
    split.clock.set(T0 + 61)
    assert left(split)["input_tokens_per_minute"] == 10_000
    assert left(split)["output_tokens_per_minute"] == 2000


def test_itpm_settles_to_the_input_less_its_cache_reads_and_tpm_to_every_token(split: Any, r: redis.Redis) -> None:
    """Anthropic's ITPM does not count prompt tokens read from its cache (it does count cache
    writes): settle moves an input-tokens window to ``input_tokens - cached_input_tokens``, the
    model's and the tenant's alike. A total-tokens window (OpenAI's TPM) counts every token. The
    acquire cannot know the split: it reserves the whole input."""
    held = split.acquire(CLAUDE, 4000, 1000).reservation
    assert left(split)["input_tokens_per_minute"] == 6000
    assert split.settle(held, 5000, 250, cached_input_tokens=3000, cache_write_tokens=1500)
    assert left(split) == {
        "requests_per_minute": 49,
        "input_tokens_per_minute": 10_000 - 2000,  # 500 plain + 1,500 written
        "output_tokens_per_minute": 2000 - 250,
    }
    vip = split.acquire(CLAUDE, 2000, 100, tenant="vip").reservation
    assert left(split, "vip")["tenant.input_tokens_per_minute"] == 1000
    assert split.settle(vip, 2000, 100, cached_input_tokens=1800)
    assert left(split, "vip")["tenant.input_tokens_per_minute"] == 3000 - 200
    assert left(split)["input_tokens_per_minute"] == 10_000 - 2000 - 200
    stats = split.get_statistics(model=CLAUDE)  # the ledger keeps every input token
    assert (stats.input_tokens, stats.cached_input_tokens, stats.cache_write_tokens) == (7000, 4800, 1500)

    split.register_model(
        model("anthropic", "both", rate_limit={"tokens_per_minute": 10_000, "input_tokens_per_minute": 10_000})
    )
    both = split.acquire("anthropic:both", 1000, 100).reservation
    assert split.settle(both, 1000, 100, cached_input_tokens=900, cache_write_tokens=100)
    assert dict(split.check_rate_limit("anthropic:both").remaining) == {
        "tokens_per_minute": 10_000 - 1100,
        "input_tokens_per_minute": 10_000 - 100,
    }

    # A model deleted since the acquire: the windows only, the same rule and the same checks.
    gone = split.acquire(CLAUDE, 1000, 0).reservation
    split.delete_model(CLAUDE)
    with pytest.raises(ConfigError, match="exceed input_tokens"):
        split.settle(gone, 1000, 0, cached_input_tokens=1001)
    assert split.settle(gone, 1000, 0, cached_input_tokens=400)
    assert r.hget("{registry:adm:anthropic:claude}:w:itpm", str(int(T0)))  # 1 s buckets == str(2000 + 200 + 600)


def test_itpm_and_otpm_refuse_with_an_exact_retry_after(split: Any) -> None:
    assert split.acquire(CLAUDE, 9000, 100).allowed
    split.clock.advance(10.5)
    refused = split.acquire(CLAUDE, 1001, 100)
    assert (refused.allowed, refused.denied_by) == (False, "input_tokens_per_minute")
    assert refused.retry_after == pytest.approx(50.5)  # the first leaves at T0 + 61
    assert split.acquire(CLAUDE, 1000, 100).allowed  # exactly the limit: fits
    split.clock.advance(1)
    refused = split.acquire(CLAUDE, 0, 1801)
    assert (refused.allowed, refused.denied_by) == (False, "output_tokens_per_minute")
    assert refused.retry_after == pytest.approx(49.5)
    split.clock.set(T0 + 61 - 0.001)
    assert not split.acquire(CLAUDE, 0, 1801).allowed
    split.clock.set(T0 + 61)
    assert split.acquire(CLAUDE, 0, 1801).allowed  # the first request's 100 output tokens have left
    # Both refuse: ITPM until the 1,000 of second 10 leave (at 71 s), OTPM until its 100 of
    # second 10 and 1,801 of second 61 do (at 122 s). The longer wait binds.
    split.clock.set(T0 + 62)
    refused = split.acquire(CLAUDE, 9500, 1000)
    assert (refused.denied_by, refused.retry_after) == ("output_tokens_per_minute", pytest.approx(60))
    assert split.acquire(CLAUDE, 9500, 0).retry_after == pytest.approx(9)


def test_too_large_for_itpm_or_otpm_alone_is_an_error(split: Any, r: redis.Redis) -> None:
    before = dump(r)
    with pytest.raises(RequestTooLargeError, match="input_tokens_per_minute") as info:
        split.acquire(CLAUDE, 10_001, 0)
    assert (info.value.limit, info.value.cost, info.value.allowed) == ("input_tokens_per_minute", 10_001, 10_000)
    with pytest.raises(RequestTooLargeError, match="output_tokens_per_minute") as info:
        split.acquire(CLAUDE, 10, 2_001)
    assert (info.value.limit, info.value.cost, info.value.allowed) == ("output_tokens_per_minute", 2_001, 2_000)
    with pytest.raises(RequestTooLargeError, match=r"tenant\.output_tokens_per_minute") as info:
        split.acquire(CLAUDE, 10, 501, tenant="acme")
    assert (info.value.cost, info.value.allowed) == (501, 500)
    assert _without_denials(dump(r)) == _without_denials(before)
    assert r.hgetall(Keys().denials(CLAUDE)) == {
        "input_tokens_per_minute": "1",
        "output_tokens_per_minute": "1",
        "tenant.output_tokens_per_minute": "1",
    }
    # no TPM: the sum may pass either limit, each part fits its own
    assert split.acquire(CLAUDE, 10_000, 2_000).allowed


def test_tenant_itpm_and_otpm(split: Any) -> None:
    held = split.acquire(CLAUDE, 100, 400, tenant="acme")
    assert held.remaining["tenant.output_tokens_per_minute"] == 100
    refused = split.acquire(CLAUDE, 100, 101, tenant="acme")
    assert (refused.allowed, refused.denied_by) == (False, "tenant.output_tokens_per_minute")
    assert split.acquire(CLAUDE, 100, 400, tenant="other").allowed  # its own window
    assert split.settle(held.reservation, 100, 50) is True
    assert left(split, "acme")["tenant.output_tokens_per_minute"] == 450
    vip = split.acquire(CLAUDE, 3000, 900, tenant="vip")
    assert vip.remaining["tenant.input_tokens_per_minute"] == 0
    assert "tenant.output_tokens_per_minute" not in vip.remaining  # vip has its own entry, not "*"
    assert split.acquire(CLAUDE, 1, 0, tenant="vip").denied_by == "tenant.input_tokens_per_minute"
    assert split.release(vip.reservation) is True
    assert left(split, "vip")["tenant.input_tokens_per_minute"] == 3000


def test_check_rate_limit_counts_tokens_as_input(split: Any) -> None:
    """``check_rate_limit(model, tokens)``: a request of ``tokens`` input tokens and no output, so
    the OTPM window refuses only once it is over its limit (a settle may take it there)."""
    held = split.acquire(CLAUDE, 2000, 2000).reservation
    assert split.check_rate_limit(CLAUDE, 8000).allowed
    peek = split.check_rate_limit(CLAUDE, 8001)
    assert (peek.allowed, peek.denied_by) == (False, "input_tokens_per_minute")
    assert split.check_rate_limit(CLAUDE, 0).remaining["output_tokens_per_minute"] == 0
    assert split.check_rate_limit(CLAUDE, 0).allowed  # full, not over
    split.settle(held, 2000, 2100)
    peek = split.check_rate_limit(CLAUDE, 0)
    assert (peek.allowed, peek.denied_by) == (False, "output_tokens_per_minute")


def test_every_token_limit_at_once(reg: Any) -> None:
    """TPM, ITPM and OTPM together: each charged its own part, the tightest refuses."""
    reg.register_model(
        model(rate_limit={"tokens_per_minute": 1000, "input_tokens_per_minute": 800, "output_tokens_per_minute": 300})
    )
    first = reg.acquire("openai:gpt-4", 500, 300)
    assert dict(first.remaining) == {
        "tokens_per_minute": 200,
        "input_tokens_per_minute": 300,
        "output_tokens_per_minute": 0,
    }
    assert reg.acquire("openai:gpt-4", 1, 1).denied_by == "output_tokens_per_minute"
    reg.settle(first.reservation, 500, 100)
    assert reg.acquire("openai:gpt-4", 300, 150).denied_by == "tokens_per_minute"  # 600 + 450 > 1000
    second = reg.acquire("openai:gpt-4", 300, 100)
    assert dict(second.remaining) == {
        "tokens_per_minute": 0,
        "input_tokens_per_minute": 0,
        "output_tokens_per_minute": 100,
    }
