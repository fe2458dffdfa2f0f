"""The LiteLLM price-map importer: accounting, exact prices, tiers, aliases and skip reasons.

Expected costs are computed here from the raw JSON text (stdlib ``json`` with
``parse_float=Decimal``), independently of the importer, and compared with
:func:`registry.pricing.estimate` and, through Redis, with ``estimate_cost``.
"""

from __future__ import annotations

import decimal
import functools
import itertools
import json
import re
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from registry.errors import ConfigError
from registry.importers.litellm import LiteLLMImport, import_litellm_map, is_noisy
from registry.models import ModelSpec, Status
from registry.pricing import estimate, rates_for

TODAY = date(2026, 5, 1)
PRICE_NAMES = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cached",
    "cache_creation_input_token_cost": "write",
}
TIER = re.compile(
    r"(input_cost_per_token|output_cost_per_token|cache_read_input_token_cost"
    r"|cache_creation_input_token_cost)_above_(\d+)(k?)_tokens"
)
# Reasons an entry may still be left out for: its mode, or pricing a Cost cannot hold.
UNREPRESENTABLE = {
    "no per-token input/output price",
    "priced per second",
    "priced per character",
    "Google above-128k prices (billed by LiteLLM's own rule)",
    "tiered_pricing is not a list of token ranges",
    "tiered_pricing ranges not contiguous from 0",
    "tiered_pricing range without an input price",
}


@functools.cache
def _load(path: Path) -> tuple[dict[str, Any], LiteLLMImport]:
    raw = json.loads(path.read_text(), parse_float=Decimal)
    return raw, import_litellm_map(path, today=TODAY)


@pytest.fixture
def loaded(litellm_map: Path) -> tuple[dict[str, Any], LiteLLMImport]:
    return _load(litellm_map)


def _priced_entry(raw: dict[str, Any], key: str) -> dict[str, Any]:
    entry = raw[key]
    return raw[entry["alias_of"]] if "alias_of" in entry else entry


def _thresholds(entry: dict[str, Any]) -> dict[int, dict[str, Decimal]]:
    """Above-threshold prices by threshold, read from the raw keys ("200k" is 200,000)."""
    tiers: dict[int, dict[str, Decimal]] = {}
    for name, value in entry.items():
        if match := TIER.fullmatch(name):
            threshold = int(match[2]) * (1000 if match[3] else 1)
            tiers.setdefault(threshold, {})[PRICE_NAMES[match[1]]] = Decimal(value)
    return {t: prices for t, prices in tiers.items() if "input" in prices}


def _litellm_range(entry: dict[str, Any], prompt: int) -> dict[str, Any] | None:
    """LiteLLM's ``select_tier_for_input``: sorted by start, the first range with
    ``start < prompt <= end``, else the last one; no range at all for an empty prompt."""
    if prompt <= 0:
        return None
    ranges = sorted(entry["tiered_pricing"], key=lambda r: r["range"][0])
    matching = [r for r in ranges if r["range"][0] < prompt <= r["range"][1]]
    return matching[0] if matching else ranges[-1]


def _rates(entry: dict[str, Any], provider: str, prompt: int) -> dict[str, Decimal]:
    """The five rates LiteLLM bills a request of ``prompt`` input tokens at, from the raw text."""
    flat_output = Decimal(entry.get("output_cost_per_token") or 0)
    flat_reasoning = entry.get("output_cost_per_reasoning_token")
    tier = _litellm_range(entry, prompt) if "tiered_pricing" in entry else None
    if tier is not None:  # _get_tiered_base_costs and _get_tiered_reasoning_rate

        def rate(key: str, fallback: str | None = None) -> Decimal:  # tier_rate: ``a or b``
            return Decimal(tier.get(key) or (tier.get(fallback) if fallback else 0) or 0)

        output = rate("output_cost_per_token") if "output_cost_per_token" in tier else flat_output
        if "output_cost_per_reasoning_token" in tier or "output_cost_per_token" in tier:
            reasoning = rate("output_cost_per_reasoning_token", "output_cost_per_token")
        else:
            reasoning = output if flat_reasoning is None else Decimal(flat_reasoning)
        return {
            "input": rate("input_cost_per_token"),
            "cached": rate("cache_read_input_token_cost", "input_cost_per_token"),
            "write": rate("cache_creation_input_token_cost", "input_cost_per_token"),
            "output": output,
            "reasoning": reasoning,
        }
    base = {kind: Decimal(entry[name]) for name, kind in PRICE_NAMES.items() if name in entry}
    tiers = _thresholds(entry)
    passed = [t for t in tiers if prompt > t or (provider == "xai" and prompt == t)]
    rates = {**base, **tiers[max(passed)]} if passed else base
    price_in, output = rates["input"], rates.get("output", Decimal(0))
    return {  # the flat reasoning price bills above a threshold too (_resolve_reasoning_token_cost)
        "input": price_in,
        "cached": rates.get("cached", price_in),
        "write": rates.get("write", price_in),
        "output": output,
        "reasoning": output if flat_reasoning is None else Decimal(flat_reasoning),
    }


