"""A pytest plugin that runs any test module with every client in functions mode (FCALL).

    python -m pytest tests/test_admission.py tests/test_ledger.py -p tests.functions_mode

Every :class:`~registry.Registry` and :class:`~registry.AsyncRegistry` made without ``scripts=``
(through ``from_url`` or the constructor) then runs its Lua as ``FCALL`` of the function
library instead of ``EVALSHA``. At the end the plugin writes the test server's FCALL and EVALSHA
call counts to the file named by ``$REGISTRY_FUNCTIONS_REPORT`` (if set), so a caller can check
that the scripts really ran as functions. ``tests/test_acl.py`` runs the admission, ledger,
budget and catalog suites this way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import redis

from registry import AsyncRegistry, Registry

REPORT_ENV = "REGISTRY_FUNCTIONS_REPORT"


def pytest_configure(config: pytest.Config) -> None:
    for cls in (Registry, AsyncRegistry):
        cls.__init__.__kwdefaults__["scripts"] = "functions"
        cls.from_url.__func__.__kwdefaults__["scripts"] = "functions"  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    report, url = os.environ.get(REPORT_ENV), os.environ.get("REGISTRY_TEST_REDIS_URL")
    if not report or not url:
        return
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    calls = {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("fcall", "evalsha", "eval")}
    Path(report).write_text(json.dumps(calls), encoding="utf-8")
