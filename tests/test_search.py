"""Search, version filters and cheapest-model ranking over a small catalog with known answers.

The catalog (input / output prices):

    openai:gpt-4                      8,192  $30 / $60 per M     deprecated  1.0.0        legacy
    openai:gpt-4o                   128,000  $2.50 / $10 per M   active      2.1.0        flagship
    openai:text-embedding-3-small     8,191  $0.02 / $0 per M    active      1.0.0
    anthropic:claude-3-haiku        200,000  $0.25 / $1.25 per M active      1.2.0-beta.1 fast
    anthropic:claude-3-opus         200,000  $15 / $75 per M     retired     1.0.0
    llama.cpp:llama-3.1-8b          131,072  free                active      3.1.0        local
    llama.cpp:phi-3.5-mini          128,000  free                active      3.5.0        local
    custom:my-model                   4,096  $0.001 / $0.002 per K beta      0.1.0-alpha  template
    custom:euro-model                32,000  EUR 0.10 / 0.10 per M active    1.0.0
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from registry import ConfigError, ModelNotFoundError
from tests.conftest import model

CATALOG = [
    model(
        "openai",
        "gpt-4",
        context_window=8192,
        cost={"input": "30", "output": "60"},
        capabilities=["chat", "function_calling"],
        status="deprecated",
        tags=["legacy"],
    ),
    model(
        "openai",
        "gpt-4o",
        name="GPT-4o",
        context_window=128_000,
        cost={"input": "2.50", "output": "10"},
        capabilities=["chat", "vision", "function_calling", "json_mode"],
        version="2.1.0",
        tags=["flagship"],
    ),
    model(
        "openai",
        "text-embedding-3-small",
        context_window=8191,
        cost={"input": "0.02", "output": "0"},
        capabilities=["embeddings"],
    ),
    model(
        "anthropic",
        "claude-3-haiku",
        name="Claude 3 Haiku",
        context_window=200_000,
        cost={"input": "0.25", "output": "1.25"},
        capabilities=["chat", "vision"],
        version="1.2.0-beta.1",
        tags=["fast"],
    ),
    model(
        "anthropic",
        "claude-3-opus",
        context_window=200_000,
        cost={"input": "15", "output": "75"},
        capabilities=["chat", "vision"],
        status="retired",
    ),
    model(
        "llama.cpp",
        "llama-3.1-8b",
        context_window=131_072,
        cost={"input": "0", "output": "0"},
        version="3.1.0",
        tags=["local"],
    ),
    model(
        "llama.cpp",
        "phi-3.5-mini",
        context_window=128_000,
        cost={"input": "0", "output": "0"},
        version="3.5.0",
        tags=["local"],
    ),
    model(
        "custom",
        "my-model",
        context_window=4096,
        cost={"input": "0.001", "output": "0.002", "per": 1000},
        capabilities=["chat", "completion"],
        status="beta",
        version="0.1.0-alpha",
        tags=["template"],
    ),
    model("custom", "euro-model", context_window=32_000, cost={"input": "0.10", "output": "0.10", "currency": "EUR"}),
]


@pytest.fixture
def catalog(reg: Any) -> Any:
    reg.register_models(CATALOG)
    return reg


def keys(models: list[Any]) -> list[str]:
    return [m.key for m in models]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (
            {},
            [
                "anthropic:claude-3-haiku",
                "anthropic:claude-3-opus",
                "custom:euro-model",
                "custom:my-model",
                "llama.cpp:llama-3.1-8b",
                "llama.cpp:phi-3.5-mini",
                "openai:gpt-4",
                "openai:gpt-4o",
                "openai:text-embedding-3-small",
            ],
        ),
        ({"provider": "openai"}, ["openai:gpt-4", "openai:gpt-4o", "openai:text-embedding-3-small"]),
        (
            {"provider": ["custom", "llama.cpp"]},
            ["custom:euro-model", "custom:my-model", "llama.cpp:llama-3.1-8b", "llama.cpp:phi-3.5-mini"],
        ),
        ({"provider": "mistral"}, []),
        ({"capability": "vision"}, ["anthropic:claude-3-haiku", "anthropic:claude-3-opus", "openai:gpt-4o"]),
        ({"capability": ["chat", "function_calling"]}, ["openai:gpt-4", "openai:gpt-4o"]),
        (
            {"min_context_window": 128_000},
            [
                "anthropic:claude-3-haiku",
                "anthropic:claude-3-opus",
                "llama.cpp:llama-3.1-8b",
                "llama.cpp:phi-3.5-mini",
                "openai:gpt-4o",
            ],
        ),
        ({"max_context_window": 8192}, ["custom:my-model", "openai:gpt-4", "openai:text-embedding-3-small"]),
        ({"min_context_window": 8192, "max_context_window": 32_000}, ["custom:euro-model", "openai:gpt-4"]),
        ({"name_pattern": "gpt-4"}, ["openai:gpt-4", "openai:gpt-4o"]),
        ({"name_pattern": "GPT-4*"}, ["openai:gpt-4", "openai:gpt-4o"]),
        ({"name_pattern": "claude-3-?aiku"}, ["anthropic:claude-3-haiku"]),
        ({"name_pattern": "claude 3 haiku"}, ["anthropic:claude-3-haiku"]),  # display name
        ({"name_pattern": "llama.cpp:*"}, ["llama.cpp:llama-3.1-8b", "llama.cpp:phi-3.5-mini"]),
        ({"tags": "local"}, ["llama.cpp:llama-3.1-8b", "llama.cpp:phi-3.5-mini"]),
        ({"tags": ["local", "flagship"]}, []),
        ({"status": "beta"}, ["custom:my-model"]),
        ({"status": ["retired", "deprecated"]}, ["anthropic:claude-3-opus", "openai:gpt-4"]),
        (
            {"exclude_deprecated": True, "provider": ["openai", "anthropic"]},
            ["anthropic:claude-3-haiku", "openai:gpt-4o", "openai:text-embedding-3-small"],
        ),
        # both input and output at most 1/M per token (in the model's own currency):
        (
            {"max_cost_per_token": Decimal("0.000001")},
            ["custom:euro-model", "llama.cpp:llama-3.1-8b", "llama.cpp:phi-3.5-mini", "openai:text-embedding-3-small"],
        ),
        # at most $2.50/M: haiku (0.25/1.25), my-model (1/2 per M), euro (0.1/0.1), free ones
        (
            {"max_cost_per_token": "0.0000025"},
            [
                "anthropic:claude-3-haiku",
                "custom:euro-model",
                "custom:my-model",
                "llama.cpp:llama-3.1-8b",
                "llama.cpp:phi-3.5-mini",
                "openai:text-embedding-3-small",
            ],
        ),
        ({"max_cost_per_token": 0, "provider": "openai"}, []),
        ({"currency": "eur"}, ["custom:euro-model"]),
        # semver: 1.2.0-beta.1 >= 1.0.0 but < 1.2.0; 0.1.0-alpha < 1.0.0
        ({"min_version": "1.2.0"}, ["llama.cpp:llama-3.1-8b", "llama.cpp:phi-3.5-mini", "openai:gpt-4o"]),
        ({"min_version": "1.2.0-alpha", "max_version": "2.1.0"}, ["anthropic:claude-3-haiku", "openai:gpt-4o"]),
        ({"max_version": "1.0.0-rc.1"}, ["custom:my-model"]),
        ({"max_version": "1.0.0", "provider": "anthropic"}, ["anthropic:claude-3-opus"]),
        (
            {
                "capability": "chat",
                "min_context_window": 100_000,
                "exclude_deprecated": True,
                "max_cost_per_token": "0.00001",
            },
            ["anthropic:claude-3-haiku", "llama.cpp:llama-3.1-8b", "llama.cpp:phi-3.5-mini", "openai:gpt-4o"],
        ),
    ],
)
def test_search(catalog: Any, filters: dict[str, Any], expected: list[str]) -> None:
    assert keys(catalog.search_models(**filters)) == expected


def test_list_models(catalog: Any) -> None:
    assert len(catalog.list_models()) == len(CATALOG)
    assert keys(catalog.list_models(provider="anthropic")) == ["anthropic:claude-3-haiku", "anthropic:claude-3-opus"]
    assert keys(catalog.list_models(status="deprecated")) == ["openai:gpt-4"]


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"status": "gone"}, "status: unknown"),
        ({"min_version": "one"}, "not a semantic version"),
        ({"max_cost_per_token": "cheap"}, "decimal amount"),
        ({"max_cost_per_token": -1}, ">= 0"),
        ({"max_cost_per_token": "Infinity"}, "finite"),
        ({"min_context_window": -1}, "non-negative integer"),
        ({"min_context_window": "big"}, "non-negative integer"),
        ({"provider": []}, "at least one value"),
        ({"name_pattern": 5}, "name_pattern must be a string"),
    ],
)
def test_bad_filters_are_refused(catalog: Any, filters: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        catalog.search_models(**filters)


def test_unknown_filter_is_a_type_error(catalog: Any) -> None:
    with pytest.raises(TypeError):
        catalog.search_models(colour="red")


def test_cheapest_default_weighs_three_input_tokens_to_one_output(catalog: Any) -> None:
    # Chat models, deprecated/retired excluded, USD only. Price of 3 input + 1 output tokens, per M:
    #   llama-3.1-8b 0 (ctx 131,072) and phi-3.5-mini 0 (ctx 128,000): tie, larger context first
    #   claude-3-haiku 3 x 0.25 + 1.25 = 2.00;  my-model 3 x 1 + 2 = 5;  gpt-4o 3 x 2.5 + 10 = 17.5
    ranked = catalog.most_cost_effective_models(capability="chat", limit=None)
    assert keys(ranked) == [
        "llama.cpp:llama-3.1-8b",
        "llama.cpp:phi-3.5-mini",
        "anthropic:claude-3-haiku",
        "custom:my-model",
        "openai:gpt-4o",
    ]
    assert keys(catalog.most_cost_effective_models("chat", 3)) == keys(ranked)[:3]


def test_cheapest_with_an_output_heavy_mix(catalog: Any) -> None:
    # 1 input + 10 output tokens, per M: haiku 0.25 + 12.5 = 12.75; my-model 1 + 20 = 21; gpt-4o 2.5 + 100
    ranked = catalog.most_cost_effective_models(
        capability="vision", limit=5, input_tokens=1, output_tokens=10, exclude_deprecated=False
    )
    # vision: haiku 12.75, gpt-4o 102.5, opus 15 + 750 = 765 (retired, but included on request)
    assert keys(ranked) == ["anthropic:claude-3-haiku", "openai:gpt-4o", "anthropic:claude-3-opus"]


def test_cheapest_filters_and_currency(catalog: Any) -> None:
    assert keys(catalog.most_cost_effective_models(currency="EUR")) == ["custom:euro-model"]
    assert keys(catalog.most_cost_effective_models("chat", 2, provider="openai", exclude_deprecated=False)) == [
        "openai:gpt-4o",
        "openai:gpt-4",
    ]
    with pytest.raises(ConfigError, match="limit must be a positive integer"):
        catalog.most_cost_effective_models(limit=0)


def test_cheapest_applies_tiers_for_long_prompts(reg: Any) -> None:
    reg.register_models(
        [
            model(
                "a",
                "tiered",
                cost={"input": "1", "output": "1", "tiers": [{"threshold": 100_000, "input": "10", "output": "10"}]},
            ),
            model("b", "flat", cost={"input": "5", "output": "5"}),
        ]
    )
    # short prompt: tiered 1,001 x 1 < flat 1,001 x 5; long: tiered 200,001 x 10 > flat 200,001 x 5
    assert keys(reg.most_cost_effective_models(input_tokens=1000, output_tokens=1)) == ["a:tiered", "b:flat"]
    assert keys(reg.most_cost_effective_models(input_tokens=200_000, output_tokens=1)) == ["b:flat", "a:tiered"]


def test_estimate_cost(catalog: Any) -> None:
    # gpt-4o: 1,000 x 2.50/M + 200 x 10/M = 0.0025 + 0.002
    assert catalog.estimate_cost("openai:gpt-4o", 1000, 200) == Decimal("0.0045")
    # my-model per K: 1,500 x 0.001/K + 500 x 0.002/K = 0.0015 + 0.001
    assert catalog.estimate_cost("custom:my-model", 1500, 500) == Decimal("0.0025")
    assert catalog.estimate_cost("llama.cpp:llama-3.1-8b", 10**9, 10**9) == 0
    with pytest.raises(ModelNotFoundError):
        catalog.estimate_cost("openai:gpt-5", 1, 1)
    with pytest.raises(ConfigError, match="provider:id"):
        catalog.estimate_cost("gpt-4o", 1, 1)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.0.0", "2.0.0", -1),
        ("2.0.0", "1.10.0", 1),
        ("1.10.0", "1.9.0", 1),
        ("1.0.0-alpha", "1.0.0", -1),
        ("1.0.0-alpha.1", "1.0.0-alpha.beta", -1),
        ("1.0.0-rc.1", "1.0.0-beta.11", 1),
        ("1.0.0+build.1", "1.0.0+build.2", 0),
        ("3.1.0", "3.1.0", 0),
    ],
)
def test_compare_versions(reg: Any, a: str, b: str, expected: int) -> None:
    assert reg.compare_versions(a, b) == expected


def test_compare_versions_refuses_non_semver(reg: Any) -> None:
    with pytest.raises(ConfigError, match="not a semantic version"):
        reg.compare_versions("1.0", "1.0.0")


def test_an_unknown_context_window(reg: Any) -> None:
    reg.register_models([model("x", "unknown", context_window=None), model("x", "known", context_window=10)])
    assert reg.get_model("x:unknown").context_window is None
    assert keys(reg.search_models(provider="x")) == ["x:known", "x:unknown"]
    assert keys(reg.search_models(provider="x", min_context_window=1)) == ["x:known"]
    assert keys(reg.search_models(provider="x", max_context_window=10**9)) == ["x:known"]
    # same price: the known (larger) window ranks first
    assert keys(reg.most_cost_effective_models(provider="x")) == ["x:known", "x:unknown"]
