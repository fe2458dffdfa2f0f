"""The JSON Schema of the catalog config file (``config/models.schema.json``).

The schema is generated from :class:`~registry.models.CatalogFile`, the pydantic model that
validates the file, so the two cannot drift apart: ``registry schema`` prints
:func:`render_schema`, and a test checks that the committed ``config/models.schema.json``
equals it. Editors use the schema for completion and early errors (the config names it in
``"$schema"``); the loader itself always validates with pydantic, which also checks what a
schema cannot say (a price string's value bounds, the uniqueness of ``provider:id``).

On top of what pydantic emits, this module adds the constraints that live in plain Python
validators and are therefore invisible to pydantic's generator: the characters a model id or
tag may use, the semantic-version syntax, the shape of a currency code, and a ``pattern`` for
the string form of every price (a JSON number or a string holding a decimal number).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from registry.models import MAX_ID_LENGTH, MAX_TAG_LENGTH, CatalogFile

__all__ = ["SCHEMA_DIALECT", "SCHEMA_ID", "catalog_schema", "render_schema"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "urn:registry:config:models.schema.json"
SCHEMA_TITLE = "registry model catalog"
SCHEMA_DESCRIPTION = (
    'The config file of registry\'s model catalog: {"models": [...]}, one entry per model, '
    "keyed by provider:id. Prices are exact decimals per `per` tokens (1, 1000 or 1000000), "
    'written as a JSON number or, better, as a string such as "2.50". Load it with '
    "`registry sync FILE` or Registry.load_config(FILE)."
)

# A non-negative decimal as text: 2, 2.50, .5, 1e-3, +3 (no sign '-', no NaN or Infinity).
NON_NEGATIVE_DECIMAL_PATTERN = r"^\+?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
# Semantic Versioning 2.0.0's own regular expression, with [0-9] for \d (ASCII digits only).
SEMVER_PATTERN = (
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
    r"(?:\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
# No braces, whitespace, control characters or the usual invisible format characters
# (registry.models.validate_name is the full rule).
NAME_PATTERN = r"^[^{}\s\x00-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]+$"
CURRENCY_PATTERN = r"^[A-Za-z]{3}$"


class _CatalogSchemaGenerator(GenerateJsonSchema):
    """pydantic's generator, with a ``pattern`` on the string branch of every decimal."""

    def get_decimal_pattern(self, schema: core_schema.DecimalSchema) -> str | None:
        ge, gt = schema.get("ge"), schema.get("gt")
        if (ge is not None and ge >= 0) or (gt is not None and gt >= 0):
            return NON_NEGATIVE_DECIMAL_PATTERN
        return self.build_decimal_pattern(schema)


def _node(schema: dict[str, Any], *path: str) -> dict[str, Any]:
    node: Any = schema
    for part in path:
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"catalog schema: no {'/'.join(path)} (has registry.models changed?)")
        node = node[part]
    return node  # type: ignore[no-any-return]


def _refine(schema: dict[str, Any]) -> None:
    """Add what Python validators check and pydantic's generator cannot see."""
    defs = schema["$defs"]
    spec = _node(defs, "ModelSpec", "properties")
    spec["id"].update(minLength=1, maxLength=MAX_ID_LENGTH, pattern=NAME_PATTERN)
    spec["version"].update(
        pattern=SEMVER_PATTERN,
        description="Semantic version of this entry (MAJOR.MINOR.PATCH[-PRE][+BUILD]).",
    )
    spec["tags"]["items"].update(minLength=1, maxLength=MAX_TAG_LENGTH, pattern=NAME_PATTERN)
    currency = _node(defs, "Cost", "properties", "currency")
    currency.update(pattern=CURRENCY_PATTERN, examples=["USD", "EUR"])
    if "JsonValue" in defs:
        defs["JsonValue"] = {"description": "Any JSON value."}
    document = _node(schema, "properties", "$schema")
    document["title"] = "Schema"
    document["description"] = 'Where editors find this schema, e.g. "./models.schema.json"; ignored by the loader.'


def catalog_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the catalog config file, as a fresh dict.

    Keys come in a fixed order: the header (``$schema``, ``$id``, ``title``,
    ``description``), then the body as pydantic emits it (properties in field order), then
    ``$defs`` sorted by name, so :func:`render_schema` is byte-for-byte stable.
    """
    generated: JsonSchemaValue = CatalogFile.model_json_schema(
        by_alias=True, mode="validation", schema_generator=_CatalogSchemaGenerator
    )
    _refine(generated)
    defs = generated.pop("$defs")
    generated.pop("title", None)
    generated.pop("description", None)
    out: dict[str, Any] = {
        "$schema": SCHEMA_DIALECT,
        "$id": SCHEMA_ID,
        "title": SCHEMA_TITLE,
        "description": SCHEMA_DESCRIPTION,
    }
    out.update(generated)
    out["$defs"] = {name: defs[name] for name in sorted(defs)}
    return out


def render_schema() -> str:
    """:func:`catalog_schema` as canonical JSON text (2-space indent, UTF-8, final newline)."""
    return json.dumps(catalog_schema(), indent=2, sort_keys=False, ensure_ascii=False) + "\n"
