"""What a provider says a request used: from a JSON body, or gathered from an SSE stream.

Both wire formats are read into ``(input_tokens, output_tokens)`` as the ledger counts them:
input counts every prompt token, cached ones included (OpenAI's ``prompt_tokens`` already
does; Anthropic's ``input_tokens`` does not, so its ``cache_creation_input_tokens`` and
``cache_read_input_tokens`` are added), and output counts every output token. That rule is
:func:`usage_counts`, which the SDK wrappers (:mod:`registry.integrations.openai`,
:mod:`registry.integrations.anthropic`) read their SDKs' usage objects with too.

Streams report usage in different places: OpenAI's chat completions in a last chunk with
``usage`` (only when the request asked for ``stream_options: {"include_usage": true}``), its
Responses API in ``response.completed``; Anthropic's in ``message_start`` (the input) and
``message_delta`` (the output so far, cumulative). :class:`StreamUsage` watches for all of
them and also counts the text of the deltas, as an estimate for a stream that never says.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import msgspec

from registry.integrations.common import tokens_for_bytes

__all__ = ["StreamUsage", "Style", "usage_counts", "usage_from_body"]

Style = Literal["openai", "anthropic"]
"""The wire format of a request and its response."""

_ANTHROPIC_INPUT = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
_NOT_TEXT = frozenset({"type", "role", "id", "index", "finish_reason", "stop_reason", "stop_sequence"})


def _count(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _first(get: Callable[[str], Any], *names: str) -> int | None:
    counts = (_count(get(name)) for name in names)
    return next((count for count in counts if count is not None), None)


def usage_counts(style: str, get: Callable[[str], Any]) -> tuple[dict[str, int], int | None]:
    """One ``usage`` object as the ledger counts it: the parts of its input that it gives (their
    sum is every prompt token; ``"input_tokens"`` is the part without which there is no input)
    and its output (None if it does not say). ``get`` reads one field: ``usage.get`` for JSON,
    ``getattr(usage, name, None)`` for an SDK's object; a field that is not an integer >= 0
    counts as absent.

    Anthropic (``style`` ``"anthropic"``): ``input_tokens``, ``cache_creation_input_tokens`` and
    ``cache_read_input_tokens``, and ``output_tokens``. OpenAI (any other ``style``):
    ``prompt_tokens`` (or the Responses API's ``input_tokens``) as ``"input_tokens"``, and
    ``completion_tokens`` (or ``output_tokens``).
    """
    if style == "anthropic":
        parts = {name: count for name in _ANTHROPIC_INPUT if (count := _count(get(name))) is not None}
        return parts, _count(get("output_tokens"))
    prompt = _first(get, "prompt_tokens", "input_tokens")
    return ({} if prompt is None else {"input_tokens": prompt}), _first(get, "completion_tokens", "output_tokens")


def _read(style: str, usage: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(input, output) of one ``usage`` object; None for what it does not say."""
    parts, output_tokens = usage_counts(style, usage.get)
    return (sum(parts.values()) if "input_tokens" in parts else None), output_tokens


def usage_from_body(provider: str, body: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(input_tokens, output_tokens)`` from a response body's ``usage``, in the wire format
    ``provider`` names (``"anthropic"``, or anything else for OpenAI's); None without both."""
    usage = body.get("usage") if isinstance(body, Mapping) else None
    if not isinstance(usage, Mapping):
        return None
    input_tokens, output_tokens = _read(provider, usage)
    if input_tokens is None or output_tokens is None:
        return None
    return input_tokens, output_tokens


def _text_bytes(value: Any) -> int:
    """UTF-8 bytes of the strings in a delta (its text, tool-call arguments, thinking)."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, Mapping):
        return sum(_text_bytes(item) for key, item in value.items() if key not in _NOT_TEXT)
    if isinstance(value, list):
        return sum(_text_bytes(item) for item in value)
    return 0


class StreamUsage:
    """Reads the usage out of a server-sent-events stream, fed in chunks as they pass.

    ``input_tokens``/``output_tokens`` hold the latest the stream reported (None until it
    does); ``counted_output`` estimates the output from the deltas' text (by
    :func:`~registry.integrations.common.tokens_for_bytes`); ``events`` counts the JSON
    events read. Anything that is not an event it knows is skipped: it never raises on input.
    """

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.events = 0
        self._text = 0
        self._line = b""
        self._data: list[bytes] = []

    @property
    def counted_output(self) -> int:
        return tokens_for_bytes(self._text)

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes of the stream (any split: lines and events may span chunks)."""
        *lines, self._line = (self._line + chunk).split(b"\n")
        for line in lines:
            line = line.removesuffix(b"\r")
            if not line:
                self._dispatch()
            elif line.startswith(b"data:"):
                self._data.append(line[6:] if line[5:6] == b" " else line[5:])

    def close(self) -> None:
        """The stream ended: read an event left without its closing blank line."""
        self.feed(b"\n\n")

    def _dispatch(self) -> None:
        data, self._data = b"\n".join(self._data), []
        if not data or data == b"[DONE]":
            return
        try:
            event = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return
        if isinstance(event, dict):
            self.events += 1
            self._event(event)

    def _event(self, event: dict[str, Any]) -> None:
        for holder in (event, event.get("message"), event.get("response")):  # chunk, message_start, Responses
            if isinstance(holder, dict) and isinstance(holder.get("usage"), dict):
                self._usage(holder["usage"])
        delta = event.get("delta")
        if event.get("type") != "message_delta" and isinstance(delta, dict | str):  # Anthropic's, Responses'
            self._text += _text_bytes(delta)
        choices = event.get("choices")
        if isinstance(choices, list):  # OpenAI's chat completion chunks
            self._text += sum(_text_bytes(c.get("delta")) for c in choices if isinstance(c, dict))

    def _usage(self, usage: dict[str, Any]) -> None:
        input_tokens, output_tokens = _read(self.provider, usage)
        if input_tokens is not None:
            self.input_tokens = input_tokens
        if output_tokens is not None:
            self.output_tokens = output_tokens