def expected_cost(
    entry: dict[str, Any], provider: str, prompt: int, output: int, cached: int, written: int, reasoning: int = 0
) -> Decimal:
    """LiteLLM's rule from the raw text: a ``tiered_pricing`` range, else the highest tier
    passed (from exactly the threshold for xai, strictly above it elsewhere), bills the whole
    request; reasoning tokens bill at the reasoning rate; a per-request fee is added once."""
    rates = _rates(entry, provider, prompt)
    fee = Decimal(entry.get("input_cost_per_request") or 0)
    with decimal.localcontext(decimal.Context(prec=1000, traps=[decimal.Inexact])):
        return (
            (prompt - cached - written) * rates["input"]
            + cached * rates["cached"]
            + written * rates["write"]
            + (output - reasoning) * rates["output"]
            + reasoning * rates["reasoning"]
            + fee
        )


def _range_bounds(entry: dict[str, Any]) -> list[int]:
    return sorted({int(b) for r in entry.get("tiered_pricing", ()) for b in r["range"]} - {0})


def _prompts(entry: dict[str, Any]) -> list[int]:
    prompts = {1, 1000}
    for boundary in [*_thresholds(entry), *_range_bounds(entry)]:
        prompts |= {boundary - 1, boundary, boundary + 1}
    return sorted(p for p in prompts if p > 0)


Case = tuple[int, int, int, int, int]


