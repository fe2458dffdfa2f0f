"""The asyncio client's auto-batching: concurrent script calls share one pipeline, exactly."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from registry import AsyncRegistry, ScriptError
from registry._base import connect
from registry._core import Script
from tests.conftest import model


def test_256_concurrent_acquires_share_pipelines_and_admit_exactly_the_limit(redis_url: str) -> None:
    async def main() -> tuple[list[Any], Any]:
        # watch=True (the default for workers): reads come from the local copy, no round trip
        async with AsyncRegistry.from_url(redis_url) as reg:
            await reg.register_model(model(rate_limit={"requests_per_minute": 100}))
            await reg.refresh()
            before = reg._batcher.batches
            decisions = await asyncio.gather(*(reg.acquire("openai:gpt-4", 10, 10) for _ in range(256)))
            return decisions, reg._batcher.batches - before

    decisions, batches = asyncio.run(main())
    assert sum(d.allowed for d in decisions) == 100
    assert {d.denied_by for d in decisions if not d.allowed} == {"requests_per_minute"}
    assert len({d.reservation.token for d in decisions if d.allowed}) == 100
    assert batches <= 4  # 256 calls of one turn: one pipeline (or a few), not 256 round trips


def test_a_failing_script_fails_its_caller_only_and_unknown_scripts_are_loaded(redis_url: str) -> None:
    r = connect(redis_url)

    async def main() -> list[Any]:
        async with AsyncRegistry.from_url(redis_url, watch=False) as reg:
            await reg.register_model(model(rate_limit={"requests_per_minute": 10}))
            await reg.refresh()
            r.script_flush()  # every script unknown again: the batch must load and resend
            bad = Script("acquire", ("{x}:d", "{x}:r"), ("", "grab", 1, 0, 1, "t"))
            return await asyncio.gather(
                reg.acquire("openai:gpt-4", 1, 1),
                reg._execute(bad),
                reg.acquire("openai:gpt-4", 1, 1),
                return_exceptions=True,
            )

    first, error, third = asyncio.run(main())
    assert first.allowed
    assert third.allowed
    assert isinstance(error, ScriptError)
    assert "unknown mode" in str(error)


def test_a_lost_connection_fails_every_caller_of_the_batch() -> None:
    from registry import BackendUnavailable
    from registry.embedded import free_port

    async def main() -> list[Any]:
        async with AsyncRegistry.from_url(f"redis://127.0.0.1:{free_port()}/0", watch=False) as reg:
            calls = [reg._execute(Script("acquire", ("{x}:d", "{x}:r"), ("", "peek", 1, 0, 1, "t"))) for _ in range(3)]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(e, BackendUnavailable) for e in results)


@pytest.mark.parametrize("n", [1, 3])
def test_calls_one_after_another_each_go_at_once(redis_url: str, n: int) -> None:
    async def main() -> int:
        async with AsyncRegistry.from_url(redis_url, watch=False) as reg:
            await reg.register_model(model())
            await reg.refresh()
            before = reg._batcher.batches
            for _ in range(n):
                assert (await reg.acquire("openai:gpt-4", 1, 1)).allowed
            return reg._batcher.batches - before

    assert asyncio.run(main()) == n


# -- acquires merged into one script call ---------------------------------------------------------


def test_merged_acquires_admit_in_order_and_never_past_a_token_limit(redis_url: str) -> None:
    """Requests of different sizes in one merged call: what is admitted fits the limit, and no
    refused request would fit even at the end (the total only grows within the call)."""
    sizes = [(7 * i) % 130 + 1 for i in range(200)]

    async def main() -> tuple[list[Any], int, int]:
        async with AsyncRegistry.from_url(redis_url) as reg:
            await reg.register_model(model(rate_limit={"tokens_per_minute": 5_000}))
            await reg.refresh()
            scripts, calls = reg._batcher.scripts, reg._batcher.calls
            decisions = await asyncio.gather(*(reg.acquire("openai:gpt-4", size, 0) for size in sizes))
            return decisions, reg._batcher.scripts - scripts, reg._batcher.calls - calls

    decisions, scripts, calls = asyncio.run(main())
    admitted = sum(size for size, d in zip(sizes, decisions, strict=True) if d.allowed)
    refused = [size for size, d in zip(sizes, decisions, strict=True) if not d.allowed]
    assert admitted <= 5_000
    assert refused
    assert min(refused) > 5_000 - admitted
    assert {d.denied_by for d in decisions if not d.allowed} == {"tokens_per_minute"}
    # Each admitted decision's remaining is what was left after it: all different, never below 0.
    left = [d.remaining["tokens_per_minute"] for d in decisions if d.allowed]
    assert len(set(left)) == len(left)
    assert min(left) == 5_000 - admitted
    assert calls == 200
    assert scripts < calls / 10  # merged: a few script calls, not 200


def test_merged_acquires_keep_models_and_tenants_apart(redis_url: str) -> None:
    """Calls of two models and two tenants in one pipeline: each group is its own script call,
    each limit admits exactly its own count."""
    limits = {"requests_per_minute": 1_000}
    tenant_limits = {"*": {"requests_per_minute": 10}}

    async def main() -> list[tuple[str, str, bool]]:
        async with AsyncRegistry.from_url(redis_url) as reg:
            for key in ("a", "b"):
                await reg.register_model(model(id=key, rate_limit=limits, tenant_limits=tenant_limits))
            await reg.refresh()
            asks = [(m, t) for _ in range(30) for m in ("openai:a", "openai:b") for t in ("acme", "beta")]
            decisions = await asyncio.gather(*(reg.acquire(m, 1, 1, tenant=t) for m, t in asks))
            return [(m, t, d.allowed) for (m, t), d in zip(asks, decisions, strict=True)]

    results = asyncio.run(main())
    for m in ("openai:a", "openai:b"):
        for t in ("acme", "beta"):
            assert sum(ok for mm, tt, ok in results if (mm, tt) == (m, t)) == 10


def test_one_request_id_twice_in_one_merged_call_is_admitted_once(redis_url: str, r: Any) -> None:
    async def main() -> list[Any]:
        async with AsyncRegistry.from_url(redis_url) as reg:
            await reg.register_model(model(rate_limit={"tokens_per_minute": 1_000}))
            await reg.refresh()
            return await asyncio.gather(
                reg.acquire("openai:gpt-4", 100, 0, request_id="req-1"),
                reg.acquire("openai:gpt-4", 100, 0, request_id="req-1"),
                reg.acquire("openai:gpt-4", 100, 0),
            )

    first, again, other = asyncio.run(main())
    assert first.allowed
    assert not first.duplicate
    assert again.allowed
    assert again.duplicate
    assert again.reservation.token == first.reservation.token  # the handle of the one admitted
    assert other.allowed
    assert other.remaining["tokens_per_minute"] == 800  # req-1 counted once
    windows = [k for k in r.keys("*:w:tpm")]
    assert len(windows) == 1
    assert r.hget(windows[0], "_sum") == "200"


def test_a_bad_call_in_a_merged_group_fails_alone(redis_url: str) -> None:
    """A merged call that fails is sent again as its single calls: only the bad one fails."""

    def call(token: str) -> Script:
        return Script(
            "acquire",
            ("{x}:w", "{x}:d", f"{{x}}:r:{token}"),
            ("", "acquire", 1_000, 1, 1, "rpm", 10, 60_000, 1_000, token, 1),
        )

    async def main() -> tuple[list[Any], int]:
        async with AsyncRegistry.from_url(redis_url, watch=False) as reg:
            before = reg._batcher.scripts
            replies = await asyncio.gather(
                reg._execute(call("good-1")),
                reg._execute(call("bad token")),
                reg._execute(call("good-2")),
                return_exceptions=True,
            )
            return replies, reg._batcher.scripts - before

    (good_1, bad, good_2), scripts = asyncio.run(main())
    assert isinstance(bad, ScriptError)
    assert "token" in str(bad)
    assert [good_1[1], good_2[1]] == [1, 1]  # admitted, each with its own reply
    assert good_2[5] == 8  # the second good call counted after the first: 10 - 2
    assert scripts == 4  # the merged call, then the three alone


@pytest.mark.parametrize("reply", [None, [], [1, 2, 3, 4]])
def test_a_malformed_merged_reply_is_a_script_error(reply: Any) -> None:
    from registry.admission.ops import split_acquires

    with pytest.raises(ScriptError):
        split_acquires(reply, 2)


# -- threads sharing one blocking client ----------------------------------------------------------


def _wait_until(check: Any, what: str) -> None:
    """Poll a condition another thread makes true (a bounded wait, not a sleep hiding a race)."""
    import time

    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def _behind_a_held_call(
    reg: Any, first: Any, rest: list[Any], before_release: Any = None, after_first: Any = None
) -> None:
    """Run ``first`` in a thread and hold its call in flight until every one of ``rest`` (run in
    threads of their own) has queued behind it; then let it go and wait for all of them."""
    import threading

    gate, entered = threading.Event(), threading.Event()
    real = reg._batcher._send_one

    def held(request: Script) -> Any:
        entered.set()
        gate.wait()
        reply = real(request)
        if after_first is not None:
            after_first()
        return reply

    reg._batcher._send_one = held
    threads = [threading.Thread(target=first)]
    threads[0].start()
    entered.wait()
    reg._batcher._send_one = real
    threads += [threading.Thread(target=f) for f in rest]
    for t in threads[1:]:
        t.start()
    _wait_until(lambda: len(reg._batcher._waiting) == len(rest), f"{len(rest)} queued calls")
    if before_release is not None:
        before_release()
    gate.set()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)


def test_threads_that_wait_behind_a_call_in_flight_go_as_one_merged_pipeline(redis_url: str) -> None:
    """While one call is in flight, ten more queue; the longest-waiting sends them as one pipeline
    in which the ten acquires are one script call, and each thread gets its own exact answer."""
    from registry import Registry

    reg = Registry.from_url(redis_url)
    reg.register_model(model(rate_limit={"requests_per_minute": 8}))
    reg.get_model("openai:gpt-4")
    results: list[Any] = []

    def ask() -> None:
        results.append(reg.acquire("openai:gpt-4", 10, 10))

    counted: list[tuple[int, int]] = []
    _behind_a_held_call(reg, ask, [ask] * 10, lambda: counted.append((reg._batcher.batches, reg._batcher.scripts)))
    assert (reg._batcher.batches - counted[0][0], reg._batcher.scripts - counted[0][1]) == (1, 1)
    assert sum(d.allowed for d in results) == 8  # the limit, exactly
    assert {d.remaining["requests_per_minute"] for d in results if d.allowed} == set(range(8))
    assert {d.denied_by for d in results if not d.allowed} == {"requests_per_minute"}
    assert not reg._batcher._busy
    reg.close()


def test_many_threads_on_one_client_admit_exactly_the_limit(redis_url: str) -> None:
    """Sixteen threads, one client, requests of many sizes against a token limit: whatever the
    batches turn out to be, what is admitted fits and nothing refused would have fit."""
    import threading

    from registry import Registry

    reg = Registry.from_url(redis_url)
    reg.register_model(model(rate_limit={"tokens_per_minute": 20_000}))
    reg.get_model("openai:gpt-4")
    sizes = [[(37 * t + 11 * i) % 300 + 1 for i in range(40)] for t in range(16)]
    decisions: list[list[Any]] = [[] for _ in range(16)]
    barrier = threading.Barrier(16)

    def work(t: int) -> None:
        barrier.wait()
        decisions[t] = [reg.acquire("openai:gpt-4", size, 0) for size in sizes[t]]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    pairs = [(size, d) for t in range(16) for size, d in zip(sizes[t], decisions[t], strict=True)]
    admitted = sum(size for size, d in pairs if d.allowed)
    refused = [size for size, d in pairs if not d.allowed]
    assert admitted <= 20_000
    assert refused
    assert min(refused) > 20_000 - admitted
    assert not reg._batcher._busy
    reg.close()


def test_a_bad_call_among_waiting_threads_fails_alone(redis_url: str) -> None:
    from registry import Registry

    reg = Registry.from_url(redis_url, watch=False)
    out: dict[str, Any] = {}

    def run(token: str) -> Any:
        keys = ("{t}:w", "{t}:d", f"{{t}}:r:{token}")
        request = Script("acquire", keys, ("", "acquire", 1_000, 1, 1, "rpm", 10, 60_000, 1_000, token, 1))

        def go() -> None:
            try:
                out[token] = reg._execute(request)
            except Exception as exc:
                out[token] = exc

        return go

    _behind_a_held_call(reg, run("first"), [run(token) for token in ("good-1", "bad token", "good-2")])
    assert isinstance(out["bad token"], ScriptError)
    assert [out[k][1] for k in ("first", "good-1", "good-2")] == [1, 1, 1]
    assert sorted(out[k][5] for k in ("first", "good-1", "good-2")) == [7, 8, 9]
    reg.close()


def test_a_lost_connection_fails_every_waiting_thread_and_leaves_the_client_usable() -> None:
    import threading

    from registry import BackendUnavailable, Registry
    from registry.embedded import free_port

    reg = Registry.from_url(f"redis://127.0.0.1:{free_port()}/0", watch=False)
    out: list[Any] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            reg._execute(Script("acquire", ("{x}:d", "{x}:r"), ("", "peek", 1, 0, 1, "t")))
        except Exception as exc:
            with lock:
                out.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(out) == 8
    assert all(isinstance(e, BackendUnavailable) for e in out)
    assert not reg._batcher._busy
    assert not reg._batcher._waiting
    reg.close()


def _acquire_in_child(reg: Any, out: Any) -> None:
    out.put(reg.acquire("openai:gpt-4", 10, 10).allowed)


def test_a_forked_child_uses_the_client_it_inherited(redis_url: str) -> None:
    """The child starts a batcher of its own (the parent's threads, and a lock one of them may
    have held at the fork, did not come along)."""
    import multiprocessing as mp

    from registry import Registry

    reg = Registry.from_url(redis_url)
    reg.register_model(model(rate_limit={"requests_per_minute": 10}))
    assert reg.acquire("openai:gpt-4", 10, 10).allowed
    reg._batcher._busy = True  # as if a thread of the parent were in flight at the fork
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_acquire_in_child, args=(reg, out))
    child.start()
    assert out.get(timeout=30) is True
    child.join(timeout=30)
    assert child.exitcode == 0
    reg._batcher._busy = False
    reg.close()


def test_a_pipeline_of_waiting_threads_loads_scripts_redis_has_forgotten(redis_url: str) -> None:
    from registry import Registry

    reg = Registry.from_url(redis_url)
    reg.register_model(model(rate_limit={"requests_per_minute": 100}))
    reg.get_model("openai:gpt-4")
    out: list[Any] = []

    def ask() -> None:
        out.append(reg.acquire("openai:gpt-4", 1, 1))

    r = connect(redis_url)
    _behind_a_held_call(reg, ask, [ask] * 3, after_first=r.script_flush)
    assert [d.allowed for d in out] == [True] * 4
    assert sorted(d.remaining["requests_per_minute"] for d in out) == [96, 97, 98, 99]
    reg.close()


def test_a_lone_waiting_call_that_fails_fails_alone(redis_url: str) -> None:
    from registry import Registry

    reg = Registry.from_url(redis_url, watch=False)
    out: dict[str, Any] = {}

    def run(name: str, request: Script) -> Any:
        def go() -> None:
            try:
                out[name] = reg._execute(request)
            except Exception as exc:
                out[name] = exc

        return go

    good = Script(
        "acquire", ("{y}:w", "{y}:d", "{y}:r:a"), ("", "acquire", 1_000, 1, 1, "rpm", 5, 60_000, 1_000, "a", 1)
    )
    bad = Script("acquire", ("{y}:d", "{y}:r"), ("", "grab", 1, 0, 1, "t"))
    _behind_a_held_call(reg, run("good", good), [run("bad", bad)])
    assert out["good"][1] == 1
    assert isinstance(out["bad"], ScriptError)
    reg.close()


def test_a_merged_reply_of_the_wrong_shape_fails_each_of_its_calls() -> None:
    from registry.batching import batch_flow

    def call(token: str) -> Script:
        return Script(
            "acquire",
            ("{z}:w", "{z}:d", f"{{z}}:r:{token}"),
            ("", "acquire", 1, 1, 1, "rpm", 5, 60_000, 1_000, token, 1),
        )

    flow = batch_flow([call("a"), call("b")])
    scripts = next(flow)
    assert len(scripts) == 1  # merged
    with pytest.raises(StopIteration) as stop:
        flow.send([[1, 2, 3, 4]])  # not 1 + 2 x (4 + 1) values
    assert all(isinstance(reply, ScriptError) for reply in stop.value.value)
