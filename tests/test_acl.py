"""Least-privilege roles (``registry acl``) on a real redis-server, and functions mode (FCALL).

A private ``redis-server`` starts with the users ``registry acl`` prints (the default user off,
plus an ``operator`` with every right that only sets up and inspects). Each role then does its
job as that user, with nothing refused on the way (the ACL log stays empty), and is refused,
as :class:`~registry.PermissionDenied`, everything beyond it, with nothing written.

Functions mode is also checked on its own here (every script as a function, loading on a
missing library, the batchers), and the admission, ledger, budget and catalog suites run once
more with every client in functions mode (marked ``slow``; ``tests/functions_mode.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from registry import AsyncRegistry, BackendError, ConfigError, PermissionDenied, Registry, ScriptError, embedded
from registry import acl as roles_module
from registry._core import Script
from registry.acl import ADMIN_SCRIPTS, WORKER_SCRIPTS, render, roles, user_name
from registry.errors import BackendUnavailable, map_redis_errors, redis_error
from registry.functions import LOAD_COMMAND, aload_library, check_mode, library, load_library
from registry.keys import Keys
from registry.scripts import load, names
from tests.conftest import ROOT, _in_ci, model

if embedded.redis_server_path() is None and not _in_ci():
    pytest.skip("the ACL roles need a real redis-server (not on PATH)", allow_module_level=True)

NS = "registry"
PASSWORDS = {"worker": "worker-secret", "admin": "admin-secret", "dashboard": "dashboard-secret"}
OPERATOR = ("operator", "operator-secret")
MODEL = "openai:gpt-4"


# -- the server ------------------------------------------------------------------------------


@dataclass
class AclServer:
    """A redis-server whose users are the roles' (and an operator's); the default user is off."""

    port: int
    process: subprocess.Popen[bytes]
    operator: redis.Redis

    def url(self, role: str) -> str:
        return f"redis://{user_name(NS, role)}:{PASSWORDS[role]}@127.0.0.1:{self.port}/0"

    def registry(self, role: str, **kwargs: Any) -> Registry:
        kwargs.setdefault("watch", False)
        kwargs.setdefault("scripts", "functions")
        return Registry.from_url(self.url(role), **kwargs)

    def raw(self, role: str) -> redis.Redis:
        return redis.Redis.from_url(self.url(role), decode_responses=True)

    def snapshot(self) -> dict[str, Any]:
        """Every key with its serialized value, and the function libraries: to prove nothing changed."""
        keys = {key: self.operator.dump(key) for key in self.operator.scan_iter(count=1000)}
        return {"keys": keys, "libraries": _libraries(self.operator)}

    def denials(self) -> list[dict[str, Any]]:
        """The ACL log, less redis-py's CLIENT SETINFO at connect (refused, and ignored by redis-py,
        on Redis 7.2+; the roles do not grant it, as Redis 7.0 has no such subcommand to name)."""
        return [entry for entry in self.operator.acl_log() if entry.get("object") != "client|setinfo"]


def _libraries(client: Any, **options: Any) -> dict[str, list[str]]:
    """FUNCTION LIST as {library: [function names]} (RESP2 gives flat lists)."""

    def pairs(flat: list[Any]) -> dict[str, Any]:
        return dict(zip(flat[::2], flat[1::2], strict=True))

    found = {}
    for raw in client.execute_command("FUNCTION LIST", **options):
        library_ = pairs(raw)
        found[library_["library_name"]] = sorted(pairs(f)["name"] for f in library_["functions"])
    return found


def _start(*args: str, workdir: str) -> tuple[int, subprocess.Popen[bytes]]:
    """redis-server on a free port with ``args``, ready when the operator gets an answer (the
    readiness probe of :mod:`registry.embedded` cannot log in: the default user is off)."""
    server = embedded.redis_server_path()
    assert server is not None
    for _attempt in range(5):
        port = embedded.free_port()
        process = subprocess.Popen(
            [
                *(server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
                *("--dir", workdir, "--logfile", str(Path(workdir) / f"redis-{port}.log"), *args),
                *("--enable-debug-command", "yes"),  # so that DEBUG is refused by the ACL, not by the config
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        probe = redis.Redis(
            port=port,
            username=OPERATOR[0],
            password=OPERATOR[1],
            socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 0),  # this loop is the retry: no backoff sleeps of redis-py's
        )
        deadline = time.monotonic() + 20
        try:
            while process.poll() is None and time.monotonic() < deadline:
                try:
                    probe.ping()
                    return port, process
                except redis.exceptions.ConnectionError:
                    time.sleep(0.02)
        finally:
            probe.close()
        process.kill()
        process.wait()
    raise RuntimeError(f"redis-server did not start with {args}")


@pytest.fixture(scope="module")
def workdir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="registry-acl-") as path:
        yield path


@pytest.fixture(scope="module")
def acl_server(workdir: str) -> Iterator[AclServer]:
    """The roles as `registry acl` prints them (redis.conf lines, included), and an operator."""
    conf = Path(workdir) / "registry-acl.conf"
    conf.write_text(render(NS, PASSWORDS) + f"user {OPERATOR[0]} on >{OPERATOR[1]} ~* &* +@all\n")
    port, process = _start("--include", str(conf), workdir=workdir)
    operator = redis.Redis(port=port, username=OPERATOR[0], password=OPERATOR[1], decode_responses=True)
    yield AclServer(port, process, operator)
    operator.close()
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def acl(acl_server: AclServer) -> AclServer:
    """The ACL server, emptied: no keys, no functions, no stats, an empty ACL log."""
    op = acl_server.operator
    op.flushall()
    op.function_flush()
    op.config_resetstat()
    op.acl_log_reset()
    return acl_server


@pytest.fixture
def admin(acl: AclServer) -> Iterator[Registry]:
    """The admin, who loaded the functions, registered the model and set a budget."""
    reg = acl.registry("admin")
    assert reg.load_functions() == library().name
    reg.register_model(model(rate_limit={"requests_per_minute": 100, "tokens_per_minute": 1_000_000}))
    reg.set_budget("acme", "100", period="day")
    yield reg
    reg.close()


def _calls(acl: AclServer, command: str) -> int:
    return int(acl.operator.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


# -- the file --------------------------------------------------------------------------------


def _users(client: redis.Redis) -> dict[str, Any]:
    """Each user's rights, comparable across servers (ACL LIST's order of commands is not)."""
    found = {}
    for name in client.acl_users():
        user = client.acl_getuser(name)
        found[name] = (
            set(user["flags"]) - {"sanitize-payload"},  # a redis.conf user's default, not an aclfile's
            sorted(user["passwords"]),
            set(" ".join(user["commands"]).split() if isinstance(user["commands"], list) else user["commands"].split()),
            user["keys"],
            user["channels"],
        )
    return found


def test_both_formats_define_the_same_users_and_the_default_user_is_off(acl_server: AclServer, workdir: str) -> None:
    aclfile = Path(workdir) / "users.acl"
    aclfile.write_text(render(NS, PASSWORDS, comments=False) + f"user {OPERATOR[0]} on >{OPERATOR[1]} ~* &* +@all\n")
    port, process = _start("--aclfile", str(aclfile), workdir=workdir)
    other = redis.Redis(port=port, username=OPERATOR[0], password=OPERATOR[1], decode_responses=True)
    try:
        assert _users(other) == _users(acl_server.operator)
    finally:
        other.close()
        process.terminate()
        process.wait(timeout=10)
    users = {line.split()[1]: line for line in acl_server.operator.acl_list()}
    assert set(users) == {"default", OPERATOR[0], *(user_name(NS, role) for role in PASSWORDS)}
    assert " off " in users["default"]
    with pytest.raises(redis.exceptions.AuthenticationError):  # NOAUTH: nobody gets in unnamed
        redis.Redis(port=acl_server.port, retry=Retry(NoBackoff(), 0)).ping()
    with pytest.raises(BackendUnavailable):
        Registry.from_url(f"redis://127.0.0.1:{acl_server.port}/0", watch=False, retry=Retry(NoBackoff(), 0)).ping()


def test_a_role_without_a_password_is_off_and_passwords_are_stored_hashed() -> None:
    text = render(NS, {"worker": "s3cret"}, comments=False)
    lines = {line.split()[1]: line for line in text.splitlines()}
    assert "s3cret" not in text
    assert " on #" in lines["registry-worker"]
    assert " off resetpass " in lines["registry-admin"]
    with pytest.raises(ValueError, match="no such role: root"):
        render(NS, {"root": "x"})
    with pytest.raises(ConfigError):
        render("bad namespace", {})


def test_the_grants_cover_exactly_what_each_roles_scripts_call() -> None:
    """The commands the worker's (and the admin's) functions call, read from the Lua sources, are
    granted; a new script has to be given to a role, and a command it calls to that role too."""
    import re

    def called(script: str) -> set[str]:
        source = load(script).source
        found = re.findall(r"redis\.p?call\(\s*'([A-Za-z]+)'", source) + re.findall(
            r"pcall\(redis\.call,\s*'([A-Za-z]+)'", source
        )
        return {command.upper() for command in found}

    assert set(WORKER_SCRIPTS) | set(ADMIN_SCRIPTS) == set(names())
    for script in names():  # every command a script calls is named in its text
        assert not re.search(r"redis\.p?call\(\s*[^'\s]", load(script).source), script
    made = roles(NS)
    worker_needs = set().union(*(called(s) for s in WORKER_SCRIPTS))
    admin_needs = set().union(*(called(s) for s in ADMIN_SCRIPTS))
    assert worker_needs == set(roles_module._WORKER_SCRIPT_COMMANDS.split())
    assert admin_needs == set(roles_module._ADMIN_SCRIPT_COMMANDS.split())
    assert worker_needs | {"FCALL"} <= set(made["worker"].commands)
    assert admin_needs | {"FCALL", "FUNCTION|LOAD"} <= set(made["admin"].commands)
    for role in made.values():
        assert not {"EVAL", "EVALSHA", "SCRIPT", "FLUSHALL", "CONFIG", "KEYS", "SELECT"} & set(role.commands)
    assert "FCALL" not in made["dashboard"].commands


# -- the worker ------------------------------------------------------------------------------


def test_a_worker_acquires_settles_records_and_reads_with_fcall_only(acl: AclServer, admin: Registry) -> None:
    with acl.registry("worker") as worker:
        assert worker.get_model(MODEL).cost.input == admin.get_model(MODEL).cost.input
        decision = worker.acquire(MODEL, 100, 50, tenant="acme", request_id="req-1")
        assert decision.allowed
        assert decision.reservation is not None
        assert worker.settle(decision.reservation, 80, 40, latency_ms=120)
        assert not worker.settle(decision.reservation, 80, 40)  # once
        spare = worker.acquire(MODEL, 10, 10, tenant="acme")
        assert spare.reservation is not None
        assert worker.release(spare.reservation)
        assert worker.record_usage(MODEL, 10, 5, tenant="acme", request_id="r-9").recorded
        assert not worker.record_usage(MODEL, 10, 5, tenant="acme", request_id="r-9").recorded
        assert worker.check_rate_limit(MODEL, 10).allowed
        assert worker.route(input_tokens=10, max_output_tokens=10, capability="chat").model_key == MODEL
        with worker.admit(MODEL, 10, 10, tenant="acme"):
            pass
        stats = worker.get_statistics(tenant="acme")
        assert (stats.requests, stats.input_tokens, stats.output_tokens) == (3, 100, 55)
        (status,) = worker.budget_status("acme")
        assert status.spent == stats.total_cost
        assert status.held == 0
        assert worker.fleet_view() is not None
        assert [e.type for e in worker.events("catalog.changed", last=5)] == ["catalog.changed"] * 2
    assert acl.denials() == []  # nothing was refused on the way: every command needed is granted
    assert _calls(acl, "fcall") > 0
    assert _calls(acl, "evalsha") == _calls(acl, "eval") == 0
    assert "cmdstat_script|load" not in acl.operator.info("commandstats")


def test_worker_threads_and_an_async_worker_share_fcall_pipelines(acl: AclServer, admin: Registry) -> None:
    with acl.registry("worker", watch=True) as worker:
        worker.get_model(MODEL)  # the local copy: acquires need no read first, so they meet
        gate = threading.Barrier(16)
        decisions: list[Any] = []

        def one() -> None:
            gate.wait()
            decisions.append(worker.acquire(MODEL, 1, 1, tenant="acme"))

        threads = [threading.Thread(target=one) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(decisions) == 16
        assert all(d.allowed for d in decisions)

    async def main() -> list[Any]:
        async with AsyncRegistry.from_url(acl.url("worker"), scripts="functions") as aworker:
            await aworker.refresh()
            found = await asyncio.gather(*(aworker.acquire(MODEL, 1, 1, tenant="acme") for _ in range(20)))
            assert aworker._batcher.batches < 20  # pipelined
            settled = await asyncio.gather(*(aworker.settle(d.reservation, 1, 1) for d in found))
            assert all(settled)
            await aworker.record_usage(MODEL, 1, 1, tenant="acme")
            return found

    assert sum(d.allowed for d in asyncio.run(main())) == 20
    assert acl.denials() == []
    assert _calls(acl, "evalsha") == 0


def test_a_worker_follows_the_admins_changes_through_notices(acl: AclServer, admin: Registry) -> None:
    seen: list[Any] = []
    # A revision check every 60 s: within the test only the pub/sub notice can bring the change.
    with acl.registry("worker", watch=True, refresh_interval=60.0) as worker:
        assert worker.get_model(MODEL).cost.input == 30
        worker.on("catalog.changed", seen.append)
        channel = Keys(NS).changes_channel
        deadline = time.monotonic() + 5
        while acl.operator.pubsub_numsub(channel)[0][1] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the watcher has subscribed
        admin.update_model(MODEL, {"cost": {"input": "25", "output": "60"}})
        deadline = time.monotonic() + 5
        while (worker.get_model(MODEL).cost.input != 25 or not seen) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert worker.get_model(MODEL).cost.input == 25
        assert seen
        assert seen[-1].type == "catalog.changed"
    assert acl.denials() == []


def test_a_worker_cannot_change_a_price_or_touch_the_server(acl: AclServer, admin: Registry) -> None:
    before = acl.snapshot()
    revision = admin.refresh()
    with acl.registry("worker") as worker:
        attempts: list[Callable[[], Any]] = [
            lambda: worker.update_model(MODEL, {"cost": {"input": "0.01", "output": "0.01"}}),
            lambda: worker.register_model(model(id="free")),
            lambda: worker.delete_model(MODEL),
            lambda: worker.set_budget("acme", "1000000"),
        ]
        for attempt in attempts:
            with pytest.raises(PermissionDenied):
                attempt()
        raw = worker.redis
        catalog = Keys(NS)
        commands: list[tuple[Any, ...]] = [
            ("FLUSHALL",),
            ("FLUSHDB",),
            ("CONFIG", "SET", "maxmemory", "1"),
            ("CONFIG", "GET", "*"),
            ("SCRIPT", "FLUSH"),
            ("SCRIPT", "LOAD", "return 1"),
            ("EVAL", "return redis.call('FLUSHALL')", 0),
            ("EVALSHA", load("acquire").sha, 0),
            ("FUNCTION", "LOAD", "#!lua name=evil\nredis.register_function('evil', function() end)"),
            ("FUNCTION", "DELETE", library().name),
            ("FUNCTION", "FLUSH"),
            ("KEYS", "*"),
            ("SCAN", 0),
            ("SELECT", 1),
            ("DEBUG", "SLEEP", 0),
            ("SHUTDOWN", "NOSAVE"),
            ("ACL", "SETUSER", user_name(NS, "worker"), "+@all"),
            ("HSET", catalog.model(MODEL), "cost_input", "0"),  # the price itself, read-only to it
            ("DEL", catalog.meta),
            ("PUBLISH", catalog.changes_channel, "999"),  # a forged change notice
            # the catalog write function, whose keys are the catalog's: FCALL checks them
            (
                *("FCALL", library().functions["catalog_write"], 4, *catalog.catalog_keys(), catalog.model(MODEL)),
                *(100, catalog.changes_channel, 1, "delete", MODEL, "", ""),
            ),
        ]
        for command in commands:
            with pytest.raises(PermissionDenied), map_redis_errors():
                raw.execute_command(*command)
    assert acl.snapshot() == before
    assert admin.refresh() == revision
    assert admin.get_model(MODEL).cost.input == 30


def test_a_worker_cannot_touch_another_namespace_or_other_keys(acl: AclServer, admin: Registry) -> None:
    other = Registry(acl.operator, namespace="other", watch=False)  # the operator sets it up
    other.register_model(model(rate_limit={"requests_per_minute": 10}))
    other.refresh()
    before = acl.snapshot()
    with acl.registry("worker") as worker:
        with pytest.raises(PermissionDenied):  # its catalog: not even readable
            Registry(worker.redis, namespace="other", watch=False, scripts="functions").get_model(MODEL)
        # A worker given the other namespace's catalog copy all the same: every write is refused.
        intruder = Registry(worker.redis, namespace="other", watch=False, scripts="functions")
        intruder._snapshot = other._snapshot
        with pytest.raises(PermissionDenied):
            intruder.acquire(MODEL, 1, 1)
        with pytest.raises(PermissionDenied):
            intruder.record_usage(MODEL, 1, 1, request_id="x")
        for command in (("SET", "foo", "bar"), ("GET", "foo"), ("HGETALL", Keys("other").meta), ("SUBSCRIBE", "x")):
            with pytest.raises(PermissionDenied), map_redis_errors():
                worker.redis.execute_command(*command)
    assert acl.snapshot() == before


def test_a_worker_without_the_library_is_told_to_ask_an_admin(acl: AclServer) -> None:
    operator = Registry(acl.operator, watch=False)  # eval mode: loads no functions
    operator.register_model(model())
    with acl.registry("worker") as worker:
        with pytest.raises(PermissionDenied, match=LOAD_COMMAND):
            worker.acquire(MODEL, 1, 1)
        request = Script("record_usage", ("{registry:adm:x}:a",), ())
        with pytest.raises(PermissionDenied, match=LOAD_COMMAND):  # the thread batcher's pipelines
            worker._batcher._send([request, request])
    with acl.registry("worker", scripts="eval") as evaluator, pytest.raises(PermissionDenied):
        evaluator.acquire(MODEL, 1, 1)  # no EVALSHA, no SCRIPT LOAD

    async def batch() -> list[Any]:
        async with AsyncRegistry.from_url(acl.url("worker"), watch=False, scripts="functions") as aworker:
            return await asyncio.gather(*(aworker.acquire(MODEL, 1, 1) for _ in range(3)), return_exceptions=True)

    errors = asyncio.run(batch())
    assert all(isinstance(e, PermissionDenied) and LOAD_COMMAND in str(e) for e in errors)
    assert acl.operator.function_list() == []
    with acl.registry("admin") as admin:
        admin.load_functions()
    with acl.registry("worker") as worker:
        assert worker.acquire(MODEL, 1, 1).allowed


# -- the admin and the dashboard ---------------------------------------------------------------


def test_the_admin_syncs_sets_budgets_loads_exports_and_restores(
    acl: AclServer, run: Callable[..., tuple[int, str, str]]
) -> None:
    code, out, err = run("functions", "load", url=acl.url("admin"))
    assert (code, out.strip(), err) == (0, library().name, "")
    assert run("functions", "load", url=acl.url("admin"))[0] == 0  # already there: fine
    code, out, err = run("--scripts", "functions", "sync", str(ROOT / "config" / "models.json"), url=acl.url("admin"))
    assert code == 0, err
    with acl.registry("admin") as admin:
        admin.set_budget("acme", "250", period="month")
        admin.update_model(MODEL, {"cost": {"input": "29", "output": "60"}})
        with acl.registry("worker") as worker:
            worker.record_usage(MODEL, 1000, 100, tenant="acme")
        document = admin.export()
        assert document["ledger"]
        acl.operator.flushall()  # the namespace is lost; the functions stay
        assert admin.restore(document) > 0
        assert admin.get_budgets("acme")[0].amount == 250
    with acl.registry("worker") as worker:
        assert worker.get_statistics(tenant="acme").requests == 1
    assert acl.denials() == []


def test_the_admin_cannot_do_anything_server_wide(acl: AclServer, admin: Registry) -> None:
    before = acl.snapshot()
    commands: list[tuple[Any, ...]] = [
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("CONFIG", "SET", "maxmemory", "1"),
        ("SHUTDOWN", "NOSAVE"),
        ("DEBUG", "SLEEP", 0),
        ("SCRIPT", "FLUSH"),
        ("EVAL", "return 1", 0),
        ("FUNCTION", "DELETE", library().name),
        ("FUNCTION", "FLUSH"),
        ("ACL", "LIST"),
        ("KEYS", "*"),
        ("MODULE", "LIST"),
        ("SELECT", 1),
        ("SET", "{other:catalog}:meta", "x"),
        ("HGETALL", "{other:catalog}:meta"),
    ]
    for command in commands:
        with pytest.raises(PermissionDenied), map_redis_errors():
            admin.redis.execute_command(*command)
    assert acl.snapshot() == before


def test_the_dashboard_reads_everything_and_writes_nothing(
    acl: AclServer, admin: Registry, run: Callable[..., tuple[int, str, str]]
) -> None:
    with acl.registry("worker") as worker:
        worker.record_usage(MODEL, 100, 10, tenant="acme", latency_ms=50)
    with acl.registry("dashboard") as dashboard:
        assert dashboard.get_statistics().requests == 1
        assert dashboard.budget_status("acme")[0].spent > 0
        assert len(dashboard.fleet_view().models) == 1
        assert dashboard.model_performance(MODEL) is not None
        assert dashboard.rank_models()
        assert dashboard.events(last=5)
        assert run("top", "--once", url=acl.url("dashboard"))[0] == 0
        assert acl.denials() == []
        before = acl.snapshot()
        for attempt in (
            lambda: dashboard.acquire(MODEL, 1, 1),
            lambda: dashboard.record_usage(MODEL, 1, 1),
            lambda: dashboard.update_model(MODEL, {"cost": {"input": "1", "output": "1"}}),
            lambda: dashboard.set_budget("acme", "1"),
            lambda: dashboard.export(),  # SCAN lists every key name of the server: not for it
        ):
            with pytest.raises(PermissionDenied):
                attempt()
        for command in (
            ("HSET", Keys(NS).ledger(MODEL, "total"), "requests", 0),
            ("XADD", Keys(NS).events, "*", "a", "b"),
            ("PUBLISH", Keys(NS).changes_channel, "1"),
            ("FLUSHALL",),
            ("FCALL", library().functions["acquire"], 0),
        ):
            with pytest.raises(PermissionDenied), map_redis_errors():
                dashboard.redis.execute_command(*command)
    assert acl.snapshot() == before


# -- functions mode on the ordinary test server ----------------------------------------------------


def test_the_library_holds_every_script_as_a_function_under_a_hashed_name(r: redis.Redis) -> None:
    lib = library()
    tag = lib.name.removeprefix("registry_")
    assert len(tag) == 12
    assert lib.source.startswith(f"#!lua name={lib.name}\n")
    assert lib.functions == {name: f"{name}_{tag}" for name in names()}
    for name in names():
        assert load(name).source.rstrip() in lib.source  # each body unchanged
    assert load_library(r) == lib.name
    assert load_library(r) == lib.name  # "already exists" is a success
    assert _libraries(r) == {lib.name: sorted(lib.functions.values())}


def test_a_changed_source_makes_another_library(monkeypatch: pytest.MonkeyPatch) -> None:
    import registry.functions as functions_module
    from registry.scripts import LuaScript

    build = functions_module.library.__wrapped__
    monkeypatch.setattr(functions_module, "names", lambda: ["acquire"])
    monkeypatch.setattr(functions_module, "load", lambda name: LuaScript(name, "return 1", "-"))
    first = build()
    monkeypatch.setattr(functions_module, "load", lambda name: LuaScript(name, "return 2", "-"))
    second = build()
    assert first.name != second.name
    assert first.functions["acquire"] != second.functions["acquire"]


def test_the_batch_flow_loads_the_library_when_a_function_is_missing() -> None:
    from registry.batching import Load, batch_flow

    request = Script("record_usage", ("{registry:adm:m}:l:id:x",), ())
    flow = batch_flow([request], "functions")
    assert next(flow) == [request]
    assert flow.send([redis.exceptions.ResponseError("Function not found")]) == Load(library=True)
    assert flow.send(None) == [request]  # sent again once loaded
    with pytest.raises(StopIteration) as stop:
        flow.send([[1, 2]])
    assert stop.value.value == [[1, 2]]
    eval_flow = batch_flow([request])  # EVALSHA mode takes a missing function for any error
    next(eval_flow)
    with pytest.raises(StopIteration) as stop:
        eval_flow.send([redis.exceptions.ResponseError("Function not found")])
    assert isinstance(stop.value.value[0], BackendError)


def test_scripts_mode_is_checked() -> None:
    assert check_mode("functions") == "functions"
    with pytest.raises(ConfigError, match="scripts must be one of"):
        Registry(redis.Redis(), scripts="lua")  # type: ignore[arg-type]


def test_functions_mode_loads_a_missing_library_and_reports_script_errors(redis_url: str, r: redis.Redis) -> None:
    with Registry.from_url(redis_url, watch=False, scripts="functions") as reg:
        reg.register_model(model(rate_limit={"requests_per_minute": 100}))
        assert reg.acquire(MODEL, 1, 1).allowed
        r.function_flush()  # the function is gone: the client loads the library and goes again
        assert reg.acquire(MODEL, 1, 1).allowed
        r.function_flush()  # ... and so does the thread batcher's pipeline
        request = Script("acquire", ("{x}:d", "{x}:r"), ("", "grab", 1, 0, 1, "t"))
        error, reply = reg._batcher._send([request, Script("catalog_write", Keys().catalog_keys(), (1, "c", 1))])
        assert isinstance(error, ScriptError)
        assert "unknown mode" in str(error)
        assert isinstance(reply, ScriptError)  # its arguments are short: the script's own error
        with pytest.raises(ScriptError, match="unknown mode"):  # a lone call's error, not a reload
            reg._execute(request)

    async def main() -> Any:
        async with AsyncRegistry.from_url(redis_url, watch=False, scripts="functions") as areg:
            await areg.refresh()
            r.function_flush()
            return await asyncio.gather(*(areg.acquire(MODEL, 1, 1) for _ in range(5)))

    assert all(d.allowed for d in asyncio.run(main()))
    assert r.function_list()


def test_load_functions_of_both_clients_and_the_cli(
    redis_url: str, r: redis.Redis, run: Callable[..., tuple[int, str, str]]
) -> None:
    with Registry.from_url(redis_url, watch=False) as reg:
        assert reg.load_functions() == library().name

    async def main() -> str:
        async with AsyncRegistry.from_url(redis_url, watch=False) as areg:
            return await areg.load_functions()

    r.function_flush()
    assert asyncio.run(main()) == library().name
    code, out, _ = run("--json", "functions", "load")
    assert code == 0
    assert json.loads(out) == {"library": library().name, "functions": dict(library().functions)}
    code, out, _ = run("functions", "source")
    assert code == 0
    assert out == library().source


def test_a_load_that_fails_otherwise_raises_the_libraries_error(r: redis.Redis) -> None:
    class Broken:
        def execute_command(self, *args: Any, **kwargs: Any) -> Any:
            raise redis.exceptions.ResponseError("ERR Error compiling function")

    with pytest.raises(BackendError, match="compiling"):
        load_library(Broken())

    class AsyncBroken:
        async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
            raise redis.exceptions.NoPermissionError("this user has no permissions to run the 'function|load' command")

    with pytest.raises(PermissionDenied, match=LOAD_COMMAND):
        asyncio.run(aload_library(AsyncBroken()))


def test_acl_refusals_map_to_permission_denied() -> None:
    assert isinstance(redis_error(redis.exceptions.NoPermissionError("no permissions")), PermissionDenied)
    inner = redis.exceptions.ResponseError("The user executing the script can't run this command script: f")
    assert isinstance(redis_error(inner), PermissionDenied)
    assert type(redis_error(redis.exceptions.ResponseError("ERR_ARGS bad"))) is ScriptError


def test_the_library_reaches_every_primary_of_a_cluster(request: pytest.FixtureRequest) -> None:
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import RedisCluster

    nodes = request.getfixturevalue("cluster")
    nodes.wait_ok()
    seed = nodes.primaries()[0].port  # the client learns the rest of the cluster from it
    client = RedisCluster(host="127.0.0.1", port=seed, decode_responses=True)
    try:
        primaries = client.get_primaries()
        client.execute_command("FUNCTION FLUSH", target_nodes=RedisCluster.PRIMARIES)
        # One primary has it already: FUNCTION LOAD there says "already exists", and the others
        # must get it all the same (redis-py's own function_load stops at the first error).
        client.execute_command("FUNCTION LOAD", library().source, target_nodes=primaries[0])
        assert load_library(client) == library().name
        for node in primaries:
            assert library().name in _libraries(client, target_nodes=node)
        client.execute_command("FUNCTION FLUSH", target_nodes=RedisCluster.PRIMARIES)
    finally:
        client.close()

    async def main() -> None:
        aclient = AsyncRedisCluster(host="127.0.0.1", port=seed, decode_responses=True)
        try:
            assert await aload_library(aclient) == library().name
            for node in aclient.get_primaries():
                listed = await aclient.execute_command("FUNCTION LIST", target_nodes=node)
                assert library().name in str(listed)
        finally:
            await aclient.aclose()

    asyncio.run(main())


# -- the CLI -------------------------------------------------------------------------------------


@pytest.fixture
def no_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REGISTRY_NAMESPACE", "REGISTRY_SCRIPTS", *(f"REGISTRY_{r.upper()}_PASSWORD" for r in PASSWORDS)):
        monkeypatch.delenv(name, raising=False)


def test_the_shipped_acl_file_is_the_commands_output(
    run: Callable[..., tuple[int, str, str]], no_passwords: None
) -> None:
    shipped = ROOT / "config" / "redis-acl.conf"
    code, out, _ = run("acl", url=None)
    assert code == 0
    assert out == shipped.read_text(encoding="utf-8")
    assert out == render(NS)
    assert run("acl", "--check", str(shipped), url=None)[:2] == (0, f"{shipped} is up to date\n")


def test_acl_command_options(
    run: Callable[..., tuple[int, str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_passwords: None
) -> None:
    monkeypatch.setenv("REGISTRY_DASHBOARD_PASSWORD", "from-env")
    target = tmp_path / "users.acl"
    code, out, _ = run("--namespace", "prod", "acl", "--worker-password", "w", "--aclfile", "--output", str(target))
    assert code == 0
    assert out == f"wrote {target}: prod-worker, prod-admin (off), prod-dashboard\n"
    assert target.read_text() == render("prod", {"worker": "w", "dashboard": "from-env"}, comments=False)
    assert run("--namespace", "prod", "acl", "--check", str(target), url=None)[0] == 1  # comments differ
    assert run("--namespace", "a b", "acl", url=None)[0] == 2  # no such namespace: a usage error
    code, _, err = run("acl", "--check", str(tmp_path / "missing.conf"), url=None)
    assert code == 1
    assert "cannot read" in err


def test_a_bad_scripts_mode_from_the_environment_is_a_usage_error(
    run: Callable[..., tuple[int, str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REGISTRY_SCRIPTS", "lua")
    code, _, err = run("models", "list")
    assert code == 2
    assert "scripts must be one of" in err


# -- the admission, ledger, budget and catalog suites, every client in functions mode ----------


# Its workers are spawned interpreters, which the plugin does not reach: they would run EVALSHA.
SPAWNS = "test_sixteen_processes_never_spend_beyond_a_budget_and_each_threshold_fires_once"


@pytest.mark.slow
def test_the_script_suites_pass_in_functions_mode(tmp_path: Path) -> None:
    """Every test of the four suites (on a single server) with FCALL, and not one EVALSHA."""
    report = tmp_path / "calls.json"
    env = {**os.environ, "REGISTRY_FUNCTIONS_REPORT": str(report)}
    suites = [f"tests/test_{name}.py" for name in ("admission", "ledger", "budgets", "catalog")]
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", *suites, "-p", "tests.functions_mode", "-q", "-x"),
            *("-p", "no:cacheprovider", "--no-cov", "-m", "not slow", "-k", f"not cluster and not {SPAWNS}"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    calls = json.loads(report.read_text())
    assert calls["fcall"] > 1000, calls
    assert calls["evalsha"] == calls["eval"] == 0, calls
