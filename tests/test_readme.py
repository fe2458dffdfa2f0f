"""The README's Python examples run, in order, against the test Redis (a stale example fails)."""

from __future__ import annotations

import re

import pytest

from registry import Registry
from tests.conftest import ROOT

BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_the_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the examples name config/models.json
    reg = Registry.from_url(redis_url)  # for examples that use a `reg` made earlier
    reg.load_config("config/models.json")
    exec(BLOCKS[index].replace('"redis://localhost:6379/0"', repr(redis_url)), {"reg": reg})
    reg.close()
