"""``registry top``: frames rendered from a real fleet_view, the command, and the dashboard
driven in a pseudo-terminal against a Redis filled by a short ``registry demo`` run."""

from __future__ import annotations

import io
import os
import re
import sys
import termios
import threading
import time
from decimal import Decimal
from typing import Any

import pexpect
import pytest
from rich.console import Console

import registry.cli.top as cli_top
from registry import Registry
from registry.budgets.periods import DAY_MS
from registry.cli import main
from registry.errors import BackendUnavailable, ScriptError
from registry.ledger.view import FleetView
from registry.testing import FakeClock, use_clock
from registry.top import DROP_ORDER, bar, money, rates, render_frame
from tests.conftest import model

DAY = 20_000  # 2024-10-04
T0 = DAY * DAY_MS + 7_200_000  # 02:00 UTC
GPT, CLAUDE = "openai:gpt-4", "anthropic:claude"
ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>78])")


def fill(reg: Any) -> FakeClock:
    """Two models, one budget; usage whose figures are worked out in the comments."""
    reg.register_models(
        [
            model(rate_limit={"requests_per_minute": 4, "tokens_per_minute": 10_000, "requests_per_day": 1000}),
            model("anthropic", "claude", cost={"input": "3", "output": "15"}),  # no limits
        ]
    )
    clock = FakeClock(T0)
    use_clock(reg, clock)
    reg.set_budget("acme", "0.1", "day")  # thresholds 50 80 100
    # $30/$60 per M: 1000 in + 500 out = 0.03 + 0.03 = $0.06 of acme's $0.10: 60%, past 50%
    first = reg.acquire(GPT, 1000, 500, tenant="acme")
    reg.settle(first.reservation, 1000, 500, latency_ms=300)
    assert not reg.acquire(GPT, 1000, 500, tenant="acme").allowed  # 0.06 + 0.06 > 0.10: the budget refuses
    for _ in range(3):  # three more requests fill the 4 per minute
        reg.acquire(GPT, 100, 100)
    assert not reg.acquire(GPT, 100, 100).allowed  # the 5th in the minute: the window refuses
    reg.record_usage(GPT, 0, 0, latency_ms=40)  # not admitted through the windows: a ledger record only
    reg.record_usage(CLAUDE, 1_000_000, 0, success=False, tenant="beta", latency_ms=2000)  # $3, failed
    return clock


def frame_text(renderable: Any, width: int = 160) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def row(text: str, key: str, *, cut: bool = False) -> str:
    """The line of ``key`` (with ``cut``: of the key that starts with it)."""
    (line,) = [line for line in text.splitlines() if line.startswith(key if cut else key + " ")]
    return line


def test_frame_from_a_real_view(reg: Any) -> None:
    fill(reg)
    view = reg.fleet_view()
    text = frame_text(render_frame(view, namespace="ns", url="redis://h:6379/0", interval=1.0))
    lines = text.splitlines()
    assert lines[0] == "registry top  ns @ redis://h:6379/0  2024-10-04 02:00:00 UTC  2 models  every 1s  q quits"
    assert lines[1].startswith("models (2)")
    assert lines[2].split() == [
        "MODEL",
        *("RPM", "TPM", "RPD", "REQ/MIN", "DENY/MIN", "429/MIN", "TODAY", "MONTH", "CACHED"),
        *("P50", "MS", "P95", "MS", "OK"),
    ]
    # busiest first: claude spent $3 today, gpt-4 $0.06
    assert [line.split()[0] for line in lines[4:6]] == [CLAUDE, GPT]
    gpt = row(text, GPT)
    # windows: 4 of 4 requests; tokens 1,500 settled + 3 x 200 held = 2,100 of 10,000; 4 of 1,000 a day
    assert "██████ 100% 4/4" in gpt
    assert "█░░░░░  21% 2.1K/10K" in gpt
    assert "░░░░░░   0% 4/1K" in gpt
    # no rates without a previous view; spend today and this month; no input read from a cache;
    # latencies 300 and 40 ms: the median is in the first bucket (<= 50 ms), the 95th percentile
    # in the <= 500 ms one
    assert gpt.split()[-11:] == ["-", "-", "-", "0.06", "USD", "0.06", "USD", "0%", "50", "500", "100%"]
    assert row(text, CLAUDE).split()[1:] == [
        *("-", "-", "-", "-", "-", "-", "3.00", "USD", "3.00", "USD", "0%"),
        *("2,500", "2,500", "0%"),
    ]
    budgets = lines[lines.index(next(line for line in lines if line.startswith("budgets"))) :]
    assert budgets[0].strip() == "budgets (1)"
    assert budgets[1].split() == ["TENANT", "BUDGET", "SPENT", "HELD", "USED", "THRESHOLDS", "DENIED"]
    assert budgets[3].split() == ["acme", "*/day", "0.06", "/", "0.10", "USD", "0.00", "████░░", "60%", "50%", "1"]