def _cases(entry: dict[str, Any]) -> list[Case]:
    """(prompt, output, cached, written, reasoning): bare, then with every kind of token."""
    return [
        case
        for prompt in _prompts(entry)
        for case in ((prompt, 0, 0, 0, 0), (prompt, 1234, prompt // 2, prompt // 4, 567))
    ]


# ---------------------------------------------------------------------------- the shared map


def test_every_key_accounted_for_exactly_once(loaded: tuple[dict[str, Any], LiteLLMImport]) -> None:
    raw, result = loaded
    imported = [m.id for m in result.models]
    skipped = [key for keys in result.skipped.values() for key in keys]
    assert len(imported) == len(set(imported))
    assert not set(imported) & set(skipped)
    assert len(imported) + len(skipped) == len(raw) == 4878
    assert set(imported) | set(skipped) == set(raw)
    assert set(result.aliases) <= set(imported)
    summary = result.summary()
    assert summary["imported"] + summary["skipped"] == len(raw)
    assert json.loads(json.dumps(summary)) == summary


def test_every_priced_chat_entry_is_imported(loaded: tuple[dict[str, Any], LiteLLMImport]) -> None:
    raw, result = loaded
    reason_of = {key: reason for reason, keys in result.skipped.items() for key in keys}
    by_id = {m.id: m for m in result.models}
    priced_chat = [
        key
        for key, entry in raw.items()
        if isinstance(entry, dict)
        and entry.get("mode") in ("chat", "responses")
        and (("input_cost_per_token" in entry and "output_cost_per_token" in entry) or "tiered_pricing" in entry)
    ]
    assert {key: reason_of[key] for key in priced_chat if key not in by_id} == {}
    assert all("chat" in by_id[k].capabilities for k in priced_chat)
    assert len(priced_chat) > 3400
    # what is still left out is left out by mode, or for pricing a Cost cannot hold
    for key, reason in reason_of.items():
        entry = raw[key]
        if reason.startswith("mode "):
            assert entry["mode"] == reason.removeprefix("mode ")
            assert entry["mode"] not in ("chat", "responses", "completion", "embedding")
        elif reason == "no mode":
            assert "mode" not in entry
        elif reason == "not a model entry":
            assert key in ("sample_spec", "fallback_generalizations")
        else:
            assert reason in UNREPRESENTABLE, (key, reason)
            assert entry["mode"] in ("chat", "responses", "completion", "embedding")
            priced = "input_cost_per_token" in entry and (
                entry["mode"] == "embedding" or "output_cost_per_token" in entry
            )
            if reason == "no per-token input/output price":
                assert not priced
                assert "tiered_pricing" not in entry
            elif reason == "priced per second":
                assert not priced
                assert any("per_second" in name for name in entry)
            elif reason == "priced per character":
                assert any("per_character" in name for name in entry)
            elif reason.startswith("tiered_pricing"):
                assert "tiered_pricing" in entry
    # aliases: every alias of an imported entry is imported, and nothing else is
    alias_keys = {k for k, e in raw.items() if isinstance(e, dict) and "alias_of" in e}
    assert result.aliases == {k: raw[k]["alias_of"] for k in alias_keys if raw[k]["alias_of"] in by_id}
    assert len(result.aliases) == 98


def test_new_kinds_of_price_are_imported(loaded: tuple[dict[str, Any], LiteLLMImport]) -> None:
    """Unknown windows, reasoning prices, per-request fees and range tables: all there."""
    raw, result = loaded
    by_id = {m.id: m for m in result.models}
    seen = {"window": 0, "reasoning": 0, "fee": 0, "ranges": 0}
    for key, model in by_id.items():
        entry = _priced_entry(raw, key)
        if not entry.get("max_input_tokens"):
            assert model.context_window is None
            seen["window"] += 1
        else:
            assert model.context_window == entry["max_input_tokens"]
        if "max_output_tokens" in entry and 0 < entry["max_output_tokens"] <= 10**9:
            assert model.max_output_tokens == entry["max_output_tokens"]
        if "tiered_pricing" in entry:
            starts = [int(r["range"][0]) for r in entry["tiered_pricing"]]
            assert [t.threshold for t in model.cost.tiers] == starts[1:]
            assert not any(t.inclusive for t in model.cost.tiers)
            assert model.cost.input == Decimal(entry["tiered_pricing"][0]["input_cost_per_token"])
            seen["ranges"] += key not in result.aliases
        elif "output_cost_per_reasoning_token" in entry:
            assert model.cost.reasoning_output == Decimal(entry["output_cost_per_reasoning_token"])
            seen["reasoning"] += 1
        if "input_cost_per_request" in entry:
            assert model.cost.per_request == Decimal(entry["input_cost_per_request"])
            seen["fee"] += 1
        else:
            assert model.cost.per_request is None
    assert seen["window"] >= 110 + 4
    assert seen["reasoning"] >= 16
    assert seen["fee"] == 4
    assert seen["ranges"] == 54  # every chat and responses entry with a range table


def test_estimates_match_the_raw_text_for_every_model(
    loaded: tuple[dict[str, Any], LiteLLMImport],
) -> None:
    raw, result = loaded
    proved = {"xai": 0, "others": 0, "ranges": 0}
    for model in result.models:
        entry = _priced_entry(raw, model.id)
        assert model.cost.per == 1
        assert model.cost.currency == "USD"
        for case in _cases(entry):
            want = expected_cost(entry, model.provider, *case)
            assert estimate(model.cost, *case) == want, (model.key, case)
        tiers = _thresholds(entry)
        for threshold, prices in tiers.items():
            # a tier whose input price differs from what bills just below it shows the rule
            below = estimate(model.cost, threshold - 1, 0) / (threshold - 1)
            if prices["input"] == below:
                continue
            at = estimate(model.cost, threshold, 0)
            assert estimate(model.cost, threshold + 1, 0) == (threshold + 1) * prices["input"]
            if model.provider == "xai":
                assert at == threshold * prices["input"], model.key
                proved["xai"] += 1
            else:
                assert at == threshold * below, model.key
                proved["others"] += 1
        ranges = entry.get("tiered_pricing", [])
        for lower, upper in itertools.pairwise(ranges):
            start = int(upper["range"][0])  # a prompt of exactly ``start`` stays in the lower range
            assert estimate(model.cost, start, 0) == start * Decimal(lower["input_cost_per_token"])
            assert estimate(model.cost, start + 1, 0) == (start + 1) * Decimal(upper["input_cost_per_token"])
            proved["ranges"] += 1
        if ranges:  # above the last range's end, the last range bills
            beyond = int(ranges[-1]["range"][1]) + 1
            assert estimate(model.cost, beyond, 0) == beyond * Decimal(ranges[-1]["input_cost_per_token"])
    assert proved["xai"] > 0
    assert proved["others"] > 0
    assert proved["ranges"] > 0


def test_aliases_carry_their_targets_prices(loaded: tuple[dict[str, Any], LiteLLMImport]) -> None:
    _, result = loaded
    by_id = {m.id: m for m in result.models}
    for alias, target in result.aliases.items():
        model, origin = by_id[alias], by_id[target]
        assert model.cost == origin.cost
        assert model.provider == origin.provider
        assert model.context_window == origin.context_window
        assert model.metadata["alias_of"] == target
        assert model.name == alias


def test_noisy_prices_are_imported_as_written(loaded: tuple[dict[str, Any], LiteLLMImport]) -> None:
    raw, result = loaded
    by_id = {m.id: m for m in result.models}
    assert result.noisy_prices
    for key in result.noisy_prices:
        entry = raw[key]
        ranges = entry.get("tiered_pricing", [])
        texts = [Decimal(entry[name]) for name in PRICE_NAMES if name in entry]
        texts += [Decimal(v) for r in ranges for name, v in r.items() if name != "range"]
        assert any(is_noisy(t) for t in texts) or _thresholds(entry)
        first = ranges[0] if ranges else entry
        assert by_id[key].cost.input == Decimal(first["input_cost_per_token"])
    noisy = "novita/deepseek/deepseek-v3/community"
    if noisy in by_id:
        assert noisy in result.noisy_prices
        assert by_id[noisy].cost.input == Decimal("8.900000000000001E-7")


def test_report_lists_every_reason_and_key(loaded: tuple[dict[str, Any], LiteLLMImport]) -> None:
    _, result = loaded
    lines = result.report_lines()
    assert lines[0] == f"imported {len(result.models)} models ({len(result.aliases)} aliases)"
    text = "\n".join(lines)
    for reason, keys in result.skipped.items():
        assert f"skipped {len(keys)} ({reason}): " in text
        assert all(key in text for key in keys)
    assert "mode image_generation" in result.skipped
    assert result.skipped["not a model entry"] == ["fallback_generalizations", "sample_spec"]


def test_register_whole_import_in_redis(
    reg: Any, make_registry: Any, loaded: tuple[dict[str, Any], LiteLLMImport]
) -> None:
    raw, result = loaded
    reg.register_models(result.models)
    reader = make_registry(watch=True)  # another client, reading its local copy
    assert len(reader.list_models()) == len(result.models)
    for model in result.models:  # every model, both sides of every threshold
        entry = _priced_entry(raw, model.id)
        for case in _cases(entry)[1::2]:  # with output, cache and reasoning tokens
            got = reader.estimate_cost(model.key, *case)
            assert got == expected_cost(entry, model.provider, *case)
    sample = result.models[0]
    assert reader.get_model(sample.key) == sample


# ---------------------------------------------------------------------------- a hand-written map

HAND: dict[str, Any] = {
    "sample_spec": {"mode": "one of: chat, embedding"},
    "tiered": {
        "litellm_provider": "openai",
        "mode": "chat",
        "max_input_tokens": 1000000,
        "max_output_tokens": 1000,
        "input_cost_per_token": "0.000001",
        "output_cost_per_token": "0.000002",
        "cache_read_input_token_cost": "1E-7",
        "input_cost_per_token_above_200k_tokens": "0.000003",
        "cache_creation_input_token_cost_above_200k_tokens": "0.000004",
        "input_cost_per_token_above_500_tokens": "0.0000015",
        "output_cost_per_token_above_500_tokens": "0.0000025",
        "input_cost_per_token_above_200k_tokens_priority": "9",
        "output_cost_per_token_above_300k_tokens": "9",
        "input_cost_per_token_flex": "9",
        "cache_creation_input_token_cost_above_1hr": "9",
        "supports_function_calling": True,
        "supports_vision": False,
        "rpm": 100,
        "tpm": Decimal("200000.0"),
        "source": "https://example.com/prices",
        "deprecation_date": "2026-04-30",
    },
    "grok-x": {
        "litellm_provider": "xai",
        "mode": "chat",
        "max_tokens": 300000,
        "input_cost_per_token": 1e-06,
        "output_cost_per_token": "0.000002",
        "input_cost_per_token_above_200k_tokens": "0.000004",
        "supports_reasoning": True,
        "deprecation_date": "2027-01-01",
        "rpm": float("nan"),
        "tpm": float("inf"),
    },
    "negative": {
        "litellm_provider": "openai",
        "mode": "chat",
        "max_tokens": 8,
        "input_cost_per_token": "-1E-6",
        "output_cost_per_token": "1E-6",
    },
    "listed": {
        "litellm_provider": "openai",
        "mode": "chat",
        "max_tokens": 8,
        "input_cost_per_token": ["1E-6"],
        "output_cost_per_token": "1E-6",
    },
    "alias-ok": {"alias_of": "tiered"},
    "alias-missing": {"alias_of": "nowhere"},
    "alias-skipped": {"alias_of": "negative"},
    "alias-alias": {"alias_of": "alias-ok"},
    "alias-{bad}": {"alias_of": "tiered"},
    "per-second": {"litellm_provider": "bedrock", "mode": "chat", "input_cost_per_second": "0.01"},
    "per-char": {"litellm_provider": "vertex_ai", "mode": "chat", "input_cost_per_character": "1"},
    "vertex_ai/chat-bison": {
        "litellm_provider": "vertex_ai-language-models",
        "mode": "chat",
        "max_tokens": 8192,
        "input_cost_per_token": "1E-7",
        "output_cost_per_token": "1E-7",
        "input_cost_per_character": "2.5E-8",
    },
    "vertex_ai/gemini-2.0-flash": {
        "litellm_provider": "vertex_ai",
        "mode": "chat",
        "max_tokens": 8192,
        "input_cost_per_token": "1.5E-7",
        "output_cost_per_token": "6E-7",
        "input_cost_per_character": "3.75E-8",
    },
    "bad-{id}": {
        "litellm_provider": "openai",
        "mode": "chat",
        "max_tokens": 10,
        "input_cost_per_token": 0,
        "output_cost_per_token": 0,
    },
    "no-window": {
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": "1E-6",
        "output_cost_per_token": "2E-6",
    },
    "zero-window": {
        "litellm_provider": "openai",
        "mode": "chat",
        "max_input_tokens": 0,
        "input_cost_per_token": "1E-6",
        "output_cost_per_token": "2E-6",
    },
    "noisy": {
        "litellm_provider": "openai",
        "mode": "completion",
        "max_tokens": 4096,
        "input_cost_per_token": Decimal("1.0000000000000001E-7"),
        "output_cost_per_token": Decimal("3.3333333333333335E-6"),
        "max_output_tokens": 0,
    },
    "not-noisy": {
        "litellm_provider": "openai",
        "mode": "responses",
        "max_tokens": 4096,
        "input_cost_per_token": Decimal("3.3333333333333335E-6"),
        "output_cost_per_token": "bad",
    },
    "Upper": {"litellm_provider": "Open AI", "mode": "chat"},
    "no-provider": {"mode": "chat"},
    "image": {"litellm_provider": "openai", "mode": "image_generation"},
    "no-mode": {"litellm_provider": "openai"},
    "embed": {
        "litellm_provider": "openai",
        "mode": "embedding",
        "max_input_tokens": 8191,
        "input_cost_per_token": "2E-8",
    },
    "request-fee": {
        "litellm_provider": "perplexity",
        "mode": "chat",
        "max_tokens": 100,
        "input_cost_per_token": 0,
        "output_cost_per_token": "2.8E-7",
        "input_cost_per_request": "0.005",
    },
    "think-apart": {
        "litellm_provider": "dashscope",
        "mode": "chat",
        "max_tokens": 100,
        "input_cost_per_token": "5E-8",
        "output_cost_per_token": "2E-7",
        "output_cost_per_reasoning_token": "5E-7",
    },
    "think-same": {
        "litellm_provider": "dashscope",
        "mode": "chat",
        "max_tokens": 100,
        "input_cost_per_token": "5E-8",
        "output_cost_per_token": "2E-7",
        "output_cost_per_reasoning_token": "2.0E-7",
    },
    "ranges": {"litellm_provider": "dashscope", "mode": "chat", "tiered_pricing": []},
    "ranges-cache": {
        "litellm_provider": "dashscope",
        "mode": "chat",
        "max_input_tokens": 1000000,
        "tiered_pricing": [
            {
                "range": [0, Decimal("32000.0")],
                "input_cost_per_token": "1E-6",
                "output_cost_per_token": "5E-6",
                "cache_read_input_token_cost": "1E-7",
                "output_cost_per_reasoning_token": "8E-6",
            },
            {"range": [32000, 128000], "input_cost_per_token": "2E-6", "output_cost_per_token": "1E-5"},
            {
                "range": [128000, 256000],
                "input_cost_per_token": "3E-6",
                "output_cost_per_token": "1.5E-5",
                "cache_read_input_token_cost": "3E-7",
                "cache_creation_input_token_cost": "4E-6",
            },
        ],
    },
    "ranges-plain": {
        "litellm_provider": "volcengine",
        "mode": "responses",
        "output_cost_per_token": "4E-6",
        "output_cost_per_reasoning_token": "6E-6",
        "tiered_pricing": [
            {"range": [0, 1000], "input_cost_per_token": "1E-6", "output_cost_per_token": "2E-6"},
            {"range": [1000, 5000], "input_cost_per_token": "3E-6"},
        ],
    },
    "ranges-gap": {
        "litellm_provider": "dashscope",
        "mode": "chat",
        "tiered_pricing": [
            {"range": [0, 1000], "input_cost_per_token": "1E-6", "output_cost_per_token": "2E-6"},
            {"range": [2000, 5000], "input_cost_per_token": "3E-6", "output_cost_per_token": "4E-6"},
        ],
    },
    "ranges-unsorted": {
        "litellm_provider": "dashscope",
        "mode": "chat",
        "tiered_pricing": [
            {"range": [1000, 5000], "input_cost_per_token": "3E-6", "output_cost_per_token": "4E-6"},
            {"range": [0, 1000], "input_cost_per_token": "1E-6", "output_cost_per_token": "2E-6"},
        ],
    },
    "ranges-late-start": {
        "litellm_provider": "dashscope",
        "mode": "chat",
        "tiered_pricing": [{"range": [1, 1000], "input_cost_per_token": "1E-6", "output_cost_per_token": "2E-6"}],
    },
    "ranges-no-input": {
        "litellm_provider": "dashscope",
        "mode": "chat",
        "tiered_pricing": [
            {"range": [0, 1000], "input_cost_per_token": "1E-6", "output_cost_per_token": "2E-6"},
            {"range": [1000, 5000], "output_cost_per_token": "4E-6"},
        ],
    },
    "ranges-results": {
        "litellm_provider": "exa_ai",
        "mode": "chat",
        "tiered_pricing": [{"input_cost_per_query": "0.005", "max_results_range": [0, 25]}],
    },
    "gemini/old": {
        "litellm_provider": "gemini",
        "mode": "chat",
        "max_tokens": 100,
        "input_cost_per_token": "1E-7",
        "output_cost_per_token": "1E-7",
        "input_cost_per_token_above_128k_tokens": "2E-7",
    },
    "no-prices": {"litellm_provider": "openai", "mode": "chat", "max_tokens": 100},
    "not-a-dict": [1, 2],
}


@pytest.fixture
def hand() -> LiteLLMImport:
    return import_litellm_map(HAND, today=TODAY)


def test_hand_map_accounting_and_reasons(hand: LiteLLMImport) -> None:
    reason_of = {key: reason for reason, keys in hand.skipped.items() for key in keys}
    assert {m.id for m in hand.models} | set(reason_of) == set(HAND)
    assert len(hand.models) + len(reason_of) == len(HAND)
    assert reason_of == {
        "sample_spec": "not a model entry",
        "not-a-dict": "not a model entry",
        "alias-missing": "alias of a missing entry",
        "alias-skipped": "alias of a skipped entry",
        "alias-alias": "alias of an alias",
        "alias-{bad}": "invalid model id",
        "per-second": "priced per second",
        "per-char": "priced per character",
        "vertex_ai/chat-bison": "priced per character",
        "bad-{id}": "invalid model id",
        "not-noisy": "invalid price",
        "negative": "invalid price",
        "listed": "invalid price",
        "Upper": "invalid provider name",
        "no-provider": "invalid provider name",
        "image": "mode image_generation",
        "no-mode": "no mode",
        "ranges": "tiered_pricing is not a list of token ranges",
        "ranges-results": "tiered_pricing is not a list of token ranges",
        "ranges-gap": "tiered_pricing ranges not contiguous from 0",
        "ranges-unsorted": "tiered_pricing ranges not contiguous from 0",
        "ranges-late-start": "tiered_pricing ranges not contiguous from 0",
        "ranges-no-input": "tiered_pricing range without an input price",
        "gemini/old": "Google above-128k prices (billed by LiteLLM's own rule)",
        "no-prices": "no per-token input/output price",
    }
    assert hand.aliases == {"alias-ok": "tiered"}
    assert hand.noisy_prices == ["noisy"]
    assert [m.key for m in hand.models] == sorted(m.key for m in hand.models)


def test_hand_map_models(hand: LiteLLMImport) -> None:
    by_id: dict[str, ModelSpec] = {m.id: m for m in hand.models}
    tiered = by_id["tiered"]
    assert tiered.key == "openai:tiered"
    assert tiered.capabilities == ("chat", "function_calling")
    assert tiered.rate_limit.requests_per_minute == 100
    assert tiered.rate_limit.tokens_per_minute == 200000
    assert tiered.status is Status.DEPRECATED
    assert tiered.tags == ("litellm",)
    assert tiered.cost.note == "LiteLLM price map: https://example.com/prices"
    assert tiered.metadata == {
        "mode": "chat",
        "source": "https://example.com/prices",
        "deprecation_date": "2026-04-30",
    }
    assert [t.threshold for t in tiered.cost.tiers] == [500, 200000]  # the 300k output is no tier
    low, high = tiered.cost.tiers
    low_rates, high_rates = rates_for(tiered.cost, 501), rates_for(tiered.cost, 200_001)
    assert (low.input, low.output) == (Decimal("0.0000015"), Decimal("0.0000025"))
    assert low_rates.cached_input == Decimal("1E-7")  # the base cache-read price
    assert low_rates.cache_write == Decimal("0.0000015")  # given nowhere: the tier's own input price
    assert (high.output, high_rates.cache_write) == (Decimal("0.000002"), Decimal("0.000004"))
    assert estimate(tiered.cost, 500, 0) == Decimal("0.0005")
    assert estimate(tiered.cost, 501, 0) == Decimal("0.0007515")
    assert estimate(tiered.cost, 200001, 1) == Decimal("0.600005")

    grok = by_id["grok-x"]
    assert grok.cost.input == Decimal("0.000001")
    assert grok.context_window == 300000
    assert grok.cost.tiers[0].inclusive
    assert estimate(grok.cost, 199999, 0) == Decimal("0.199999")
    assert estimate(grok.cost, 200000, 0) == Decimal("0.8")
    assert grok.status is Status.ACTIVE
    assert grok.rate_limit.requests_per_minute is None
    assert grok.rate_limit.tokens_per_minute is None
    assert "reasoning" in grok.capabilities

    alias = by_id["alias-ok"]
    assert alias.cost == tiered.cost
    assert alias.metadata["alias_of"] == "tiered"
    assert by_id["noisy"].cost.input == Decimal("1.0000000000000001E-7")
    assert by_id["noisy"].capabilities == ("completion",)
    assert by_id["noisy"].max_output_tokens is None
    assert by_id["embed"].capabilities == ("embeddings",)
    assert by_id["embed"].cost.output == 0
    assert by_id["vertex_ai/gemini-2.0-flash"].cost.input == Decimal("1.5E-7")
    assert by_id["think-same"].cost.output == Decimal("2E-7")
    assert by_id["tiered"].max_output_tokens == 1000


def test_hand_map_unknown_window_reasoning_and_fee(hand: LiteLLMImport) -> None:
    by_id: dict[str, ModelSpec] = {m.id: m for m in hand.models}
    assert by_id["no-window"].context_window is None
    assert by_id["zero-window"].context_window is None
    assert by_id["tiered"].context_window == 1000000
    alias = by_id["alias-ok"]
    assert alias.context_window == 1000000

    apart = by_id["think-apart"].cost
    assert apart.reasoning_output == Decimal("5E-7")
    # 100 in, 50 out of which 30 reasoning: 100 * 5E-8 + 20 * 2E-7 + 30 * 5E-7
    assert estimate(apart, 100, 50, reasoning_tokens=30) == Decimal("0.000024")
    same = by_id["think-same"].cost
    assert same.reasoning_output == Decimal("2.0E-7")
    assert estimate(same, 10, 5, reasoning_tokens=5) == estimate(same, 10, 5)

    fee = by_id["request-fee"].cost
    assert fee.per_request == Decimal("0.005")
    assert estimate(fee, 1000, 100) == Decimal("0.005") + 100 * Decimal("2.8E-7")
    assert estimate(fee, 0, 0) == Decimal("0.005")


def test_hand_map_range_tables(hand: LiteLLMImport) -> None:
    by_id: dict[str, ModelSpec] = {m.id: m for m in hand.models}
    cache = by_id["ranges-cache"].cost
    assert (cache.input, cache.output, cache.cached_input) == (Decimal("1E-6"), Decimal("5E-6"), Decimal("1E-7"))
    assert cache.reasoning_output == Decimal("8E-6")
    mid, top = cache.tiers
    assert (mid.threshold, mid.inclusive, top.threshold) == (32000, False, 128000)
    # a range without cache or reasoning prices bills them at its own input and output prices,
    # never at the first range's ones
    assert (mid.cached_input, mid.cache_write, mid.reasoning_output) == (
        Decimal("2E-6"),
        Decimal("2E-6"),
        Decimal("1E-5"),
    )
    assert (top.cached_input, top.cache_write, top.reasoning_output) == (
        Decimal("3E-7"),
        Decimal("4E-6"),
        Decimal("1.5E-5"),
    )
    assert estimate(cache, 32000, 0) == 32000 * Decimal("1E-6")  # start < prompt <= end
    assert estimate(cache, 32001, 0) == 32001 * Decimal("2E-6")
    assert estimate(cache, 300000, 0) == 300000 * Decimal("3E-6")  # past the last end: the last range
    # 32001 in, 1 of them cached; 10 out, 4 of them reasoning: all at the middle range's prices
    assert estimate(cache, 32001, 10, 1, 0, 4) == 32001 * Decimal("2E-6") + 10 * Decimal("1E-5")

    plain = by_id["ranges-plain"].cost
    assert (plain.input, plain.output, plain.reasoning_output) == (Decimal("1E-6"), Decimal("2E-6"), None)
    (upper,) = plain.tiers
    # no output price in the range: the entry's flat output and reasoning prices stand in
    assert (upper.threshold, upper.input, upper.output) == (1000, Decimal("3E-6"), Decimal("4E-6"))
    assert (upper.cached_input, upper.cache_write, upper.reasoning_output) == (
        Decimal("3E-6"),
        Decimal("3E-6"),
        Decimal("6E-6"),
    )
    assert by_id["ranges-plain"].context_window is None
    for model in (by_id["ranges-cache"], by_id["ranges-plain"]):
        entry = HAND[model.id]
        for case in _cases(entry):
            assert estimate(model.cost, *case) == expected_cost(entry, model.provider, *case), (model.id, case)


def test_sources_bytes_text_and_path(tmp_path: Path) -> None:
    text = '{"m": {"litellm_provider": "openai", "mode": "chat", "max_tokens": 8,' + (
        ' "input_cost_per_token": 1.0000000000000001e-07, "output_cost_per_token": 2e-07}}'
    )
    path = tmp_path / "map.json"
    path.write_text(text)
    for source in (text.encode(), path, str(path)):
        result = import_litellm_map(source)
        assert result.models[0].cost.input == Decimal("1.0000000000000001E-7")
        assert result.noisy_prices == ["m"]
    with pytest.raises(ConfigError, match="JSON object"):
        import_litellm_map(b"[1]")
    with pytest.raises(ConfigError, match="not valid JSON"):
        import_litellm_map(b"{")
    with pytest.raises(ConfigError, match="cannot read"):
        import_litellm_map(text)  # a str is a path, never JSON text
    empty = import_litellm_map({})
    assert empty.summary()["imported"] == 0
    assert empty.report_lines() == ["imported 0 models (0 aliases)"]


def test_noise_rule() -> None:
    assert is_noisy(Decimal("1.0000000000000001E-7"))
    assert is_noisy(Decimal("2.4999999999999998E-6"))
    assert not is_noisy(Decimal("3.3333333333333335E-6"))  # 1/300000: as close as a float gets
    assert not is_noisy(Decimal("0.000001"))
