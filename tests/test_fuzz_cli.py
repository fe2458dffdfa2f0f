"""Every command of ``registry`` run (in-process, ``main([...])``) with hostile argv (hypothesis).

Model keys, tenants, amounts, periods, thresholds, stream ids, counts and intervals are drawn
from what the commands take and from hostile strings: separators and hash-tag braces, option
look-alikes, NaN, infinities and 24-digit numbers, a lone surrogate (what Python makes of argv
bytes that are not UTF-8); files are missing, directories, empty, binary, malformed JSON, JSON
nested a hundred thousand deep, or valid JSON of the wrong shape; the global options take a
hostile namespace and URL too.

Whatever the argv: ``main`` returns 0, 1 or 2 (never raises), a failure says
``registry: error: ...`` (or argparse's usage message) on stderr and never prints a traceback,
and a command that fails has written nothing. Long-running commands are left out: ``demo``,
``exporter``, ``top`` without ``--once``, ``events --follow`` and ``sync --watch``.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import event, given
from hypothesis import strategies as st

from registry import Registry
from registry.cli import main
from tests.conftest import model
from tests.fuzzing import HOSTILE_NAMES, TIMEOUT, RedisState, fuzz_settings

pytestmark = TIMEOUT

NS = "fuzz"
WORDS = [
    "",
    "-",
    "--",
    "-1",
    "0",
    "1",
    "5",
    "1.5",
    "1e99",
    "nan",
    "inf",
    "-inf",
    "99999999999999999999999",
    "0.0000000001",
    "openai:gpt-4",
    "openai:gpt-4o",
    "openai:",
    ":gpt-4",
    "acme",
    "beta",
    "day",
    "week",
    "month",
    "year",
    "USD",
    "usd",
    "XXX",
    "1-0",
    "0-0",
    "abc-def",
    "*",
    "--json",
    "--help",
    "\udcff",
    *(name for name in HOSTILE_NAMES if "\x00" not in name),
]
# No NUL: no process can be given one in its argv (a lone surrogate it can: bytes not UTF-8).
WORD = st.one_of(
    st.sampled_from(WORDS),
    st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=8),
)
FILE_CONTENTS: list[bytes | None] = [
    None,  # a directory
    b"",
    b"{",
    b"\xff\xfe\x00junk",
    b"null",
    b"[]",
    b"1e999999",
    b'{"models": 5}',
    b'{"models": [{"provider": "openai", "id": "a{b}"}]}',
    b'{"models": [' + json.dumps(model(id="fine")).encode() + b"]}",
    b'{"format": "registry-export/1", "ledger": {"catalog}:meta": {"counters": {"revision": 1}}}}',
    b'{"format": "registry-export/1", "ledger": [], "catalog": 5}',
    b'{"format": "registry-export/1", "catalog": [], "budgets": [], "ledger": {}}',
    b'{"openai/gpt-x": {"input_cost_per_token": "x", "litellm_provider": "openai", "mode": "chat"}}',
    b'{"gpt-x": {"input_cost_per_token": 1e-7, "output_cost_per_token": -1, "litellm_provider": "openai"}}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a": ' * 50_000 + b"1" + b"}" * 50_000,
]


class Files:
    """Paths for the file arguments of one example."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def path(self, data: st.DataObject, *, existing: bool = True) -> str:
        choice = data.draw(st.sampled_from([*range(len(FILE_CONTENTS)), "missing", "word"]), label="file")
        if choice == "missing":
            return str(self.tmp / "no" / "such.json")
        if choice == "word":
            return data.draw(WORD)
        content = FILE_CONTENTS[choice]
        if content is None:
            return str(self.tmp)
        path = self.tmp / f"file{choice}.json"
        path.write_bytes(content)
        return str(path)


def word(data: st.DataObject, *valid: str) -> str:
    """One of ``valid`` (what the argument takes) or a hostile word, as often."""
    return data.draw(st.one_of(st.sampled_from(valid), WORD) if valid else WORD)


