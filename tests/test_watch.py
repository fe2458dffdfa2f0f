"""Every worker sees the same catalog: a write in one process shows in another's local copy.

The reader runs in a separate process and reads only its local copy (no explicit refresh);
it reports how long after the write returned it first saw the change. Three ways to learn of
the change are exercised: the pub/sub notice, a reconnect after the pub/sub connection was
killed, and the periodic revision check alone (notices muted).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import pytest

from registry import AsyncRegistry, Registry
from registry._base import connect
from tests.conftest import ROOT, model

READER = r"""
import asyncio, json, sys, time
from registry import AsyncRegistry, Registry, ModelNotFoundError
from registry._base import connect

url, kind, mute = sys.argv[1], sys.argv[2], sys.argv[3] == "mute"

def seen(snapshot_reader):
    try:
        return snapshot_reader() == 4242
    except ModelNotFoundError:
        return False

def subscribers(client, channel):
    # PUBSUB NUMSUB counts a node's own subscribers: on a cluster, ask every node.
    nodes = client.get_nodes() if hasattr(client, "get_nodes") else [None]
    kw = lambda node: {} if node is None else {"target_nodes": node}
    return sum(client.pubsub_numsub(channel, **kw(node))[0][1] for node in nodes)

def wait(reader):
    while subscribers(reg.redis, reg._channel) < 1:  # the watcher has subscribed
        time.sleep(0.002)
    print("ready", flush=True)
    written = float(sys.stdin.readline())
    while time.time() < written + 5:
        if seen(reader):
            return time.time() - written
        time.sleep(0.002)
    return None

if kind == "sync":
    reg = Registry.from_url(url, refresh_interval=0.5)
    if mute:
        reg._channel = "muted"
    reg.list_models()
    elapsed = wait(lambda: reg.get_model("openai:new").context_window)
    reg.close()
else:
    async def main():
        reg = AsyncRegistry.from_url(url, refresh_interval=0.5)
        if mute:
            reg._channel = "muted"
        await reg.list_models()
        probe = connect(url)
        while subscribers(probe, reg._channel) < 1:
            await asyncio.sleep(0.002)
        loop = asyncio.get_running_loop()
        print("ready", flush=True)
        written = float(await loop.run_in_executor(None, sys.stdin.readline))
        elapsed = None
        while time.time() < written + 5:
            try:
                if (await reg.get_model("openai:new")).context_window == 4242:
                    elapsed = time.time() - written
                    break
            except ModelNotFoundError:
                pass
            await asyncio.sleep(0.002)
        await reg.aclose()
        return elapsed
    elapsed = asyncio.run(main())