def test_the_tpm_column_shows_the_fullest_token_window(reg: Any) -> None:
    """Input and output tokens limited apart (ITPM, OTPM): the TPM column shows whichever is
    fullest, marked ``in`` or ``out``; with TPM too, TPM where it is the fullest."""
    reg.register_models(
        [
            model(
                "anthropic", "split", rate_limit={"input_tokens_per_minute": 10_000, "output_tokens_per_minute": 2_000}
            ),
            model("anthropic", "all", rate_limit={"tokens_per_minute": 4_000, "input_tokens_per_minute": 10_000}),
        ]
    )
    use_clock(reg, FakeClock(T0))
    reg.acquire("anthropic:split", 2_000, 1_000)  # 20% of ITPM, 50% of OTPM
    reg.acquire("anthropic:all", 3_000, 0)  # 75% of TPM, 30% of ITPM
    text = frame_text(render_frame(reg.fleet_view(), namespace="ns", url="u"))
    assert "███░░░  50% out 1K/2K" in row(text, "anthropic:split")
    assert "████░░  75% 3K/4K" in row(text, "anthropic:all")
    reg.acquire("anthropic:split", 7_000, 0)  # 90% of ITPM
    text = frame_text(render_frame(reg.fleet_view(), namespace="ns", url="u"))
    assert "█████░  90% in 9K/10K" in row(text, "anthropic:split")


def test_rates_between_two_views(reg: Any) -> None:
    clock = fill(reg)
    first = reg.fleet_view()
    clock.advance(30)  # half a minute: the minute windows still hold the 4 requests
    for _ in range(3):
        reg.record_usage(GPT, 10, 10)
    assert not reg.acquire(GPT, 100, 100).allowed
    second = reg.fleet_view()
    assert second.at_ms - first.at_ms == 30_000
    speeds = rates(second, first)
    assert (speeds[GPT].requests, speeds[GPT].denials) == (6.0, 2.0)  # 3 and 1 in half a minute
    assert (speeds[CLAUDE].requests, speeds[CLAUDE].denials) == (0.0, 0.0)
    assert rates(second, None)[GPT].requests is None  # the first frame
    assert rates(second, second)[GPT].requests is None  # no time between them
    emptied = FleetView(second.at_ms + 1000, tuple(m for m in first.models if m.model.key == GPT))
    assert rates(emptied, second)[GPT].requests is None  # counters went down: not a rate
    text = frame_text(render_frame(second, first, namespace="ns", url="u"))
    # records that went through no acquire move the ledger, not the windows
    assert row(text, GPT).split()[3:9] == ["4/4", "█░░░░░", "21%", "2.1K/10K", "░░░░░░", "0%"]
    assert row(text, GPT).split()[10:13] == ["6.0", "2.0", "0.0"]


def test_the_providers_429s_per_minute_and_the_share_of_input_read_from_the_cache(reg: Any) -> None:
    """429/MIN: the ledger's ``throttled`` between two views, per minute (red when not 0);
    CACHED: of today's input tokens, those read from the prompt cache (``-`` with no input)."""
    reg.register_models([model(), model("anthropic", "claude")])
    clock = FakeClock(T0)
    use_clock(reg, clock)
    reg.record_usage(GPT, 1000, 10, cached_input_tokens=750, cache_write_tokens=200)
    reg.record_usage(GPT, 1000, 10)
    first = reg.fleet_view()
    clock.advance(30)
    for _ in range(2):
        reg.record_usage(GPT, 0, 0, throttled=True)
    second = reg.fleet_view()
    speeds = rates(second, first)
    assert (speeds[GPT].requests, speeds[GPT].denials, speeds[GPT].throttled) == (4.0, 0.0, 4.0)
    assert speeds[CLAUDE].throttled == 0.0
    assert rates(second, None)[GPT].throttled is None
    frame = render_frame(second, first, namespace="ns", url="u")
    text = frame_text(frame)
    # REQ/MIN, DENY/MIN, 429/MIN, TODAY, MONTH (no cache prices: the cached tokens at the input's)
    assert row(text, GPT).split()[4:11] == ["4.0", "0.0", "4.0", "0.0612", "USD", "0.0612", "USD"]
    assert row(text, GPT).split()[11] == "37.5%"  # CACHED: 750 of 2,000 input tokens
    assert row(text, CLAUDE).split()[4:7] == ["0.0", "0.0", "0.0"]
    assert row(text, CLAUDE).split()[11] == "-"  # no input today
    console = Console(record=True, width=160, file=io.StringIO(), force_terminal=True, color_system="standard")
    console.print(frame)
    (styled,) = [line for line in console.export_text(styles=True).splitlines() if GPT in line]
    assert len(re.findall(r"\x1b\[31m *4\.0\x1b\[0m", styled)) == 1  # 429s in red (and the REQ/MIN 4.0 not)


