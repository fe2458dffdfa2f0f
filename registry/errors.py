"""The library's exceptions: one root, and one place that translates redis-py's errors.

::

    RegistryError
    ├── ConfigError(RegistryError, ValueError)     a bad model, config file or argument
    ├── ModelNotFoundError(RegistryError, KeyError) no model under that key
    ├── ModelExistsError(RegistryError)            register without replace= hit an existing key
    ├── RevisionConflictError(RegistryError)       an expected revision did not match
    ├── RequestTooLargeError(RegistryError, ValueError)  bigger than a limit: waiting never helps
    ├── RateLimitedError(RegistryError)            refused (raising helpers only), has retry_after
    └── BackendError(RegistryError)                anything Redis said or failed to say
        ├── BackendUnavailable                     connection refused, timeout, DNS
        ├── PermissionDenied                       the Redis user may not (ACL: NOPERM)
        └── ScriptError                            a Lua error or a malformed reply

A denial of admission is a normal result, never one of these.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis.exceptions

__all__ = [
    "REDIS_ERRORS",
    "BackendError",
    "BackendUnavailable",
    "ConfigError",
    "ModelExistsError",
    "ModelNotFoundError",
    "PermissionDenied",
    "RateLimitedError",
    "RegistryError",
    "RequestTooLargeError",
    "RevisionConflictError",
    "ScriptError",
    "map_redis_errors",
    "redis_error",
]


class RegistryError(Exception):
    """Root of every error this library raises on purpose."""


class ConfigError(RegistryError, ValueError):
    """Bad input: a model definition, a config file, or an argument.

    The message names where the problem is (file, entry and field path) and what is wrong.
    Nothing has been written to Redis when this is raised.
    """


class ModelNotFoundError(RegistryError, KeyError):
    """No model is registered under the key."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"no model {self.key!r} in the catalog"


class ModelExistsError(RegistryError):
    """``register_model`` found the key taken and ``replace`` was false."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        super().__init__(f"already registered: {', '.join(keys)} (pass replace=True to overwrite)")


class RevisionConflictError(RegistryError):
    """A write's expected revision did not match what Redis holds: somebody wrote first."""

    def __init__(self, key: str, expected: int, actual: int) -> None:
        self.key = key
        self.expected = expected
        self.actual = actual
        held = "no model" if actual == 0 else f"revision {actual}"
        super().__init__(f"{key}: expected revision {expected}, Redis holds {held}")


class RequestTooLargeError(RegistryError, ValueError):
    """The request alone is larger than a limit (say more tokens than the TPM): it never fits."""

    def __init__(self, model_key: str, limit: str, cost: int, allowed: int) -> None:
        self.model_key, self.limit, self.cost, self.allowed = model_key, limit, cost, allowed
        super().__init__(f"{model_key}: a request of {cost} against {limit} = {allowed} can never be admitted")


class RateLimitedError(RegistryError):
    """A request was refused (by a helper that raises rather than returning the Decision)."""

    def __init__(self, model_key: str, denied_by: str | None, retry_after: float) -> None:
        self.model_key, self.denied_by, self.retry_after = model_key, denied_by, retry_after
        super().__init__(f"{model_key}: refused by {denied_by}; retry after {retry_after:.3f}s")


class BackendError(RegistryError):
    """Redis failed or answered something this library did not expect."""


class BackendUnavailable(BackendError):
    """Redis could not be reached (refused, timed out, unknown host)."""


class PermissionDenied(BackendError):
    """The Redis user's ACL refused: a command, a key, or a channel (NOPERM), also when a
    script or function called it. A command refused outright wrote nothing; a script refused
    midway keeps what it wrote before (Redis does not roll scripts back; the roles of
    ``registry acl`` grant every command their scripts call, so theirs are refused up front).

    See ``registry acl`` for the roles (worker, admin, dashboard) and what each may do.
    """


class ScriptError(BackendError):
    """A Lua script raised an error or returned a reply of the wrong shape."""


# What redis-py raises: its RedisError tree, and the cluster client's RedisClusterException
# (SlotNotCoveredError and the like), which is not a RedisError.
REDIS_ERRORS = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)

# A cluster that cannot serve a slot now (a primary failed and not yet replaced, a slot moving):
# unavailable, as a refused connection is, so the breaker and the fault policy apply.
_CLUSTER_UNAVAILABLE = (
    redis.exceptions.ClusterDownError,  # CLUSTERDOWN, MASTERDOWN
    redis.exceptions.TryAgainError,  # TRYAGAIN: a multi-key call during a slot's migration
    redis.exceptions.SlotNotCoveredError,  # no node serves the slot (redis-py's own map)
)


def redis_error(exc: redis.exceptions.RedisError | redis.exceptions.RedisClusterException) -> BackendError:
    """The error of this library's tree that stands for a redis-py exception (raise it ``from`` it)."""
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return BackendUnavailable(f"Redis unavailable: {exc}")
    if isinstance(exc, _CLUSTER_UNAVAILABLE):
        return BackendUnavailable(f"Redis Cluster unavailable: {type(exc).__name__}: {exc}")
    if isinstance(exc, redis.exceptions.ResponseError):
        message = str(exc)
        # NOPERM (redis-py strips the prefix), or a command a script called was refused (Redis 7.0
        # words that as a plain ERR): before the script branch, whose "script" it also contains.
        if isinstance(exc, redis.exceptions.NoPermissionError):
            return PermissionDenied(f"NOPERM {message}")
        if "user executing the script can't" in message:
            return PermissionDenied(message)
        if "ERR_" in message or "script" in message.lower():
            return ScriptError(message)
        return BackendError(message)
    return BackendError(str(exc))


@contextmanager
def map_redis_errors() -> Iterator[None]:
    """Translate redis-py exceptions into this library's tree, keeping the cause."""
    try:
        yield
    except REDIS_ERRORS as exc:
        raise redis_error(exc) from exc
