"""registry.integrations.anthropic: the real Anthropic SDK, wrapped, against the fake provider
and the test Redis, with the blocking client (Anthropic + Registry) and the asyncio one
(AsyncAnthropic + AsyncRegistry). The flow it shares with the OpenAI wrapper (refusals,
waiting, errors while settling, cancellation) is tested in test_integrations_openai.py; here,
what Anthropic's SDK and wire format make different."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest
from anthropic.lib.streaming import AsyncMessageStream, MessageStream

from registry import RateLimitedError
from registry.integrations import anthropic as wrapper
from registry.integrations.common import tokens_for_bytes
from registry.ledger.money import to_units
from tests.conftest import model
from tests.fakeprovider import FakeProvider, Kit, Reply, Sdk, cache_ledger, drain, fixed, fixtures, ledger, room

CLAUDE = "anthropic:claude-test"
RPM, TPM = 100, 100_000
HELLO = [{"role": "user", "content": "Say hello"}]
TEXT = Reply().text
CACHED = Reply(input_tokens=20, cache_write=100, cache_read=300, output_tokens=9)  # 420 prompt tokens
# 20 plain x 3,000 + 300 read x 300 + 100 written x 3,750 nano-dollars, and 9 x 15,000 out
CACHED_COST = 20 * 3_000 + 300 * 300 + 100 * 3_750 + 9 * 15_000
ITPM = 100_000
SDK = Sdk(
    anthropic.Anthropic,
    anthropic.AsyncAnthropic,
    wrapper.wrap,
    lambda fake: fake.anthropic_url,
    model(
        provider="anthropic",
        id="claude-test",
        # 3,000 and 15,000 nano-dollars a token; cache reads 300, cache writes 3,750
        cost={"input": "3", "output": "15", "cached_input": "0.3", "cache_write": "3.75", "per": 1_000_000},
        rate_limit={"requests_per_minute": RPM, "tokens_per_minute": TPM, "input_tokens_per_minute": ITPM},
        max_output_tokens=8192,
    ),
)
fake, kit = fixtures(SDK)


def request(**kwargs: Any) -> dict[str, Any]:
    return {"model": "claude-test", "max_tokens": 64, "messages": HELLO, **kwargs}


def create(kit: Kit, client: Any, **kwargs: Any) -> Any:
    return kit.run(client.messages.create(**request(**kwargs)))


# -- usage, cached tokens included ---------------------------------------------------------------


def test_a_call_is_settled_with_every_prompt_token_cached_ones_included(kit: Kit) -> None:
    kit.fake.script(CACHED)
    reply = create(kit, kit.client(), system="Be brief.")
    assert isinstance(reply, anthropic.types.Message)
    assert (reply.usage.input_tokens, reply.usage.cache_read_input_tokens) == (20, 300)
    assert ledger(kit) == (1, 1, 0, 0, 420, 9)  # 20 + 100 written to the cache + 300 read from it
    assert cache_ledger(kit) == (300, 100, CACHED_COST)  # each part at its own price
    exact = kit.reg.estimate_cost(CLAUDE, 420, 9, cached_input_tokens=300, cache_write_tokens=100)
    assert to_units(exact) == CACHED_COST
    assert room(kit) == (RPM - 1, TPM - 429)  # TPM counts every prompt token
    # Anthropic's ITPM leaves the cache reads out: 20 + 100 written
    assert kit.reg.check_rate_limit(CLAUDE).remaining["input_tokens_per_minute"] == ITPM - 120
    assert kit.fake.requests[-1].body == request(system="Be brief.")


@pytest.mark.parametrize("delta_input", [False, True], ids=["delta-output-only", "delta-cumulative"])
def test_a_stream_settles_what_message_start_and_message_delta_said(kit: Kit, delta_input: bool) -> None:
    reply = Reply(**{**vars(CACHED), "delta_input": delta_input})
    kit.fake.script(reply, reply)
    events = [event.model_dump() for event in create(kit, kit.client(), stream=True)]
    plain = [event.model_dump() for event in create(kit, kit.raw_client(), stream=True)]
    assert events == plain  # nothing added, nothing hidden
    assert [e["type"] for e in events][:2] == ["message_start", "content_block_start"]
    assert "stream_options" not in kit.fake.requests[0].body
    assert ledger(kit) == (1, 1, 0, 0, 420, 9)
    assert cache_ledger(kit) == (300, 100, CACHED_COST)


def test_the_messages_stream_helper_is_metered(kit: Kit) -> None:
    kit.fake.script(CACHED)
    with kit.run(kit.client().messages.stream(**request())) as stream:
        assert isinstance(stream.target if kit.mode == "async" else stream, AsyncMessageStream | MessageStream)
        assert "".join(stream.text_stream) == TEXT
        final = kit.run(stream.get_final_message())
    assert final.usage.output_tokens == 9
    assert kit.fake.requests[-1].body["stream"] is True
    assert ledger(kit) == (1, 1, 0, 0, 420, 9)
    assert cache_ledger(kit) == (300, 100, CACHED_COST)


def test_the_helper_left_early_is_charged_what_it_read(kit: Kit) -> None:
    kit.fake.script(CACHED)
    with kit.run(kit.client().messages.stream(**request())) as stream:
        for event in stream:
            if event.type == "text" and event.text == "Hello":
                break
    assert ledger(kit) == (1, 0, 1, 0, 420, tokens_for_bytes(len("Hello")))  # message_start said the input
    assert cache_ledger(kit)[:2] == (300, 100)


def test_a_cut_off_stream_is_a_failure_charged_what_it_produced(kit: Kit) -> None:
    kit.fake.script(Reply(input_tokens=20, cache_read=30, cut_after=5))  # start, block, ping, "Hello", " from"
    events, error = drain(create(kit, kit.client(token_counter=fixed(999)), stream=True))
    assert error is not None
    assert [e.delta.text for e in events if e.type == "content_block_delta"] == ["Hello", " from"]
    assert ledger(kit) == (1, 0, 1, 0, 50, tokens_for_bytes(len("Hello from")))
    assert cache_ledger(kit)[:2] == (30, 0)
    kit.fake.script(Reply(cut_after=1))  # the helper's text stream, cut after message_start
    with kit.run(kit.client(token_counter=fixed(999)).messages.stream(**request())) as stream:
        texts, error = drain(stream.text_stream)
    assert (texts, error is not None) == ([], True)
    assert ledger(kit) == (2, 0, 2, 0, 61, tokens_for_bytes(len("Hello from")))


def test_tool_use_counts_as_output_where_no_usage_says(kit: Kit) -> None:
    tool = ("get_weather", '{"city": "Paris", "unit": "celsius"}')
    kit.fake.script(Reply(tool=tool, usage=False), Reply(tool=tool, cut_after=5))
    client = kit.client(token_counter=fixed(10))
    reply = create(kit, client, tools=[{"name": "get_weather", "input_schema": {"type": "object"}}])
    assert reply.content[0].input == {"city": "Paris", "unit": "celsius"}
    _, error = drain(create(kit, client, stream=True))  # start, tool_use block, ping, 2 pieces of JSON, cut
    assert error is not None
    whole = tokens_for_bytes(len("get_weather") + len(json.dumps(json.loads(tool[1]), separators=(",", ":"))))
    part = tokens_for_bytes(len("get_weather") + len("{}") + len('{"city": "Paris",'))
    assert ledger(kit) == (2, 1, 1, 0, 10 + 11, whole + part)


# -- errors and refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "throttled"),
    [(429, anthropic.RateLimitError, 1), (500, anthropic.InternalServerError, 0), (529, anthropic.OverloadedError, 0)],
)
def test_a_provider_error_is_a_failure_of_no_tokens_and_is_raised_unchanged(
    kit: Kit, status: int, error: type[anthropic.APIStatusError], throttled: int
) -> None:
    kit.fake.script(Reply(status=status, headers={"retry-after": "7"}), Reply(status=status))
    with pytest.raises(error) as raised:
        create(kit, kit.client())
    assert raised.value.response.headers["retry-after"] == "7"
    with pytest.raises(error):  # the stream helper: at entry
        kit.run(kit.client().messages.stream(**request())).__enter__()
    assert ledger(kit) == (2, 0, 2, 2 * throttled, 0, 0)
    assert room(kit) == (RPM - 2, TPM)


def test_a_refusal_raises_before_the_request(kit: Kit) -> None:
    kit.reg.register_model(
        model(provider="anthropic", id="claude-test", rate_limit={"requests_per_minute": 1}), replace=True
    )
    client = kit.client()
    manager = kit.run(client.messages.stream(**request()))  # nothing is acquired until it is entered
    create(kit, client)
    with pytest.raises(RateLimitedError) as refused:
        manager.__enter__()
    assert (refused.value.model_key, refused.value.denied_by) == (CLAUDE, "requests_per_minute")
    with pytest.raises(RateLimitedError):
        create(kit, client)
    assert len(kit.fake.requests) == 1


# -- options and the rest of the client ----------------------------------------------------------------


def test_model_map_tenant_and_request_id(kit: Kit) -> None:
    kit.reg.register_model(model(provider="bedrock", id="claude-eu"))
    client = kit.client(model_map={"claude-3-eu": "bedrock:claude-eu"}, tenant="acme")
    create(kit, client, model="claude-3-eu", registry_tenant="beta", registry_request_id="req-9")
    create(kit, client)
    assert kit.reg.get_statistics(model="bedrock:claude-eu").by_tenant.keys() == {"beta"}
    assert kit.reg.get_statistics(model=CLAUDE).by_tenant.keys() == {"acme"}
    assert [r.body["model"] for r in kit.fake.requests] == ["claude-3-eu", "claude-test"]
    assert all(not any(k.startswith("registry_") for k in r.body) for r in kit.fake.requests)


def test_raw_responses_parse_and_the_rest_of_the_client(kit: Kit) -> None:
    raw = kit.raw_client()
    client = wrapper.wrap(raw, kit.registry)
    assert isinstance(client, type(raw))
    assert kit.run(client.models.list()).data[0].id == "claude-test"
    response = kit.run(client.messages.with_raw_response.create(**request()))
    assert kit.run(response.parse()).usage.output_tokens == 7
    parsed = kit.run(client.with_options(timeout=20).messages.parse(**request()))
    assert parsed.content[0].text == TEXT
    create(kit, raw)  # the original is not metered
    assert ledger(kit) == (2, 2, 0, 0, 22, 14)


def test_clients_and_registries_must_match(redis_url: str, fake: FakeProvider) -> None:
    assert SDK.mismatches(redis_url, fake, object()) == [
        "registry.integrations.anthropic.wrap: Anthropic needs a Registry (its calls block), got AsyncRegistry",
        "registry.integrations.anthropic.wrap: AsyncAnthropic needs an AsyncRegistry (its calls are awaited),"
        " got Registry",
        "registry.integrations.anthropic.wrap: expected an Anthropic or AsyncAnthropic client, got object",
    ]


def test_the_module_says_what_to_install_without_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ImportError, match=r"pip install 'registry\[anthropic\]'"):
        SDK.import_without_sdk(monkeypatch)