def opt(data: st.DataObject, flag: str, *valid: str) -> list[str]:
    """``[flag, value]`` or nothing."""
    return [flag, word(data, *valid)] if data.draw(st.booleans()) else []


def flag(data: st.DataObject, name: str) -> list[str]:
    return [name] if data.draw(st.booleans()) else []


Argv = Callable[[st.DataObject, Files], list[str]]
KEY = ("openai:gpt-4", "anthropic:claude-3")
COUNT = ("0", "3", "1000")
COMMANDS: dict[str, Argv] = {
    "models list": lambda d, f: ["models", "list", *opt(d, "--provider", "openai"), *opt(d, "--status", "active")],
    "models show": lambda d, f: ["models", "show", word(d, *KEY)],
    "models search": lambda d, f: [
        "models",
        "search",
        *opt(d, "--provider", "openai"),
        *opt(d, "--capability", "chat"),
        *opt(d, "--min-context", *COUNT),
        *opt(d, "--max-context", *COUNT),
        *opt(d, "--name", "gpt", "*4", "[a-"),
        *opt(d, "--tag", "x"),
        *opt(d, "--status", "active", "beta"),
        *opt(d, "--max-cost-per-token", "0.001"),
        *opt(d, "--min-version", "1.0.0"),
        *opt(d, "--max-version", "2.0.0-rc.1"),
        *flag(d, "--exclude-deprecated"),
    ],
    "models cheapest": lambda d, f: [
        "models",
        "cheapest",
        *opt(d, "--capability", "chat"),
        *opt(d, "--limit", "1", "3"),
        *opt(d, "--input-tokens", *COUNT),
        *opt(d, "--output-tokens", *COUNT),
        *opt(d, "--currency", "USD", "eur"),
    ],
    "estimate": lambda d, f: [
        "estimate",
        word(d, *KEY),
        *opt(d, "--input", *COUNT),
        *opt(d, "--output", *COUNT),
        *opt(d, "--cached", *COUNT),
        *opt(d, "--cache-write", *COUNT),
        *opt(d, "--reasoning", *COUNT),
    ],
    "sync": lambda d, f: ["sync", f.path(d), *flag(d, "--prune"), *flag(d, "--dry-run")],
    "import litellm": lambda d, f: ["import", "litellm", f.path(d), *flag(d, "--dry-run"), *flag(d, "--replace")],
    "import dump": lambda d, f: ["import", "dump", f.path(d)],
    "export": lambda d, f: ["export", *(["--output", f.path(d)] if d.draw(st.booleans()) else [])],
    "budget set": lambda d, f: [
        "budget",
        "set",
        word(d, "acme", "beta"),
        word(d, "1", "0.5", "0.000000001"),
        *opt(d, "--period", "day", "week", "month"),
        *opt(d, "--model", *KEY),
        *opt(d, "--currency", "USD", "eur"),
        *(
            ["--thresholds", *(word(d, "50", "80") for _ in range(d.draw(st.integers(1, 3))))]
            if d.draw(st.booleans())
            else []
        ),
    ],
    "budget delete": lambda d, f: [
        "budget",
        "delete",
        word(d, "acme", "beta"),
        *opt(d, "--period", "day", "week"),
        *opt(d, "--model", *KEY),
    ],
    "budget list": lambda d, f: ["budget", "list", *([word(d, "acme", "beta")] if d.draw(st.booleans()) else [])],
    "budget status": lambda d, f: ["budget", "status", word(d, "acme", "beta")],
    "events": lambda d, f: [
        "events",
        *opt(d, "--type", "usage.recorded", "catalog.changed", "budget.threshold"),
        *opt(d, "--last", "1", "5"),
        *opt(d, "--since-id", "0-0", "1-0", "1700000000000"),
    ],
    "top --once": lambda d, f: ["top", "--once", *opt(d, "--interval", "1")],
    "schema": lambda d, f: ["schema", *(["--check", f.path(d)] if d.draw(st.booleans()) else [])],
}