def test_frame_fits_the_height_and_says_what_is_hidden(reg: Any) -> None:
    reg.register_models([model(id=f"m{i:02}") for i in range(30)])
    for tenant in ("t1", "t2", "t3"):
        reg.set_budget(tenant, "5", "month", model="openai:m07", thresholds=[10])
    admitted = reg.acquire("openai:m07", 100_000, 0, tenant="t1")
    reg.settle(admitted.reservation, 100_000, 0)  # $3 of t1's $5 (a budget counts what is settled): m07 first
    view = reg.fleet_view()
    for height in (12, 20, 40):
        text = frame_text(render_frame(view, namespace="ns", url="u", height=height, error="boom"))
        assert len(text.splitlines()) <= height
        assert text.splitlines()[1] == "error: boom (showing the last good reading)"
    text = frame_text(render_frame(view, namespace="ns", url="u", height=20))
    assert "models (30), 23 more not shown: enlarge the terminal" in text
    assert row(text, "openai:m07")
    assert "openai:m06" not in text  # after m00..m05 by key
    assert "budgets (3)" in text
    assert row(text, "t1").split() == [
        *("t1", "openai:m07/month", "3.00", "/", "5.00", "USD", "0.00"),
        *("████░░", "60%", "10%", "0"),
    ]
    text = frame_text(render_frame(view, namespace="ns", url="u", height=12))
    assert "budgets (3), 2 more not shown" in text
    assert len(frame_text(render_frame(view, namespace="ns", url="u")).splitlines()) == 30 + 3 + 1 + 3 + 3 + 1


def test_a_narrow_terminal_drops_columns_rather_than_cutting_every_one(reg: Any) -> None:
    fill(reg)
    reg.register_models([model(id=f"m{i:02}") for i in range(30)])
    view = reg.fleet_view()
    counts = []
    for width in (160, 120, 100, 80, 40):
        text = frame_text(render_frame(view, namespace="ns", url="u", height=20), width=width)
        lines = text.splitlines()
        assert len(lines) <= 20
        assert all(len(line) <= width for line in lines)
        headings = lines[2].split()
        if width >= 80:
            assert headings[:2] == ["MODEL", "RPM"]
            assert row(text, GPT)  # the key is not cut to nothing
        dropped = [label for label in DROP_ORDER if label.split()[0] not in headings]
        assert dropped == list(DROP_ORDER[: len(dropped)])  # in that order
        if dropped and width >= 120:  # narrower, the title itself is cut (with an ellipsis)
            assert lines[1].rstrip().endswith(f"(too narrow for {', '.join(dropped)})")
        counts.append(len(dropped))
    assert counts[0] == 0
    assert counts == sorted(counts)
    assert counts[-1] == len(DROP_ORDER)  # and then what is left is cut


def test_frame_without_data() -> None:
    text = frame_text(render_frame(None, namespace="ns", url="u", interval=0.5, error="Redis unavailable"))
    assert text.splitlines() == [
        "registry top  ns @ u  -  no data yet  every 0.5s  q quits",
        "error: Redis unavailable",
    ]
    empty = frame_text(render_frame(FleetView(T0, ()), namespace="ns", url="u", interval=None))
    assert "(no models in the catalog)" in empty
    assert "(no budgets set)" in empty
    assert "every" not in empty.splitlines()[0]


