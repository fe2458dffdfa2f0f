"""A FastAPI gateway in front of OpenAI: the fleet's quota enforced at the door.

Workers point their SDK's ``base_url`` at the gateway; the gateway forwards each chat request to
the provider. ``RateLimitMiddleware`` acquires before forwarding and settles with the usage in
the provider's answer (streams included); a refused request gets 429 with ``Retry-After`` and
``x-ratelimit-remaining-*`` headers, the way providers answer, so the SDK's own retry logic
handles it.

    python examples/fastapi_gateway.py            # starts it, sends requests through it, stops
    python examples/fastapi_gateway.py --serve    # keeps serving on --port (default 8080)

Upstream: ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` when set, else a fake provider on loopback.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

sys.path.insert(0, __file__.rsplit("/", 1)[0])  # examples/common.py, when run as a script

import httpx
import uvicorn
from common import open_registry, redis_url
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from openai import OpenAI, RateLimitError
from starlette.background import BackgroundTask

from registry import AsyncRegistry
from registry.fake_provider import FakeProvider
from registry.integrations.asgi import RateLimitMiddleware


def build_app(redis: str, namespace: str, upstream: str, api_key: str) -> FastAPI:
    """The gateway: one forwarding route, under the middleware."""
    reg = AsyncRegistry.from_url(redis, namespace=namespace)  # connects in the server's loop
    http = httpx.AsyncClient(base_url=upstream, headers={"authorization": f"Bearer {api_key}"}, timeout=60)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await http.aclose()
        await reg.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/chat/completions")
    async def forward(request: Request) -> Response:
        """The request as the worker sent it, to the provider; its answer back, streamed as it comes."""
        sent = http.build_request(
            "POST", "/chat/completions", content=await request.body(), headers={"content-type": "application/json"}
        )
        answer = await http.send(sent, stream=True)
        kind = answer.headers.get("content-type", "application/json")
        return StreamingResponse(
            answer.aiter_raw(), answer.status_code, media_type=kind, background=BackgroundTask(answer.aclose)
        )

    app.add_middleware(RateLimitMiddleware, registry=reg, tenant="x-tenant")
    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def try_it(port: int, redis: str, namespace: str) -> None:
    """What a worker sees through the gateway: answers, then a 429 with the provider's headers."""
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    for n in range(1, 6):
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-5.2",
                messages=[{"role": "user", "content": f"hello {n}"}],
                max_completion_tokens=50,
                extra_headers={"x-tenant": "acme"},
            )
            reply = raw.parse()
            left = raw.headers.get("x-ratelimit-remaining-requests")
            print(f"request {n}: {reply.choices[0].message.content!r}, requests left {left}")
        except RateLimitError as refused:
            headers = refused.response.headers
            print(
                f"request {n}: 429, Retry-After {headers['retry-after']} s, requests left "
                f"{headers.get('x-ratelimit-remaining-requests')}"
            )
    reg = open_registry(redis, namespace)
    stats = reg.get_statistics(model="openai:gpt-5.2", tenant="acme")
    print(
        f"ledger for acme: {stats.requests} requests, {stats.input_tokens}+{stats.output_tokens} tokens, "
        f"${stats.total_cost}"
    )
    reg.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="keep serving (Ctrl-C to stop)")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    with redis_url() as redis, FakeProvider() as fake:
        upstream = os.environ.get("OPENAI_BASE_URL", fake.openai_url)
        api_key = os.environ.get("OPENAI_API_KEY", "sk-fake")
        namespace = f"example-gateway-{int(time.time())}"
        admin = open_registry(redis, namespace)
        # The fleet's rule for this run: each tenant 3 requests a minute on gpt-5.2.
        admin.update_model("openai:gpt-5.2", {"tenant_limits": {"*": {"requests_per_minute": 3}}})
        admin.close()
        app = build_app(redis, namespace, upstream, api_key)
        port = args.port if args.serve else free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        if args.serve:
            print(f"gateway on http://127.0.0.1:{port}/v1 -> {upstream} (namespace {namespace})")
            server.run()
            return 0
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        try:
            try_it(port, redis, namespace)
        finally:
            server.should_exit = True
            thread.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
