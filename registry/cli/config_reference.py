"""The configuration reference, ``docs/config.md``, rendered from the config file's JSON Schema
(:func:`registry.schema.catalog_schema`): every object, field, type, constraint, default and
description. ``registry docs config`` prints or writes it (:mod:`registry.cli.reference`).

Where the schema leaves a field undescribed, :data:`FIELD_NOTES` says what it means; a test
checks that each note fills a gap (a description added in :mod:`registry.models` wins, and its
note must then go).
"""

from __future__ import annotations

import json
from typing import Any

from registry.cli.markdown import anchor, code, escape, rst_to_md, table

__all__ = ["FIELD_NOTES", "config_reference"]

_CONFIG_INTRO = """\
The catalog's config file is one JSON document, `{"models": [...]}`, one entry per model. Load
it with `registry sync FILE` (`--dry-run` shows the difference, `--prune` retires the models
the file no longer lists, `--watch` syncs again whenever it changes) or
`Registry.load_config(FILE)`. A file that does not validate changes nothing in Redis; the
error names the file, the entry and the field. `config/models.json` is the shipped catalog.

This page is rendered from the file's JSON Schema, `config/models.schema.json`, which is
itself generated from the pydantic models that validate the file (`registry/models.py`).
Editors that read `"$schema"` complete and check the file as you type; the loader always
validates with pydantic, which also checks what a schema cannot say (a price string's value
bounds, known ISO 4217 codes, that each `provider:id` appears once)."""

_CONFIG_EXAMPLE = {
    "$schema": "./models.schema.json",
    "models": [
        {
            "provider": "openai",
            "id": "gpt-5.2",
            "name": "GPT-5.2",
            "capabilities": ["chat", "reasoning", "vision"],
            "context_window": 400000,
            "max_output_tokens": 128000,
            "cost": {"input": "1.75", "output": "14.00", "cached_input": "0.175", "per": 1000000},
            "rate_limit": {"requests_per_minute": 500, "tokens_per_minute": 500000},
            "tenant_limits": {"*": {"requests_per_minute": 60}, "batch": {"tokens_per_minute": 100000}},
            "tags": ["flagship"],
        },
        {
            "provider": "llama.cpp",
            "id": "qwen2-7b-instruct",
            "context_window": 131072,
            "cost": {"input": "0", "output": "0"},
            "rate_limit": {"requests_per_minute": 60},
            "metadata": {"endpoint": "http://127.0.0.1:8080/v1", "quantization": "Q4_K_M"},
        },
    ],
}

# What the schema leaves undescribed, said here (the key is "<definition>.<field>"). A test
# checks that each note fills a gap: a description added to registry/models.py wins, and its
# note must then go.
FIELD_NOTES: dict[str, str] = {
    "CatalogFile.models": "The models, one entry each; every `provider:id` at most once.",
    "ModelSpec.capabilities": "What the model can do (`chat`, `vision`, `function_calling`, `embeddings`, ...): "
    "an open set of lower-case names; stored sorted, without repeats.",
    "ModelSpec.max_output_tokens": "Output tokens of one response at most. `acquire` reserves this many output "
    "tokens when the caller names none.",
    "ModelSpec.cost": "Prices; see Cost.",
    "ModelSpec.rate_limit": "The model's limits, shared by the whole fleet.",
    "ModelSpec.status": "`deprecated` and `retired` models are left out by `exclude_deprecated`, "
    "`most_cost_effective_models` and `route`.",
    "ModelSpec.tags": "Free labels for search (`tags=` requires all given); stored sorted, without repeats.",
    "Cost.note": "Where the prices come from, and when they were read.",
    "Cost.cached_input": "Price of prompt tokens read from the provider's cache; left out: `input`.",
    "Cost.cache_write": "Price of prompt tokens written to the provider's cache; left out: `input`.",
    "Cost.reasoning_output": "Price of reasoning output tokens, where billed apart; left out: `output`.",
    "Cost.per_request": "A flat fee per request, in `currency` (not divided by `per`).",
    "Cost.tiers": "Above-threshold prices, at most one per threshold (stored by threshold).",
    "PriceTier.inclusive": "The tier applies from exactly `threshold` prompt tokens, not only above it.",
    "PriceTier.cached_input": "The tier's price of cached prompt tokens; left out: the base `cached_input`, "
    "else the tier's `input`.",
    "PriceTier.cache_write": "The tier's price of cache writes; left out: the base `cache_write`, "
    "else the tier's `input`.",
    "PriceTier.reasoning_output": "The tier's price of reasoning output tokens; left out: the base "
    "`reasoning_output`, else the tier's `output`.",
    "RateLimit.requests_per_minute": "Requests admitted in any 60 s window; null: no limit.",
    "RateLimit.tokens_per_minute": "Input plus output tokens in any 60 s window (an acquire reserves input "
    "plus max output tokens; settle corrects it); null: no limit.",
    "RateLimit.requests_per_day": "Requests admitted in any 24 h window (15-minute buckets); null: no limit.",
    "RateLimit.note": "Where the limits come from.",
}


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[1]


def _is_price(node: dict[str, Any]) -> bool:
    """The anyOf of a decimal: a JSON number, or a string holding a decimal number."""
    branches = node.get("anyOf", [])
    return len(branches) == 2 and {b.get("type") for b in branches} == {"number", "string"}


