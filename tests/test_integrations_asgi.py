"""RateLimitMiddleware in front of a fake upstream (FastAPI), against the test Redis: through
Starlette's TestClient, by hand at the ASGI level, and through a real uvicorn server."""

from __future__ import annotations

import asyncio
import functools
import json
import math
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.testclient import TestClient

from registry import AsyncRegistry, ConfigError, Registry
from registry.integrations.asgi import RateLimitMiddleware
from registry.integrations.common import estimate_input_tokens
from registry.integrations.usage import Reported, StreamUsage, usage_from_body
from registry.ledger.money import to_units
from registry.testing import FakeClock, use_clock
from tests.conftest import model

GPT = "openai:gpt-4"
CLAUDE = "anthropic:claude-test"
# 17 prompt tokens, 12 of them read from OpenAI's cache
OPENAI_USAGE = {
    "prompt_tokens": 17,
    "completion_tokens": 5,
    "total_tokens": 22,
    "prompt_tokens_details": {"cached_tokens": 12},
}
# Prices per million tokens: cache reads a tenth of the input price, cache writes 1.25 times it.
GPT_COST = {"input": "30", "output": "60", "cached_input": "3", "per": 1_000_000}
CLAUDE_COST = {"input": "3", "output": "15", "cached_input": "0.3", "cache_write": "3.75", "per": 1_000_000}
CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 50}
MESSAGES = {"model": "claude-test", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}


# -- the fake upstream -------------------------------------------------------------------------


def sse(events: list[Any], crlf: bool = False) -> list[bytes]:
    end = "\r\n" if crlf else "\n"
    out = []
    for event in events:
        name = f"event: {event['type']}{end}" if crlf else ""
        out.append(f"{name}data: {json.dumps(event)}{end}{end}".encode())
    return out


