"""What admission hands out and takes back: limits, decisions and reservations. No I/O."""

from __future__ import annotations

import functools
import itertools
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import msgspec

from registry.budgets.periods import PERIODS
from registry.errors import ConfigError
from registry.models import MAX_ID_LENGTH, ModelSpec, RateLimit, parse_model_key, validate_name, validate_tenant

__all__ = [
    "COUNTS",
    "LIMIT_NAMES",
    "Counts",
    "Decision",
    "LimitSpec",
    "Reservation",
    "amount",
    "applicable_limits",
    "check_request_id",
    "check_reservation",
    "check_tenant",
]

MINUTE_MS = 60_000
DAY_MS = 86_400_000
# Sub-window widths: a refused request's retry_after is exact to one bucket, never early.
MINUTE_BUCKET_MS = 1_000  # 60 buckets per minute window
DAY_BUCKET_MS = 900_000  # 96 buckets of 15 minutes per day window (stays a compact listpack)

Counts = Literal["requests", "tokens", "input_tokens", "output_tokens"]
# Each limit field of RateLimit: what it counts, its window and its buckets. A request costs a
# requests limit 1; "tokens" its input plus output tokens, "input_tokens" its input tokens and
# "output_tokens" its output tokens (at acquire the estimate: input + max output; at settle the
# real counts, where "input_tokens" leaves out the prompt tokens read from the provider's cache,
# as Anthropic's ITPM does). The order is the one limits are passed in, so the one of
# `denied_by` on a tie.
_FIELDS: tuple[tuple[str, Counts, int, int], ...] = (
    ("requests_per_minute", "requests", MINUTE_MS, MINUTE_BUCKET_MS),
    ("tokens_per_minute", "tokens", MINUTE_MS, MINUTE_BUCKET_MS),
    ("input_tokens_per_minute", "input_tokens", MINUTE_MS, MINUTE_BUCKET_MS),
    ("output_tokens_per_minute", "output_tokens", MINUTE_MS, MINUTE_BUCKET_MS),
    ("requests_per_day", "requests", DAY_MS, DAY_BUCKET_MS),
)
# Every limit name, in the order acquire and settle pass them: the model's, then the tenant's.
LIMIT_NAMES: tuple[str, ...] = tuple(f for f, *_ in _FIELDS) + tuple(f"tenant.{f}" for f, *_ in _FIELDS)
# What each limit name (the model's or a tenant's) counts.
COUNTS: Mapping[str, Counts] = MappingProxyType(
    {prefix + name: counts for prefix in ("", "tenant.") for name, counts, *_ in _FIELDS}
)


