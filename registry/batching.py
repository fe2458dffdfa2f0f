"""Auto-batching for the asyncio client: script calls made at the same time share one round trip.

A worker process serving hundreds of concurrent requests would otherwise pay one round trip per
acquire, each waiting for a pool connection. Here every script call of an event-loop turn joins
a queue; the first one schedules a flush for the next turn, which sends the whole queue as one
pipeline (no MULTI: each script stays its own atomic unit, so every decision is as exact as when
sent alone) and hands each caller its own reply or error. Acquires of the same model and limits
in one pipeline go as one script call, which takes them in order: one read and one write of each
window for the lot, instead of one per request. Calls made while a pipeline is in
flight wait for the next one, so batches grow with the load and a lone call is sent at once.

Redis Cluster cannot run scripts in a pipeline; the cluster work will group batches by node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis.asyncio as aredis
from redis.exceptions import NoScriptError, ResponseError

from registry._core import Script
from registry.admission.ops import acquire_group, merge_acquires, split_acquires
from registry.errors import ScriptError
from registry.scripts import load

__all__ = ["ScriptBatcher"]

MAX_BATCH = 512  # scripts per pipeline: bounds a reply's size and a late caller's wait


class ScriptBatcher:
    """Sends the :class:`Script` calls of one client in pipelines; see the module docstring."""

    def __init__(self, client: aredis.Redis, errors: Callable[[], Any]) -> None:
        self.client = client
        self._errors = errors  # a context manager translating redis errors (map_redis_errors)
        self._queue: list[tuple[Script, asyncio.Future[Any]]] = []
        self._flushing: asyncio.Task[None] | None = None
        self.batches = 0  # pipelines sent, for tests and benchmarks
        self.calls = 0
        self.scripts = 0  # script calls sent: fewer than calls when acquires were merged

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
        """One pipeline for ``requests``, acquires of the same model and limits merged into one
        script call each (see :func:`~registry.admission.ops.merge_acquires`); a merged call
        that fails is sent again as its single calls, so that a bad one fails alone."""
        self.batches += 1
        self.calls += len(requests)
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
        self.scripts += len(scripts)
        out: list[Any] = [None] * len(requests)
        alone: list[int] = []
        for unit, reply in zip(units, await self._run(scripts), strict=True):
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
            self.scripts += len(alone)
            for i, reply in zip(alone, await self._run([requests[i] for i in alone]), strict=True):
                out[i] = reply
        return out

    async def _run(self, requests: list[Script]) -> list[Any]:
        """One pipeline of EVALSHAs; scripts Redis does not know yet are loaded and sent again."""
        replies = await self._pipeline(requests)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            for name in {requests[i].name for i in missing}:
                with self._errors():
                    await self.client.script_load(load(name).source)
            again = await self._pipeline([requests[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        out: list[Any] = []
        for reply in replies:
            if isinstance(reply, ResponseError):
                try:
                    with self._errors():
                        raise reply
                except BaseException as mapped:
                    reply = mapped
            out.append(reply)
        return out

    async def _pipeline(self, requests: list[Script]) -> list[Any]:
        with self._errors():
            pipe = self.client.pipeline(transaction=False)
            for request in requests:
                pipe.evalsha(load(request.name).sha, len(request.keys), *request.keys, *request.args)
            return list(await pipe.execute(raise_on_error=False))
