"""What a provider says a request used: from a JSON body, or gathered from an SSE stream.

Both wire formats are read as the ledger counts them: input counts every prompt token, cached
ones included (OpenAI's ``prompt_tokens`` already does; Anthropic's ``input_tokens`` does not,
so its ``cache_creation_input_tokens`` and ``cache_read_input_tokens`` are added), and of those,
the cache reads (``cached_input_tokens``: Anthropic's ``cache_read_input_tokens``, OpenAI's
``prompt_tokens_details.cached_tokens``) and the cache writes (``cache_write_tokens``:
Anthropic's ``cache_creation_input_tokens``) are told apart, for ``settle`` to price them at the
model's cache prices; output counts every output token. That rule is :func:`usage_counts` (and
:func:`input_split`), which the SDK wrappers (:mod:`registry.integrations.openai`,
:mod:`registry.integrations.anthropic`) read their SDKs' usage objects with too.

Streams report usage in different places: OpenAI's chat completions in a last chunk with
``usage`` (only when the request asked for ``stream_options: {"include_usage": true}``), its
Responses API in ``response.completed``; Anthropic's in ``message_start`` (the input) and
``message_delta`` (the output so far, cumulative). :class:`StreamUsage` watches for all of
them and also counts the text of the deltas, as an estimate for a stream that never says.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

import msgspec

from registry.integrations.common import tokens_for_bytes

__all__ = ["Reported", "StreamUsage", "Style", "input_split", "usage_counts", "usage_from_body"]

Style = Literal["openai", "anthropic"]
"""The wire format of a request and its response."""

# The parts of a prompt usage_counts gives: the tokens neither read from nor written to the
# provider's cache (without which there is no input), the cache reads and the cache writes.
_PLAIN, _CACHED, _WRITTEN = "input_tokens", "cached_input_tokens", "cache_write_tokens"
_ANTHROPIC_INPUT = (
    ("input_tokens", _PLAIN),
    ("cache_read_input_tokens", _CACHED),
    ("cache_creation_input_tokens", _WRITTEN),
)
# Where OpenAI says how many of the prompt tokens were read from its cache: chat completions,
# then the Responses API.
_OPENAI_DETAILS = ("prompt_tokens_details", "input_tokens_details")
_NOT_TEXT = frozenset({"type", "role", "id", "index", "finish_reason", "stop_reason", "stop_sequence"})


def _count(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _first(get: Callable[[str], Any], *names: str) -> int | None:
    counts = (_count(get(name)) for name in names)
    return next((count for count in counts if count is not None), None)


def _detail(holder: Any, name: str) -> int | None:
    """``holder[name]`` (JSON) or ``holder.name`` (an SDK's object), if an integer >= 0."""
    if holder is None:
        return None
    if isinstance(holder, Mapping):
        return _count(holder.get(name))
    return _count(getattr(holder, name, None))


def usage_counts(style: str, get: Callable[[str], Any]) -> tuple[dict[str, int], int | None]:
    """One ``usage`` object as the ledger counts it: the parts of its input that it gives, and
    its output (None if it does not say). ``get`` reads one field: ``usage.get`` for JSON,
    ``getattr(usage, name, None)`` for an SDK's object; a field that is not an integer >= 0
    counts as absent.

    The parts are named ``"input_tokens"`` (the prompt tokens neither read from nor written to
    the provider's cache: without it there is no input), ``"cached_input_tokens"`` (read from
    it) and ``"cache_write_tokens"`` (written to it); their sum is every prompt token, and
    :func:`input_split` reads them. A later ``usage`` of the same response replaces the parts it
    gives (Anthropic's ``message_delta`` repeats them).

    Anthropic (``style`` ``"anthropic"``): ``input_tokens``, ``cache_read_input_tokens`` and
    ``cache_creation_input_tokens``, and ``output_tokens``. OpenAI (any other ``style``):
    ``prompt_tokens`` (or the Responses API's ``input_tokens``), of which
    ``prompt_tokens_details.cached_tokens`` (or ``input_tokens_details.cached_tokens``) were
    read from the cache (OpenAI reports no cache writes), and ``completion_tokens`` (or
    ``output_tokens``).
    """
    if style == "anthropic":
        parts = {part: count for name, part in _ANTHROPIC_INPUT if (count := _count(get(name))) is not None}
        return parts, _count(get("output_tokens"))
    output_tokens = _first(get, "completion_tokens", "output_tokens")
    prompt = _first(get, "prompt_tokens", "input_tokens")
    if prompt is None:
        return {}, output_tokens
    found = (_detail(get(name), "cached_tokens") for name in _OPENAI_DETAILS)
    cached = min(next((count for count in found if count is not None), 0), prompt)  # a part of the prompt
    return {_PLAIN: prompt - cached, _CACHED: cached}, output_tokens


def input_split(parts: Mapping[str, int]) -> tuple[int, int, int] | None:
    """``(input_tokens, cached_input_tokens, cache_write_tokens)`` of the parts :func:`usage_counts`
    gave (``input_tokens`` counting every prompt token, the other two part of it, as ``settle``
    takes them); None when the parts do not say the input."""
    if _PLAIN not in parts:
        return None
    cached, written = parts.get(_CACHED, 0), parts.get(_WRITTEN, 0)
    return parts[_PLAIN] + cached + written, cached, written


class Reported(NamedTuple):
    """A usage as ``settle`` takes it: every input and output token, and of the input, those
    read from and written to the provider's prompt cache."""

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0


def usage_from_body(provider: str, body: Mapping[str, Any]) -> Reported | None:
    """The usage of a response body's ``usage``, in the wire format ``provider`` names
    (``"anthropic"``, or anything else for OpenAI's); None without both input and output."""
    usage = body.get("usage") if isinstance(body, Mapping) else None
    if not isinstance(usage, Mapping):
        return None
    parts, output_tokens = usage_counts(provider, usage.get)
    split = input_split(parts)
    if split is None or output_tokens is None:
        return None
    input_tokens, cached, written = split
    return Reported(input_tokens, output_tokens, cached, written)


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
    does), ``cached_input_tokens``/``cache_write_tokens`` the part of the input read from and
    written to the provider's cache (0 until it says); ``counted_output`` estimates the output
    from the deltas' text (by :func:`~registry.integrations.common.tokens_for_bytes`);
    ``events`` counts the JSON events read. Anything that is not an event it knows is skipped:
    it never raises on input.
    """

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.input_parts: dict[str, int] = {}  # as usage_counts names them
        self.output_tokens: int | None = None
        self.events = 0
        self._text = 0
        self._line = b""
        self._data: list[bytes] = []

    @property
    def input_tokens(self) -> int | None:
        split = input_split(self.input_parts)
        return None if split is None else split[0]

    @property
    def cached_input_tokens(self) -> int:
        split = input_split(self.input_parts)
        return 0 if split is None else split[1]

    @property
    def cache_write_tokens(self) -> int:
        split = input_split(self.input_parts)
        return 0 if split is None else split[2]

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
        parts, output_tokens = usage_counts(self.provider, usage.get)
        self.input_parts.update(parts)
        if output_tokens is not None:
            self.output_tokens = output_tokens
