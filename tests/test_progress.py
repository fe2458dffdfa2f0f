"""Progress of long commands: shown to a person at a terminal, never to pipes or --json."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from registry.cli import main
from registry.cli.output import Output
from registry.cli.progress import Steps


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True

    def text(self) -> str:
        """What a person reads: the colours and cursor moves taken out."""
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.getvalue())


def test_steps_show_on_a_terminal_only() -> None:
    shown = Terminal()
    steps = Steps(Output(stderr=shown))
    with steps.step("converting things", total=10) as advance:
        for done in range(0, 11, 5):
            advance(done, 10)
    assert re.search(r"✓ converting things \(\d+\.\d s\)", shown.text())

    piped = io.StringIO()
    with Steps(Output(stderr=piped)).step("quiet", total=3) as advance:
        advance(3, 3)
    assert piped.getvalue() == ""
    with Steps(Output(json=True, stderr=Terminal())).step("quiet") as advance:
        advance(1, 1)


def test_import_and_sync_report_their_steps_and_say_what_changed(
    litellm_map: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["--redis-url", redis_url, "import", "litellm", str(litellm_map)]) == 0
    steps = terminal.text()
    assert f"✓ converting {litellm_map.name}" in steps
    assert "✓ reading the catalog" in steps
    assert re.search(r"✓ writing \d+ models \(one atomic write\)", steps)
    out = capsys.readouterr().out
    assert re.search(r"added \d+, updated 0, 0 unchanged; written, catalog at revision 1", out)

    config = Path(__file__).parent.parent / "config" / "models.json"
    terminal.seek(0)
    terminal.truncate()
    assert main(["--redis-url", redis_url, "sync", str(config)]) == 0
    assert "✓ reading models.json" in terminal.text()
    assert re.search(r"✓ syncing \d+ models", terminal.text())
    assert "revision 2" in capsys.readouterr().out


def test_progress_calls_while_converting(litellm_map: Path) -> None:
    from registry.importers.litellm import import_litellm_map

    seen: list[Any] = []
    result = import_litellm_map(litellm_map, progress=lambda done, total: seen.append((done, total)))
    total = seen[-1][1]
    assert seen[-1] == (total, total)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert len(seen) == total // 250 + 1 + (1 if total % 250 else 0)
    assert len(result.models) > 1000
