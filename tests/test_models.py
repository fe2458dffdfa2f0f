"""Validation of model definitions at the edge: what passes, what is refused, and where."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from registry import ConfigError, ModelSpec, parse_model_key
from registry.catalog.ops import coerce_model, merge_changes
from tests.conftest import model


@pytest.mark.parametrize(
    "model_id",
    [
        "anthropic.claude-3-haiku-20240307-v1:0",
        "accounts/fireworks/models/llama-v3p1-8b-instruct",
        "claude-3-5-sonnet@20240620",
        "gpt-4o-2024-08-06",
        "Qwen2-7B-Instruct-Q4_K_M.gguf",
        "x" * 256,
    ],
)
def test_real_model_names_are_accepted(model_id: str) -> None:
    spec = ModelSpec.model_validate(model(provider="bedrock", id=model_id))
    assert spec.key == f"bedrock:{model_id}"
    assert parse_model_key(spec.key) == ("bedrock", model_id)


@pytest.mark.parametrize(
    ("model_id", "reason"),
    [
        ("", "must not be empty"),
        ("x" * 257, "at most 256"),
        ("gpt{4}", "brace"),
        ("gpt 4", "whitespace"),
        ("gpt\t4", "whitespace"),
        ("gpt\n4", "control"),
        ("gpt\x004", "control"),
        ("gpt\u200b4", "control"),  # zero-width space: a format character
    ],
)
def test_ids_that_would_break_a_key_are_refused(model_id: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        coerce_model(model(id=model_id))
    assert "id" in str(info.value)
    assert reason in str(info.value)


@pytest.mark.parametrize("provider", ["OpenAI", "open ai", "", "-x", "a:b", "x" * 65, "{x}"])
def test_bad_provider_names_are_refused(provider: str) -> None:
    with pytest.raises(ConfigError, match=r"provider"):
        coerce_model(model(provider=provider))


@pytest.mark.parametrize(
    "provider", ["openai", "anthropic", "llama.cpp", "custom", "vertex_ai-language-models", "scx-ai"]
)
def test_providers_are_an_open_set(provider: str) -> None:
    assert coerce_model(model(provider=provider)).provider == provider


def test_prices_are_exact_decimals_from_text() -> None:
    spec = ModelSpec.model_validate_json(
        '{"provider": "x", "id": "y", "context_window": 10,'
        ' "cost": {"input": 1.0000000000000001e-07, "output": "0.1", "per": 1}}'
    )
    assert spec.cost.input == Decimal("1.0000000000000001E-7")
    assert spec.cost.output == Decimal("0.1")
    assert spec.cost.currency == "USD"


@pytest.mark.parametrize(
    ("fields", "path", "message"),
    [
        ({"cost": {"input": "-1", "output": "1"}}, "cost.input", "greater than or equal to 0"),
        ({"cost": {"input": "1", "output": "1", "currency": "ZZZ"}}, "cost.currency", "unknown currency"),
        ({"cost": {"input": "1", "output": "1", "per": 100}}, "cost.per", "1000"),
        ({"cost": {"input": "NaN", "output": "1"}}, "cost.input", ""),
        ({"cost": {"input": "abc", "output": "1"}}, "cost.input", ""),
        ({"rate_limit": {"requests_per_minute": -5}}, "rate_limit.requests_per_minute", "greater than"),
        ({"version": "1.0"}, "version", "not a semantic version"),
        ({"version": "v1.0.0"}, "version", "not a semantic version"),
        ({"context_window": 0}, "context_window", "greater than"),
        ({"status": "gone"}, "status", "active"),
        ({"capabilities": ["Chat"]}, "capabilities[0]", "pattern"),
        ({"tags": ["a b"]}, "tags[0]", "whitespace"),
        ({"colour": "red"}, "colour", "Extra inputs"),
        (
            {
                "cost": {
                    "input": "1",
                    "output": "1",
                    "tiers": [
                        {"threshold": 10, "input": "2", "output": "2"},
                        {"threshold": 10, "input": "3", "output": "3"},
                    ],
                }
            },
            "cost.tiers",
            "same threshold",
        ),
    ],
)
def test_bad_fields_name_their_path(fields: dict, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        coerce_model(model(**fields))
    text = str(info.value)
    assert f"openai:gpt-4: {path}:" in text
    assert message in text


def test_currency_is_normalised_and_known() -> None:
    spec = coerce_model(model(cost={"input": "1", "output": "2", "currency": "eur"}))
    assert spec.cost.currency == "EUR"


def test_capabilities_and_tags_are_sorted_sets_and_name_defaults_to_id() -> None:
    spec = coerce_model(model(capabilities=["vision", "chat", "vision"], tags=["b", "a", "b"]))
    assert spec.capabilities == ("chat", "vision")
    assert spec.tags == ("a", "b")
    assert spec.name == "gpt-4"


def test_models_are_immutable() -> None:
    spec = coerce_model(model())
    with pytest.raises(ValidationError):
        spec.id = "other"  # type: ignore[misc]


def test_pre_release_versions_are_valid() -> None:
    assert coerce_model(model(version="2.0.0-rc.1+build.5")).semver.prerelease == "rc.1"


@pytest.mark.parametrize("key", ["nocolon", ":x", "x:", ""])
def test_malformed_keys(key: str) -> None:
    with pytest.raises(ValueError, match="provider:id"):
        parse_model_key(key)


def test_merge_changes_merges_nested_fields_and_keeps_the_key() -> None:
    spec = coerce_model(model(rate_limit={"requests_per_minute": 10, "tokens_per_minute": 1000}))
    merged = merge_changes(spec, {"cost": {"input": "25"}, "rate_limit": {"requests_per_minute": 20}})
    assert merged.cost.input == Decimal(25)
    assert merged.cost.output == Decimal(60)
    assert merged.rate_limit.requests_per_minute == 20
    assert merged.rate_limit.tokens_per_minute == 1000
    with pytest.raises(ConfigError, match="cannot change a model's key"):
        merge_changes(spec, {"id": "gpt-5"})
    with pytest.raises(ConfigError, match=r"cost\.output"):
        merge_changes(spec, {"cost": {"output": "-1"}})
    with pytest.raises(ConfigError, match="mapping or a ModelSpec"):
        merge_changes(spec, ["nope"])  # type: ignore[arg-type]
    replaced = merge_changes(spec, coerce_model(model(context_window=100)))
    assert replaced.context_window == 100


def test_coerce_refuses_non_mappings() -> None:
    with pytest.raises(ConfigError, match="expected a ModelSpec or a mapping"):
        coerce_model(42)  # type: ignore[arg-type]


def test_the_context_window_must_be_given_but_may_be_unknown() -> None:
    data = model()
    del data["context_window"]
    with pytest.raises(ConfigError, match="context_window: Field required"):
        coerce_model(data)
    assert coerce_model(model(context_window=None)).context_window is None