@pytest.fixture
def rb(redis_url: str) -> Any:
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    yield client
    client.close()


def seed(redis_url: str) -> None:
    """A catalog, a budget and some usage in namespace ``fuzz``, for the commands to read."""
    with Registry.from_url(redis_url, namespace=NS, watch=False) as reg:
        reg.register_models([model(), model("anthropic", "claude-3", tenant_limits={"acme": {"tokens_per_minute": 9}})])
        reg.set_budget("acme", "1", "day")
        reg.record_usage("openai:gpt-4", 10, 5, tenant="acme", request_id="r1")


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` with the standard streams of a real process (pytest's capture is stricter
    than a real stderr): UTF-8 on both, a character it cannot encode an error on stdout and an
    escape on stderr (Python's ``backslashreplace``)."""
    out, err = io.BytesIO(), io.BytesIO()
    streams = (
        io.TextIOWrapper(out, encoding="utf-8", errors="strict", write_through=True),
        io.TextIOWrapper(err, encoding="utf-8", errors="backslashreplace", write_through=True),
    )
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = streams
    try:
        code = main(argv)
    finally:
        sys.stdout, sys.stderr = saved
    return code, out.getvalue().decode(), err.getvalue().decode()


@pytest.mark.parametrize("command", sorted(COMMANDS))
@fuzz_settings(0.5)
@given(data=st.data())
def test_a_command_exits_with_a_message_never_a_traceback(
    redis_url: str,
    rb: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    data: st.DataObject,
) -> None:
    monkeypatch.chdir(tmp_path)  # a fuzzed file name (an --output, say) lands in the test's own directory
    rb.flushall()
    seed(redis_url)
    argv = COMMANDS[command](data, Files(tmp_path))
    url = data.draw(st.sampled_from([redis_url] * 8 + ["redis://127.0.0.1:1/0", "http://x", ""]), label="url")
    namespace = data.draw(st.sampled_from([NS] * 8 + ["", "a:b", "{x}", "\udcff", "x" * 65]), label="namespace")
    if command == "export" and data.draw(st.booleans()):
        argv += ["--json"]
    before = RedisState.of(rb)
    code, out, err = run_main(["--redis-url", url, "--namespace", namespace, *argv])
    event(f"exit {code}")
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err, err
    assert "Traceback" not in out, out
    if code != 0:
        said = "error" in err or (command == "budget delete" and out.startswith("no "))  # no such budget: exit 1
        assert said, (argv, code, out, err)  # "registry: error: ..." or argparse's usage message
        changed = before.changed(RedisState.of(rb))
        assert not changed, f"{argv} failed ({err.strip()}) after writing {sorted(changed)}"


# -- what the fuzzing found: each case once, by hand ----------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("argv", "content", "expected"),
    [
        # RecursionError from json / msgspec: a traceback
        (["import", "dump"], DEEP, 2),
        (["sync"], DEEP, 2),
        (["import", "litellm"], DEEP, 2),
        # UnicodeDecodeError reading the file to compare: it differs
        (["schema", "--check"], b"\xff\xfe", 1),
        # a file name that is not UTF-8 (a lone surrogate here), printed back: UnicodeEncodeError
        (["export", "--output"], None, 0),
        (["import", "dump"], None, 2),
    ],
    ids=["import dump nested", "sync nested", "import litellm nested", "schema --check binary", "export", "dump"],
)
def test_what_the_fuzzing_found_exits_with_a_message(
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    content: bytes | None,
    expected: int,
) -> None:
    monkeypatch.chdir(tmp_path)
    name = "\udcff.json"
    if content is not None:
        name = "file.json"
        (tmp_path / name).write_bytes(content)
    seed(redis_url)
    code, out, err = run_main(["--redis-url", redis_url, "--namespace", NS, *argv, name])
    assert (code, "Traceback" in out + err) == (expected, False), (out, err)
    assert "\\udcff" in out + err or content is not None
