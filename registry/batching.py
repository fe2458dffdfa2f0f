"""Auto-batching: script calls made at the same time share one round trip.

A worker serving many concurrent requests would otherwise pay one round trip per acquire, each
waiting for a pool connection. Here concurrent script calls join a queue that goes to Redis as
one pipeline (no MULTI: each script stays its own atomic unit, so every decision is as exact as
when sent alone), and each caller gets its own reply or error. Acquires of the same model and
limits in one pipeline go as one script call, which takes them in order: one read and one write
of each window for the lot, instead of one per request. Calls made while a pipeline is in
flight wait for the next one, so batches grow with the load and a lone call is sent at once.

Two front ends share the batch itself (:func:`batch_flow`, no I/O): :class:`ScriptBatcher` for
the asyncio client (the calls of one event-loop turn) and :class:`ThreadBatcher` for the
blocking client (the calls of threads sharing it: the first caller sends, those who come while
it waits queue up, and the next pipeline is sent by one of them).

The calls are EVALSHAs, loading scripts Redis answers NOSCRIPT for, or in functions mode
(``scripts="functions"``) FCALLs, loading the function library when a function is not found
(:mod:`registry.functions`); the flow is the same either way.

On a Redis Cluster redis-py splits a pipeline per node, but fails it whole when one node cannot
be reached, so that one dead primary would fail every caller of the batch (and, through their
breakers, one per node, stop the healthy nodes too; see :mod:`registry.breakers`). So the asyncio
batcher sends one pipeline per node, at once, and the threads' batcher, whose cluster pipeline
fails before it writes anything when a node's connection cannot be had, sends each node's calls
again on their own when a pipeline for several nodes fails as unavailable: the dead node's callers
get the error, the others their replies. A script missing on a cluster node is loaded on the nodes
that answered NOSCRIPT only, not on every primary (which fails while any primary is down). A lone
script call on an asyncio cluster goes by ``execute_command``, not as a one-call pipeline, whose
retry after a connection error closes every connection of the client (``ScriptBatcher._alone``).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aredis
import redis.asyncio.cluster as acluster
import redis.cluster as rcluster
from redis.exceptions import NoScriptError

from registry._core import Request, Script
from registry.admission.ops import acquire_group, merge_acquires, split_acquires
from registry.errors import REDIS_ERRORS, BackendUnavailable, ScriptError, redis_error
from registry.functions import ScriptsMode, aload_library, check_mode, is_missing, library, load_library
from registry.scripts import load

__all__ = ["ScriptBatcher", "ThreadBatcher", "ascript_load", "batch_flow", "by_node", "script_load"]

MAX_BATCH = 512  # calls per pipeline: bounds a reply's size and a late caller's wait


@dataclass(frozen=True, slots=True)
class Load:
    """Load code before the next pipeline: these scripts (SCRIPT LOAD of each source), or with
    ``library`` the function library (:func:`registry.functions.load_library`). ``keys``: a key
    of each call that needs them (on a cluster, the nodes to load on)."""

    sources: tuple[str, ...] = ()
    library: bool = False
    keys: tuple[str, ...] = ()


def script_load(client: redis.Redis | rcluster.RedisCluster, source: str, keys: tuple[str, ...] = ()) -> None:
    """SCRIPT LOAD ``source`` where calls on ``keys`` need it: on a cluster, the primaries serving
    those keys (redis-py's own ``script_load`` asks every primary, and fails if one is down);
    on a single Redis, or without keys, as redis-py sends it."""
    if keys and isinstance(client, rcluster.RedisCluster):
        for node in {n.name: n for n in map(client.get_node_from_key, keys)}.values():
            client.execute_command("SCRIPT LOAD", source, target_nodes=node)
    else:
        client.script_load(source)


async def ascript_load(client: aredis.Redis | acluster.RedisCluster, source: str, keys: tuple[str, ...] = ()) -> None:
    """:func:`script_load` for the asyncio clients."""
    if keys and isinstance(client, acluster.RedisCluster):
        for node in {n.name: n for n in map(client.get_node_from_key, keys)}.values():
            await client.execute_command("SCRIPT LOAD", source, target_nodes=node)
    else:
        await client.script_load(source)


def by_node(requests: list[Script], node_of: Callable[[Request], str | None] | None) -> list[list[int]] | None:
    """The indexes of ``requests`` grouped by the cluster node serving each (in order), or None
    when there is nothing to split: not a cluster (``node_of`` None), or one node for all."""
    if node_of is None:
        return None
    groups: dict[str | None, list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault(node_of(request), []).append(i)
    return list(groups.values()) if len(groups) > 1 else None


LOAD_ATTEMPTS = 3  # loads of missing scripts before their NOSCRIPT reaches the caller
Step = list[Script] | Load  # a pipeline of script calls to send, or code to load first
BatchFlow = Generator[Step, Any, list[Any]]


def _pipelined(requests: list[Script], mode: ScriptsMode = "eval") -> BatchFlow:
    """The replies of one pipeline of ``requests`` (an exception instance of this library for a
    call that failed); scripts (or, in functions mode, functions) Redis does not know yet are
    loaded and their calls sent again."""
    replies = list((yield requests))
    for _ in range(LOAD_ATTEMPTS):  # a SCRIPT FLUSH may land between our load and the calls
        if mode == "eval":
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        else:
            missing = [i for i, reply in enumerate(replies) if is_missing(reply)]
        if not missing:
            break
        if mode == "eval":
            sources = tuple(sorted({load(requests[i].name).source for i in missing}))
            yield Load(sources, keys=tuple(requests[i].keys[0] for i in missing if requests[i].keys))
        else:
            yield Load(library=True)
        for i, reply in zip(missing, (yield [requests[i] for i in missing]), strict=True):
            replies[i] = reply
    return [redis_error(r) if isinstance(r, redis.exceptions.RedisError) else r for r in replies]


def batch_flow(requests: list[Script], mode: ScriptsMode = "eval") -> BatchFlow:
    """The replies of ``requests``, each as if sent alone: yields the pipelines to send (acquires
    of the same model and limits merged into one call each, see
    :func:`~registry.admission.ops.merge_acquires`) and the scripts to load, and receives their
    replies; a merged call that failed is sent again as its single calls, so that a bad one
    fails alone. The I/O-free core of both batchers, for EVALSHA or FCALL (``mode``)."""
    units: list[list[int]] = []
    groups: dict[Any, list[int]] = {}
    for i, request in enumerate(requests):
        group = acquire_group(request)
        unit = None if group is None else groups.get(group)
        if unit is None:
            unit = [i]
            units.append(unit)
            if group is not None:
                groups[group] = unit
        else:
            unit.append(i)
    scripts = [requests[u[0]] if len(u) == 1 else merge_acquires([requests[i] for i in u]) for u in units]
    out: list[Any] = [None] * len(requests)
    alone: list[int] = []
    for unit, reply in zip(units, (yield from _pipelined(scripts, mode)), strict=True):
        if len(unit) == 1:
            out[unit[0]] = reply
        elif isinstance(reply, BaseException):
            alone.extend(unit)
        else:
            try:
                parts = split_acquires(reply, len(unit))
            except ScriptError as exc:
                parts = [exc] * len(unit)
            for i, part in zip(unit, parts, strict=True):
                out[i] = part
    if alone:
        for i, reply in zip(alone, (yield from _pipelined([requests[i] for i in alone], mode)), strict=True):
            out[i] = reply
    return out


def _evalsha(request: Script) -> tuple[Any, ...]:
    """The EVALSHA of ``request``, as raw command words.

    Raw, through ``execute_command``: a cluster pipeline refuses ``pipe.evalsha`` but routes the
    raw command by its keys (every call's keys share one slot), one sub-pipeline per node.
    """
    return ("EVALSHA", load(request.name).sha, len(request.keys), *request.keys, *request.args)


def _fcall(request: Script) -> tuple[Any, ...]:
    """The FCALL of ``request``: :func:`_evalsha` in functions mode."""
    return ("FCALL", library().functions[request.name], len(request.keys), *request.keys, *request.args)


def _filled(pipe: Any, requests: list[Script], command: Callable[[Script], tuple[Any, ...]]) -> Any:
    """``pipe`` (a pipeline of either client, without MULTI) with the ``command`` of each request."""
    for request in requests:
        pipe.execute_command(*command(request))
    return pipe


class _Counters:
    def __init__(self) -> None:
        self.batches = 0  # pipelines of calls, for tests and benchmarks
        self.calls = 0
        self.scripts = 0  # script calls sent: fewer than calls when acquires were merged


class ScriptBatcher(_Counters):
    """Sends the :class:`Script` calls of one asyncio client in pipelines (module docstring)."""

    def __init__(
        self,
        client: aredis.Redis,
        scripts: ScriptsMode = "eval",
        node_of: Callable[[Request], str | None] | None = None,
    ) -> None:
        super().__init__()
        self.client = client
        self.mode = check_mode(scripts)
        self._command = _evalsha if scripts == "eval" else _fcall
        self._cluster = isinstance(client, acluster.RedisCluster)
        self._node_of = node_of  # on a cluster: the node of a call, for one pipeline per node
        self._queue: list[tuple[Script, asyncio.Future[Any]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def call(self, request: Script) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self._flush())
        return await future

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the calls of this turn join
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                replies = await self._send([request for request, _ in batch])
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, future), reply in zip(batch, replies, strict=True):
                if future.done():  # the caller was cancelled: the script ran all the same
                    continue
                if isinstance(reply, BaseException):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)

    async def _send(self, requests: list[Script]) -> list[Any]:
        self.batches += 1
        self.calls += len(requests)
        groups = by_node(requests, self._node_of)
        if groups is None:
            return await self._pipeline(requests)
        # A cluster: one pipeline per node, all at once (as redis-py sends a cluster pipeline),
        # so that a node that is down fails its own callers only.
        out: list[Any] = [None] * len(requests)
        sent = await asyncio.gather(
            *(self._pipeline([requests[i] for i in group]) for group in groups), return_exceptions=True
        )
        for group, replies in zip(groups, sent, strict=True):
            if isinstance(replies, Exception):
                replies = [replies] * len(group)
            elif isinstance(replies, BaseException):  # cancelled, interrupted
                raise replies
            for i, reply in zip(group, replies, strict=True):
                out[i] = reply
        return out

    async def _pipeline(self, requests: list[Script]) -> list[Any]:
        flow = batch_flow(requests, self.mode)
        try:
            step = next(flow)
            while True:
                try:
                    if isinstance(step, Load):
                        if step.library:
                            await aload_library(self.client)
                        for source in step.sources:
                            await ascript_load(self.client, source, step.keys)
                        reply: Any = None
                    else:
                        self.scripts += len(step)
                        reply = await self._calls(step)
                except REDIS_ERRORS as exc:
                    raise redis_error(exc) from exc
                step = flow.send(reply)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def _calls(self, requests: list[Script]) -> list[Any]:
        """The replies of ``requests`` (error replies as exception instances), sent at once."""
        if len(requests) == 1 and self._cluster:
            return [await self._alone(requests[0])]
        pipe = _filled(self.client.pipeline(transaction=False), requests, self._command)
        return await pipe.execute(raise_on_error=False)  # type: ignore[no-any-return]

    async def _alone(self, request: Script) -> Any:
        """One call on a cluster, by the client's ``execute_command``: its reply, or its error
        reply (NOSCRIPT, a Lua error) as an exception instance, as a pipeline gives it.

        Not a one-call pipeline: before each retry after a connection error, redis-py's asyncio
        cluster pipeline closes every connection of the client (calls in flight to healthy
        nodes fail with them, the catalog watcher's pub/sub drops) and sleeps 0.25 s, so a call
        to a dead primary took seconds. ``execute_command`` drops only the failed node's idle
        connections and retries after reading the slot map again (a failover moves the slots),
        without sleeping."""
        try:
            return await self.client.execute_command(*self._command(request))
        except redis.exceptions.ResponseError as exc:
            return exc


_forks = [0]  # forks this process descends from: a ThreadBatcher made before one starts afresh
os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, _forks[0] + 1))


class _Slot:
    """One waiting call of a :class:`ThreadBatcher`."""

    __slots__ = ("done", "error", "lead", "reply", "request")

    def __init__(self, request: Script) -> None:
        self.request = request
        self.done = threading.Event()
        self.lead = False  # woken to send the next pipeline, not with a reply
        self.reply: Any = None
        self.error: BaseException | None = None

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.reply


class ThreadBatcher(_Counters):
    """Sends the :class:`Script` calls of threads sharing one blocking client in pipelines.

    A call with nothing in flight goes at once, alone, as it would without this class. Calls
    made while one is in flight wait; when it returns, the longest-waiting one is woken to send
    every waiting call as one pipeline (the group commit of databases), so no caller ever waits
    for more than the round trip in flight and its own.
    """

    def __init__(
        self,
        send: Callable[[Script], Any],
        client: redis.Redis,
        scripts: ScriptsMode = "eval",
        node_of: Callable[[Request], str | None] | None = None,
    ) -> None:
        super().__init__()
        self._send_one = send  # the client's own path for a single call (errors translated)
        self.client = client
        self.mode = check_mode(scripts)
        self._command = _evalsha if scripts == "eval" else _fcall
        self._node_of = node_of  # on a cluster: the node of a call, to split a failed pipeline
        self._lock = threading.Lock()
        self._waiting: list[_Slot] = []
        self._busy = False
        self._forks = _forks[0]

    def call(self, request: Script) -> Any:
        if self._forks != _forks[0]:  # a forked child: the parent's threads did not come along
            self._lock, self._waiting, self._busy, self._forks = threading.Lock(), [], False, _forks[0]
        with self._lock:
            alone = not self._busy
            if alone:
                self._busy = True
            else:
                slot = _Slot(request)
                self._waiting.append(slot)
        if alone:
            try:
                return self._send_one(request)
            finally:
                self._hand_over()
        slot.done.wait()
        if slot.lead:
            self._lead()
        return slot.outcome()

    def _hand_over(self) -> None:
        """Wake the longest-waiting caller to send what waits, or say that nothing is in flight."""
        with self._lock:
            if self._waiting:
                first = self._waiting[0]
                first.lead = True
                first.done.set()
            else:
                self._busy = False

    def _lead(self) -> None:
        with self._lock:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
        try:
            replies = self._send([slot.request for slot in batch])
        except BaseException as exc:  # every caller of the batch gets it, this thread included
            replies = [exc] * len(batch)
        for slot, reply in zip(batch, replies, strict=True):
            slot.lead = False
            if isinstance(reply, BaseException):
                slot.error = reply
            else:
                slot.reply = reply
            slot.done.set()
        self._hand_over()

    def _send(self, requests: list[Script]) -> list[Any]:
        self.batches += 1
        self.calls += len(requests)
        if len(requests) == 1:
            self.scripts += 1
            try:
                return [self._send_one(requests[0])]
            except Exception as exc:
                return [exc]
        try:
            return self._pipeline(requests)
        except BackendUnavailable:
            groups = by_node(requests, self._node_of)
            if groups is None:
                raise
        # A cluster pipeline fails whole when one node is down: each node's calls alone.
        out: list[Any] = [None] * len(requests)
        for group in groups:
            try:
                replies = self._pipeline([requests[i] for i in group])
            except BackendUnavailable as exc:
                replies = [exc] * len(group)
            for i, reply in zip(group, replies, strict=True):
                out[i] = reply
        return out

    def _pipeline(self, requests: list[Script]) -> list[Any]:
        flow = batch_flow(requests, self.mode)
        try:
            step = next(flow)
            while True:
                try:
                    if isinstance(step, Load):
                        if step.library:
                            load_library(self.client)
                        for source in step.sources:
                            script_load(self.client, source, step.keys)
                        reply: Any = None
                    else:
                        self.scripts += len(step)
                        pipe = _filled(self.client.pipeline(transaction=False), step, self._command)
                        reply = pipe.execute(raise_on_error=False)
                except REDIS_ERRORS as exc:
                    raise redis_error(exc) from exc
                step = flow.send(reply)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