OPENAI_CHUNKS = [
    {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
    {"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]},
    {"id": "c1", "choices": [{"index": 0, "delta": {"content": " world!"}, "finish_reason": None}]},
    {"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
]
COUNTED = math.ceil(len(b"Hello world!") / 3)  # the middleware's count of a stream that reports no usage
ANTHROPIC_EVENTS = [
    {
        "type": "message_start",
        "message": {
            "id": "m1",
            "type": "message",
            "role": "assistant",
            "content": [],
            "usage": {"input_tokens": 11, "cache_read_input_tokens": 3, "output_tokens": 1},
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi there!"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 9},
    },
    {"type": "message_stop"},
]


def openai_stream(usage: bool) -> list[bytes]:
    chunks = sse(OPENAI_CHUNKS)
    if usage:
        (last,) = sse([{"id": "c1", "choices": [], "usage": OPENAI_USAGE}])
        chunks += [last[:20], last[20:]]  # an event split across two body messages
    return [*chunks, b"data: [DONE]\n\n"]


async def forever(chunks: list[bytes], then: str = "end") -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
    if then == "raise":
        raise RuntimeError("upstream stream broke")
    if then == "hang":
        await asyncio.Event().wait()  # until the client hangs up


def make_app(registry: AsyncRegistry, **options: Any) -> FastAPI:
    """The upstream's fake, wrapped; ``x-fake`` picks its answer; ``app.state.seen`` holds the
    bodies it received."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await registry.aclose()  # in the loop that used it

    app = FastAPI(lifespan=lifespan)
    app.state.seen = []

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        raw = await request.body()
        app.state.seen.append(raw)
        mode = request.headers.get("x-fake", "json")
        if mode == "raise":
            raise RuntimeError("upstream broke")
        if mode.startswith("stream"):
            usage, then = mode in ("stream", "stream-raise"), mode.removeprefix("stream-")
            return StreamingResponse(forever(openai_stream(usage), then), media_type="text/event-stream")
        statuses = {"json": 200, "nousage": 200, "500": 500, "429": 429}
        body: dict[str, Any] = {"id": "c1", "choices": [{"message": {"role": "assistant", "content": "Hi"}}]}
        if mode == "json":
            body["usage"] = OPENAI_USAGE
        if statuses[mode] >= 400:
            body = {"error": {"message": "upstream says no", "type": "server_error"}}
        headers = {"retry-after": "7", "x-ratelimit-remaining-requests": "999"} if mode == "429" else {}
        return JSONResponse(body, status_code=statuses[mode], headers=headers)

    @app.post("/v1/messages")
    async def messages(request: Request) -> Response:
        app.state.seen.append(await request.body())
        if request.headers.get("x-fake") == "stream":
            return StreamingResponse(forever(sse(ANTHROPIC_EVENTS, crlf=True)), media_type="text/event-stream")
        usage = {"input_tokens": 20, "cache_creation_input_tokens": 4, "cache_read_input_tokens": 6, "output_tokens": 8}
        return JSONResponse({"id": "m1", "type": "message", "content": [], "usage": usage})

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def echo(request: Request) -> Response:
        raw = await request.body()
        app.state.seen.append(raw)
        return PlainTextResponse(raw, headers={"x-echo": request.url.path})

    options.setdefault("tenant", "x-tenant")
    app.add_middleware(RateLimitMiddleware, registry=registry, **options)
    return app


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    """Frozen 300 ms into a second of the real time (the ledger's buckets follow the real clock)."""
    return FakeClock(int(time.time()) * 1000 + 300)


@pytest.fixture
def sync_reg(redis_url: str, clock: FakeClock) -> Iterator[Registry]:
    reg = Registry.from_url(redis_url, watch=False)
    use_clock(reg, clock)
    limits = {"requests_per_minute": 3, "tokens_per_minute": 100_000}
    reg.register_model(model(rate_limit=limits, tenant_limits={"*": {"requests_per_minute": 2}}, cost=GPT_COST))
    reg.register_model(model("anthropic", "claude-test", max_output_tokens=4096, cost=CLAUDE_COST))
    yield reg
    reg.close()


class Spy:
    """Wraps the async registry's settle (keeping its signature) and says when it has run."""

    def __init__(self, registry: AsyncRegistry) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.done = threading.Event()
        real = registry.settle

        @functools.wraps(real)
        async def settle(*args: Any, **kwargs: Any) -> bool:
            result = await real(*args, **kwargs)
            self.calls.append((args, kwargs))
            self.done.set()
            return result

        registry.settle = settle  # type: ignore[method-assign]


@pytest.fixture
def areg(redis_url: str, clock: FakeClock, sync_reg: Registry) -> AsyncRegistry:
    reg = AsyncRegistry.from_url(redis_url, watch=False)
    use_clock(reg, clock)
    return reg


@pytest.fixture
def spy(areg: AsyncRegistry) -> Spy:
    return Spy(areg)


@pytest.fixture
def app(areg: AsyncRegistry, spy: Spy) -> FastAPI:
    return make_app(areg)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def totals(reg: Registry, key: str = GPT, tenant: str | None = None) -> tuple[int, int, int, int, int]:
    """(requests, successes, failures, input_tokens, output_tokens) in the ledger."""
    s = reg.get_statistics(model=key, tenant=tenant)
    return s.requests, s.successes, s.failures, s.input_tokens, s.output_tokens


def cache_totals(reg: Registry, key: str = GPT, tenant: str | None = None) -> tuple[int, int, int]:
    """(cached_input_tokens, cache_write_tokens, cost_units) in the ledger."""
    s = reg.get_statistics(model=key, tenant=tenant)
    return s.cached_input_tokens, s.cache_write_tokens, s.cost_units


def expected_retry(reg: Registry, key: str = GPT, tenant: str | None = None) -> tuple[str, str]:
    """(Retry-After, retry-after-ms) from what check_rate_limit says, on the same frozen clock."""
    after = reg.check_rate_limit(key, tenant=tenant).retry_after
    assert after > 0
    return str(max(1, math.ceil(after))), str(math.ceil(after * 1000))


# -- admission ---------------------------------------------------------------------------------


def test_three_are_admitted_with_what_is_left_and_the_fourth_gets_429(client: TestClient, sync_reg: Registry) -> None:
    held = estimate_input_tokens(CHAT) + CHAT["max_tokens"]
    for i, left in enumerate((2, 1, 0)):
        response = client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 200
        assert response.json()["usage"] == OPENAI_USAGE
        assert response.headers["x-ratelimit-limit-requests"] == "3"
        assert response.headers["x-ratelimit-remaining-requests"] == str(left)
        assert response.headers["x-ratelimit-limit-tokens"] == "100000"
        # the earlier ones settled at their usage (22), this one holds its estimate
        assert response.headers["x-ratelimit-remaining-tokens"] == str(100_000 - 22 * i - held)
    refused = client.post("/v1/chat/completions", json=CHAT)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_exceeded", "rate_limit_exceeded")
    assert "requests_per_minute" in error["message"]
    assert (refused.headers["retry-after"], refused.headers["retry-after-ms"]) == expected_retry(sync_reg)
    assert refused.headers["x-ratelimit-reset-requests"] == refused.headers["retry-after"] + "s"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-remaining-tokens"] == str(100_000 - 66)
    assert totals(sync_reg) == (3, 3, 0, 51, 15)  # exactly the usage the app reported, thrice
    # 5 plain x 30,000 + 12 read from the cache x 3,000 + 5 out x 60,000 nano-dollars, thrice
    assert cache_totals(sync_reg) == (36, 0, 3 * (5 * 30_000 + 12 * 3_000 + 5 * 60_000))
    assert cache_totals(sync_reg)[2] == 3 * to_units(sync_reg.estimate_cost(GPT, 17, 5, cached_input_tokens=12))


def test_a_tenants_limit_is_the_one_reported_when_it_has_less_left(client: TestClient, sync_reg: Registry) -> None:
    first = client.post("/v1/chat/completions", json=CHAT, headers={"x-tenant": "acme"})
    # the model's RPM has 2 left of 3, the tenant's ("*": 2 per minute) 1 of 2: the tenant's shows
    assert (first.headers["x-ratelimit-limit-requests"], first.headers["x-ratelimit-remaining-requests"]) == ("2", "1")
    assert client.post("/v1/chat/completions", json=CHAT, headers={"x-tenant": "acme"}).status_code == 200
    refused = client.post("/v1/chat/completions", json=CHAT, headers={"x-tenant": "acme"})
    assert refused.status_code == 429
    assert "tenant.requests_per_minute" in refused.json()["error"]["message"]
    assert refused.headers["retry-after"] == expected_retry(sync_reg, tenant="acme")[0]
    assert client.post("/v1/chat/completions", json=CHAT, headers={"x-tenant": "beta"}).status_code == 200
    assert totals(sync_reg, tenant="acme") == (2, 2, 0, 34, 10)
    assert totals(sync_reg, tenant="beta") == (1, 1, 0, 17, 5)


def test_anthropic_refusals_are_in_anthropics_format(areg: AsyncRegistry, sync_reg: Registry) -> None:
    sync_reg.register_model(model("anthropic", "claude-test", rate_limit={"requests_per_minute": 1}), replace=True)
    with TestClient(make_app(areg, tenant=None)) as client:
        assert client.post("/v1/messages", json=MESSAGES, headers={"x-tenant": "ignored"}).status_code == 200
        refused = client.post("/v1/messages", json=MESSAGES)
    assert refused.status_code == 429
    body = refused.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"
    assert refused.headers["retry-after"] == expected_retry(sync_reg, CLAUDE)[0]
    assert "x-ratelimit-limit-tokens" not in refused.headers  # no token limit on this model


def test_input_and_output_token_limits_report_as_tokens(areg: AsyncRegistry, sync_reg: Registry) -> None:
    """Anthropic's limits (input and output tokens per minute, no total): the ``-tokens`` headers
    name whichever has least left, and a refusal by either resets ``tokens``."""
    limits = {"input_tokens_per_minute": 1_000, "output_tokens_per_minute": 64}
    sync_reg.register_model(model("anthropic", "claude-test", rate_limit=limits), replace=True)
    with TestClient(make_app(areg, tenant=None)) as client:
        first = client.post("/v1/messages", json=MESSAGES)  # reserves 64 output tokens: none left
        assert first.status_code == 200
        assert (first.headers["x-ratelimit-limit-tokens"], first.headers["x-ratelimit-remaining-tokens"]) == ("64", "0")
        refused = client.post("/v1/messages", json=MESSAGES)  # 64 more do not fit beside the 8 used
    assert refused.status_code == 429
    assert "output_tokens_per_minute" in refused.json()["error"]["message"]
    assert refused.headers["x-ratelimit-reset-tokens"] == refused.headers["retry-after"] + "s"
    assert "x-ratelimit-reset-output_tokens" not in refused.headers
    assert totals(sync_reg, key=CLAUDE) == (1, 1, 0, 30, 8)
    # ITPM settled to the input less its 6 cache reads (Anthropic's rule); the 4 writes count
    assert sync_reg.check_rate_limit(CLAUDE).remaining["input_tokens_per_minute"] == 1_000 - 24


def test_a_budget_refusal_is_insufficient_quota(client: TestClient, sync_reg: Registry) -> None:
    sync_reg.register_model(model(id="gpt-4b"))  # $30 / $60 per M, no windows
    sync_reg.set_budget("acme", "0.01")
    chat = {**CHAT, "model": "gpt-4b", "max_tokens": 150}  # holds about $0.0096 of the $0.01
    assert client.post("/v1/chat/completions", json=chat, headers={"x-tenant": "acme"}).status_code == 200
    refused = client.post("/v1/chat/completions", json=chat, headers={"x-tenant": "acme"})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "insufficient_quota"
    assert int(refused.headers["retry-after"]) >= 1
    assert "x-ratelimit-reset-requests" not in refused.headers
    assert "x-ratelimit-limit-requests" not in refused.headers


def test_a_request_larger_than_a_limit_gets_413(client: TestClient, sync_reg: Registry) -> None:
    response = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 200_000})
    assert response.status_code == 413
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
    assert "tokens_per_minute" in error["message"]
    assert totals(sync_reg) == (0, 0, 0, 0, 0)


def test_a_tenant_name_the_registry_refuses_gets_400(client: TestClient, app: FastAPI) -> None:
    response = client.post("/v1/messages", json=MESSAGES, headers={"x-tenant": "a:b"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert app.state.seen == []


def test_a_bad_output_cap_gets_400(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2 * 10**9})
    assert response.status_code == 400
    assert response.json()["error"]["code"] is None


def test_the_tenant_may_come_from_an_async_function(areg: AsyncRegistry, sync_reg: Registry) -> None:
    async def tenant(scope: dict[str, Any]) -> str | None:
        return dict(scope["headers"]).get(b"authorization", b"").decode().removeprefix("Bearer ") or None

    with TestClient(make_app(areg, tenant=tenant)) as client:
        client.post("/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer team-7"})
        client.post("/v1/chat/completions", json=CHAT)
    assert totals(sync_reg, tenant="team-7") == (1, 1, 0, 17, 5)
    assert totals(sync_reg) == (2, 2, 0, 34, 10)


def test_model_map_and_paths_are_options(areg: AsyncRegistry, sync_reg: Registry) -> None:
    app = make_app(areg, model_map={"fast": GPT}, paths={"/chat": "openai"}, tenant=lambda scope: "acme")
    uncapped = {"model": "fast", "messages": CHAT["messages"]}  # no max_tokens: the model's default (none: 0)
    with TestClient(app) as client:
        mapped = client.post("/chat", json=uncapped, headers={"x-fake": "nousage"})
        assert mapped.headers["x-ratelimit-remaining-requests"] == "1"  # acme's "*" limit
        assert mapped.headers["x-ratelimit-remaining-tokens"] == str(100_000 - estimate_input_tokens(uncapped))
        assert "x-ratelimit-limit-requests" not in client.post("/v1/chat/completions", json=CHAT).headers
    assert totals(sync_reg, tenant="acme") == (1, 1, 0, estimate_input_tokens(uncapped), 0)


def test_bad_options_are_refused(areg: AsyncRegistry) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None: ...

    with pytest.raises(ConfigError, match="openai"):
        RateLimitMiddleware(app, areg, paths={"/x": "cohere"})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="tenant"):
        RateLimitMiddleware(app, areg, tenant=42)  # type: ignore[arg-type]


# -- pass-through ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "content"),
    [
        ("GET", "/v1/chat/completions", b""),
        ("POST", "/v1/embeddings", json.dumps(CHAT).encode()),
        ("POST", "/v1/chat/completions", b"not json {"),
        ("POST", "/v1/chat/completions", b'["model", "gpt-4"]'),
        ("POST", "/v1/chat/completions", b'{"model": 4, "messages": []}'),
        ("POST", "/v1/chat/completions", b'{"model": "nope", "messages": []}'),  # not in the catalog
        ("POST", "/v1/chat/completions", b'{"model": "bad key", "messages": []}'),
    ],
)
def test_what_it_does_not_meter_passes_through_untouched(
    app: FastAPI, client: TestClient, sync_reg: Registry, method: str, path: str, content: bytes
) -> None:
    response = client.request(method, path, content=content, headers={"x-fake": "nousage"})
    assert response.status_code == 200
    assert not [h for h in response.headers if h.startswith("x-ratelimit")]
    assert app.state.seen == [content]
    assert totals(sync_reg) == (0, 0, 0, 0, 0)


def test_unknown_models_get_404_when_required(areg: AsyncRegistry, sync_reg: Registry) -> None:
    app = make_app(areg, require_known_models=True)
    with TestClient(app) as client:
        openai = client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"})
        anthropic = client.post("/v1/messages", json={**MESSAGES, "model": "claude-9"})
    assert (openai.status_code, openai.json()["error"]["code"]) == (404, "model_not_found")
    assert "openai:gpt-9" in openai.json()["error"]["message"]
    assert (anthropic.status_code, anthropic.json()["error"]["type"]) == (404, "not_found_error")
    assert app.state.seen == []


def test_the_body_reaches_the_app_byte_for_byte(app: FastAPI, client: TestClient, sync_reg: Registry) -> None:
    raw = b'{ "messages":[{"content":"h\\u00e9llo \xc3\xa9","role":"user"}],\n  "model" : "gpt-4", "max_tokens": 3 }'
    assert client.post("/v1/chat/completions", content=raw).status_code == 200
    assert app.state.seen == [raw]
    assert totals(sync_reg) == (1, 1, 0, 17, 5)


# -- settling ----------------------------------------------------------------------------------


def test_json_usage_is_settled_exactly(client: TestClient, sync_reg: Registry) -> None:
    response = client.post("/v1/messages", json=MESSAGES, headers={"x-tenant": "acme"})
    assert response.status_code == 200
    assert totals(sync_reg, CLAUDE, "acme") == (1, 1, 0, 30, 8)  # 20 + 4 written + 6 read to cache, 8 out
    cost = 20 * 3_000 + 6 * 300 + 4 * 3_750 + 8 * 15_000  # nano-dollars, each part at its price
    assert cache_totals(sync_reg, CLAUDE, "acme") == (6, 4, cost)
    assert cost == to_units(sync_reg.estimate_cost(CLAUDE, 30, 8, cached_input_tokens=6, cache_write_tokens=4))
    assert "x-ratelimit-remaining-requests" not in response.headers  # no request limit on this model


def test_a_response_too_long_to_read_keeps_its_estimate(
    client: TestClient, sync_reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("registry.integrations.asgi.MAX_BUFFERED_RESPONSE", 20)
    assert client.post("/v1/chat/completions", json=CHAT).json()["usage"] == OPENAI_USAGE
    assert totals(sync_reg) == (1, 1, 0, estimate_input_tokens(CHAT), CHAT["max_tokens"])


def test_a_response_without_usage_keeps_its_estimate(client: TestClient, sync_reg: Registry) -> None:
    client.post("/v1/chat/completions", json=CHAT, headers={"x-fake": "nousage"})
    assert totals(sync_reg) == (1, 1, 0, estimate_input_tokens(CHAT), CHAT["max_tokens"])


def test_an_openai_stream_settles_at_its_final_usage(client: TestClient, sync_reg: Registry) -> None:
    response = client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers={"x-fake": "stream"})
    assert response.status_code == 200
    assert response.content == b"".join(openai_stream(usage=True))  # passed on as sent
    assert response.headers["x-ratelimit-remaining-requests"] == "2"
    assert totals(sync_reg) == (1, 1, 0, 17, 5)
    assert cache_totals(sync_reg) == (12, 0, 5 * 30_000 + 12 * 3_000 + 5 * 60_000)  # prompt_tokens_details


def test_an_anthropic_stream_settles_at_message_start_and_message_delta(client: TestClient, sync_reg: Registry) -> None:
    response = client.post("/v1/messages", json={**MESSAGES, "stream": True}, headers={"x-fake": "stream"})
    assert response.content == b"".join(sse(ANTHROPIC_EVENTS, crlf=True))
    assert totals(sync_reg, CLAUDE) == (1, 1, 0, 14, 9)  # 11 + 3 read from cache; 9 out
    assert cache_totals(sync_reg, CLAUDE) == (3, 0, 11 * 3_000 + 3 * 300 + 9 * 15_000)  # message_start's


def test_a_stream_without_usage_is_charged_the_output_it_carried(client: TestClient, sync_reg: Registry) -> None:
    client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers={"x-fake": "stream-nousage"})
    assert totals(sync_reg) == (1, 1, 0, estimate_input_tokens(CHAT), COUNTED)


