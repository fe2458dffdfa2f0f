"""``wrap(client, registry)``: an Anthropic client whose messages are admitted and settled.

::

    from anthropic import Anthropic
    from registry.integrations.anthropic import wrap

    client = wrap(Anthropic(), reg, tenant="acme")
    reply = client.messages.create(model="claude-sonnet-4-6", max_tokens=200, messages=[...])

``messages.create`` (plain and ``stream=True``, also through ``with_raw_response``),
``messages.parse`` and the ``messages.stream(...)`` helper acquire on the model's key
(``anthropic:<model>`` unless ``model_map`` says otherwise) before the request and settle with
the ``usage`` Anthropic returned after it: in a stream, ``message_start`` says the input and
``message_delta`` the output. Everything else on the client passes through unmetered.

Cached prompt tokens: Anthropic's ``input_tokens`` leaves out the prompt tokens written to or
read from its cache (``cache_creation_input_tokens``, ``cache_read_input_tokens``). The ledger's
input counts every prompt token (as OpenAI's ``prompt_tokens`` does, and as
:mod:`registry.integrations.usage` reads Anthropic's bodies), so the three are added up, and the
settle says which were read (``cached_input_tokens``) and written (``cache_write_tokens``): they
are priced at the model's ``cached_input`` and ``cache_write``, and the reads are left out of
its ``input_tokens_per_minute``, as Anthropic's ITPM leaves them out. See ``docs/integrations.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

try:
    import anthropic
except ImportError as exc:
    raise ImportError(
        "registry.integrations.anthropic needs the anthropic package: pip install 'registry[anthropic]'"
    ) from exc

from registry.integrations import _calls, _meter
from registry.integrations.common import text_bytes

__all__ = ["wrap"]


def _block_bytes(block: Any) -> int:
    """Text of a content block or a block delta: text, thinking, a tool call's JSON."""
    if getattr(block, "type", None) in ("tool_use", "server_tool_use"):
        return text_bytes(block.name) + len(msgspec.json.encode(block.input))
    return text_bytes(
        getattr(block, "text", None), getattr(block, "thinking", None), getattr(block, "partial_json", None)
    )


class _Dialect(_calls.Dialect):
    provider = "anthropic"
    sentinels = _calls.sentinels(anthropic)

    def max_output(self, request: Mapping[str, Any]) -> int | None:
        return _calls.integer(request.get("max_tokens"))

    def read(self, response: Any, tally: _calls.Tally) -> None:
        self.take_usage(getattr(response, "usage", None), tally)
        tally.output_bytes += sum(_block_bytes(block) for block in response.content or ())

    def observe(self, event: Any, tally: _calls.Tally, hide: bool) -> bool:
        kind = event.type
        if kind == "message_start":
            self.take_usage(event.message.usage, tally, output=False)  # its output count is a placeholder
        elif kind == "content_block_start":  # a tool call's name
            tally.output_bytes += _block_bytes(event.content_block)
        elif kind == "content_block_delta":
            tally.output_bytes += _block_bytes(event.delta)
        elif kind == "message_delta":
            self.take_usage(event.usage, tally)
            tally.finished = tally.finished or event.delta.stop_reason is not None
        elif kind == "message_stop":
            tally.finished = True
        return True


def _patch(client: Any, meter: _meter.Meter) -> None:
    messages = client.messages
    messages.create = meter.method(messages.create)
    messages.stream = meter.manager(messages.stream)
    if hasattr(messages, "parse"):  # pragma: no branch - older SDKs have none
        messages.parse = meter.method(messages.parse, stream=False)


wrap = _meter.wrapper(__name__, (anthropic.Anthropic, anthropic.AsyncAnthropic), _Dialect(), _patch)
wrap.__doc__ = """A copy of ``client`` (``Anthropic`` with a ``Registry``, ``AsyncAnthropic`` with an
``AsyncRegistry``) whose messages are admitted and settled on ``registry``.

The options are :func:`registry.integrations.openai.wrap`'s, with ``anthropic:<model>``
as the default key.
"""