def amount(counts: Counts, requests: int, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> int:
    """What a limit that counts ``counts`` is charged for ``requests`` requests (1, or 0 for a
    release) of ``input_tokens`` and ``output_tokens``.

    ``cached_input_tokens`` (part of ``input_tokens``: prompt tokens read from the provider's
    cache, known only at settle) are left out of an ``"input_tokens"`` limit, as Anthropic's ITPM
    leaves out cache reads; a ``"tokens"`` limit (OpenAI's TPM) counts every input token."""
    if counts == "requests":
        return requests
    if counts == "input_tokens":
        return input_tokens - cached_input_tokens
    if counts == "output_tokens":
        return output_tokens
    return input_tokens + output_tokens


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """One limit as the scripts see it."""

    name: str  # e.g. "tokens_per_minute", "tenant.requests_per_day"
    counts: Counts
    limit: int
    window_ms: int
    bucket_ms: int
    tenant: str | None = None


def check_tenant(tenant: str | None) -> str | None:
    if tenant is None:
        return None
    if not isinstance(tenant, str) or tenant == "*":
        raise ConfigError(f"tenant must be a name, got {tenant!r}")
    try:
        return validate_tenant(tenant)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def check_request_id(request_id: str | None) -> str | None:
    if request_id is not None and (
        not isinstance(request_id, str) or not 0 < len(request_id) <= 128 or not _encodable(request_id)
    ):
        raise ConfigError(f"request_id must be a string of 1 to 128 characters, got {request_id!r}")
    return request_id


def _encodable(text: str) -> bool:
    """No lone surrogate (what Python makes of bytes that were not UTF-8): it can be in a key."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


_MAX_MS = 2**53 - 1  # what the scripts take as a time or an amount (exact in Lua)
_MAX_TTL_MS = 2_592_000_000
_TOKEN = re.compile(r"[^\s|]{0,64}")  # what the scripts take ("" is settled as "-")


def _whole(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _model_key(value: Any) -> bool:
    return type(value) is str and _model_key_ok(value)


@functools.lru_cache(maxsize=4096)  # a settle checks the same few keys and tenants again and again
def _model_key_ok(value: str) -> bool:
    try:
        parse_model_key(value)
        validate_name(value, what="model key", max_length=MAX_ID_LENGTH + 65)  # no braces: its keys' tag
    except ValueError:
        return False
    return True


def check_reservation(reservation: Any) -> Reservation:
    """``reservation`` if it is a handle acquire could have made: every field of its type and in
    range, names that make keys of its own model and tenant only. A forged or damaged one raises
    :class:`ConfigError` before a settle or release writes anything (its values go into key
    names and script arguments; the scripts would refuse some, but only after the budgets').
    """
    if not isinstance(reservation, Reservation):
        raise ConfigError(f"expected a Reservation, got {type(reservation).__name__}")
    r = reservation
    problem = None
    if not _model_key(r.model_key):
        problem = "model_key"
    elif not (type(r.id) is str and 0 < len(r.id) <= 128 and _encodable(r.id)):
        problem = "id"
    elif r.tenant is not None and (type(r.tenant) is not str or r.tenant == "*" or not _valid_tenant(r.tenant)):
        problem = "tenant"
    elif not (_whole(r.input_tokens, 0, 10**9) and _whole(r.max_output_tokens, 0, 10**9)):
        problem = "token counts"
    elif type(r.token) is not str or not _TOKEN.fullmatch(r.token):
        problem = "token"
    elif not (_whole(r.at_ms, 0, _MAX_MS) and _whole(r.ttl_ms, 0, _MAX_TTL_MS)):
        problem = "at_ms or ttl_ms"
    elif not (isinstance(r.charges, tuple | list) and len(r.charges) <= 64 and all(map(_charge_ok, r.charges))):
        problem = "charges"
    elif not (isinstance(r.budgets, tuple | list) and len(r.budgets) <= 16 and all(map(_period_ok, r.budgets))):
        problem = "budgets"
    if problem is not None:
        raise ConfigError(f"not a reservation acquire could have made: bad {problem} in {r!r:.300}")
    return r


@functools.lru_cache(maxsize=4096)
def _valid_tenant(name: str) -> bool:
    try:
        validate_tenant(name)
    except ValueError:
        return False
    return True


def _charge_ok(charge: Any) -> bool:
    """(limit name, bucket index, amount, window_ms, bucket_ms), as acquire charged it."""
    if not isinstance(charge, tuple | list) or len(charge) != 5 or charge[0] not in LIMIT_NAMES:
        return False
    _, bucket, amount, window_ms, bucket_ms = charge
    return (
        _whole(bucket, 0, _MAX_MS)
        and _whole(amount, 0, _MAX_MS)
        and _whole(window_ms, 0, _MAX_MS)
        and _whole(bucket_ms, 1, _MAX_MS)
    )


def _period_ok(period: Any) -> bool:
    """(scope, period, index) of a budget period holding the request's estimate."""
    if not isinstance(period, tuple | list) or len(period) != 3:
        return False
    scope, name, index = period
    return (scope == "*" or _model_key(scope)) and name in PERIODS and _whole(index, 0, _MAX_MS)


def _specs(rate: RateLimit, prefix: str, tenant: str | None) -> list[LimitSpec]:
    out = []
    for name, counts, window, bucket in _FIELDS:
        value = getattr(rate, name)
        if value is not None:
            out.append(LimitSpec(prefix + name, counts, value, window, bucket, tenant))
    return out


def applicable_limits(model: ModelSpec, tenant: str | None) -> list[LimitSpec]:
    """The model's own limits, then the tenant's on that model (its entry, else ``"*"``)."""
    limits = _specs(model.rate_limit, "", None)
    if tenant is not None:
        rate = model.tenant_limits.get(tenant, model.tenant_limits.get("*"))
        if rate is not None:
            limits += _specs(rate, "tenant.", tenant)
    return limits


class _Ids:
    """State of :meth:`Reservation.new_id`."""

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.prefix = secrets.token_hex(8)
        self.counter = itertools.count(1)


_ids = _Ids()
os.register_at_fork(after_in_child=_ids.reseed)  # a child never repeats its parent's ids


class Reservation(msgspec.Struct, frozen=True, array_like=True):
    """What an admitted request holds until it is settled or released.

    Small, picklable and serialisable (:meth:`dumps`/:meth:`loads`), so that one process
    (a gateway) may acquire and another (a worker) settle.
    """

    model_key: str
    id: str
    tenant: str | None = None
    input_tokens: int = 0
    max_output_tokens: int = 0
    # Which acquire under this id: a stale handle (the id since reused) settles nothing.
    token: str = ""
    # The budget periods holding this request's estimate: (scope, period, index) each.
    budgets: tuple[tuple[str, str, int], ...] = ()
    # When the windows admitted it (the server's ms), for how long it may be settled, and what
    # each limit was charged: (limit name, bucket index, amount, window_ms, bucket_ms).
    at_ms: int = 0
    ttl_ms: int = 0
    charges: tuple[tuple[str, int, int, int, int], ...] = ()

    @staticmethod
    def new_id() -> str:
        """Unique without a system call: a random prefix per process (new in a forked child)
        and a counter. 16 + up to 16 hex digits."""
        return f"{_ids.prefix}{next(_ids.counter):x}"

    def dumps(self) -> str:
        return msgspec.json.encode(self).decode()

    @classmethod
    def loads(cls, data: str | bytes) -> Reservation:
        try:
            return msgspec.json.decode(data, type=cls)
        except msgspec.DecodeError as exc:
            raise ConfigError(f"not a reservation: {exc}") from None


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to an acquire (or a peek).

    ``retry_after`` is in seconds (0 when allowed): from the window contents, the time until
    this request would fit, exact to one sub-window bucket and never early. ``remaining``
    maps each limit's name to what is left of it after this decision. In shadow mode a
    request is always allowed and ``would_deny`` names the limit that would have refused.
    ``degraded`` is True when Redis was unavailable and this worker decided alone, from its
    local emergency cap (``FaultPolicy(admission="open")``, see :mod:`registry.faults`).
    """

    allowed: bool
    retry_after: float = 0.0
    denied_by: str | None = None
    remaining: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    reservation: Reservation | None = None
    would_deny: str | None = None
    duplicate: bool = False
    # When the script decided, in the server's ms (0 when no window script ran, e.g. a budget's
    # refusal): the admission's place in its windows, for callers that audit them.
    server_ms: int = field(default=0, compare=False)
    degraded: bool = False