@pytest.mark.parametrize("status", [500, 429])
def test_an_upstream_error_settles_failed(client: TestClient, sync_reg: Registry, spy: Spy, status: int) -> None:
    response = client.post("/v1/chat/completions", json=CHAT, headers={"x-fake": str(status)})
    assert response.status_code == status
    assert response.json()["error"]["message"] == "upstream says no"
    assert response.headers["x-ratelimit-remaining-requests"] == "2"  # ours, not the upstream's 999
    assert response.headers.get_list("x-ratelimit-remaining-requests") == ["2"]
    if status == 429:
        assert response.headers["retry-after"] == "7"  # the upstream's, untouched
    assert totals(sync_reg) == (1, 0, 1, 0, 0)  # failed; an error bills no tokens
    assert sync_reg.get_statistics(model=GPT).throttled == (status == 429)
    ((_, kwargs),) = spy.calls
    assert kwargs["throttled"] is (status == 429)
    # the window holds the request, not its tokens
    assert sync_reg.check_rate_limit(GPT).remaining == {"requests_per_minute": 2, "tokens_per_minute": 100_000}


def test_an_app_that_raises_settles_failed_with_the_prompt_and_reraises(client: TestClient, sync_reg: Registry) -> None:
    with pytest.raises(RuntimeError, match="upstream broke"):
        client.post("/v1/chat/completions", json=CHAT, headers={"x-fake": "raise"})
    assert totals(sync_reg) == (1, 0, 1, estimate_input_tokens(CHAT), 0)


