"""``wrap(client, registry)``: an OpenAI client whose chat completions are admitted and settled.

::

    from openai import OpenAI
    from registry.integrations.openai import wrap

    client = wrap(OpenAI(), reg, tenant="acme")
    reply = client.chat.completions.create(model="gpt-4o", messages=[...], max_tokens=200)

``chat.completions.create`` (plain and ``stream=True``, also through ``with_raw_response`` and
the ``chat.completions.stream(...)`` helper) and ``chat.completions.parse`` acquire on the
model's key (``openai:<model>`` unless ``model_map`` says otherwise) before the request and
settle with the ``usage`` OpenAI returned after it. ``prompt_tokens`` counts cached prompt
tokens too, as the ledger does, and those of them read from OpenAI's cache
(``prompt_tokens_details.cached_tokens``) settle as ``cached_input_tokens``, priced at the
model's ``cached_input``. A stream gets ``stream_options={"include_usage": True}`` when the
caller set no ``stream_options``, and the extra usage-only chunk that brings is not shown to
it. Everything else on the client passes through unmetered. See ``docs/integrations.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

try:
    import openai
except ImportError as exc:
    raise ImportError("registry.integrations.openai needs the openai package: pip install 'registry[openai]'") from exc

from registry.integrations import _calls, _meter
from registry.integrations.common import text_bytes

__all__ = ["wrap"]


def _message_bytes(message: Any) -> int:
    """Text of a reply message or a stream delta: its content, refusal and tool calls."""
    calls = [getattr(call, "function", None) for call in message.tool_calls or ()]  # custom tools have none
    texts = [text for function in calls if function is not None for text in (function.name, function.arguments)]
    return text_bytes(message.content, getattr(message, "refusal", None), *texts)


class _Dialect(_calls.Dialect):
    provider = "openai"
    sentinels = _calls.sentinels(openai)

    def max_output(self, request: Mapping[str, Any]) -> int | None:
        limit = _calls.integer(request.get("max_completion_tokens"))
        limit = _calls.integer(request.get("max_tokens")) if limit is None else limit
        choices = _calls.integer(request.get("n"))
        return limit * choices if limit is not None and choices is not None and choices > 1 else limit

    def read(self, response: Any, tally: _calls.Tally) -> None:
        self.take_usage(response.usage, tally)
        tally.output_bytes += sum(_message_bytes(choice.message) for choice in response.choices or ())

    def ask_usage(self, forward: dict[str, Any]) -> bool:
        options = forward.get("stream_options")
        if options is not None and not isinstance(options, self.sentinels):
            return False
        forward["stream_options"] = {"include_usage": True}
        return True

    def observe(self, event: Any, tally: _calls.Tally, hide: bool) -> bool:
        stopped = False
        for choice in event.choices or ():
            tally.output_bytes += _message_bytes(choice.delta)
            if choice.finish_reason is None:
                tally.pending.add(choice.index)
            else:
                tally.pending.discard(choice.index)
                stopped = True
        if event.usage is not None:
            self.take_usage(event.usage, tally)
            stopped = stopped or not event.choices  # the usage chunk comes last
        tally.finished = (tally.finished or stopped) and not tally.pending
        return not (hide and not event.choices and event.usage is not None)


def _patch(client: Any, meter: _meter.Meter) -> None:
    completions = client.chat.completions
    completions.create = meter.method(completions.create)
    if hasattr(completions, "parse"):  # pragma: no branch - openai < 1.92 had it under client.beta
        completions.parse = meter.method(completions.parse, stream=False)


wrap = _meter.wrapper(__name__, (openai.OpenAI, openai.AsyncOpenAI), _Dialect(), _patch)
wrap.__doc__ = """A copy of ``client`` (``OpenAI`` with a ``Registry``, ``AsyncOpenAI`` with an
``AsyncRegistry``) whose chat completions are admitted and settled on ``registry``.

``tenant``: the tenant of every call (a call may pass ``registry_tenant=``).
``model_map``: from the request's model name to a catalog key (None: ``openai:<model>``;
a mapping, names it lacks keep the default; or a function). ``token_counter``: the
input-token estimate reserved before the request (see :mod:`registry.integrations.common`).
``wait``/``timeout``: wait for room as :meth:`~registry.Registry.acquire` does, rather
than raise :class:`~registry.errors.RateLimitedError` at once. A call may also pass
``registry_request_id=`` (an idempotent acquire, for retries).
"""
