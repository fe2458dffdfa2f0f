"""The Lua scripts as one Redis function library: loaded once by an admin, called with FCALL.

A client made with ``scripts="functions"`` sends ``FCALL <name>_<hash> numkeys keys... args...``
where the default (``scripts="eval"``) sends ``EVALSHA``. The library is built from the very
sources EVALSHA runs (``lua/<name>.lua`` with its includes, see :mod:`registry.scripts`), each
script's body becoming the body of one function, unchanged::

    #!lua name=registry_<hash>
    redis.register_function('acquire_<hash>', function(KEYS, ARGV)
    <acquire.lua, includes inlined>
    end)
    ...

An EVAL script is itself run as the body of a function whose locals are the script's, so a body
behaves the same here: its locals, its ``return``, ``TIME``, its error replies; ``KEYS`` and
``ARGV`` are the function's parameters rather than globals. ``<hash>`` is a short hash of the
whole library, so two versions of this package (a rolling deploy) load two libraries side by
side and never replace each other's functions: FUNCTION LOAD needs no REPLACE, and a library
that is "already exists" is loaded.

Why functions (the weighing is in README.md, "Security"): a library is loaded once, persisted
with the data and replicated to replicas, and workers then need FCALL only, never EVAL or
SCRIPT LOAD, so the Lua compiler (where recent CVEs such as CVE-2025-49844 live) is reachable
only by the admin role.

In a Redis Cluster every primary needs the library (replicas get it by replication):
:func:`load_library` sends FUNCTION LOAD to each primary on its own, so that a primary that
already has it does not keep the others from getting it (redis-py's own ``function_load``
sends it to every primary but stops at the first error).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal, get_args

import redis.exceptions
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from registry.errors import ConfigError, PermissionDenied, redis_error
from registry.scripts import load, names

__all__ = [
    "LOAD_COMMAND",
    "Library",
    "ScriptsMode",
    "aload_library",
    "check_mode",
    "is_missing",
    "library",
    "load_library",
]

ScriptsMode = Literal["eval", "functions"]
LOAD_COMMAND = "registry functions load"  # what the admin runs; named in the error a worker gets
_HASH_CHARS = 12  # of the SHA-1 of the library: 48 bits, plenty to tell versions apart


@dataclass(frozen=True, slots=True)
class Library:
    """The function library: its ``name`` (``registry_<hash>``), the ``source`` FUNCTION LOAD
    takes, and the function of each script by script name."""

    name: str
    source: str
    functions: Mapping[str, str]


def check_mode(scripts: Any) -> ScriptsMode:
    """``scripts`` if it is a mode this library knows, else a :class:`ConfigError`."""
    if scripts not in get_args(ScriptsMode):
        raise ConfigError(f"scripts must be one of {', '.join(map(repr, get_args(ScriptsMode)))}, got {scripts!r}")
    return scripts  # type: ignore[no-any-return]


def _render(tag: str, bodies: Mapping[str, str]) -> str:
    parts = [f"#!lua name=registry_{tag}\n"]
    for name, body in bodies.items():
        parts.append(f"\nredis.register_function('{name}_{tag}', function(KEYS, ARGV)\n{body.rstrip()}\nend)\n")
    return "".join(parts)


@cache
def library() -> Library:
    """The library of every script shipped (built once per process)."""
    bodies = {name: load(name).source for name in names()}
    # The hash is of the library as rendered with a fixed tag, so it covers the sources and the
    # way they are wrapped: a change of either makes a new library name.
    tag = hashlib.sha1(_render("", bodies).encode()).hexdigest()[:_HASH_CHARS]
    return Library(f"registry_{tag}", _render(tag, bodies), {name: f"{name}_{tag}" for name in bodies})


def is_missing(reply: Any) -> bool:
    """Is ``reply`` FCALL's error for a function this server does not have (FCALL's NOSCRIPT)?"""
    return isinstance(reply, redis.exceptions.ResponseError) and "Function not found" in str(reply)


def _loaded(exc: redis.exceptions.RedisError) -> None:
    """After FUNCTION LOAD failed with ``exc``: return if the library is there all the same,
    else raise this library's error (one that says what to do when the user may not load)."""
    if isinstance(exc, redis.exceptions.ResponseError) and "already exists" in str(exc):
        return  # loaded before (by an admin, or by another client at the same moment)
    error = redis_error(exc)
    if isinstance(error, PermissionDenied):
        raise PermissionDenied(
            f"the function library {library().name} is not loaded in this Redis, and this user may not "
            f"load it ({exc}): an admin must run `{LOAD_COMMAND}` (or FUNCTION LOAD the output of "
            "`registry functions source`) once per version of registry"
        ) from exc
    raise error from exc


def load_library(client: Any) -> str:
    """FUNCTION LOAD the library into ``client``'s Redis (every primary of a cluster); returns
    its name. Loading a library that is already there is a success."""
    source = library().source
    targets = client.get_primaries() if isinstance(client, RedisCluster) else [None]
    for node in targets:
        options = {} if node is None else {"target_nodes": node}
        try:
            client.execute_command("FUNCTION LOAD", source, **options)
        except redis.exceptions.RedisError as exc:
            _loaded(exc)
    return library().name


async def aload_library(client: Any) -> str:
    """:func:`load_library` for an asyncio client."""
    source = library().source
    if isinstance(client, AsyncRedisCluster):
        await client.initialize()
        targets: list[Any] = client.get_primaries()
    else:
        targets = [None]
    for node in targets:
        options = {} if node is None else {"target_nodes": node}
        try:
            await client.execute_command("FUNCTION LOAD", source, **options)
        except redis.exceptions.RedisError as exc:
            _loaded(exc)
    return library().name
