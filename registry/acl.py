"""Least-privilege Redis ACL users for one namespace: worker, admin and dashboard.

``registry acl`` prints them as ``user`` lines of redis.conf (to ``include``), with a header, or
bare for an ``aclfile`` (``--aclfile``). The grants below are what the library really sends as
each role (``tests/test_acl.py`` runs every role's job as that user against a real server, and
checks each refusal)::

    worker     FCALL of the function library (never EVAL, EVALSHA, SCRIPT or FUNCTION LOAD), the
               commands its functions call, catalog reads and the change notices: read-only on
               the catalog keys, read-write on the admission, ledger and budget keys.
    admin      catalog and budget writes (the catalog_write function), FUNCTION LOAD, export
               and restore (SCAN, PTTL, HSET, SADD, PEXPIRE); read-write on the namespace's keys.
    dashboard  reads only: no scripts, no writes; read-only on the namespace's keys.

None of them has a server-wide command (FLUSHALL, FLUSHDB, CONFIG, SHUTDOWN, DEBUG, KEYS, ACL,
MODULE, SCRIPT, FUNCTION DELETE/FLUSH, SELECT, ...) or a key outside the namespace. Since Redis
7 the user's key, channel and command permissions also bind every command a script or function
calls, so a worker's functions can no more change a price than the worker can with HSET; and
FCALL itself checks the keys it declares (read-write: a worker never passes a catalog key).

Key patterns follow :mod:`registry.keys`: ``{<ns>:catalog}:*`` (and the channel
``{<ns>:catalog}:changes``), ``{<ns>:adm:*`` and ``{<ns>:bud:*``. A namespace holds no glob
character, so a pattern never reaches another namespace.

Passwords given are written as their SHA-256 (``#<hex>``), never in clear. A role without one is
written ``off`` with no password: it cannot log in until it gets a real one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from registry.keys import Keys

__all__ = ["ROLES", "Role", "render", "roles", "user_name"]

# What each role's scripts call inside Redis (from the Lua sources; a test keeps them in step).
WORKER_SCRIPTS = ("acquire", "settle", "record_usage", "budget_reserve", "budget_settle")
ADMIN_SCRIPTS = ("catalog_write",)
_WORKER_SCRIPT_COMMANDS = (
    "DEL GET HDEL HGET HGETALL HINCRBY HMGET HSET HSETNX PEXPIRE SADD SET SISMEMBER TIME XADD XLEN"
)
_ADMIN_SCRIPT_COMMANDS = "DEL HEXISTS HGET HINCRBY HSET PUBLISH TIME XADD XREVRANGE ZADD ZCARD ZREM"  # catalog_write

# What every role sends itself: PING, the MULTI/EXEC around catalog reads, the reads of the
# catalog, ledger, budgets and events, TIME (the events' clock) and the watcher's subscription.
_CONNECTION = "PING MULTI EXEC DISCARD"
_READS = "HGETALL HMGET ZRANGE XRANGE XREVRANGE XREAD SMEMBERS TIME"
_NOTICES = "SUBSCRIBE UNSUBSCRIBE"
_EXPORT = "SCAN PTTL"  # registry export: find the namespace's keys and their TTLs
_RESTORE = "HSET SADD PEXPIRE"  # registry import dump

ROLES = ("worker", "admin", "dashboard")


@dataclass(frozen=True, slots=True)
class Role:
    """One ACL user: its commands, key patterns (``~`` read-write, ``%R~`` read-only) and channels."""

    name: str
    commands: tuple[str, ...]
    keys: tuple[str, ...]
    channels: tuple[str, ...]

    def rules(self) -> str:
        """The ACL rules after the user's name and password: everything else is refused."""
        grants = " ".join(f"+{command.lower()}" for command in self.commands)
        return f"resetkeys resetchannels -@all {grants} {' '.join(self.keys)} {' '.join(self.channels)}"


def _commands(*groups: str) -> tuple[str, ...]:
    return tuple(sorted({command for group in groups for command in group.split()}))


