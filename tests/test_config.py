"""The shipped config (``config/models.json``), its schema, broken configs, and loading into Redis.

Expected values are written out by hand (prices, keys, field paths), not recomputed through
the code under test. A bad config must raise :class:`ConfigError` naming the file, the entry
and the field, and must leave Redis exactly as it was.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from registry import ConfigError, Status
from registry.catalog.sync import read_catalog_file
from registry.schema import catalog_schema, render_schema
from tests.conftest import ROOT

CONFIG = ROOT / "config" / "models.json"
SCHEMA = ROOT / "config" / "models.schema.json"
META = "{registry:catalog}:meta"
TODAY = "2026-11-27"

EXPECTED_KEYS = {
    "openai:gpt-5.5",
    "openai:gpt-5.2",
    "openai:gpt-4-turbo",
    "openai:gpt-4",
    "openai:gpt-3.5-turbo",
    "anthropic:claude-opus-4-7",
    "anthropic:claude-sonnet-4-6",
    "anthropic:claude-haiku-4-5",
    "anthropic:claude-3-opus-20240229",
    "anthropic:claude-3-sonnet-20240229",
    "anthropic:claude-3-haiku-20240307",
    "llama.cpp:llama-3.1-8b-instruct",
    "llama.cpp:phi-3.5-mini-instruct",
    "llama.cpp:qwen2-7b-instruct",
    "custom:my-model",
}


def config_document() -> dict[str, Any]:
    return json.loads(CONFIG.read_text(encoding="utf-8"))


def write_json(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return path


def redis_dump(r: redis.Redis) -> dict[str, tuple[str, Any]]:
    """Every key of the test Redis with its type and full value."""
    out: dict[str, tuple[str, Any]] = {}
    for key in sorted(r.keys("*")):
        kind = r.type(key)
        value: Any
        if kind == "string":
            value = r.get(key)
        elif kind == "hash":
            value = r.hgetall(key)
        elif kind == "list":
            value = r.lrange(key, 0, -1)
        elif kind == "set":
            value = sorted(r.smembers(key))
        elif kind == "zset":
            value = r.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = r.xrange(key)
        else:  # pragma: no cover - the catalog uses none of the others
            value = r.dump(key)
        out[key] = (kind, value)
    return out


# -- the shipped config --------------------------------------------------------------------------


def test_shipped_config_validates_and_has_the_required_models() -> None:
    models = read_catalog_file(CONFIG)
    keys = [m.key for m in models]
    assert len(keys) == len(set(keys))
    assert set(keys) == EXPECTED_KEYS
    assert config_document()["$schema"] == "./models.schema.json"


def test_shipped_config_values() -> None:
    models = {m.key: m for m in read_catalog_file(CONFIG)}

    gpt4 = models["openai:gpt-4"]
    assert gpt4.cost.per == 1000
    assert (gpt4.cost.input, gpt4.cost.output) == (Decimal("0.03"), Decimal("0.06"))
    assert gpt4.context_window == 8192
    assert gpt4.rate_limit.requests_per_day == 10000

    gpt52 = models["openai:gpt-5.2"]
    assert gpt52.cost.per == 1_000_000
    assert (gpt52.cost.input, gpt52.cost.output) == (Decimal("1.75"), Decimal("14.00"))
    assert gpt52.cost.cached_input == Decimal("0.175")
    assert "flagship" in gpt52.tags
    assert "reasoning" in gpt52.capabilities

    gpt55 = models["openai:gpt-5.5"]
    tiers = [(t.threshold, t.inclusive, t.input, t.output, t.cached_input) for t in gpt55.cost.tiers]
    assert tiers == [(272000, False, Decimal("10.00"), Decimal("45.00"), Decimal("1.00"))]

    opus = models["anthropic:claude-opus-4-7"]
    assert (opus.cost.input, opus.cost.output) == (Decimal("5.00"), Decimal("25.00"))
    assert (opus.cost.cached_input, opus.cost.cache_write) == (Decimal("0.50"), Decimal("6.25"))

    for key, prices in {
        "anthropic:claude-3-opus-20240229": ("15.00", "75.00"),
        "anthropic:claude-3-sonnet-20240229": ("3.00", "15.00"),
        "anthropic:claude-3-haiku-20240307": ("0.25", "1.25"),
    }.items():
        assert (models[key].cost.input, models[key].cost.output) == tuple(map(Decimal, prices))
        assert models[key].status is Status.RETIRED
        assert "legacy" in models[key].tags
    assert models["anthropic:claude-3-haiku-20240307"].cost.cached_input == Decimal("0.03")
    assert models["anthropic:claude-3-haiku-20240307"].cost.cache_write == Decimal("0.30")

    for key in ("openai:gpt-4-turbo", "openai:gpt-4", "openai:gpt-3.5-turbo"):
        assert models[key].status is Status.DEPRECATED, key

    for key, (window, file) in {
        "llama.cpp:llama-3.1-8b-instruct": (131072, "Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf"),
        "llama.cpp:phi-3.5-mini-instruct": (131072, "Phi-3.5-mini-instruct-Q4_K_M.gguf"),
        "llama.cpp:qwen2-7b-instruct": (131072, "qwen2-7b-instruct-q4_k_m.gguf"),
    }.items():
        local = models[key]
        assert local.cost.is_free
        assert local.context_window == window
        assert local.metadata["endpoint"] == "http://127.0.0.1:8080/v1"
        assert local.metadata["file"] == file
        assert local.metadata["quantization"] == "Q4_K_M"
        assert "local" in local.tags
        assert local.rate_limit.requests_per_minute is not None

    template = models["custom:my-model"]
    assert template.status is Status.BETA
    assert template.tags == ("template",)


def test_every_entry_says_where_its_numbers_come_from() -> None:
    for model in read_catalog_file(CONFIG):
        assert model.cost.note, f"{model.key}: cost.note is missing"
        assert model.rate_limit.note, f"{model.key}: rate_limit.note is missing"
        if model.provider in ("openai", "anthropic") and model.status is not Status.RETIRED:
            assert "LiteLLM model price map (litellm 1.110.2)" in model.cost.note, model.key
            assert "https://" in model.cost.note, model.key
            assert TODAY in model.cost.note, model.key


def test_shipped_prices_match_the_litellm_map(litellm_map: Path) -> None:
    """Every entry with a ``litellm_key`` carries that entry's prices exactly (per token)."""
    prices = json.loads(litellm_map.read_text(encoding="utf-8"), parse_float=Decimal)
    checked = 0
    for model in read_catalog_file(CONFIG):
        key = model.metadata.get("litellm_key")
        if key is None:
            continue
        entry = prices[key]
        per = Decimal(model.cost.per)
        assert model.cost.input / per == entry["input_cost_per_token"], model.key
        assert model.cost.output / per == entry["output_cost_per_token"], model.key
        cached, write = model.cost.cached_input, model.cost.cache_write
        if cached is not None:
            assert cached / per == entry["cache_read_input_token_cost"], model.key
        if write is not None:
            assert write / per == entry["cache_creation_input_token_cost"], model.key
        for tier in model.cost.tiers:
            suffix = f"_above_{tier.threshold // 1000}k_tokens"
            assert tier.input / per == entry["input_cost_per_token" + suffix], model.key
            assert tier.output / per == entry["output_cost_per_token" + suffix], model.key
        deprecation = entry.get("deprecation_date")
        if deprecation is not None and deprecation < TODAY:
            assert model.status is Status.DEPRECATED, model.key
        checked += 1
    assert checked == 8


