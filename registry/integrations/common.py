"""What every integration shares: the input-token estimate and the model-key mapping.

The estimate is what an admission reserves before the provider has said anything; the
provider's ``usage`` replaces it when the call is settled, so it only has to be safe, not
exact. The default counts UTF-8 bytes: one token per 3 bytes of text, plus 4 per message and
3 for the reply's priming, and a flat 1,600 per image. BPE vocabularies of 100k+ entries
(OpenAI's o200k/cl100k, Anthropic's) average about 4 bytes per token on English prose and
about 3 on code and CJK text, so the default reserves more than the provider will bill for
those; pass ``token_counter=`` (for example one built on ``tiktoken``) where a tighter
reservation matters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

__all__ = [
    "BYTES_PER_TOKEN",
    "IMAGE_TOKENS",
    "ModelMap",
    "TokenCounter",
    "estimate_input_tokens",
    "model_key",
    "text_bytes",
    "tokens_for_bytes",
]

BYTES_PER_TOKEN = 3
PER_MESSAGE = 4
PRIMING = 3
IMAGE_TOKENS = 1_600  # above what either provider bills for one image at its largest size

TokenCounter = Callable[[Mapping[str, Any]], int]
"""Estimates a request's input tokens from its keyword arguments (``messages``, ``system``, ``tools``...)."""

ModelMap = Mapping[str, str] | Callable[[str], str] | None
"""From a request's model name to a catalog key: None (``<provider>:<model>``), a mapping
(names it lacks fall back to the default) or a function."""

_IMAGE_PARTS = frozenset({"image_url", "image", "input_image"})
_TEXT_FIELDS = ("messages", "system", "tools", "functions", "tool_choice", "response_format", "input", "prompt")


def _text_bytes(value: Any) -> tuple[int, int]:
    """(UTF-8 bytes of the text in ``value``, images in it), walking message contents and parts."""
    if value is None:
        return 0, 0
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass")), 0
    if isinstance(value, Mapping):
        if value.get("type") in _IMAGE_PARTS:
            return 0, 1
        size = images = 0
        for key, item in value.items():
            if key in ("role", "type", "cache_control"):
                continue
            more, pictures = _text_bytes(item)
            size, images = size + more, images + pictures
        return size, images
    if isinstance(value, list | tuple):
        size = images = 0
        for item in value:
            more, pictures = _text_bytes(item)
            size, images = size + more, images + pictures
        return size, images
    dump = getattr(value, "model_dump", None)  # an SDK's own object, such as a reply sent back as a message
    if callable(dump):
        return _text_bytes(dump(exclude_none=True))
    try:
        return len(msgspec.json.encode(value)), 0  # numbers, booleans, objects msgspec knows
    except (TypeError, msgspec.EncodeError):
        return len(str(value).encode("utf-8", "surrogatepass")), 0


def estimate_input_tokens(request: Mapping[str, Any]) -> int:
    """A safe upper estimate of a chat or messages request's input tokens (see the module doc)."""
    size = images = 0
    for name in _TEXT_FIELDS:
        more, pictures = _text_bytes(request.get(name))
        size, images = size + more, images + pictures
    messages = request.get("messages")
    count = len(messages) if isinstance(messages, list | tuple) else 0
    return math.ceil(size / BYTES_PER_TOKEN) + PER_MESSAGE * count + PRIMING + IMAGE_TOKENS * images


def text_bytes(*texts: str | None) -> int:
    """UTF-8 bytes of the given strings (None counts 0): what :func:`tokens_for_bytes` turns into
    an estimate of the output of a stream cut off before the provider said its usage."""
    return sum(len(text.encode("utf-8", "surrogatepass")) for text in texts if isinstance(text, str))


def tokens_for_bytes(size: int) -> int:
    """The estimate's rule for text: one token per :data:`BYTES_PER_TOKEN` bytes, rounded up."""
    return math.ceil(size / BYTES_PER_TOKEN)


def model_key(provider: str, model: str, mapping: ModelMap = None) -> str:
    """The catalog key for ``model`` as a request names it: ``<provider>:<model>`` by default."""
    if callable(mapping):
        return mapping(model)
    if mapping is not None and model in mapping:
        return mapping[model]
    return f"{provider}:{model}"