def test_a_stream_that_breaks_settles_failed_with_what_it_carried(client: TestClient, sync_reg: Registry) -> None:
    with pytest.raises(RuntimeError, match="stream broke"):
        client.post("/v1/chat/completions", json=CHAT, headers={"x-fake": "stream-raise"})
    # it broke after its usage chunk: the usage counts, as failed
    assert totals(sync_reg) == (1, 0, 1, 17, 5)


def test_a_failed_settle_does_not_hide_the_apps_error(
    areg: AsyncRegistry, sync_reg: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> bool:
        raise ConnectionError("redis went away")

    areg.settle = broken  # type: ignore[method-assign]
    with TestClient(make_app(areg)) as client, pytest.raises(RuntimeError, match="upstream broke"):
        client.post("/v1/chat/completions", json=CHAT, headers={"x-fake": "raise"})
    assert "settling openai:gpt-4 after the app failed" in caplog.text


def asgi_scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("test", 80),
    }


def test_a_client_that_hangs_up_mid_stream_is_settled_failed(
    app: FastAPI, areg: AsyncRegistry, sync_reg: Registry
) -> None:
    """By hand at the ASGI level: the body arrives in three parts, the client leaves after the
    first body chunk; Starlette's StreamingResponse stops, the middleware settles."""
    raw = json.dumps({**CHAT, "stream": True}).encode()
    sent: list[dict[str, Any]] = []

    async def run() -> None:
        parts = [raw[:10], raw[10:20], raw[20:]]
        first_chunk = asyncio.Event()

        async def receive() -> dict[str, Any]:
            if parts:
                body = parts.pop(0)
                return {"type": "http.request", "body": body, "more_body": bool(parts)}
            await first_chunk.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message.get("body"):
                first_chunk.set()

        headers = [(b"content-type", b"application/json"), (b"x-fake", b"stream-hang")]
        await app(asgi_scope("/v1/chat/completions", headers), receive, send)
        await areg.aclose()

    asyncio.run(run())
    assert app.state.seen == [raw]
    assert sent[0]["status"] == 200
    assert (b"x-ratelimit-remaining-requests", b"2") in sent[0]["headers"]
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"".join(openai_stream(usage=False))
    assert sent[-1].get("more_body") is True  # never finished: the client left
    # failed: the prompt's estimate, and the output its text counted
    assert totals(sync_reg) == (1, 0, 1, estimate_input_tokens({**CHAT, "stream": True}), COUNTED)


