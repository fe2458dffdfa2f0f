"""A fake OpenAI and Anthropic API on a loopback port: for tests, the docs and the examples.

Shipped with the library so that code using :mod:`registry.integrations` can be tested (and the
examples run) without a provider account: point the real SDK at ``fake.openai_url`` or
``fake.anthropic_url``.

A real HTTP/1.1 server (``http.server``, a thread per connection), so the real SDKs talk to it
through their own HTTP stack: ``POST /v1/chat/completions`` answers as OpenAI (JSON, or SSE
``data: {...}`` chunks ending in ``data: [DONE]``), ``POST /v1/messages`` as Anthropic (JSON, or
SSE ``message_start`` ... ``message_stop``), ``GET /v1/models`` in the format of whichever SDK
asks. Each test scripts the next replies::

    with FakeProvider() as fake:
        fake.script(Reply(text="Hi there", input_tokens=12, output_tokens=3))
        client = OpenAI(base_url=fake.openai_url, api_key="sk-test", max_retries=0)

A :class:`Reply` sets the text and the usage reported, an HTTP error (status, headers), or a
stream cut off after a number of events (the socket is shut mid-body: the client sees an
incomplete chunked body, as when a connection drops). Without a script, every request gets
the default :class:`Reply`. ``fake.requests`` holds what each request sent.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeProvider", "Reply", "Seen", "serve"]


@dataclass(frozen=True)
class Reply:
    """What the fake answers to one request."""

    text: str = "Hello from the fake provider."
    input_tokens: int = 11  # OpenAI's prompt_tokens (cached ones included); Anthropic's input_tokens
    output_tokens: int = 7
    cache_read: int = 0  # Anthropic's cache_read_input_tokens; OpenAI's prompt_tokens_details.cached_tokens
    cache_write: int = 0  # Anthropic's cache_creation_input_tokens
    status: int = 200  # anything else: an error body in the provider's format
    headers: dict[str, str] = field(default_factory=dict)
    cut_after: int | None = None  # a stream: events sent before the connection drops
    usage: bool = True  # False: a compatible server that reports no usage
    delta_input: bool = False  # Anthropic: message_delta repeats the input counts (cumulative)
    finish: bool = True  # False: a stream that ends (cleanly) before saying it finished
    hold: threading.Event | None = None  # answer only once this is set (at most 10 s)
    tool: tuple[str, str] | None = None  # a tool call (name, JSON arguments) instead of the text

    def pieces(self) -> list[str]:
        """The text (or the tool call's arguments) as a stream sends it, a word at a time."""
        words = (self.tool[1] if self.tool else self.text).split(" ")
        return [words[0]] + [f" {word}" for word in words[1:]]


@dataclass(frozen=True)
class Seen:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeProvider:
    """The server; a context manager (started on entry, stopped on exit)."""

    def __init__(self) -> None:
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self.requests: list[Seen] = []
        self.arrived = threading.Event()  # set by every request (cleared by reset)
        self.default = Reply()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def openai_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_url(self) -> str:
        return self.url

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with these, in order (then the default again)."""
        with self._lock:
            self._replies.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self._replies.clear()
            self.requests.clear()
            self.arrived.clear()

    def next_reply(self, seen: Seen) -> Reply:
        with self._lock:
            self.requests.append(seen)
            reply = self._replies.popleft() if self._replies else self.default
        self.arrived.set()
        if reply.hold is not None:
            reply.hold.wait(10)
        return reply

    def __enter__(self) -> FakeProvider:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fake-provider", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        assert self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@contextlib.contextmanager
def serve() -> Iterator[str]:
    """A fake provider for the length of the block: its URL (OpenAI's base URL is ``<url>/v1``)."""
    with FakeProvider() as fake:
        yield fake.url


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: FakeProvider

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up mid-stream is no news here."""


class _Cut(Exception):
    """The scripted stream ends here, without its last chunk."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- transport ---------------------------------------------------------------------------

    def _seen(self, body: dict[str, Any]) -> Reply:
        headers = {name.lower(): value for name, value in self.headers.items()}
        return self.server.fake.next_reply(Seen(self.command, self.path, headers, body))

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, events: list[bytes], reply: Reply) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        sent = events if reply.cut_after is None else events[: reply.cut_after]
        for event in sent:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        if reply.cut_after is not None:
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(b"0\r\n\r\n")

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/v1/models":
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        anthropic = "anthropic-version" in {name.lower() for name in self.headers}
        self._seen({})
        if anthropic:
            model = {
                "type": "model",
                "id": "claude-test",
                "display_name": "Claude",
                "created_at": "2025-01-01T00:00:00Z",
            }
            self._json(200, {"data": [model], "has_more": False, "first_id": "claude-test", "last_id": "claude-test"})
        else:
            self._json(
                200, {"object": "list", "data": [{"id": "gpt-test", "object": "model", "created": 0, "owned_by": "x"}]}
            )

    def do_POST(self) -> None:
        size = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(size) or b"{}")
        reply = self._seen(body)
        path = self.path.split("?")[0]
        if path == "/v1/chat/completions":
            _openai(self, body, reply)
        elif path == "/v1/messages":
            _anthropic(self, body, reply)
        else:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})