# -- the schema ----------------------------------------------------------------------------------


def test_committed_schema_is_the_generated_one() -> None:
    assert SCHEMA.read_text(encoding="utf-8") == render_schema(), (
        "config/models.schema.json is out of date: run `registry schema --output config/models.schema.json`"
    )


def test_schema_header_and_determinism() -> None:
    schema = catalog_schema()
    assert list(schema)[:4] == ["$schema", "$id", "title", "description"]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["required"] == ["models"]
    assert schema["additionalProperties"] is False
    assert list(schema["$defs"]) == sorted(schema["$defs"])
    text = render_schema()
    assert text.endswith("}\n")
    assert text == render_schema()
    assert json.loads(text) == schema


def test_schema_prices_are_a_number_or_a_decimal_string() -> None:
    cost = catalog_schema()["$defs"]["Cost"]["properties"]
    branches = cost["input"]["anyOf"]
    assert {b["type"] for b in branches} == {"number", "string"}
    (number,) = (b for b in branches if b["type"] == "number")
    (string,) = (b for b in branches if b["type"] == "string")
    assert number["minimum"] == 0
    pattern = re.compile(string["pattern"])
    for good in ("0", "2.50", "0.175", ".5", "3.", "1e-3", "2E+2", "+1"):
        assert pattern.search(good), good
    for bad in ("-1", "-0.5", "NaN", "Infinity", "1,5", "", " 1", "$2", "1e"):
        assert not pattern.search(bad), bad
    assert cost["per"]["enum"] == [1, 1000, 1000000]