print(json.dumps({"elapsed": elapsed}), flush=True)
"""


def visibility(redis_url: str, kind: str, how: str) -> float | None:
    """Seconds from the end of a write in this process to its sight in another process."""
    child = subprocess.Popen(
        [sys.executable, "-c", READER, redis_url, kind, "mute" if how == "mute" else "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None
        assert child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        writer = Registry.from_url(redis_url, watch=False)
        if how == "kill":
            admin = connect(redis_url)
            nodes = admin.get_nodes() if hasattr(admin, "get_nodes") else [None]
            killed = sum(
                admin.client_kill_filter(_type="pubsub", **({} if n is None else {"target_nodes": n})) for n in nodes
            )
            assert killed >= 1
            admin.close()
        writer.register_model(model(id="new", context_window=4242))
        child.stdin.write(f"{time.time()}\n")
        child.stdin.flush()
        result = json.loads(child.stdout.readline())
        writer.close()
        return result["elapsed"]
    finally:
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()  # an unfinished reader gets EOF and exits
        child.wait(timeout=30)


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("how", ["notice", "kill", "mute"])
def test_a_write_is_visible_in_another_process_within_one_second(redis_url: str, kind: str, how: str) -> None:
    elapsed = visibility(redis_url, kind, how)
    assert elapsed is not None, "the other process never saw the write"
    assert elapsed < 1.0


def test_the_sync_watcher_follows_changes_in_process(redis_url: str) -> None:
    writer = Registry.from_url(redis_url, watch=False)
    reader = Registry.from_url(redis_url, refresh_interval=0.2)
    assert reader.list_models() == []
    writer.register_model(model())
    deadline = time.monotonic() + 5
    while not reader.list_models() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert [m.key for m in reader.list_models()] == ["openai:gpt-4"]
    reader.close()
    writer.close()


def test_the_watcher_survives_a_dead_server(caplog: pytest.LogCaptureFixture) -> None:
    """Point a watcher at a port nothing listens on: it logs, retries, and close() still works."""
    from registry.catalog.snapshot import Snapshot
    from registry.embedded import free_port

    reg = Registry.from_url(f"redis://127.0.0.1:{free_port()}/0", refresh_interval=0.05)
    reg._snapshot = Snapshot()
    with caplog.at_level("WARNING", logger="registry"):
        reg._start_watcher()
        deadline = time.monotonic() + 10
        while sum("catalog watcher" in r.message for r in caplog.records) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert sum("catalog watcher" in r.message for r in caplog.records) >= 2  # failed, retried, failed
    assert reg._watcher is not None
    assert reg._watcher.is_alive()
    reg.close()
    assert reg._watcher is None


def test_async_watcher_cancels_cleanly(redis_url: str) -> None:
    async def main() -> None:
        reg = AsyncRegistry.from_url(redis_url, refresh_interval=0.05)
        await reg.list_models()
        assert reg._watcher is not None
        await reg.aclose()
        assert reg._watcher is None

    asyncio.run(main())


def test_the_async_watcher_follows_notices_and_the_revision_check(redis_url: str) -> None:
    async def main() -> None:
        writer = AsyncRegistry.from_url(redis_url, watch=False)
        heard = AsyncRegistry.from_url(redis_url, refresh_interval=0.05)
        polled = AsyncRegistry.from_url(redis_url, refresh_interval=0.05)
        polled._channel = "muted"  # only the revision check can tell it
        assert await heard.list_models() == []
        assert await polled.list_models() == []
        await writer.register_model(model())
        for reader in (heard, polled):
            deadline = time.monotonic() + 5
            while not await reader.list_models() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            assert [m.key for m in await reader.list_models()] == ["openai:gpt-4"]
        for reg in (writer, heard, polled):
            await reg.aclose()

    asyncio.run(main())


def test_the_async_watcher_retries_a_dead_server(caplog: pytest.LogCaptureFixture) -> None:
    from registry.embedded import free_port

    async def main() -> None:
        reg = AsyncRegistry.from_url(f"redis://127.0.0.1:{free_port()}/0", refresh_interval=0.05)
        reg._snapshot = __import__("registry.catalog.snapshot", fromlist=["Snapshot"]).Snapshot()
        with caplog.at_level("WARNING", logger="registry"):
            await reg._catalog()  # starts the watcher on the local (empty) copy
            deadline = time.monotonic() + 10
            while sum("catalog watcher" in r.message for r in caplog.records) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        assert sum("catalog watcher" in r.message for r in caplog.records) >= 2
        await reg.aclose()

    asyncio.run(main())


def _forked_reader(url: str, ready: Any, go: Any, results: Any) -> None:
    reg = _inherited  # made in the parent, watcher started there
    ready.set()
    go.wait(10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if [m.key for m in reg.list_models()] == ["openai:gpt-4"]:
            results.put("seen")
            return
        time.sleep(0.005)
    results.put("never")


_inherited: Any = None


@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
def test_a_forked_child_restarts_the_watcher(redis_url: str) -> None:
    """Prefork servers build the client in the parent: the child must follow changes too."""
    import multiprocessing as mp

    global _inherited
    ctx = mp.get_context("fork")
    _inherited = Registry.from_url(redis_url, refresh_interval=0.1)
    assert _inherited.list_models() == []  # watcher thread running in the parent
    ready, go, results = ctx.Event(), ctx.Event(), ctx.Queue()
    child = ctx.Process(target=_forked_reader, args=(redis_url, ready, go, results))
    child.start()
    assert ready.wait(10)
    writer = Registry.from_url(redis_url, watch=False)
    writer.register_model(model())
    go.set()
    assert results.get(timeout=10) == "seen"
    child.join(10)
    results.close()
    results.join_thread()
    writer.close()
    _inherited.close()
    _inherited = None


def test_close_stops_the_watcher_whatever_the_refresh_interval(redis_url: str) -> None:
    """close() joins the watcher for at most 5 s; a watcher waiting a whole minute for its next
    check would outlive it. It must look at its stop flag far more often than that."""
    from registry import Registry

    reg = Registry.from_url(redis_url, refresh_interval=60)
    reg.list_models()  # starts the watcher, which then waits for a notice or a minute
    thread = reg._watcher
    assert thread is not None
    reg.close()
    assert not thread.is_alive()