def test_a_disconnect_while_the_body_arrives_passes_through(
    app: FastAPI, areg: AsyncRegistry, sync_reg: Registry
) -> None:
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": b'{"model": "gpt-4"', "more_body": True}, {"type": "http.disconnect"}]

    async def run() -> None:
        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(asgi_scope("/v1/chat/completions", []), receive, send)
        await areg.aclose()

    asyncio.run(run())
    assert not any(k.startswith(b"x-ratelimit") for m in sent[:1] for k, _ in m.get("headers", ()))
    assert totals(sync_reg) == (0, 0, 0, 0, 0)


# -- through a real server ---------------------------------------------------------------------


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """``app`` under uvicorn in a thread, on a free loopback port; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", ws="none"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:  # waiting for a condition, not for time to pass
        assert thread.is_alive(), "uvicorn did not start"
        assert time.monotonic() < deadline, "uvicorn did not start in 10 s"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_through_uvicorn(app: FastAPI, sync_reg: Registry, spy: Spy) -> None:
    with serve(app) as url, httpx.Client(base_url=url, timeout=10) as http:
        assert http.post("/v1/chat/completions", json=CHAT).headers["x-ratelimit-remaining-requests"] == "2"
        with http.stream("POST", "/v1/chat/completions", json=CHAT, headers={"x-fake": "stream"}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert b"".join(response.iter_bytes()) == b"".join(openai_stream(usage=True))
        assert totals(sync_reg) == (2, 2, 0, 34, 10)

        spy.done.clear()
        with http.stream("POST", "/v1/chat/completions", json=CHAT, headers={"x-fake": "stream-hang"}) as response:
            assert response.headers["x-ratelimit-remaining-requests"] == "0"
            next(response.iter_raw())  # the first chunk, then hang up
        assert spy.done.wait(10), "the hung-up stream was never settled"
        assert totals(sync_reg) == (3, 2, 1, 34 + estimate_input_tokens(CHAT), 10 + COUNTED)

        refused = http.post("/v1/chat/completions", json=CHAT)
        assert refused.status_code == 429
        assert (refused.headers["retry-after"], refused.headers["retry-after-ms"]) == expected_retry(sync_reg)
        assert refused.json()["error"]["type"] == "rate_limit_exceeded"
        assert http.get("/healthz").headers["x-echo"] == "/healthz"


# -- usage parsing, without a server ------------------------------------------------------------


def test_usage_from_body() -> None:
    assert usage_from_body("openai", {"usage": OPENAI_USAGE}) == Reported(17, 5, cached_input_tokens=12)
    assert usage_from_body("openai", {"usage": {"input_tokens": 9, "output_tokens": 2}}) == (9, 2, 0, 0)  # Responses
    responses = {"input_tokens": 9, "output_tokens": 2, "input_tokens_details": {"cached_tokens": 4}}
    assert usage_from_body("openai", {"usage": responses}) == (9, 2, 4, 0)
    cached = {"input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 1}
    assert usage_from_body("anthropic", {"usage": cached}) == Reported(105, 1, cached_input_tokens=100)
    both = {**cached, "cache_creation_input_tokens": 7}
    assert usage_from_body("anthropic", {"usage": both}) == Reported(112, 1, 100, 7)
    assert usage_from_body("anthropic", {"usage": {"cache_read_input_tokens": 100, "output_tokens": 1}}) is None
    assert usage_from_body("openai", {"usage": {"prompt_tokens": 5, "cache_read_input_tokens": 100}}) is None
    # details that are not a count are left out; more cached tokens than the prompt are the prompt
    odd = {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": -3}}
    assert usage_from_body("openai", {"usage": odd}) == (5, 1, 0, 0)
    odd["prompt_tokens_details"] = {"cached_tokens": 9}
    assert usage_from_body("openai", {"usage": odd}) == (5, 1, 5, 0)
    odd["prompt_tokens_details"] = [9]
    assert usage_from_body("openai", {"usage": odd}) == (5, 1, 0, 0)
    assert usage_from_body("openai", {"usage": None}) is None
    assert usage_from_body("openai", {"usage": {"prompt_tokens": -1, "completion_tokens": True}}) is None


def feed(provider: str, chunks: list[bytes]) -> StreamUsage:
    stream = StreamUsage(provider)
    for chunk in chunks:
        stream.feed(chunk)
    stream.close()
    return stream


@pytest.mark.parametrize("size", [1, 7, 1000])
def test_stream_usage_in_any_split(size: int) -> None:
    data = b"".join(sse(ANTHROPIC_EVENTS, crlf=True))
    stream = feed("anthropic", [data[i : i + size] for i in range(0, len(data), size)])
    assert (stream.input_tokens, stream.output_tokens, stream.events) == (14, 9, len(ANTHROPIC_EVENTS))
    assert (stream.cached_input_tokens, stream.cache_write_tokens) == (3, 0)
    assert stream.counted_output == math.ceil(len(b"Hi there!") / 3)


def test_stream_usage_skips_what_it_does_not_know() -> None:
    chunks = [
        b": a comment\n\nevent: ping\ndata: {not json}\n\n",
        b"data: [1, 2]\n\ndata: [DONE]\n\nretry: 10\n\n",
        b'data: {"type": "response.output_text.delta", "delta": "abcdef"}\n\n',
        b'data: {"type": "response.completed", "response": {"usage": {"input_tokens": 3, "output_tokens": 2}}}',
    ]
    stream = feed("openai", chunks)  # the last event has no blank line after it: close() reads it
    assert (stream.input_tokens, stream.output_tokens, stream.events, stream.counted_output) == (3, 2, 2, 2)
    call = {"index": 0, "function": {"name": "f", "arguments": "{}"}}
    tools = {"choices": [{"delta": {"tool_calls": [call], "refusal": None}}]}
    started = {"type": "message_start", "message": {"usage": {"input_tokens": 7}}}  # no output yet
    called = feed("anthropic", sse([started, tools]))
    assert (called.input_tokens, called.output_tokens, called.counted_output) == (7, None, 1)  # "f{}"
    multi = feed("openai", [b'data: {"choices": [{"delta":\ndata: {"content": "abc"}}], "usage": null}\n\n'])
    assert (multi.events, multi.counted_output, multi.output_tokens) == (1, 1, None)