def test_schema_patterns_refuse_what_the_models_refuse() -> None:
    spec = catalog_schema()["$defs"]["ModelSpec"]["properties"]
    semver = re.compile(spec["version"]["pattern"])
    assert semver.search("1.0.0")
    assert semver.search("2.1.3-rc.1+build.5")
    assert not semver.search("1.0")
    assert not semver.search("01.0.0")
    name = re.compile(spec["id"]["pattern"])
    assert name.search("anthropic.claude-3-haiku-20240307-v1:0")
    for bad in ("gpt{4}", "gpt 4", "gpt\t4", "gpt\u200b4", ""):
        assert not name.search(bad), repr(bad)
    currency = catalog_schema()["$defs"]["Cost"]["properties"]["currency"]
    assert re.search(currency["pattern"], "USD")
    assert not re.search(currency["pattern"], "US$")


def test_shipped_config_validates_against_the_schema() -> None:
    jsonschema = pytest.importorskip(
        "jsonschema",
        reason="jsonschema is not installed (not a dependency); pydantic checks the config above",
    )
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    validator.validate(config_document())
    broken = config_document()
    broken["models"][3]["cost"]["input"] = "-0.03"
    assert not validator.is_valid(broken)


# -- broken configs ------------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _set(path: tuple[Any, ...], value: Any) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        node: Any = document
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

    return mutate


# (mutation, the entry, the field path after it, another text the message must hold)
BROKEN: dict[str, tuple[Mutation, str, str, str]] = {
    "negative price": (
        _set(("models", 3, "cost", "input"), "-0.03"),
        "models[3] (openai:gpt-4)",
        ".cost.input",
        "greater than or equal to 0",
    ),
    "negative price as a number": (
        _set(("models", 3, "cost", "output"), -1),
        "models[3] (openai:gpt-4)",
        ".cost.output",
        "greater than or equal to 0",
    ),
    "negative tier price": (
        _set(("models", 0, "cost", "tiers", 0, "input"), "-10"),
        "models[0] (openai:gpt-5.5)",
        ".cost.tiers[0].input",
        "greater than or equal to 0",
    ),
    "unknown currency": (
        _set(("models", 3, "cost", "currency"), "XYZ"),
        "models[3] (openai:gpt-4)",
        ".cost.currency",
        "XYZ",
    ),
    "bad semver": (
        _set(("models", 3, "version"), "1.0"),
        "models[3] (openai:gpt-4)",
        ".version",
        "semantic version",
    ),
    "id with a brace": (
        _set(("models", 3, "id"), "gpt-{4}"),
        "models[3] (openai:gpt-{4})",
        ".id",
        "brace",
    ),
    "id with whitespace": (
        _set(("models", 3, "id"), "gpt 4"),
        "models[3] (openai:gpt 4)",
        ".id",
        "whitespace",
    ),
    "duplicate key": (
        _set(("models", 4, "id"), "gpt-4"),
        "models[4] (openai:gpt-4)",
        ".id",
        "models[3]",
    ),
    "unknown field": (
        _set(("models", 3, "colour"), "red"),
        "models[3] (openai:gpt-4)",
        ".colour",
        "Extra inputs are not permitted",
    ),
    "unknown cost field": (
        _set(("models", 3, "cost", "discount"), "0.5"),
        "models[3] (openai:gpt-4)",
        ".cost.discount",
        "Extra inputs are not permitted",
    ),
    "wrong per": (
        _set(("models", 3, "cost", "per"), 100),
        "models[3] (openai:gpt-4)",
        ".cost.per",
        "1000000",
    ),
}