# -- OpenAI ------------------------------------------------------------------------------------


def _sse_data(payload: Any) -> bytes:
    return b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode()) + b"\n\n"


def _openai_call(name: str, arguments: str, **more: Any) -> dict[str, Any]:
    return {**more, "id": "call_fake", "type": "function", "function": {"name": name, "arguments": arguments}}


def _openai(handler: _Handler, body: dict[str, Any], reply: Reply) -> None:
    model = body.get("model", "gpt-test")
    if reply.status != 200:
        kind = "rate_limit_exceeded" if reply.status == 429 else "server_error"
        error = {"message": f"fake error {reply.status}", "type": kind, "param": None, "code": kind}
        handler._json(reply.status, {"error": error}, reply.headers)
        return
    usage = {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
        "prompt_tokens_details": {"cached_tokens": reply.cache_read},
    }
    choices = int(body.get("n") or 1)
    base = {"id": "chatcmpl-fake", "created": 1_700_000_000, "model": model}
    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None}
        if reply.tool:
            message = {"role": "assistant", "content": None, "tool_calls": [_openai_call(*reply.tool)]}
        stop = "tool_calls" if reply.tool else "stop"
        finished = [{"index": i, "message": message, "finish_reason": stop, "logprobs": None} for i in range(choices)]
        payload = {**base, "object": "chat.completion", "choices": finished}
        if reply.usage:
            payload["usage"] = usage
        handler._json(200, payload, reply.headers)
        return
    with_usage = bool((body.get("stream_options") or {}).get("include_usage")) and reply.usage
    chunk = {**base, "object": "chat.completion.chunk", **({"usage": None} if with_usage else {})}

    def delta(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse_data({**chunk, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]})

    if reply.tool:
        start = {"role": "assistant", "content": None, "tool_calls": [_openai_call(reply.tool[0], "", index=0)]}
        events = [delta(i, start) for i in range(choices)]
        events += [
            delta(i, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in reply.pieces()
            for i in range(choices)
        ]
    else:
        events = [delta(i, {"role": "assistant", "content": ""}) for i in range(choices)]
        events += [delta(i, {"content": piece}) for piece in reply.pieces() for i in range(choices)]
    if reply.finish:
        events += [delta(i, {}, "tool_calls" if reply.tool else "stop") for i in range(choices)]
        if with_usage:
            events.append(_sse_data({**chunk, "choices": [], "usage": usage}))
        events.append(_sse_data(b"[DONE]"))
    handler._sse(events, reply)


# -- Anthropic ---------------------------------------------------------------------------------


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **payload})}\n\n".encode()


def _anthropic(handler: _Handler, body: dict[str, Any], reply: Reply) -> None:
    model = body.get("model", "claude-test")
    if reply.status != 200:
        kind = "rate_limit_error" if reply.status == 429 else "api_error"
        error = {"type": "error", "error": {"type": kind, "message": f"fake error {reply.status}"}}
        handler._json(reply.status, error, reply.headers)
        return
    input_usage = {
        "input_tokens": reply.input_tokens,
        "cache_creation_input_tokens": reply.cache_write,
        "cache_read_input_tokens": reply.cache_read,
    }
    message = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "stop_sequence": None,
    }
    stop = "tool_use" if reply.tool else "end_turn"
    if not body.get("stream"):
        content = [{"type": "text", "text": reply.text}]
        if reply.tool:
            content = [
                {"type": "tool_use", "id": "toolu_fake", "name": reply.tool[0], "input": json.loads(reply.tool[1])}
            ]
        payload = {**message, "content": content, "stop_reason": stop}
        if reply.usage:
            payload["usage"] = {**input_usage, "output_tokens": reply.output_tokens}
        handler._json(200, payload, reply.headers)
        return
    start = {**message, "content": [], "stop_reason": None, "usage": {**input_usage, "output_tokens": 1}}
    block: dict[str, Any] = {"type": "text", "text": ""}
    if reply.tool:
        block = {"type": "tool_use", "id": "toolu_fake", "name": reply.tool[0], "input": {}}
    events = [
        _event("message_start", {"message": start}),
        _event("content_block_start", {"index": 0, "content_block": block}),
        _event("ping", {}),
    ]
    delta = ("input_json_delta", "partial_json") if reply.tool else ("text_delta", "text")
    events += [
        _event("content_block_delta", {"index": 0, "delta": {"type": delta[0], delta[1]: piece}})
        for piece in reply.pieces()
    ]
    if reply.finish:
        final = {"output_tokens": reply.output_tokens, **(input_usage if reply.delta_input else {})}
        events += [
            _event("content_block_stop", {"index": 0}),
            _event("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None}, "usage": final}),
            _event("message_stop", {}),
        ]
    handler._sse(events, reply)
