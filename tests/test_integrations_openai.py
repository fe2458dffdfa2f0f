"""registry.integrations.openai: the real OpenAI SDK, wrapped, against the fake provider and
the test Redis. Every test runs with the blocking client (OpenAI + Registry) and the asyncio
one (AsyncOpenAI + AsyncRegistry), and checks the ledger against the usage the fake reported."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from typing import Any

import openai
import pytest

from registry import ConfigError, ModelNotFoundError, RateLimitedError, RequestTooLargeError
from registry.integrations import openai as wrapper
from registry.integrations.common import IMAGE_TOKENS, estimate_input_tokens, tokens_for_bytes
from registry.ledger.money import to_units
from registry.testing import FakeClock, use_clock
from tests.conftest import model
from tests.fakeprovider import FakeProvider, Kit, Reply, Sdk, cache_ledger, drain, fixed, fixtures, ledger, room

GPT = "openai:gpt-4o"
RPM, TPM = 100, 100_000
HELLO = [{"role": "user", "content": "Say hello"}]
TEXT = Reply().text
SDK = Sdk(
    openai.OpenAI,
    openai.AsyncOpenAI,
    wrapper.wrap,
    lambda fake: fake.openai_url,
    model(
        id="gpt-4o",
        # 2,500 and 10,000 nano-dollars a token; 1,250 for a prompt token read from the cache
        cost={"input": "2.5", "output": "10", "cached_input": "1.25", "per": 1_000_000},
        rate_limit={"requests_per_minute": RPM, "tokens_per_minute": TPM},
        max_output_tokens=4096,
    ),
)
fake, kit = fixtures(SDK)


def create(kit: Kit, client: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("model", "gpt-4o")
    kwargs.setdefault("messages", HELLO)
    return kit.run(client.chat.completions.create(**kwargs))


# -- plain calls ---------------------------------------------------------------------------------


def test_a_call_is_settled_with_the_usage_the_provider_reported(kit: Kit) -> None:
    kit.fake.script(Reply(text="Hi there", input_tokens=23, output_tokens=9, cache_read=16))
    reply = create(kit, kit.client(), max_tokens=50)
    assert isinstance(reply, openai.types.chat.ChatCompletion)
    assert reply.choices[0].message.content == "Hi there"
    assert ledger(kit) == (1, 1, 0, 0, 23, 9)  # prompt_tokens counts the cached ones already
    stats = kit.reg.get_statistics(model=GPT)
    # prompt_tokens_details.cached_tokens: 16 of the 23 read from the cache, at its price
    assert cache_ledger(kit) == (16, 0, 7 * 2_500 + 16 * 1_250 + 9 * 10_000)
    assert stats.cost_units == to_units(kit.reg.estimate_cost(GPT, 23, 9, cached_input_tokens=16))
    assert stats.latency_count == 1
    assert room(kit) == (RPM - 1, TPM - 32)  # the window holds the real count, not the estimate
    assert kit.fake.requests[-1].body == {"model": "gpt-4o", "messages": HELLO, "max_tokens": 50}


def test_the_reservation_is_the_estimate_plus_the_most_output_the_request_allows(kit: Kit) -> None:
    for name in ("small", "small-a", "small-b"):
        kit.reg.register_model(model(id=name, rate_limit={"tokens_per_minute": 1_000}))
    seen: list[dict[str, Any]] = []

    def counter(request: Any) -> int:
        seen.append(dict(request))
        return 600

    client = kit.client(token_counter=counter)
    for too_much in (
        {"max_tokens": 401},
        {"max_completion_tokens": 401, "max_tokens": 10},
        {"max_tokens": 201, "n": 2},
    ):
        with pytest.raises(RequestTooLargeError):
            create(kit, client, model="small", **too_much)
    create(kit, client, model="small-a", max_completion_tokens=400, max_tokens=999)  # the newer name wins
    create(kit, client, model="small-b", max_tokens=200, n=2)
    assert len(kit.fake.requests) == 2  # the refused ones never left
    assert seen[-1] == {"model": "small-b", "messages": HELLO, "max_tokens": 200, "n": 2}
    # without a limit in the request, the model's max_output_tokens is reserved
    kit.reg.register_model(
        model(id="small", max_output_tokens=401, rate_limit={"tokens_per_minute": 1_000}), replace=True
    )
    with pytest.raises(RequestTooLargeError):
        create(kit, client, model="small")


def test_the_default_estimate_counts_the_request_and_the_counter_sees_no_sentinels(kit: Kit) -> None:
    client = kit.client()
    messages = ({"role": "user", "content": text} for text in ("one", "two"))  # a one-shot generator
    create(kit, client, messages=messages, max_tokens=5, user=openai.omit)
    sent = kit.fake.requests[-1].body
    assert sent["messages"] == [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}]
    assert "user" not in sent
    # an SDK object sent back as a message (a tool-calling loop) is estimated from its fields
    reply = create(kit, client, max_tokens=5)
    history = [*HELLO, reply.choices[0].message, {"role": "user", "content": "again"}]
    create(kit, client, messages=history, max_tokens=5)
    text = len("Say hello") + len(TEXT) + len("again")
    assert estimate_input_tokens({"messages": history}) == -(-text // 3) + 3 * 4 + 3
    assert ledger(kit)[:3] == (3, 3, 0)


def test_the_estimate_counts_images_flatly_and_other_values_by_their_json() -> None:
    picture = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 90_000}}
    message = {"role": "user", "content": [{"type": "text", "text": "abc"}, picture]}
    assert estimate_input_tokens({"messages": [message]}) == 1 + 4 + 3 + IMAGE_TOKENS  # not the base64
    assert estimate_input_tokens({"tools": [{"maxItems": 12345}]}) == 2 + 3  # "12345": 5 bytes of JSON
    assert estimate_input_tokens({"tool_choice": complex(1, 2)}) == 2 + 3  # no JSON: its str, "(1+2j)"


def test_bad_arguments_raise_before_anything_is_held(kit: Kit) -> None:
    client = kit.client(token_counter=fixed(-1))
    with pytest.raises(ConfigError, match="token_counter"):
        create(kit, client)
    with pytest.raises(ConfigError, match="needs a model name"):
        kit.run(kit.client().chat.completions.create(messages=HELLO))
    with pytest.raises(ModelNotFoundError):
        create(kit, kit.client(), model="gpt-unknown")
    assert kit.fake.requests == []
    assert room(kit) == (RPM, TPM)


# -- streams ---------------------------------------------------------------------------------------


def test_a_stream_shows_the_chunks_the_caller_asked_for_and_settles_the_usage(kit: Kit) -> None:
    kit.fake.script(Reply(input_tokens=31, output_tokens=12, cache_read=30), Reply(input_tokens=31, output_tokens=12))
    stream = create(kit, kit.client(), max_tokens=50, stream=True)
    chunks = [chunk.model_dump() for chunk in stream]
    assert kit.fake.requests[-1].body["stream_options"] == {"include_usage": True}
    plain = create(kit, kit.raw_client(), max_tokens=50, stream=True)  # the SDK alone, no usage asked
    assert chunks == [chunk.model_dump() for chunk in plain]  # the usage-only chunk was hidden
    assert "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks) == TEXT
    assert ledger(kit) == (1, 1, 0, 0, 31, 12)
    assert cache_ledger(kit) == (30, 0, 1 * 2_500 + 30 * 1_250 + 12 * 10_000)  # from the last chunk's usage
    assert room(kit) == (RPM - 1, TPM - 43)  # OpenAI's TPM counts the cached tokens


def test_a_caller_that_asked_for_usage_sees_it(kit: Kit) -> None:
    kit.fake.script(Reply(input_tokens=5, output_tokens=6))
    stream = create(kit, kit.client(), stream=True, stream_options={"include_usage": True})
    with stream:
        chunks = list(stream)
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (5, 6)
    assert ledger(kit) == (1, 1, 0, 0, 5, 6)


def test_a_stream_without_usage_is_charged_the_estimate_and_the_text_it_produced(kit: Kit) -> None:
    client = kit.client(token_counter=fixed(40))
    list(create(kit, client, stream=True, stream_options={"include_usage": False}))
    kit.fake.script(Reply(usage=False))  # a compatible server that ignores stream_options
    list(create(kit, client, stream=True))
    kit.fake.script(Reply(usage=False))
    create(kit, client)  # nor in a whole response
    counted = tokens_for_bytes(len(TEXT.encode()))
    assert counted == 10
    assert ledger(kit) == (3, 3, 0, 0, 120, 3 * counted)


def test_tool_calls_count_as_output_where_no_usage_says(kit: Kit) -> None:
    tool = ("get_weather", '{"city": "Paris", "unit": "celsius"}')
    kit.fake.script(Reply(tool=tool, usage=False), Reply(tool=tool, cut_after=3))
    client = kit.client(token_counter=fixed(10))
    reply = create(kit, client)
    assert reply.choices[0].message.tool_calls[0].function.name == "get_weather"
    chunks, error = drain(create(kit, client, stream=True))  # the call, '{"city":', ' "Paris",', cut
    assert isinstance(error, openai.APIConnectionError)
    assert len(chunks) == 3
    whole = tokens_for_bytes(len("get_weather") + len(tool[1]))
    part = tokens_for_bytes(len("get_weather") + len('{"city": "Paris",'))
    assert ledger(kit) == (2, 1, 1, 0, 20, whole + part)


def test_a_stream_with_several_choices_finishes_when_all_have(kit: Kit) -> None:
    kit.fake.script(Reply(input_tokens=8, output_tokens=14))
    chunks = list(create(kit, kit.client(), stream=True, n=2, max_tokens=10))
    assert sorted(c.choices[0].index for c in chunks if c.choices[0].finish_reason) == [0, 1]
    assert ledger(kit) == (1, 1, 0, 0, 8, 14)


def test_a_cut_off_stream_is_a_failure_charged_what_it_produced(kit: Kit) -> None:
    kit.fake.script(Reply(cut_after=3))  # the role chunk, "Hello", " from", then the connection drops
    chunks, error = drain(create(kit, kit.client(token_counter=fixed(50)), stream=True))
    assert isinstance(error, openai.APIConnectionError)
    assert [chunk.choices[0].delta.content for chunk in chunks] == ["", "Hello", " from"]
    produced = tokens_for_bytes(len("Hello from"))
    assert ledger(kit) == (1, 0, 1, 0, 50, produced)
    assert room(kit) == (RPM - 1, TPM - 50 - produced)


def test_a_stream_that_ends_without_finishing_is_a_failure(kit: Kit) -> None:
    kit.fake.script(Reply(finish=False))  # clean end of body, no finish_reason, no [DONE]
    assert len(list(create(kit, kit.client(token_counter=fixed(7)), stream=True))) == 6
    assert ledger(kit) == (1, 0, 1, 0, 7, tokens_for_bytes(len(TEXT)))


def test_a_caller_that_stops_early_is_charged_what_it_read(kit: Kit) -> None:
    client = kit.client(token_counter=fixed(20))
    with create(kit, client, stream=True) as stream:
        for chunk in stream:
            if chunk.choices[0].delta.content == "Hello":
                break
    assert ledger(kit) == (1, 0, 1, 0, 20, tokens_for_bytes(len("Hello")))
    stream.close()  # again: nothing more
    unread = create(kit, client, stream=True)
    unread.close()  # closed before reading anything
    assert ledger(kit) == (2, 0, 2, 0, 40, tokens_for_bytes(len("Hello")))


@pytest.mark.parametrize("kit", ["sync"], indirect=True)  # asyncio: by the event loop's async-generator hooks
def test_a_stream_dropped_unclosed_is_settled_when_collected(kit: Kit) -> None:
    client = kit.client(token_counter=fixed(3))
    stream = create(kit, client, stream=True)
    next(stream)
    del stream
    create(kit, client, stream=True)  # never iterated
    gc.collect()
    assert ledger(kit) == (2, 0, 2, 0, 6, 0)


def test_the_chat_completions_stream_helper_is_metered(kit: Kit) -> None:
    kit.fake.script(Reply(input_tokens=12, output_tokens=4))
    manager = kit.run(kit.client().chat.completions.stream(model="gpt-4o", messages=HELLO, max_tokens=20))
    with manager as stream:
        assert len(list(stream)) > 5
        final = kit.run(stream.get_final_completion())
    assert final.choices[0].message.content == TEXT
    assert final.usage is None  # the caller did not ask for it
    assert ledger(kit) == (1, 1, 0, 0, 12, 4)


@pytest.mark.parametrize("kit", ["async"], indirect=True)
def test_native_async_for_and_async_with(kit: Kit) -> None:
    client = kit.client()

    async def main() -> list[str]:
        texts = []
        stream = await client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
        async with stream:
            async for chunk in stream:
                texts.append(chunk.choices[0].delta.content or "")
        return texts

    assert "".join(kit.runner.run(main())) == TEXT
    assert ledger(kit)[:3] == (1, 1, 0)


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "throttled"),
    [(500, openai.InternalServerError, 0), (400, openai.BadRequestError, 0), (429, openai.RateLimitError, 1)],
)
def test_a_provider_error_is_a_failure_of_no_tokens_and_is_raised_unchanged(
    kit: Kit, status: int, error: type[Exception], throttled: int
) -> None:
    kit.fake.script(Reply(status=status, headers={"retry-after": "3"}))
    with pytest.raises(error) as raised:
        create(kit, kit.client(), max_tokens=50)
    assert raised.value.status_code == status
    assert raised.value.response.headers["retry-after"] == "3"
    assert ledger(kit) == (1, 0, 1, throttled, 0, 0)
    assert room(kit) == (RPM - 1, TPM)  # the request may have counted upstream: its slot is kept


def test_an_error_before_any_response_is_a_failure_of_no_tokens(kit: Kit) -> None:
    with socket_closed() as url:
        client = kit.sdk.wrap(kit.raw_client().with_options(base_url=url), kit.registry)
        with pytest.raises(openai.APIConnectionError):
            create(kit, client)
    assert ledger(kit) == (1, 0, 1, 0, 0, 0)


def test_an_error_while_settling_an_error_is_logged_not_raised(
    kit: Kit, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def asettle(*args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("ledger down")

    def settle(*args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("ledger down")

    monkeypatch.setattr(kit.registry, "settle", asettle if kit.mode == "async" else settle)
    kit.fake.script(Reply(status=500), Reply(cut_after=2))
    client = kit.client()
    with caplog.at_level(logging.WARNING, "registry.integrations"), pytest.raises(openai.InternalServerError):
        create(kit, client)
    with pytest.raises(openai.APIConnectionError):
        list(create(kit, client, stream=True))
    assert [r.getMessage() for r in caplog.records] == ["could not settle a failed openai:gpt-4o call"] * 2


@pytest.mark.parametrize("kit", ["async"], indirect=True)
def test_a_cancelled_call_is_settled_as_failed(kit: Kit) -> None:
    gate = threading.Event()
    kit.fake.script(Reply(hold=gate))
    client = kit.client()

    async def main() -> None:
        task = asyncio.ensure_future(client.chat.completions.create(model="gpt-4o", messages=HELLO))
        await asyncio.to_thread(kit.fake.arrived.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        kit.runner.run(main())
    finally:
        gate.set()
    assert ledger(kit) == (1, 0, 1, 0, 0, 0)


# -- admission -------------------------------------------------------------------------------------


def test_a_refusal_raises_with_retry_after_and_sends_nothing(kit: Kit) -> None:
    kit.reg.register_model(model(id="gpt-4o", rate_limit={"requests_per_minute": 1}), replace=True)
    client = kit.client()
    create(kit, client)
    with pytest.raises(RateLimitedError) as refused:
        create(kit, client)
    assert (refused.value.model_key, refused.value.denied_by) == (GPT, "requests_per_minute")
    assert 0 < refused.value.retry_after <= 61  # to the next second bucket
    assert len(kit.fake.requests) == 1


def test_wait_waits_for_room_up_to_the_timeout(kit: Kit) -> None:
    kit.reg.register_model(model(id="gpt-4o", rate_limit={"requests_per_minute": 1}), replace=True)
    clock = FakeClock(now_ms=1_000_000_000)
    use_clock(kit.reg, clock)
    patient = kit.client(wait=True, timeout=120)
    create(kit, patient)
    create(kit, patient)  # sleeps (on the fake clock) until the first leaves the window
    assert 60 <= (clock.now_ms - 1_000_000_000) / 1000 <= 61
    with pytest.raises(RateLimitedError):
        create(kit, kit.client(wait=True, timeout=5))  # the wait would pass the timeout: at once
    assert len(kit.fake.requests) == 2
    assert ledger(kit)[:3] == (2, 2, 0)


# -- options ---------------------------------------------------------------------------------------


def test_model_names_map_to_catalog_keys(kit: Kit) -> None:
    kit.reg.register_model(model(provider="azure", id="gpt-4o-eu"))
    by_dict = kit.client(model_map={"gpt-4o-2024-08-06": "azure:gpt-4o-eu"})
    create(kit, by_dict, model="gpt-4o-2024-08-06")
    create(kit, by_dict, model="gpt-4o")  # not in the mapping: openai:<model>
    by_function = kit.client(model_map=lambda name: "azure:gpt-4o-eu")
    create(kit, by_function, model="anything")
    assert ledger(kit, "azure:gpt-4o-eu")[:2] == (2, 2)
    assert ledger(kit)[:2] == (1, 1)
    assert [r.body["model"] for r in kit.fake.requests] == ["gpt-4o-2024-08-06", "gpt-4o", "anything"]


def test_tenants_and_request_ids(kit: Kit) -> None:
    kit.fake.script(*[Reply(input_tokens=10, output_tokens=1)] * 3)
    client = kit.client(tenant="acme")
    create(kit, client)
    create(kit, client, registry_tenant="beta", registry_request_id="req-1")
    create(kit, client, registry_tenant=None)
    stats = kit.reg.get_statistics(model=GPT)
    assert {name: (t.requests, t.input_tokens) for name, t in stats.by_tenant.items()} == {
        "acme": (1, 10),
        "beta": (1, 10),
    }
    assert stats.requests == 3
    assert all(not any(k.startswith("registry_") for k in r.body) for r in kit.fake.requests)


def test_the_rest_of_the_client_passes_through_and_copies_stay_metered(kit: Kit) -> None:
    raw = kit.raw_client()
    client = wrapper.wrap(raw, kit.registry)
    assert isinstance(client, type(raw))
    assert client is not raw
    assert kit.run(client.models.list()).data[0].id == "gpt-test"
    copy = client.with_options(timeout=30).copy(max_retries=0)
    assert isinstance(copy, type(raw))
    assert copy.timeout == 30
    create(kit, copy)
    create(kit, raw)  # the original is not metered
    reply = kit.run(client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO))
    assert reply.parse().usage.completion_tokens == 7
    parsed = kit.run(client.chat.completions.parse(model="gpt-4o", messages=HELLO))
    assert parsed.choices[0].message.content == TEXT
    assert ledger(kit) == (3, 3, 0, 0, 33, 21)
    with pytest.raises(ConfigError, match="already wrapped"):
        wrapper.wrap(client, kit.registry)


def test_a_response_the_caller_reads_itself_is_kept_at_the_estimate(kit: Kit) -> None:
    client = kit.client(token_counter=fixed(30))
    streaming = kit.run(
        client.chat.completions.with_streaming_response.create(model="gpt-4o", messages=HELLO, max_tokens=9)
    )
    with streaming as response:
        assert kit.run(response.parse()).usage.prompt_tokens == 11
    raw = kit.run(
        client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO, stream=True, max_tokens=9)
    )
    for _ in kit.run(raw.parse()):
        pass
    assert ledger(kit) == (2, 2, 0, 0, 60, 18)  # the estimate and max_tokens: nothing said otherwise


def test_clients_and_registries_must_match(redis_url: str, fake: FakeProvider) -> None:
    assert SDK.mismatches(redis_url, fake, {}) == [
        "registry.integrations.openai.wrap: OpenAI needs a Registry (its calls block), got AsyncRegistry",
        "registry.integrations.openai.wrap: AsyncOpenAI needs an AsyncRegistry (its calls are awaited), got Registry",
        "registry.integrations.openai.wrap: expected an OpenAI or AsyncOpenAI client, got dict",
    ]


def test_the_module_says_what_to_install_without_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ImportError, match=r"pip install 'registry\[openai\]'"):
        SDK.import_without_sdk(monkeypatch)


# -- helpers ---------------------------------------------------------------------------------------


class socket_closed:
    """A base URL on a loopback port nobody listens on."""

    def __enter__(self) -> str:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    def __exit__(self, *exc: object) -> None:
        pass