def test_the_broken_cases_start_from_the_entries_they_name() -> None:
    models = config_document()["models"]
    assert (models[0]["provider"], models[0]["id"]) == ("openai", "gpt-5.5")
    assert (models[3]["provider"], models[3]["id"]) == ("openai", "gpt-4")
    assert (models[4]["provider"], models[4]["id"]) == ("openai", "gpt-3.5-turbo")


def broken_file(tmp_path: Path, case: str) -> Path:
    document = copy.deepcopy(config_document())
    BROKEN[case][0](document)
    return write_json(tmp_path / "broken.json", document)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_config_names_file_entry_and_field(tmp_path: Path, case: str) -> None:
    _, entry, field, detail = BROKEN[case]
    path = broken_file(tmp_path, case)
    with pytest.raises(ConfigError) as info:
        read_catalog_file(path)
    message = str(info.value)
    assert str(path) in message
    assert f"{entry}{field}" in message
    assert detail in message


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_loading_a_broken_config_leaves_redis_unchanged(reg: Any, r: redis.Redis, tmp_path: Path, case: str) -> None:
    reg.load_config(CONFIG)
    before = redis_dump(r)
    assert before
    with pytest.raises(ConfigError, match=re.escape(BROKEN[case][1])):
        reg.load_config(broken_file(tmp_path, case))
    assert redis_dump(r) == before


