"""How a :class:`ModelSpec` is laid out in its Redis hash.

Scalars are stored as plain strings (``provider``, ``id``, ``name``, ``version``,
``status``, ``context_window``, ``max_output_tokens``) so that ``HGETALL`` and other tools read
them as they are; lists and objects (``capabilities``, ``tags``, ``cost``, ``rate_limit``,
``metadata``) as JSON, prices inside as decimal strings. The script adds ``_revision`` (the
catalog revision of the model's last write) and ``_updated_ms`` (server time of that write).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from pydantic import ValidationError

from registry._core import fields as _fields
from registry.errors import ScriptError
from registry.models import ModelSpec

__all__ = ["CatalogEntry", "decode_entry", "encode_fields"]

_SCALARS = ("provider", "id", "name", "version", "status")
_INTS = ("context_window", "max_output_tokens")
_JSON = ("capabilities", "tags", "cost", "rate_limit", "tenant_limits", "metadata")
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()
# Limit fields newer than the first release, stored only when set: a client that predates them
# (its RateLimit forbids unknown fields) still reads every model that does not use them.
_NEWER_LIMITS = ("input_tokens_per_minute", "output_tokens_per_minute")


def _limits(rate: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rate.items() if v is not None or k not in _NEWER_LIMITS}


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """A model as the catalog holds it, with the revision of its last write."""

    model: ModelSpec
    revision: int
    updated_ms: int


def encode_fields(model: ModelSpec) -> dict[str, str]:
    """The hash fields of ``model`` (without the script's ``_revision``/``_updated_ms``)."""
    data = model.model_dump(mode="json")
    data["rate_limit"] = _limits(data["rate_limit"])
    data["tenant_limits"] = {tenant: _limits(rate) for tenant, rate in data["tenant_limits"].items()}
    fields = {name: str(data[name]) for name in _SCALARS}
    for name in _INTS:
        if data[name] is not None:
            fields[name] = str(data[name])
    for name in _JSON:
        fields[name] = _encoder.encode(data[name]).decode()
    return fields


def encode_fields_json(model: ModelSpec) -> str:
    """:func:`encode_fields` as one JSON object, the form the write script takes."""
    return _encoder.encode(encode_fields(model)).decode()


def decode_entry(raw: Any) -> CatalogEntry:
    """Parse an ``HGETALL`` reply (str or bytes) back into a :class:`CatalogEntry`."""
    fields = _fields(raw)
    try:
        data: dict[str, Any] = {name: fields[name] for name in _SCALARS if name in fields}
        for name in _INTS:  # absent: unknown (None)
            data[name] = int(fields[name]) if name in fields else None
        for name in _JSON:
            if name in fields:
                data[name] = _decoder.decode(fields[name])
        model = ModelSpec.model_validate(data)
        return CatalogEntry(model, int(fields.get("_revision", 0)), int(fields.get("_updated_ms", 0)))
    except (ValueError, msgspec.DecodeError, ValidationError) as exc:
        key = f"{fields.get('provider', '?')}:{fields.get('id', '?')}"
        raise ScriptError(f"malformed catalog hash for {key}: {exc}") from exc