def roles(namespace: str) -> dict[str, Role]:
    """The three roles of ``namespace``, by role name."""
    keys = Keys(namespace)  # checks the namespace
    catalog, admission, budgets = f"{keys.catalog_tag}:*", f"{{{namespace}:adm:*", f"{{{namespace}:bud:*"
    channel = f"&{keys.changes_channel}"
    return {
        "worker": Role(
            "worker",
            _commands(_CONNECTION, _READS, _NOTICES, "FCALL", _WORKER_SCRIPT_COMMANDS),
            (f"%R~{catalog}", f"~{admission}", f"~{budgets}"),
            (channel,),
        ),
        "admin": Role(
            "admin",
            (
                *_commands(_CONNECTION, _READS, _NOTICES, "FCALL", _ADMIN_SCRIPT_COMMANDS, _EXPORT, _RESTORE),
                "FUNCTION|LOAD",
            ),
            (f"~{catalog}", f"~{admission}", f"~{budgets}"),
            (channel,),
        ),
        "dashboard": Role(
            "dashboard",
            _commands(_CONNECTION, _READS, _NOTICES),
            (f"%R~{catalog}", f"%R~{admission}", f"%R~{budgets}"),
            (channel,),
        ),
    }


def user_name(namespace: str, role: str) -> str:
    """The ACL user of ``role`` in ``namespace``: ``<namespace>-<role>``."""
    return f"{namespace}-{role}"


def _password(secret: str | None) -> str:
    if not secret:
        return "off resetpass"
    return f"on #{hashlib.sha256(secret.encode()).hexdigest()}"


_HEADER = """\
# Redis ACL users of registry namespace {namespace!r}: one user per role, nothing else allowed.
# Generated by `registry --namespace {namespace} acl`; registry/acl.py says what each role may do.
#
#   {worker:<20} acquire, settle, record usage, budgets; reads the catalog; FCALL only, so
#   {pad:<20} run workers with Registry(..., scripts="functions")
#   {admin:<20} catalog and budget writes, `registry functions load`, export and restore
#   {dashboard:<20} reads only (registry top, the Prometheus exporter, statistics)
#
# This is redis.conf syntax: `include` it from redis.conf. For an aclfile (which cannot hold
# comments, nor be combined with users in redis.conf), print the bare lines: registry acl --aclfile
#
# {passwords}
#   export REGISTRY_WORKER_PASSWORD="$(openssl rand -hex 32)" \\
#          REGISTRY_ADMIN_PASSWORD="$(openssl rand -hex 32)" \\
#          REGISTRY_DASHBOARD_PASSWORD="$(openssl rand -hex 32)"
#   registry --namespace {namespace} acl --output /etc/redis/registry-acl.conf
# and keep them in your secret store: the file holds their SHA-256, the clients' URLs the
# passwords (redis://{worker}:PASSWORD@host:6379/0).
#
# The default user is off: on without a password it could do anything, and these roles would
# protect nothing. Give operators a user of their own. To serve several namespaces from one
# server, concatenate one file per namespace and keep a single `user default` line.
# The roles work on database 0 (SELECT is not granted).
"""


def render(namespace: str, passwords: Mapping[str, str | None] | None = None, *, comments: bool = True) -> str:
    """The ACL users of ``namespace``'s roles, one ``user`` line each, with ``passwords`` by role
    name (a role without one is off); with ``comments`` a header that says how to use them
    (redis.conf syntax: an aclfile cannot hold comments)."""
    passwords = passwords or {}
    unknown = set(passwords) - set(ROLES)
    if unknown:
        raise ValueError(f"no such role: {', '.join(sorted(unknown))} (roles: {', '.join(ROLES)})")
    made = roles(namespace)
    names = {role: user_name(namespace, role) for role in ROLES}
    note = (
        "Passwords are stored as SHA-256 hashes. To make new ones:"
        if all(passwords.get(role) for role in ROLES)
        else "A role without a password is off (no login). To give them real passwords:"
    )
    lines = [_HEADER.format(namespace=namespace, pad="", passwords=note, **names)] if comments else []
    lines.append("user default off resetpass resetkeys resetchannels -@all")
    for role in ROLES:
        lines.append(f"user {names[role]} {_password(passwords.get(role))} {made[role].rules()}")
    return "\n".join(lines) + "\n"
