"""The command line, run in-process with ``main([...])`` against the private test Redis."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

import registry.cli.sync as cli_sync
from registry import Registry, __version__
from registry.cli.output import Output, cost_text
from registry.embedded import free_port
from registry.schema import render_schema

ROOT = Path(__file__).resolve().parent.parent

MODELS: list[dict[str, Any]] = [
    {
        "provider": "openai",
        "id": "gpt-4o",
        "name": "GPT-4o",
        "version": "1.2.0",
        "capabilities": ["chat", "vision"],
        "context_window": 128000,
        "max_output_tokens": 16384,
        "cost": {"input": "2.50", "output": "10.00", "cached_input": "1.25", "per": 1000000},
        "rate_limit": {"requests_per_minute": 500, "tokens_per_minute": 30000},
        "tags": ["flagship"],
    },
    {
        "provider": "openai",
        "id": "gpt-4o-mini",
        "capabilities": ["chat"],
        "context_window": 128000,
        "cost": {"input": "0.15", "output": "0.60"},
    },
    {
        "provider": "anthropic",
        "id": "claude-3-haiku",
        "capabilities": ["chat"],
        "context_window": 200000,
        "cost": {"input": "0.25", "output": "1.25"},
        "status": "deprecated",
    },
    {
        "provider": "openai",
        "id": "text-embedding-3-small",
        "capabilities": ["embeddings"],
        "context_window": 8191,
        "cost": {"input": "0.02", "output": "0"},
    },
]
KEYS = sorted(f"{m['provider']}:{m['id']}" for m in MODELS)


def write_catalog(path: Path, models: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"models": models}, indent=2), encoding="utf-8")
    return path


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    return write_catalog(tmp_path / "models.json", MODELS)


@pytest.fixture
def loaded(run: Callable[..., tuple[int, str, str]], catalog_file: Path) -> Path:
    code, _, err = run("sync", str(catalog_file))
    assert code == 0, err
    return catalog_file


def catalog_in(redis_url: str, namespace: str = "registry") -> dict[str, Any]:
    """What Redis holds now, read by a client of its own: {key: model}."""
    with Registry.from_url(redis_url, namespace=namespace, watch=False) as reg:
        return {m.key: m for m in reg.list_models()}


def revision_of(redis_url: str) -> int:
    with Registry.from_url(redis_url, watch=False) as reg:
        return reg.refresh()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {condition}")
        time.sleep(0.01)


def assert_one_error(err: str, *needles: str) -> None:
    assert err.startswith("registry: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err


# -- models list / show --------------------------------------------------------------------------


def test_list_table(run: Any, loaded: Path) -> None:
    code, out, err = run("models", "list")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["KEY", "STATUS", "CONTEXT", "INPUT", "OUTPUT", "PER", "CUR", "RPM", "TPM", "RPD"]
    assert [line.split()[0] for line in lines[1:]] == KEYS
    gpt4o = next(line for line in lines if line.startswith("openai:gpt-4o "))
    assert gpt4o.split() == ["openai:gpt-4o", "active", "128,000", "2.50", "10.00", "1M", "USD", "500", "30,000", "-"]
    # columns are aligned: every row puts STATUS where the header does
    column = lines[0].index("STATUS")
    assert all(line[column - 2 : column] == "  " and line[column] != " " for line in lines[1:])


def test_list_json_and_filters(run: Any, loaded: Path) -> None:
    code, out, _ = run("--json", "models", "list")
    assert code == 0
    models = json.loads(out)
    assert [f"{m['provider']}:{m['id']}" for m in models] == KEYS
    gpt4o = next(m for m in models if m["id"] == "gpt-4o")
    assert gpt4o["cost"]["input"] == "2.50"
    assert gpt4o["cost"]["cached_input"] == "1.25"
    assert gpt4o["rate_limit"]["requests_per_minute"] == 500

    # global options are accepted after the command too
    code, out, _ = run("models", "list", "--provider", "anthropic", "--json")
    assert [m["id"] for m in json.loads(out)] == ["claude-3-haiku"]
    code, out, _ = run("models", "list", "--status", "active", "--status", "beta", "--json")
    assert len(json.loads(out)) == 3


def test_list_empty_catalog(run: Any) -> None:
    assert run("models", "list")[:2] == (0, "(no models)\n")
    assert json.loads(run("--json", "models", "list")[1]) == []


def test_show(run: Any, loaded: Path) -> None:
    code, out, err = run("models", "show", "openai:gpt-4o")
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == "openai:gpt-4o"
    fields = {line.split("  ", 2)[1].strip(): line.split("  ")[-1].strip() for line in out.splitlines()[1:]}
    assert fields["name"] == "GPT-4o"
    assert fields["price"] == "input 2.50, output 10.00 USD per 1M tokens"
    assert fields["cached input"] == "1.25"
    assert fields["context window"] == "128,000 tokens"
    assert fields["rate limit"] == "500 requests/min, 30,000 tokens/min, - requests/day"
    assert fields["revision"] == "1"

    code, out, _ = run("--json", "models", "show", "openai:gpt-4o")
    document = json.loads(out)
    assert document["cost"] == {
        "input": "2.50",
        "output": "10.00",
        "currency": "USD",
        "per": 1000000,
        "note": None,
        "cached_input": "1.25",
        "cache_write": None,
        "reasoning_output": None,
        "per_request": None,
        "tiers": [],
    }
    assert document["version"] == "1.2.0"
    assert document["capabilities"] == ["chat", "vision"]


def test_show_missing_and_malformed_key(run: Any, loaded: Path) -> None:
    code, out, err = run("models", "show", "openai:nope")
    assert (code, out) == (1, "")
    assert err == "registry: error: no model 'openai:nope' in the catalog\n"
    code, out, err = run("models", "show", "no-colon")
    assert (code, out) == (2, "")
    assert_one_error(err, "provider:id")


# -- search / cheapest / estimate ----------------------------------------------------------------


def _keys(run: Any, *args: str) -> list[str]:
    code, out, err = run("--json", "models", "search", *args)
    assert code == 0, err
    return [f"{m['provider']}:{m['id']}" for m in json.loads(out)]


def test_search(run: Any, loaded: Path) -> None:
    assert _keys(run) == KEYS
    assert _keys(run, "--capability", "chat", "--max-context", "150000") == ["openai:gpt-4o", "openai:gpt-4o-mini"]
    assert _keys(run, "--capability", "chat", "--exclude-deprecated") == ["openai:gpt-4o", "openai:gpt-4o-mini"]
    assert _keys(run, "--capability", "chat", "--capability", "vision") == ["openai:gpt-4o"]
    assert _keys(run, "--name", "mini") == ["openai:gpt-4o-mini"]
    assert _keys(run, "--name", "*haiku*") == ["anthropic:claude-3-haiku"]
    assert _keys(run, "--tag", "flagship") == ["openai:gpt-4o"]
    assert _keys(run, "--status", "deprecated") == ["anthropic:claude-3-haiku"]
    assert _keys(run, "--provider", "anthropic", "--provider", "openai", "--min-context", "150000") == [
        "anthropic:claude-3-haiku"
    ]
    # both prices at most 0.000001 per token: 0.60 and 0.02 per 1M pass, 1.25 per 1M does not
    assert _keys(run, "--max-cost-per-token", "0.000001") == ["openai:gpt-4o-mini", "openai:text-embedding-3-small"]
    assert _keys(run, "--min-version", "1.1.0") == ["openai:gpt-4o"]
    assert _keys(run, "--max-version", "1.1.0", "--provider", "openai") == [
        "openai:gpt-4o-mini",
        "openai:text-embedding-3-small",
    ]

    code, out, _ = run("models", "search", "--name", "gpt-4o")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["openai:gpt-4o", "openai:gpt-4o-mini"]


def test_search_bad_arguments(run: Any, loaded: Path) -> None:
    code, out, err = run("models", "search", "--min-context", "-1")
    assert (code, out) == (2, "")
    assert "expected a number >= 0" in err
    assert "Traceback" not in err
    code, _, err = run("models", "search", "--max-cost-per-token", "cheap")
    assert code == 2
    assert "decimal amount" in err
    code, _, err = run("models", "search", "--min-version", "one")
    assert code == 2
    assert_one_error(err, "'one' is not a semantic version")


def test_cheapest(run: Any, loaded: Path) -> None:
    code, out, err = run("--json", "models", "cheapest", "--capability", "chat")
    assert (code, err) == (0, "")
    ranked = json.loads(out)
    # 3 input + 1 output tokens per 1M: (3 * 0.15 + 0.60) / 10^6 and (3 * 2.50 + 10.00) / 10^6;
    # the deprecated claude-3-haiku is left out
    assert [(r["rank"], r["key"], r["cost"], r["currency"]) for r in ranked] == [
        (1, "openai:gpt-4o-mini", "0.00000105", "USD"),
        (2, "openai:gpt-4o", "0.0000175", "USD"),
    ]
    assert ranked[1]["model"]["cost"]["input"] == "2.50"

    code, out, _ = run("models", "cheapest", "--limit", "1", "--input-tokens", "3000", "--output-tokens", "1000")
    lines = out.splitlines()
    assert lines[0] == "cheapest models for a request of 3,000 input + 1,000 output tokens:"
    assert lines[1].split() == ["#", "KEY", "COST", "CUR", "CONTEXT"]
    # every model: the embedding model wins, (3000 * 0.02 + 1000 * 0) / 10^6
    assert lines[2].split() == ["1", "openai:text-embedding-3-small", "0.00006", "USD", "8,191"]
    assert len(lines) == 3

    code, out, _ = run("models", "cheapest", "--currency", "EUR")
    assert (code, out.splitlines()[1]) == (0, "(no models match)")
    assert run("models", "cheapest", "--limit", "0")[0] == 2


def test_estimate(run: Any, loaded: Path) -> None:
    code, out, err = run("estimate", "openai:gpt-4o", "--input", "1000", "--output", "200")
    assert (code, err) == (0, "")
    # (1000 * 2.50 + 200 * 10.00) / 10^6
    assert out.split()[:2] == ["0.0045", "USD"]

    code, out, _ = run("--json", "estimate", "openai:gpt-4o", "--input", "10000", "--cached", "8000", "--output", "100")
    # (2000 * 2.50 + 8000 * 1.25 + 100 * 10.00) / 10^6
    assert json.loads(out) == {
        "model": "openai:gpt-4o",
        "cost": "0.016",
        "currency": "USD",
        "input_tokens": 10000,
        "output_tokens": 100,
        "cached_input_tokens": 8000,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
    }
    # no cache-write price: billed as input. (1000 * 2.50 + 500 * 2.50 + 0) / 10^6
    code, out, _ = run(
        "--json", "estimate", "openai:gpt-4o", "--input", "1500", "--cache-write", "500", "--output", "0"
    )
    assert json.loads(out)["cost"] == "0.00375"
    # never scientific notation, never a float: 1 * 0.02 / 10^6
    code, out, _ = run("--json", "estimate", "openai:text-embedding-3-small", "--input", "1", "--output", "0")
    assert json.loads(out)["cost"] == "0.00000002"
    assert Decimal(json.loads(out)["cost"]) == Decimal("0.02") / 10**6


def test_estimate_errors(run: Any, loaded: Path) -> None:
    code, out, err = run("estimate", "openai:gpt-4o", "--input", "10", "--cached", "20", "--output", "0")
    assert (code, out) == (2, "")
    assert_one_error(err, "exceed input_tokens")
    code, _, err = run("estimate", "openai:none", "--input", "1", "--output", "1")
    assert code == 1
    assert err == "registry: error: no model 'openai:none' in the catalog\n"
    assert run("estimate", "openai:gpt-4o", "--input", "1")[0] == 2  # --output is required


def test_cost_text_is_exact() -> None:
    assert cost_text(Decimal("0.004500")) == "0.0045"
    assert cost_text(Decimal("1E+1")) == "10"
    assert cost_text(Decimal("0E-9")) == "0"
    many = Decimal("1." + "1" * 60)  # beyond the default context's 28 digits: not rounded
    assert cost_text(many) == str(many)


# -- sync ----------------------------------------------------------------------------------------


def test_sync_dry_run_apply_twice_and_prune(run: Any, redis_url: str, catalog_file: Path, r: redis.Redis) -> None:
    code, out, err = run("sync", str(catalog_file), "--dry-run")
    assert (code, err) == (0, "")
    assert sorted(line[2:] for line in out.splitlines() if line.startswith("+ ")) == KEYS
    assert out.splitlines()[-1] == (
        "dry run: 4 added, 0 updated, 0 retired, 0 unchanged; nothing written (catalog at revision 0)"
    )
    assert r.keys("*") == []

    code, out, _ = run("sync", str(catalog_file))
    assert code == 0
    assert out.splitlines()[-1] == "4 added, 0 updated, 0 retired, 0 unchanged; revision 1"
    assert sorted(catalog_in(redis_url)) == KEYS

    code, out, _ = run("sync", str(catalog_file))
    assert (code, out) == (0, "no changes (4 unchanged); revision 1\n")

    changed = [dict(m) for m in MODELS[1:]]  # gpt-4o left out
    changed[0] = {**changed[0], "cost": {"input": "0.10", "output": "0.60"}}
    write_catalog(catalog_file, changed)
    code, out, _ = run("sync", str(catalog_file))
    assert out.splitlines() == [
        "~ openai:gpt-4o-mini",
        "    cost.input: '0.15' -> '0.10'",
        "0 added, 1 updated, 0 retired, 2 unchanged; revision 2",
    ]
    assert catalog_in(redis_url)["openai:gpt-4o"].status == "active"  # no --prune: kept

    code, out, _ = run("--json", "sync", str(catalog_file), "--prune", "--dry-run")
    document = json.loads(out)
    assert document["retired"] == ["openai:gpt-4o"]
    assert document["applied"] is False
    assert catalog_in(redis_url)["openai:gpt-4o"].status == "active"

    code, out, _ = run("sync", str(catalog_file), "--prune")
    assert "- openai:gpt-4o (retired)" in out.splitlines()
    assert catalog_in(redis_url)["openai:gpt-4o"].status == "retired"


def test_sync_json(run: Any, catalog_file: Path) -> None:
    code, out, _ = run("--json", "sync", str(catalog_file))
    document = json.loads(out)
    assert code == 0
    assert sorted(document["added"]) == KEYS
    assert (document["applied"], document["revision"], document["file"]) == (True, 1, str(catalog_file))


def test_sync_broken_file_changes_nothing(run: Any, redis_url: str, loaded: Path, r: redis.Redis) -> None:
    before = {key: r.hgetall(key) for key in r.keys("*") if r.type(key) == "hash"}
    revision = revision_of(redis_url)
    broken = [dict(m) for m in MODELS]
    broken[0] = {**broken[0], "context_window": -1, "cost": {"input": "2.00", "output": "10"}}
    broken[1] = {**broken[1], "status": "gone"}
    write_catalog(loaded, broken)

    code, out, err = run("sync", str(loaded))
    assert (code, out) == (2, "")
    assert_one_error(err, str(loaded), "openai:gpt-4o", "context_window", "status")
    assert len(err.splitlines()) == 2  # one line per problem, the first one prefixed
    assert revision_of(redis_url) == revision
    assert {key: r.hgetall(key) for key in before} == before

    loaded.write_text('{"models": [\n  {"provider": "openai",,}\n]}', encoding="utf-8")
    code, _, err = run("sync", str(loaded))
    assert code == 2
    assert_one_error(err, str(loaded), "not valid JSON", "line 2")

    code, _, err = run("sync", str(loaded.parent / "missing.json"))
    assert code == 2
    assert_one_error(err, "missing.json", "cannot read")
    assert revision_of(redis_url) == revision


def test_namespace_option_and_environment(
    run: Any, redis_url: str, catalog_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("--namespace", "other", "sync", str(catalog_file))[0] == 0
    assert sorted(catalog_in(redis_url, "other")) == KEYS
    assert catalog_in(redis_url) == {}
    monkeypatch.setenv("REGISTRY_NAMESPACE", "other")
    monkeypatch.setenv("REGISTRY_REDIS_URL", redis_url)
    code, out, _ = run("--json", "models", "list", url=None)
    assert code == 0
    assert len(json.loads(out)) == 4
    code, out, _ = run("--namespace", "bad namespace!", "models", "list")
    assert code == 2


# -- sync --watch --------------------------------------------------------------------------------


class Watch:
    """``watch_config`` running in a thread, writing into buffers the test reads."""

    def __init__(self, redis_url: str, path: Path, **options: Any) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()
        self.stop = threading.Event()
        self.registry = Registry.from_url(redis_url, watch=False)
        self.syncs: list[int] = []
        output = Output(stdout=self.out, stderr=self.err)
        self.thread = threading.Thread(
            target=lambda: self.syncs.append(
                cli_sync.watch_config(self.registry, path, output, interval=0.02, stop=self.stop, **options)
            ),
            daemon=True,
        )

    def __enter__(self) -> Watch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.registry.close()
        assert not self.thread.is_alive()


def _price(redis_url: str, key: str) -> Decimal | None:
    model = catalog_in(redis_url).get(key)
    return None if model is None else model.cost.input


def test_watch_follows_edits_and_survives_a_broken_file(redis_url: str, catalog_file: Path, r: redis.Redis) -> None:
    edited = [dict(m) for m in MODELS]
    with Watch(redis_url, catalog_file) as watch:
        wait_until(lambda: _price(redis_url, "openai:gpt-4o") == Decimal("2.50"))

        # same size, written right after: only the content hash tells it changed
        edited[0] = {**edited[0], "cost": {**edited[0]["cost"], "input": "2.00"}}
        write_catalog(catalog_file, edited)
        wait_until(lambda: _price(redis_url, "openai:gpt-4o") == Decimal("2.00"))
        wait_until(lambda: "cost.input: '2.50' -> '2.00'" in watch.out.getvalue())

        revision = revision_of(redis_url)
        broken = [*edited[:1], {**edited[1], "context_window": "lots"}, *edited[2:]]
        write_catalog(catalog_file, broken)
        wait_until(lambda: "context_window" in watch.err.getvalue())
        assert_one_error(watch.err.getvalue(), str(catalog_file), "openai:gpt-4o-mini")
        assert revision_of(redis_url) == revision

        catalog_file.unlink()
        wait_until(lambda: "cannot read" in watch.err.getvalue())

        edited[1] = {**edited[1], "cost": {"input": "0.12", "output": "0.60"}}
        write_catalog(catalog_file, edited)
        wait_until(lambda: _price(redis_url, "openai:gpt-4o-mini") == Decimal("0.12"))
        assert watch.thread.is_alive()
    assert watch.syncs == [3]
    out = watch.out.getvalue()
    assert out.startswith(f"watching {catalog_file} every 0.02s")
    assert out.count(f"{catalog_file} changed:") == 2
    assert watch.err.getvalue().count("context_window") == 1  # reported once, not every poll


def test_watch_json_lines_and_dry_run(redis_url: str, catalog_file: Path) -> None:
    stdout = io.StringIO()
    output = Output(json=True, stdout=stdout, stderr=io.StringIO())
    with Registry.from_url(redis_url, watch=False) as reg:
        syncs = cli_sync.watch_config(reg, catalog_file, output, dry_run=True, interval=0.01, max_polls=3)
    assert syncs == 1
    (line,) = stdout.getvalue().splitlines()
    document = json.loads(line)
    assert sorted(document["added"]) == KEYS
    assert document["dry_run"] is True
    assert catalog_in(redis_url) == {}


def test_sync_watch_command(run: Any, redis_url: str, catalog_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``registry sync --watch``: the loop until Ctrl-C, here after a few polls."""
    real = cli_sync.watch_config

    def interrupted(*args: Any, **kwargs: Any) -> int:
        real(*args, **{**kwargs, "max_polls": 2})
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_sync, "watch_config", interrupted)
    code, out, err = run("sync", str(catalog_file), "--watch", "--interval", "0.01")
    assert (code, err) == (0, "")
    assert "4 added" in out
    assert out.endswith("stopped\n")
    assert sorted(catalog_in(redis_url)) == KEYS
    assert run("sync", str(catalog_file), "--watch", "--interval", "0")[0] == 2


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("models", "list"),
        ("--json", "models", "show", "openai:gpt-4o"),
        ("estimate", "openai:gpt-4o", "--input", "1", "--output", "1"),
        ("sync", "{file}"),
        ("sync", "{file}", "--watch"),
        ("import", "litellm", "{litellm}"),
        ("demo", "--config", "{file}"),
    ],
)
def test_unreachable_redis(run: Any, args: tuple[str, ...], catalog_file: Path, litellm_file: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    argv = [a.format(file=catalog_file, litellm=litellm_file) for a in args]
    code, out, err = run(*argv, url=url)
    assert (code, out if "demo" not in args else "") == (1, "")
    assert len(err.splitlines()) == 1
    assert_one_error(err, "Redis unavailable", url)


def test_unreachable_redis_from_environment(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("REGISTRY_REDIS_URL", url)
    code, _, err = run("models", "list", url=None)
    assert code == 1
    assert_one_error(err, url)


def test_password_is_not_printed(run: Any) -> None:
    code, _, err = run("models", "list", url=f"redis://:s3cret@127.0.0.1:{free_port()}/0")
    assert code == 1
    assert "s3cret" not in err
    assert ":***@" in err


def test_usage_errors(run: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run("models", "list", url="http://localhost:6379")
    assert code == 2
    assert_one_error(err, "Redis URL 'http://localhost:6379'")
    code, _, err = run("models", "list", "--status", "gone")
    assert code == 2
    assert "invalid choice: 'gone'" in err
    assert "usage: registry" in err
    assert run()[0] == 2  # no command
    assert run("models")[0] == 2  # no sub-command
    assert run("frobnicate")[0] == 2
    code, out, _ = run("--version")
    assert (code, out) == (0, f"registry {__version__}\n")
    code, out, _ = run("models", "search", "--help")
    assert code == 0
    assert "--max-cost-per-token" in out


# -- schema --------------------------------------------------------------------------------------


def test_schema(run: Any, tmp_path: Path) -> None:
    code, out, _ = run("schema")
    assert (code, out) == (0, render_schema())
    target = tmp_path / "models.schema.json"
    code, out, _ = run("schema", "--output", str(target))
    assert code == 0
    assert target.read_text(encoding="utf-8") == render_schema()
    code, out, err = run("schema", "--check", str(target))
    assert (code, err) == (0, "")
    assert "up to date" in out

    target.write_text(render_schema().replace('"models"', '"modelz"', 1), encoding="utf-8")
    code, out, err = run("schema", "--check", str(target))
    assert (code, out) == (1, "")
    assert_one_error(err, str(target), "differs", "registry schema --output")
    code, _, err = run("schema", "--check", str(tmp_path / "absent.json"))
    assert code == 1
    assert "cannot read" in err
    assert run("schema", "--check", str(target), "--output", str(target))[0] == 2
    code, _, err = run("schema", "--output", str(tmp_path / "no" / "such" / "dir.json"))
    assert code == 1
    assert err == f"registry: error: {tmp_path / 'no' / 'such' / 'dir.json'}: No such file or directory\n"


def test_shipped_schema_is_current(run: Any) -> None:
    shipped = ROOT / "config" / "models.schema.json"
    if not shipped.exists():
        pytest.skip("config/models.schema.json is absent")
    code, _, err = run("schema", "--check", str(shipped))
    assert code == 0, err


# -- import litellm ------------------------------------------------------------------------------


LITELLM_MAP = """{
  "sample_spec": {"litellm_provider": "openai", "mode": "chat"},
  "gpt-x": {"litellm_provider": "openai", "mode": "chat", "max_input_tokens": 128000,
            "max_output_tokens": 4096, "input_cost_per_token": 1e-06,
            "output_cost_per_token": 2e-06, "supports_vision": true},
  "gpt-x-latest": {"alias_of": "gpt-x"},
  "embed-x": {"litellm_provider": "openai", "mode": "embedding", "max_input_tokens": 8191,
              "input_cost_per_token": 2.0000000000000001e-08},
  "tts-x": {"litellm_provider": "openai", "mode": "audio_speech",
            "input_cost_per_character": 1.5e-05},
  "tts-y": {"litellm_provider": "openai", "mode": "audio_speech",
            "input_cost_per_character": 3e-05}
}"""


@pytest.fixture
def litellm_file(tmp_path: Path) -> Path:
    path = tmp_path / "model_prices.json"
    path.write_text(LITELLM_MAP, encoding="utf-8")
    return path


def test_import_litellm(run: Any, redis_url: str, litellm_file: Path) -> None:
    code, out, err = run("import", "litellm", str(litellm_file), "--dry-run")
    assert (code, err) == (0, "")
    assert "imported 3 models (1 aliases)" in out
    assert "1 with float noise in a price, imported as written" in out  # embed-x
    assert "left out 3 entries (--json lists them all):" in out
    lines = out.splitlines()
    table = lines[lines.index("left out 3 entries (--json lists them all):") + 1 :][:3]
    assert [re.split(r"\s{2,}", line.strip()) for line in table] == [
        ["COUNT", "REASON", "FOR EXAMPLE"],
        ["2", "mode audio_speech", "tts-x, tts-y"],
        ["1", "not a model entry", "sample_spec"],
    ]
    assert "would add 3" in out
    assert "nothing written" in out
    assert catalog_in(redis_url) == {}

    code, out, _ = run("import", "litellm", str(litellm_file))
    assert code == 0
    assert "added 3, updated 0, 0 unchanged; written" in out
    held = catalog_in(redis_url)
    assert sorted(held) == ["openai:embed-x", "openai:gpt-x", "openai:gpt-x-latest"]
    assert held["openai:gpt-x"].cost.input == Decimal("0.000001")
    assert held["openai:embed-x"].cost.input == Decimal("2.0000000000000001e-08")  # as written
    assert held["openai:gpt-x-latest"].metadata["alias_of"] == "gpt-x"
    # 1000 * 0.000001 + 500 * 0.000002, priced per token
    code, out, _ = run("--json", "estimate", "openai:gpt-x", "--input", "1000", "--output", "500")
    assert json.loads(out)["cost"] == "0.002"

    # models already registered are kept unless --replace
    with Registry.from_url(redis_url, watch=False) as reg:
        reg.update_model("openai:gpt-x", {"cost": {"input": "0.000005"}})
    code, out, _ = run("import", "litellm", str(litellm_file))
    assert out.splitlines()[-1] == (
        "added 0, updated 0, 0 unchanged, 3 already registered and kept (--replace overwrites "
        "them); nothing written, catalog at revision 2"
    )
    code, out, _ = run("--json", "import", "litellm", str(litellm_file))
    document = json.loads(out)
    assert document["import"]["imported"] == 3
    assert document["import"]["skipped_by_reason"]["mode audio_speech"]["count"] == 2
    assert sorted(document["kept"]) == sorted(held)
    assert document["sync"]["added"] == []
    assert document["sync"]["applied"] is False
    assert _price(redis_url, "openai:gpt-x") == Decimal("0.000005")

    code, out, _ = run("--json", "import", "litellm", str(litellm_file), "--replace")
    document = json.loads(out)
    assert document["kept"] == []
    assert document["sync"]["updated"] == ["openai:gpt-x"]
    assert _price(redis_url, "openai:gpt-x") == Decimal("0.000001")


def test_import_litellm_bad_file(run: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    code, _, err = run("import", "litellm", str(bad))
    assert code == 2
    assert_one_error(err, str(bad))
    code, _, err = run("import", "litellm", str(tmp_path / "absent.json"))
    assert code == 2
    assert_one_error(err, "absent.json", "cannot read")


# -- demo ----------------------------------------------------------------------------------------


def test_demo_on_given_redis(run: Any, redis_url: str, catalog_file: Path) -> None:
    """Another catalog: the fleet takes its active chat models; the namespace is removed after."""
    args = ("--json", "demo", "--config", str(catalog_file), "--workers", "2", "--duration", "2", "--seed", "3")
    code, out, err = run(*args)
    assert (code, err) == (0, "")
    document = json.loads(out)
    assert document["redis"] == {"url": redis_url, "embedded": False}
    assert document["scenario"]["namespace"].startswith("demo-")
    assert [m["key"] for m in document["scenario"]["models"]] == ["openai:gpt-4o", "openai:gpt-4o-mini"]
    assert document["verdict"]["passed"] is True, [c for c in document["verdict"]["checks"] if not c["passed"]]
    assert catalog_in(redis_url, document["scenario"]["namespace"]) == {}
    client = redis.Redis.from_url(redis_url)
    assert client.dbsize() == 0  # nothing left behind, nothing touched outside its namespace
    client.close()


def test_demo_embedded(run: Any, monkeypatch: pytest.MonkeyPatch, catalog_file: Path) -> None:
    monkeypatch.delenv("REGISTRY_REDIS_URL", raising=False)
    started = time.monotonic()
    code, out, err = run("demo", "--config", str(catalog_file), "--workers", "2", "--duration", "2", url=None)
    elapsed = time.monotonic() - started
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith(("started private redis-server", "started in-process fakeredis"))
    assert "fleet: 2 worker processes (1 of them die now and then and are replaced)" in out
    assert any(line.startswith("  verdict: PASS (") for line in lines)
    assert lines[-1].startswith("stopped the private ")
    assert elapsed < 30  # about 4 s; generous for loaded machines


def test_demo_bad_config(run: Any, tmp_path: Path) -> None:
    code, _, err = run("demo", "--config", str(tmp_path / "absent.json"))
    assert code == 2
    assert_one_error(err, "absent.json")


def test_silence_stdout_after_a_broken_pipe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from registry.cli import _silence_stdout

    with open(tmp_path / "stdout", "wb") as file:
        monkeypatch.setattr(sys, "stdout", SimpleNamespace(fileno=file.fileno))
        _silence_stdout()
        os.write(file.fileno(), b"lost")
    assert (tmp_path / "stdout").read_bytes() == b""


# -- python -m registry --------------------------------------------------------------------------


def test_main_module_in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import runpy

    monkeypatch.setattr(sys, "argv", ["registry", "--version"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "registry" / "__main__.py"), run_name="__main__")
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"registry {__version__}\n"


def test_python_m_registry_help() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-m", "registry", "--help"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: registry ")
    for command in ("models", "estimate", "sync", "import", "schema", "demo"):
        assert command in result.stdout


# -- details and edges ---------------------------------------------------------------------------


def test_show_tiers_notes_and_metadata(run: Any, redis_url: str) -> None:
    with Registry.from_url(redis_url, watch=False) as reg:
        reg.register_model(
            {
                "provider": "google",
                "id": "gemini-x",
                "context_window": 1000000,
                "cost": {
                    "input": "1.25",
                    "output": "10",
                    "cache_write": "1.50",
                    "note": "list price",
                    "tiers": [{"threshold": 200000, "input": "2.50", "output": "15"}],
                },
                "rate_limit": {"requests_per_day": 1000, "note": "tier 1"},
                "metadata": {"region": "eu"},
            }
        )
    code, out, _ = run("models", "show", "google:gemini-x")
    assert code == 0
    rows = [re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in out.splitlines()[1:]]
    assert ["tier", "above 200,000 prompt tokens: input 2.50, output 15"] in rows
    assert ["cache write", "1.50"] in rows
    assert ["max output", "-"] in rows
    assert "  price note      list price" in out
    assert "  rate limit      - requests/min, - tokens/min, 1,000 requests/day" in out
    assert "  limit note      tier 1" in out
    assert '  metadata        {"region":"eu"}' in out
    # a 300,000-token prompt is billed at the tier: (300000 * 2.50 + 1000 * 15) / 10^6
    code, out, _ = run(
        "estimate",
        "google:gemini-x",
        "--input",
        "300000",
        "--output",
        "1000",
        "--cached",
        "0",
        "--cache-write",
        "100000",
    )
    # cache write has no tier price: base 1.50. (200000 * 2.50 + 100000 * 1.50 + 1000 * 15) / 10^6
    assert out == ("0.665 USD  (google:gemini-x: 300,000 input, 100,000 written to the cache, 1,000 output tokens)\n")
    code, out, _ = run("estimate", "google:gemini-x", "--input", "1000", "--cached", "10", "--output", "0")
    # cached input has no price of its own: billed as input. 1000 * 1.25 / 10^6
    assert out.startswith("0.00125 USD  (google:gemini-x: 1,000 input, 10 of them cached, 0 ")


def test_to_json_writes_decimals_as_exact_strings() -> None:
    from registry.cli.output import to_json

    assert to_json({"a": Decimal("1E-7")}, compact=True) == '{"a":"0.0000001"}'
    with pytest.raises(TypeError, match="object"):
        to_json(object())


def test_argument_checks(run: Any, catalog_file: Path) -> None:
    for args in (
        ("sync", str(catalog_file), "--interval", "soon"),
        ("sync", str(catalog_file), "--interval", "inf"),
        ("estimate", "openai:gpt-4o", "--input", "many", "--output", "1"),
        ("models", "search", "--max-cost-per-token", "-1"),
        ("models", "search", "--max-cost-per-token", "NaN"),
    ):
        code, out, err = run(*args)
        assert (code, out) == (2, ""), args
        assert "usage: registry" in err
        assert "Traceback" not in err


def test_unexpected_failures_are_one_line(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from registry.cli import catalog
    from registry.errors import ScriptError

    def failing(error: BaseException) -> Callable[..., int]:
        def handler(ctx: Any) -> int:
            raise error

        return handler

    monkeypatch.setattr(catalog, "cmd_list", failing(ScriptError("bad reply\nfrom a script")))
    code, out, err = run("models", "list")
    assert (code, out, err) == (1, "", "registry: error: bad reply from a script\n")
    monkeypatch.setattr(catalog, "cmd_list", failing(KeyboardInterrupt()))
    assert run("models", "list")[0] == 130
    monkeypatch.setattr(catalog, "cmd_list", failing(BrokenPipeError()))
    assert run("models", "list")[:2] == (1, "")


def test_demo_cannot_start_a_private_redis(run: Any, monkeypatch: pytest.MonkeyPatch, catalog_file: Path) -> None:
    from registry import embedded

    def no_server() -> None:
        raise RuntimeError("no redis-server on PATH and fakeredis is not installed")

    monkeypatch.delenv("REGISTRY_REDIS_URL", raising=False)
    monkeypatch.setattr(embedded, "start", no_server)
    code, out, err = run("demo", "--config", str(catalog_file), url=None)
    assert (code, out) == (1, "")
    assert err == (
        "registry: error: could not start a private Redis: no redis-server on PATH "
        "and fakeredis is not installed (is Redis running? set --redis-url or "
        "$REGISTRY_REDIS_URL)\n"
    )


def test_demo_without_shipped_config(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from registry import _resources

    def missing(name: str) -> Path:
        raise FileNotFoundError(f"registry's data files are missing; looked for {name}")

    monkeypatch.setattr(_resources, "data_file", missing)
    code, _, err = run("demo")
    assert code == 2
    assert_one_error(err, "models.json", "pass --config FILE")


def test_watcher_trusts_an_old_mtime_and_retries_redis_errors(redis_url: str, catalog_file: Path) -> None:
    output = Output(stdout=io.StringIO(), stderr=io.StringIO())
    old = time.time_ns() - 60 * 10**9
    os.utime(catalog_file, ns=(old, old))
    with Registry.from_url(redis_url, watch=False) as reg:
        watcher = cli_sync.ConfigWatcher(reg, catalog_file, output)
        assert watcher.poll() is not None
        assert watcher.poll() is None
        # same size and mtime, read long after that mtime: trusted unchanged without reading
        text = catalog_file.read_text(encoding="utf-8")
        catalog_file.write_text(text.replace('"2.50"', '"2.00"'), encoding="utf-8")
        os.utime(catalog_file, ns=(old, old))
        assert watcher.poll() is None
        # a new mtime: read, and the new content synced
        os.utime(catalog_file)
        plan = watcher.poll()
        assert plan is not None
        assert [m.key for _, m in plan.updated] == ["openai:gpt-4o"]

    errors = io.StringIO()
    with Registry.from_url(f"redis://127.0.0.1:{free_port()}/0", watch=False) as reg:
        watcher = cli_sync.ConfigWatcher(reg, catalog_file, Output(stderr=errors))
        assert watcher.poll() is None
        assert watcher.poll() is None  # retried: the content was never synced
    assert errors.getvalue().count("Redis unavailable") == 1


def test_export_and_import_dump(run: Any, tmp_path: Path, redis_url: str) -> None:
    from registry import Registry

    reg = Registry.from_url(redis_url, watch=False, namespace="src")
    reg.register_model(
        {"provider": "openai", "id": "gpt-4", "context_window": 8192, "cost": {"input": "30", "output": "60"}}
    )
    reg.record_usage("openai:gpt-4", 1000, 500, tenant="acme")
    reg.close()
    dump_file = tmp_path / "dump.json"
    code, out, err = run("--namespace", "src", "export", "--output", str(dump_file))
    assert (code, err) == (0, "")
    assert "1 models, 9 ledger keys" in out
    code, out, _ = run("--namespace", "src", "export")
    assert json.loads(out)["format"] == "registry-export/1"
    code, out, err = run("--namespace", "dst", "import", "dump", str(dump_file))
    assert (code, err) == (0, "")
    assert "restored 1 models and 9 ledger keys" in out
    copy = Registry.from_url(redis_url, watch=False, namespace="dst")
    assert copy.get_statistics().total_cost == Decimal("0.06")
    copy.close()
    code, _, err = run("--namespace", "dst", "import", "dump", str(dump_file))
    assert code == 2
    assert "already has a ledger" in err
    code, _, err = run("import", "dump", str(tmp_path / "missing.json"))
    assert (code, "cannot read" in err) == (2, True)
    (tmp_path / "bad.json").write_text("{")
    code, _, err = run("import", "dump", str(tmp_path / "bad.json"))
    assert (code, "not valid JSON" in err) == (2, True)


def test_budget_commands(run: Any, redis_url: str) -> None:
    from registry import Registry

    with Registry.from_url(redis_url, watch=False) as reg:
        reg.register_model(
            {"provider": "openai", "id": "gpt-4", "context_window": 8192, "cost": {"input": "30", "output": "60"}}
        )
    assert run("budget", "set", "acme", "0.1") == (0, "set acme budget:*:day: 0.1 USD\n", "")
    code, out, _ = run(
        "budget", "set", "acme", "250", "--period", "month", "--model", "openai:gpt-4", "--thresholds", "90"
    )
    assert (code, out) == (0, "set acme budget:openai:gpt-4:month: 250 USD\n")
    code, out, _ = run("budget", "list")
    assert out.splitlines() == [
        "TENANT  MODEL         PERIOD  AMOUNT   THRESHOLDS",
        "acme    *             day     0.1 USD  50%,80%,100%",
        "acme    openai:gpt-4  month   250 USD  90%",
    ]
    with Registry.from_url(redis_url, watch=False) as reg:
        held = reg.acquire("openai:gpt-4", 1000, 1000, tenant="acme").reservation
        reg.settle(held, 1000, 500)  # $0.06: 60 % of the day budget
        reg.acquire("openai:gpt-4", 100, 100, tenant="acme")  # $0.009 held
    code, out, _ = run("budget", "status", "acme")
    lines = out.splitlines()
    assert lines[0].split() == ["MODEL", "PERIOD", "SPENT", "HELD", "REMAINING", "USED", "REACHED"]
    assert lines[1].split()[:2] == ["*", "day"]
    assert lines[1].split()[4:] == ["0.06", "/", "0.1", "USD", "0.009", "0.031", "60%", "50%"]
    code, out, _ = run("--json", "budget", "status", "acme")
    day = json.loads(out)[0]
    assert (day["spent"], day["held"], day["remaining"], day["thresholds_reached"]) == (
        "0.060000000",
        "0.009000000",
        "0.031000000",
        [50],
    )
    assert run("budget", "delete", "acme", "--period", "month", "--model", "openai:gpt-4")[:2] == (
        0,
        "removed acme budget:openai:gpt-4:month\n",
    )
    assert run("budget", "delete", "acme", "--period", "month")[0] == 1
    code, _, err = run("budget", "set", "acme", "1", "--model", "openai:nope")
    assert code != 0
    assert "openai:nope" in err
    code, _, err = run("budget", "set", "acme", "abc")
    assert code == 2
    assert run("budget", "list", "nobody")[1] == "no budgets\n"
    assert run("budget", "status", "nobody")[1] == "no budgets for nobody\n"