def _type(node: dict[str, Any]) -> str:
    """A schema node's type, in words, with links to the definitions it refers to."""
    if "$ref" in node:
        name = _ref_name(node["$ref"])
        return f"[{name}](#{anchor(name)})"
    if _is_price(node):
        return "decimal (number or string)"
    if "anyOf" in node:
        return " or ".join(_type(b) for b in node["anyOf"])
    if "enum" in node and "type" not in node:
        return "enum"
    kind = node.get("type")
    if kind == "array":
        return f"array of {_type(node.get('items', {}))}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"object of {_type(node['additionalProperties'])}"
    if kind is None:
        return "any JSON value"
    return str(kind)


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _constraints(node: dict[str, Any], *, within: str = "") -> list[str]:
    out: list[str] = []
    if "anyOf" in node:
        several = len([b for b in node["anyOf"] if b.get("type") != "null"]) > 1
        for branch in node["anyOf"]:
            label = f"as a {branch['type']}: " if several and branch.get("type") == "string" else ""
            out += _constraints(branch, within=label)
        return out
    if "enum" in node:
        out.append("one of " + ", ".join(code(json.dumps(v)) for v in node["enum"]))
    low, high = node.get("minimum"), node.get("maximum")
    if low is not None and high is not None:
        out.append(f"{_number(low)} to {_number(high)}")
    elif low is not None:
        out.append(f"at least {_number(low)}")
    elif high is not None:
        out.append(f"at most {_number(high)}")
    short, long = node.get("minLength"), node.get("maxLength")
    if short is not None and long is not None:
        out.append(f"{short} to {long} characters")
    elif long is not None:
        out.append(f"at most {long} characters")
    if "pattern" in node:
        out.append(f"{within}matches {code(node['pattern'])}")
    if "examples" in node:
        out.append("e.g. " + ", ".join(code(str(v)) for v in node["examples"]))
    if node.get("type") == "array" and isinstance(node.get("items"), dict):
        items = _constraints(node["items"])
        if items:
            out.append("each item: " + "; ".join(items))
    return out


def _description(definition: str, name: str, field: dict[str, Any]) -> str:
    """The field's own description, else this module's note, else a description inside it (the
    one every price carries)."""
    own = field.get("description") or FIELD_NOTES.get(f"{definition}.{name}")
    if own:
        return str(own)
    for branch in field.get("anyOf", ()):
        if branch.get("description"):
            return str(branch["description"])
    return ""


def _default_of(node: dict[str, Any]) -> str:
    if "default" not in node:
        return ""
    value = node["default"]
    if isinstance(value, dict) and value and all(v is None for v in value.values()):
        return "every field null"
    return code(json.dumps(value, ensure_ascii=False))


def _field_rows(definition: str, node: dict[str, Any]) -> list[list[str]]:
    required = set(node.get("required", ()))
    return [
        [
            code(name),
            _type(field),
            "yes" if name in required else "",
            _default_of(field),
            "; ".join(_constraints(field)),
            escape(rst_to_md(_description(definition, name, field))),
        ]
        for name, field in node.get("properties", {}).items()
    ]


def config_reference(schema: dict[str, Any] | None = None) -> str:
    """The markdown reference of the config file, from its JSON Schema (by default, the one
    :func:`registry.schema.catalog_schema` generates)."""
    from registry.models import CatalogFile

    if schema is None:
        from registry.schema import catalog_schema

        schema = catalog_schema()
    CatalogFile.model_validate(_CONFIG_EXAMPLE)  # the page's example must load: fail here if not
    defs: dict[str, dict[str, Any]] = schema.get("$defs", {})
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from the JSON Schema by `registry docs config --output docs/config.md`."
        " Do not edit: tests/test_docs.py fails when this file is out of date. -->",
        "",
        _CONFIG_INTRO,
        "",
        "An example with two models (prices per 1,000,000 tokens, in USD, by default):",
        "",
        "```json",
        json.dumps(_CONFIG_EXAMPLE, indent=2),
        "```",
        "",
        "Each table lists an object's fields: its type, whether it is required, its default when",
        "left out, the constraints the schema states, and what it means. No other field is allowed",
        "(`additionalProperties: false`).",
        "",
        "## The file",
        "",
        escape(rst_to_md(str(schema.get("description", "")))),
        "",
        *table(["field", "type", "required", "default", "constraints", "meaning"], _field_rows("CatalogFile", schema)),
    ]
    order = ["ModelSpec", "Cost", "PriceTier", "RateLimit", "Status"]
    names = [n for n in order if n in defs] + sorted(n for n in defs if n not in order)
    for name in names:
        node = defs[name]
        lines += ["", f"## {name}", ""]
        if node.get("description"):
            lines += [rst_to_md(node["description"]), ""]
        if "properties" in node:
            rows = _field_rows(name, node)
            lines += table(["field", "type", "required", "default", "constraints", "meaning"], rows)
        elif "enum" in node:
            lines.append("A string, one of: " + ", ".join(code(json.dumps(v)) for v in node["enum"]) + ".")
    return "\n".join(lines) + "\n"