def test_bars_and_money() -> None:
    assert bar(0.45).plain == "███░░░  45%"
    assert bar(0).plain == "░░░░░░   0%"
    assert bar(1.7).plain == "██████ 170%"
    assert [s.style for s in bar(0.5).spans] == ["green", "dim"]
    assert bar(0.85).spans[0].style == "yellow"
    assert bar(1).spans[0].style == "red"
    assert [money(Decimal(v)) for v in ("0", "3", "0.1", "0.0609", "0.06094", "0.00004", "1234.565")] == [
        "0.00",
        "3.00",
        "0.10",
        "0.0609",
        "0.0609",
        "<0.0001",
        "1,234.57",
    ]


# -- one refresh: fleet_view's two round trips, nothing per model ---------------------------------


def test_a_refresh_takes_two_round_trips_for_a_hundred_models(redis_url: str) -> None:
    with Registry.from_url(redis_url, watch=False) as writer:
        writer.register_models([model(id=f"m{i}", rate_limit={"requests_per_minute": 100}) for i in range(100)])
        writer.set_budget("acme", "5", "month")
        for i in range(0, 100, 10):
            writer.record_usage(f"openai:m{i}", 10, 10, tenant=f"t{i % 3}")
    with Registry.from_url(redis_url, watch=True) as reg:  # as the command builds it
        top = cli_top.Top(reg.fleet_view, "registry", redis_url, 1.0)
        top.refresh()  # the first read also loads the catalog
        sent: list[Any] = []
        execute, me = reg._execute, threading.get_ident()

        def counting(request: Any) -> Any:
            if threading.get_ident() == me:  # not the watcher's catalog checks
                sent.append(request)
            return execute(request)

        reg._execute = counting  # type: ignore[method-assign]
        top.refresh()
        text = frame_text(top.frame(height=200))
        del reg._execute
    assert len(sent) == 2
    assert top.error is None
    assert "models (100)" in text
    assert "budgets (1)" in text


# -- the command -----------------------------------------------------------------------------------


def test_top_once(run: Any, redis_url: str) -> None:
    with Registry.from_url(redis_url, watch=False) as reg:
        reg.register_models([model(rate_limit={"requests_per_minute": 10})])
        reg.set_budget("acme", "1", "day", thresholds=[1, 2])
        admitted = reg.acquire(GPT, 1000, 500, tenant="acme")
        reg.settle(admitted.reservation, 1000, 500, latency_ms=120)  # $0.06
    code, out, err = run("top", "--once")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("registry top  registry @ redis://127.0.0.1:")
    assert "every" not in lines[0]
    assert lines[1].startswith("models (1)")
    assert row(out, GPT).split()[1:] == [
        *("█░░░░░", "10%", "1/10", "-", "-", "-", "-", "-"),
        *("0.06", "USD", "0.06", "USD", "0%", "250", "250", "100%"),
    ]
    assert "acme    */day   0.06 / 1.00 USD  0.00  ░░░░░░   6%  1% 2%" in out
    assert "\x1b[" not in out  # not a terminal: no colours

    code, out, err = run("top", "--once", url="redis://:hunter2@127.0.0.1:1/0")
    assert (code, out) == (1, "")
    assert err.startswith("registry: error: ")
    assert "redis://:***@127.0.0.1:1/0" in err
    assert "hunter2" not in err
    assert run("--json", "top", "--once")[0] == 2
    assert run("top", "--interval", "0")[0] == 2


class FakeKeys:
    """Nothing typed for ``frames`` waits, then ``typed``."""

    def __init__(self, frames: int, typed: str = "q") -> None:
        self.left, self.typed = frames, typed

    def __enter__(self) -> FakeKeys:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def wait(self, timeout: float) -> str:
        time.sleep(max(0.0, timeout))
        self.left -= 1
        if self.left > 0:
            return ""
        if self.typed == "^C":
            raise KeyboardInterrupt
        return self.typed


