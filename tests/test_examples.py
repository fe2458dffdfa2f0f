"""Each example in examples/ runs to the end, against the test Redis and against its embedded
default, and prints what it claims: quotas enforced, the ledger equal to the provider's usage."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

EXAMPLES = ROOT / "examples"


def run_example(name: str, *args: str, redis_url: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_", "REGISTRY_"))}
    if redis_url is not None:
        env["REGISTRY_REDIS_URL"] = redis_url
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("embedded", [False, True], ids=["given-redis", "embedded"])
def test_openai_worker(redis_url: str, embedded: bool) -> None:
    out = run_example("openai_worker.py", redis_url=None if embedded else redis_url)
    assert ("a private " in out) is embedded
    answered = re.findall(r"^request \d: 'Hello from the fake provider.' \(11\+7 tokens\)$", out, re.M)
    refused = re.findall(r"^request \d: refused by tenant.requests_per_minute, retry after [\d.]+ s$", out, re.M)
    assert (len(answered), len(refused)) == (5, 3)
    assert "ledger for acme on openai:gpt-5.2: 5 requests, 55 input + 35 output tokens, $0.000586250" in out


def test_fastapi_gateway(redis_url: str) -> None:
    out = run_example("fastapi_gateway.py", redis_url=redis_url)
    lines = out.splitlines()
    assert lines[:3] == [f"request {n}: 'Hello from the fake provider.', requests left {2 - n + 1}" for n in (1, 2, 3)]
    assert re.fullmatch(r"request 4: 429, Retry-After (\d+) s, requests left 0", lines[3])
    assert int(lines[3].split("Retry-After ")[1].split()[0]) >= 1
    assert lines[-1] == "ledger for acme: 3 requests, 33+21 tokens, $0.000351750"


def test_batch_route_falls_back_when_the_cheapest_model_is_full(redis_url: str) -> None:
    out = run_example("batch_route.py", redis_url=redis_url)
    rows = dict(re.findall(r"^  (\S+:\S+) +(\d+) documents", out, re.M))
    assert set(rows) == {"anthropic:claude-haiku-4-5", "openai:gpt-5.2"}  # the cheapest, then the next
    assert sum(map(int, rows.values())) == 80
    assert 0 < int(rows["anthropic:claude-haiku-4-5"]) <= 50  # its requests_per_minute
    assert re.search(r"^  total +80 requests +\$0\.\d+$", out, re.M)


def test_dashboard_shows_the_traffic_it_watches(redis_url: str) -> None:
    out = run_example("dashboard.py", "--every", "0.2", redis_url=redis_url)
    last = out.strip().split("\n\n")[-1].splitlines()
    assert last[1].startswith("model ")
    rows = {line.split()[0]: int(line.split()[1]) for line in last[2:]}
    assert rows == {"openai:gpt-5.2": rows["openai:gpt-5.2"], "anthropic:claude-haiku-4-5": 80 - rows["openai:gpt-5.2"]}