def test_invalid_json_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "invalid.json"
    path.write_text('{\n  "models": [\n    {"provider": "openai",}\n  ]\n}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        read_catalog_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not valid JSON")
    assert "line 3, column 27" in message


def test_truncated_json_names_file_and_where_it_ends(tmp_path: Path) -> None:
    path = tmp_path / "truncated.json"
    path.write_text('{\n  "models": [\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        read_catalog_file(path)
    assert str(path) in str(info.value)
    assert "line 3, column 1" in str(info.value)


def test_loading_invalid_json_leaves_redis_unchanged(reg: Any, r: redis.Redis, tmp_path: Path) -> None:
    reg.load_config(CONFIG)
    before = redis_dump(r)
    path = tmp_path / "invalid.json"
    path.write_text(CONFIG.read_text(encoding="utf-8")[:-20], encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid JSON"):
        reg.load_config(path)
    assert redis_dump(r) == before


def test_missing_file(reg: Any, tmp_path: Path) -> None:
    path = tmp_path / "nowhere.json"
    with pytest.raises(ConfigError, match=re.escape(f"{path}: cannot read")):
        reg.load_config(path)


# -- loading into Redis --------------------------------------------------------------------------


def test_load_config_then_again_changes_nothing(reg: Any, r: redis.Redis) -> None:
    first = reg.load_config(CONFIG)
    assert first.applied
    assert sorted(m.key for m in first.added) == sorted(EXPECTED_KEYS)
    assert first.updated == []
    assert first.retired == []
    assert first.revision is not None
    assert first.revision > 0
    revision = r.hget(META, "revision")
    assert revision == str(first.revision)
    dump = redis_dump(r)

    second = reg.load_config(str(CONFIG))
    assert not second.changed
    assert not second.applied
    assert second.lines() == []
    assert sorted(second.unchanged) == sorted(EXPECTED_KEYS)
    assert second.revision == first.revision
    assert r.hget(META, "revision") == revision
    assert redis_dump(r) == dump

    assert reg.get_model("openai:gpt-4").cost.input == Decimal("0.03")
    assert reg.get_model("anthropic:claude-3-opus-20240229").status is Status.RETIRED


def test_editing_one_price_reports_exactly_that_field(reg: Any, tmp_path: Path) -> None:
    first = reg.load_config(CONFIG)
    document = config_document()
    assert document["models"][1]["id"] == "gpt-5.2"
    document["models"][1]["cost"]["input"] = "2.00"
    plan = reg.load_config(write_json(tmp_path / "edited.json", document))
    assert plan.applied
    assert plan.added == []
    assert plan.retired == []
    assert [model.key for _, model in plan.updated] == ["openai:gpt-5.2"]
    assert plan.summary()["updated"] == {"openai:gpt-5.2": {"cost.input": ["1.75", "2.00"]}}
    assert plan.lines() == ["~ openai:gpt-5.2", "    cost.input: '1.75' -> '2.00'"]
    assert len(plan.unchanged) == 14
    assert plan.revision is not None
    assert plan.revision > first.revision
    assert reg.get_model("openai:gpt-5.2").cost.input == Decimal("2.00")
    assert reg.get_model("openai:gpt-5.2").cost.output == Decimal("14.00")


def test_prune_retires_what_the_file_no_longer_lists(reg: Any, tmp_path: Path) -> None:
    reg.load_config(CONFIG)
    document = config_document()
    kept = ("gpt-5.2", "claude-opus-4-7")
    document["models"] = [m for m in document["models"] if m["id"] in kept]
    smaller = write_json(tmp_path / "smaller.json", document)

    plan = reg.load_config(smaller, prune=True)
    # The three Claude 3 models are retired already, so they are not retired again.
    retired = {
        "openai:gpt-5.5",
        "openai:gpt-4-turbo",
        "openai:gpt-4",
        "openai:gpt-3.5-turbo",
        "anthropic:claude-sonnet-4-6",
        "anthropic:claude-haiku-4-5",
        "llama.cpp:llama-3.1-8b-instruct",
        "llama.cpp:phi-3.5-mini-instruct",
        "llama.cpp:qwen2-7b-instruct",
        "custom:my-model",
    }
    assert plan.applied
    assert {key for key in plan.summary()["retired"]} == retired
    assert sorted(plan.unchanged) == ["anthropic:claude-opus-4-7", "openai:gpt-5.2"]
    models = {m.key: m for m in reg.list_models()}
    assert set(models) == EXPECTED_KEYS  # retired, not deleted
    for key in retired:
        assert models[key].status is Status.RETIRED, key
    assert models["openai:gpt-4"].cost.input == Decimal("0.03")  # prices kept for the ledger
    assert models["openai:gpt-5.2"].status is Status.ACTIVE
    assert models["anthropic:claude-opus-4-7"].status is Status.ACTIVE

    again = reg.load_config(smaller, prune=True)
    assert not again.changed


def test_without_prune_models_missing_from_the_file_stay(reg: Any, tmp_path: Path) -> None:
    reg.load_config(CONFIG)
    document = config_document()
    document["models"] = document["models"][:1]
    plan = reg.load_config(write_json(tmp_path / "one.json", document))
    assert not plan.changed
    assert reg.get_model("llama.cpp:qwen2-7b-instruct").status is Status.ACTIVE


def test_dry_run_changes_nothing(reg: Any, r: redis.Redis, tmp_path: Path) -> None:
    empty = redis_dump(r)
    plan = reg.load_config(CONFIG, dry_run=True)
    assert not plan.applied
    assert sorted(m.key for m in plan.added) == sorted(EXPECTED_KEYS)
    assert redis_dump(r) == empty

    reg.load_config(CONFIG)
    loaded = redis_dump(r)
    document = config_document()
    document["models"][1]["cost"]["input"] = "2.00"
    document["models"] = document["models"][:2]
    plan = reg.load_config(write_json(tmp_path / "edited.json", document), prune=True, dry_run=True)
    assert not plan.applied
    assert [model.key for _, model in plan.updated] == ["openai:gpt-5.2"]
    assert len(plan.retired) == 10
    assert redis_dump(r) == loaded
    assert reg.get_model("openai:gpt-5.2").cost.input == Decimal("1.75")