class TerminalIO(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("typed", ["q", "^C"])
def test_top_live_without_a_terminal_prints_frame_after_frame(
    run: Any,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    typed: str,
) -> None:
    with Registry.from_url(redis_url, watch=False) as reg:
        reg.register_models([model()])
    monkeypatch.setattr(cli_top, "Keys", lambda stream: FakeKeys(3, typed))
    started = time.monotonic()
    code, out, err = run("top", "--interval", "0.1")
    assert (code, err) == (0, "")
    assert 0.2 <= time.monotonic() - started < 5
    assert out.count("registry top  registry @") == 3
    assert out.count(f"{GPT} ") == 3


def test_top_live_on_a_terminal_and_a_redis_that_is_not_there(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = TerminalIO()
    monkeypatch.setattr(cli_top, "Keys", lambda stream: FakeKeys(2))
    monkeypatch.setattr(sys, "stdout", screen)
    assert main(["--redis-url", "redis://127.0.0.1:1/0", "top", "--interval", "0.05"]) == 0
    shown = ANSI.sub("", screen.getvalue())
    raw = screen.getvalue()
    assert 0 <= raw.index("\x1b[?1049h") < raw.rindex("\x1b[?1049l")  # the alternate screen, then left
    assert "error: Redis unavailable" in shown
    assert "(is Redis running at redis://127.0.0.1:1/0?)" in shown


def test_keys_cbreak_on_a_pty_and_restored() -> None:
    master, slave = os.openpty()
    with os.fdopen(slave, "r") as stream:
        before = termios.tcgetattr(slave)
        assert before[3] & termios.ICANON
        with cli_top.Keys(stream) as keys:
            assert not termios.tcgetattr(slave)[3] & (termios.ICANON | termios.ECHO)
            assert keys.wait(0.01) == ""
            os.write(master, b"x")
            assert keys.wait(1) == "x"  # one key, no Enter needed
        assert termios.tcgetattr(slave) == before
        os.close(master)  # the terminal hangs up
        with pytest.raises(EOFError):
            keys.wait(1)


def test_keys_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli_top.Keys(io.StringIO()).fd is None  # not a terminal: no cbreak, no keys
    assert cli_top.Keys(None).fd is None  # type: ignore[arg-type] # no stdin at all
    with cli_top.Keys(io.StringIO()) as keys:
        started = time.monotonic()
        assert keys.wait(0.05) == ""  # just waits
        assert time.monotonic() - started >= 0.04
    master, slave = os.openpty()
    with os.fdopen(slave, "r") as stream:
        keys = cli_top.Keys(stream)
        os.write(master, b"q\n")  # not in cbreak mode: readable once a line ends

        def fails(fd: int, n: int) -> bytes:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(cli_top.os, "read", fails)
        with pytest.raises(EOFError):  # a terminal gone (EIO) ends top like a key would
            keys.wait(1)
    os.close(master)


class ScriptedKeys:
    """Each wait returns the next of ``typed``: a key at once, nothing ("") when the time is up."""

    def __init__(self, *typed: str) -> None:
        self.typed = list(typed)

    def wait(self, timeout: float) -> str:
        typed = self.typed.pop(0)
        if not typed:
            time.sleep(max(0.0, timeout))
        return typed


def test_loop_redraws_on_time_and_keeps_the_last_good_view() -> None:
    views = iter([FleetView(T0, ()), FleetView(T0 + 1000, ())])
    failures = iter([BackendUnavailable("Connection refused."), ScriptError("bad\n reply")])

    def read() -> FleetView:
        for failure in failures:
            raise failure
        return next(views)

    top = cli_top.Top(read, "ns", "redis://u", 0.05)
    drawn: list[tuple[int | None, str | None]] = []

    def draw() -> None:
        drawn.append((top.view.at_ms if top.view else None, top.error))

    cli_top._loop(top, ScriptedKeys("x", "", "", "", "Q"), draw)  # "x" is no key of ours: no redraw
    assert drawn == [
        (None, "Connection refused. (is Redis running at redis://u?)"),
        (None, "bad reply"),
        (T0, None),
        (T0 + 1000, None),
    ]
    assert top.previous is not None
    assert top.previous.at_ms == T0


# -- the done-when: in a pseudo-terminal, against a Redis filled by a short demo run ----------------


def demo_fill(redis_url: str, namespace: str) -> tuple[list[str], list[str]]:
    """Run ``registry demo`` for 3 s into ``namespace``; the models it used and the budgeted tenants."""
    demo = pexpect.spawn(
        sys.executable,
        [
            *("-m", "registry", "--redis-url", redis_url, "--namespace", namespace),
            *("demo", "--workers", "2", "--duration", "3", "--keep"),
        ],
        timeout=30,
        encoding="utf-8",
        dimensions=(40, 160),
    )
    demo.expect(pexpect.EOF)
    demo.close()
    assert demo.exitstatus in (0, 1), demo.before  # 1: a check of the demo's own verdict failed
    with Registry.from_url(redis_url, namespace=namespace, watch=False) as reg:
        view = reg.fleet_view()
    used = [m.model.key for m in view.models if m.today.requests]
    assert used, f"the demo recorded nothing:\n{demo.before}"
    return used, sorted(view.budgets)


def screen_text(raw: str) -> str:
    return ANSI.sub("", raw).replace("\r", "")


def test_top_in_a_pty_against_a_demo_run(redis_url: str) -> None:
    used, tenants = demo_fill(redis_url, "toptest")
    assert tenants
    python = sys.executable
    command = f"stty -g; {python} -m registry --redis-url {redis_url} --namespace toptest top --interval 0.5"
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")} | {"TERM": "xterm-256color"}
    child = pexpect.spawn(
        "/bin/sh",
        ["-c", f"{command}; echo EXIT=$?; stty -g"],
        timeout=10,
        encoding="utf-8",
        dimensions=(40, 180),  # every column: at 160 the demo's keys leave out CACHED and 429/MIN
        env=env,
    )
    try:
        child.expect(r"([0-9a-f:]+)\r\n")
        modes_before = child.match.group(1)
        started, seen = time.monotonic(), ""
        for _ in range(3):  # three headers: two whole frames, and the start of a third
            child.expect(r"q quits")
            seen += child.before + child.after
        assert time.monotonic() - started < 5
        frames = screen_text(seen).split("registry top  ")[1:]
        for text in frames[:2]:
            assert text.startswith(f"toptest @ {redis_url}  "), text
            assert re.search(r"UTC  \d+ models  every 0.5s  q quits *\n", text), text
            headings = r"^MODEL +RPM +TPM +RPD +REQ/MIN +DENY/MIN +429/MIN +TODAY +MONTH +CACHED +P50 MS +P95 MS +OK"
            assert re.search(headings, text, re.M)
            for key in used:  # a long key may be cut to its first 23 characters and an ellipsis
                assert re.search(rf"^{re.escape(key[:23])}", text, re.M), (key, text)
            assert re.search(r"[█░]{6} +\d+% \d", text)  # the windows' bars
            assert re.search(rf"^budgets \({len(tenants)}\)", text, re.M), text
            assert re.search(r"^TENANT +BUDGET +SPENT +HELD +USED +THRESHOLDS +DENIED", text, re.M)
            for tenant in tenants:
                budget = re.search(rf"^{tenant} +\S+/(day|week|month) +[0-9.]+ / [0-9.]+ USD .*%", text, re.M)
                assert budget, (tenant, text)
        # REQ/MIN, DENY/MIN and 429/MIN (11th to 9th from the end): none on the first frame; then
        # nothing moves after the demo: 0.0 a minute
        assert {tuple(row(frames[0], key[:23], cut=True).split()[-11:-8]) for key in used} == {("-", "-", "-")}
        assert {tuple(row(frames[1], key[:23], cut=True).split()[-11:-8]) for key in used} == {("0.0",) * 3}
        quit_at = time.monotonic()
        child.send("q")
        child.expect(r"EXIT=(\d+)\r\n")
        assert child.match.group(1) == "0"
        assert time.monotonic() - quit_at < 2
        child.expect(r"([0-9a-f:]+)\r\n")
        assert child.match.group(1) == modes_before  # the terminal is as it was
        child.expect(pexpect.EOF, timeout=5)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_rates_average_the_last_ten_seconds_of_views() -> None:
    """Top keeps the views of the last ten seconds and takes rates against the oldest, so a
    one-second frame does not make them jump; before ten seconds it uses what it has."""
    stamps = iter([0, 1_000, 2_000, 11_000, 12_500])
    top = cli_top.Top(lambda: FleetView(next(stamps), ()), "ns", "redis://x", 1.0)
    top.refresh()
    assert top.previous is None  # one view: no rate yet
    top.refresh()
    top.refresh()
    assert top.previous is not None
    assert top.previous.at_ms == 0  # 2 s of views: against the first
    top.refresh()
    assert top.previous.at_ms == 1_000  # at 11 s: the newest view at least 10 s old
    top.refresh()
    assert top.previous.at_ms == 2_000  # at 12.5 s
    assert [v.at_ms for v in top.history] == [2_000, 11_000, 12_500]
