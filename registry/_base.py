"""What :class:`Registry` and :class:`AsyncRegistry` share beyond the flows: state and options."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import redis
import redis.asyncio as aredis
import redis.asyncio.cluster as acluster
import redis.cluster as rcluster
from redis.crc import key_slot

from registry._core import Commands, Flow, Request, Script
from registry.admission import ops as admission
from registry.admission import route as routing
from registry.admission.ops import Mode, WindowPlan
from registry.admission.route import Route
from registry.admission.types import Decision, Reservation, check_reservation, check_tenant
from registry.budgets import ops as budget_ops
from registry.budgets.periods import PERIODS
from registry.budgets.types import Budget, BudgetStatus
from registry.catalog.codec import CatalogEntry
from registry.catalog.ops import Write, coerce_model
from registry.catalog.search import SearchQuery
from registry.catalog.snapshot import Snapshot
from registry.errors import ConfigError
from registry.faults import FaultPolicy, Faults, FaultStats
from registry.functions import ScriptsMode, check_mode
from registry.keys import DEFAULT_NAMESPACE, Keys
from registry.ledger import ops as ledger
from registry.ledger import transfer
from registry.ledger.ops import UsageRecord
from registry.models import ModelSpec, parse_model_key
from registry.versions import compare_versions as _compare_versions

log = logging.getLogger("registry")

DEFAULT_REFRESH_INTERVAL = 0.5
_MAX_PLANS = 10_000  # cached acquire plans per client (models x tenants), cleared when full
_MAX_KEY_SLOTS = 4_096  # a cluster client's remembered slots of scripts' first keys, cleared when full
USAGE_EVENTS_CAP = 10_000  # sampled usage records kept per model (approximate)
_CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")  # the schemes the `limits` library uses
_SCHEMES = ("redis://", "rediss://", "unix://", *_CLUSTER_SCHEMES)


def check_url(url: str) -> str:
    if not isinstance(url, str) or not url.startswith(_SCHEMES):
        raise ConfigError(f"Redis URL {url!r}: expected one of {', '.join(_SCHEMES)}")
    return url


def is_cluster_url(url: str) -> bool:
    return url.startswith(_CLUSTER_SCHEMES)


def connect(url: str, *, asyncio: bool = False, **options: Any) -> Any:
    """A redis-py client for ``url`` (str replies): a cluster client for ``redis+cluster://``.

    A cluster URL may name several seed nodes, ``redis+cluster://h1:7000,h2:7000``; the client
    learns the rest of the cluster from whichever answers first.
    """
    check_url(url)
    options.setdefault("decode_responses", True)
    if not is_cluster_url(url):
        single = aredis.Redis if asyncio else redis.Redis
        return single.from_url(url, **options)
    scheme, rest = url.split("+cluster://", 1)
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    seeds = [h for h in hosts.split(",") if h]
    if not seeds:
        raise ConfigError(f"Redis URL {url!r}: name at least one node, as host:port")
    plain = f"{scheme}://{userinfo}{at}{seeds[0]}{slash}{tail}"
    if asyncio:
        nodes: list[Any] = [acluster.ClusterNode(*_host_port(url, s)) for s in seeds]
        return acluster.RedisCluster.from_url(plain, startup_nodes=nodes, **options)
    snodes = [rcluster.ClusterNode(*_host_port(url, s)) for s in seeds]
    return rcluster.RedisCluster.from_url(plain, startup_nodes=snodes, **options)


SCAN_COUNT = 1000  # keys asked for per SCAN page


def one_slot(commands: Sequence[tuple[Any, ...]]) -> bool:
    """Whether every command's key (its second word) hashes to one cluster slot: a cluster runs
    MULTI/EXEC on one node only, so a transaction across slots is sent as a plain pipeline."""
    return len({key_slot(str(command[1]).encode()) for command in commands if len(command) > 1}) <= 1


def request_slot(request: Request) -> int | None:
    """The one cluster slot of ``request``'s keys, or None when no single node serves it: keys
    in several slots, a command or script without keys (redis-py sends those to a node of its
    choosing), or a :class:`Scan` (every primary). A script's keys share one hash tag, so its
    first key names its slot (redis-py refuses a script whose keys do not)."""
    if type(request) is Script:
        return key_slot(request.keys[0].encode()) if request.keys else None
    if type(request) is not Commands:
        return None
    slot = None
    for command in request.commands:
        keys = _command_keys(command)
        if not keys:
            return None
        for key in keys:
            at = key_slot(str(key).encode())
            if slot is None:
                slot = at
            elif at != slot:
                return None
    return slot


def _command_keys(command: tuple[Any, ...]) -> tuple[Any, ...]:
    """The keys of one of the flows' commands: an XREAD's streams, else the second word."""
    if command[0] == "XREAD":
        at = command.index("STREAMS") + 1
        return command[at : at + (len(command) - at) // 2]
    return command[1:2]


CLUSTER_POLL_S = 0.1  # a follower's wait between reads when its streams span several cluster slots


def cluster_commands(commands: Sequence[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], list[int], float]:
    """``commands`` as a cluster can take them: an XREAD over streams of several slots (a catalog
    follower reads the catalog's, each model's and each tenant's streams) becomes one XREAD per
    slot, without BLOCK, since one connection cannot block on several nodes. Returns the commands
    to send, how many of them each original command became, and how long the caller should wait
    before reading again when nothing came (what BLOCK would have waited, capped)."""
    out: list[tuple[Any, ...]] = []
    counts: list[int] = []
    wait_s = 0.0
    for command in commands:
        if command[0] != "XREAD":
            out.append(command)
            counts.append(1)
            continue
        at = command.index("STREAMS")
        streams, ids = (
            command[at + 1 :][: (len(command) - at - 1) // 2],
            command[at + 1 :][(len(command) - at - 1) // 2 :],
        )
        by_slot: dict[int, list[tuple[Any, Any]]] = {}
        for stream, entry_id in zip(streams, ids, strict=True):
            by_slot.setdefault(key_slot(str(stream).encode()), []).append((stream, entry_id))
        head = list(command[1:at])
        if "BLOCK" in head and len(by_slot) > 1:
            i = head.index("BLOCK")
            wait_s = max(wait_s, min(int(head[i + 1]) / 1000, CLUSTER_POLL_S))
            del head[i : i + 2]
        if len(by_slot) <= 1:
            out.append(command)
            counts.append(1)
            continue
        for pairs in by_slot.values():
            out.append(("XREAD", *head, "STREAMS", *(s for s, _ in pairs), *(i for _, i in pairs)))
        counts.append(len(by_slot))
    return out, counts, wait_s


def cluster_replies(replies: Sequence[Any], counts: Sequence[int]) -> tuple[list[Any], bool]:
    """The replies of :func:`cluster_commands`' commands folded back, one per original command
    (a split XREAD's as one list of ``[stream, entries]`` pairs), and whether a split read
    returned nothing at all."""
    out: list[Any] = []
    empty = True
    at = 0
    for n in counts:
        if n == 1:
            out.append(replies[at])
        else:
            pairs: list[Any] = []
            for reply in replies[at : at + n]:
                if reply:
                    pairs += list(reply.items()) if isinstance(reply, Mapping) else list(reply)
            empty = empty and not pairs
            out.append(pairs)
        at += n
    return out, empty and any(n > 1 for n in counts)


def _host_port(url: str, seed: str) -> tuple[str, int]:
    host, _, port = seed.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"Redis URL {url!r}: node {seed!r} is not host:port")
    return host.strip("[]"), int(port)


class RegistryBase:
    """Options, key names and the local catalog snapshot; no I/O."""

    def __init__(
        self,
        redis: Any,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        watch: bool = True,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        owns_client: bool = False,
        shadow: bool = False,
        cache_denials: bool = False,
        usage_event_rate: float = 0.0,
        scripts: ScriptsMode = "eval",
        fault_policy: FaultPolicy | None = None,
    ) -> None:
        if _not_a_number(refresh_interval) or not refresh_interval > 0:  # NaN too
            raise ConfigError(f"refresh_interval must be > 0 seconds, got {refresh_interval!r}")
        self.redis = redis
        self.cluster = isinstance(redis, rcluster.RedisCluster | acluster.RedisCluster)
        self.keys = Keys(namespace)
        self.namespace = namespace
        self.watch = watch
        self.refresh_interval = float(refresh_interval)
        self._owns_client = owns_client
        self._snapshot: Snapshot | None = None
        # The channel the watcher follows (an attribute so tests can mute notices).
        self._channel = self.keys.changes_channel
        self.shadow = shadow
        self.cache_denials = cache_denials
        if _not_a_number(usage_event_rate) or not 0.0 <= usage_event_rate <= 1.0:
            raise ConfigError(f"usage_event_rate must be from 0 to 1, got {usage_event_rate!r}")
        self.usage_event_rate = float(usage_event_rate)
        # How scripts run: EVALSHA (loaded on NOSCRIPT), or FCALL of the function library an
        # admin loaded (registry/functions.py; what a worker whose ACL has no EVAL uses).
        self.scripts: ScriptsMode = check_mode(scripts)
        self._denials: dict[tuple[str, str | None], tuple[float, Decision]] = {}
        self._plans: dict[tuple[str, str | None], WindowPlan] = {}
        self._plans_for: Snapshot | None = None
        self._test_clock: Callable[[], int] | None = None  # see registry.testing.use_clock
        self._offset_ms = 0  # the server's clock minus ours, learned from the ledger's replies
        self._sleep: Callable[[float], None] = time.sleep
        self._asleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        # What happens while Redis is unavailable (registry/faults.py): the breaker every
        # request passes (see _core.run; on a cluster, its node's), the local emergency cap,
        # the usage spool.
        self.fault_policy = FaultPolicy() if fault_policy is None else fault_policy
        self._key_slots: dict[str, int] = {}  # see _node_of
        self._faults = Faults(
            self.fault_policy,
            namespace=namespace,
            clock=self._monotonic,
            on_close=self._recovered,
            node_of=self._node_of if self.cluster else None,
        )

    @property
    def revision(self) -> int:
        """The catalog revision of the local copy (0 before the first read)."""
        return self._snapshot.revision if self._snapshot is not None else 0

    # -- faults, shared by both clients (registry/faults.py) -----------------------------------

    @property
    def faults(self) -> FaultStats:
        """Counters of the fault policy now: breaker state, fail-open admits, fail-closed
        refusals, usage spooled, replayed and dropped, spool depth."""
        return self._faults.stats()

    def _node_of(self, request: Request) -> str | None:
        """The ``host:port`` of the cluster primary serving ``request``'s slot now, by redis-py's
        own slot map (which it updates on MOVED and re-reads after a connection error), or None
        (no single node, or a slot not mapped yet: the async client maps on its first call).

        A script's slot is remembered by its first key (a key's slot never changes; its node
        may, so that is read from redis-py's map each time): an acquire's first key is its
        model's window, the same for every call."""
        if type(request) is Script and request.keys:
            key = request.keys[0]
            slot = self._key_slots.get(key)
            if slot is None:
                if len(self._key_slots) >= _MAX_KEY_SLOTS:  # ids in a usage marker's key: keep it small
                    self._key_slots.clear()
                slot = self._key_slots[key] = key_slot(key.encode())
        elif (slot := request_slot(request)) is None:
            return None
        nodes = self.redis.nodes_manager.slots_cache.get(slot)
        return nodes[0].name if nodes else None

    def _monotonic(self) -> float:
        """Seconds, for the breaker and the emergency windows (the testing clock when set)."""
        return time.monotonic() if self._test_clock is None else self._test_clock() / 1000

    def _recovered(self) -> None:
        """The breaker closed with usage in the spool: each client replays it in the background."""

    # -- admission, shared by both clients ----------------------------------------------------

    def _now_ms(self) -> int | None:
        """None: the scripts read Redis' TIME. Only registry.testing sets a clock."""
        return None if self._test_clock is None else int(self._test_clock())

    def _acquire_flow(
        self,
        snapshot: Snapshot,
        model_key: str,
        input_tokens: int,
        max_output_tokens: int | None,
        tenant: str | None,
        request_id: str | None,
        mode: Mode = "acquire",
    ) -> Flow[Decision]:
        if mode == "acquire" and self.shadow:
            mode = "shadow"
        model = snapshot.get(self._key(model_key))
        tenant = check_tenant(tenant)
        budgets = snapshot.budgets_for(tenant, model)
        plan = self._window_plan(snapshot, model, tenant)
        flow = admission.acquire(
            self.keys,
            model,
            input_tokens,
            max_output_tokens,
            tenant=tenant,
            request_id=request_id,
            mode=mode,
            now_ms=self._now_ms(),
            budgets=budgets,
            predicted_ms=self._predicted_ms(),
            plan=plan,
        )
        return self._faults.admitting(
            flow,
            model.key,
            plan.limits,
            plan.costs,
            input_tokens=input_tokens,
            max_output_tokens=max_output_tokens,
            default_output=model.max_output_tokens or 0,
            tenant=tenant,
            request_id=request_id,
            mode=mode,
            budgeted=bool(budgets),
            now_ms=self._predicted_ms,
        )

    def _window_plan(self, snapshot: Snapshot, model: ModelSpec, tenant: str | None) -> WindowPlan:
        """The model's (and tenant's) acquire arguments, kept per catalog snapshot."""
        if self._plans_for is not snapshot:
            self._plans, self._plans_for = {}, snapshot  # a new revision: limits may have changed
        plan = self._plans.get((model.key, tenant))
        if plan is None:
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            plan = self._plans[(model.key, tenant)] = WindowPlan.of(self.keys, model, tenant)
        return plan

    def _predicted_ms(self) -> int:
        """Our best guess of the server's clock (ours, corrected by what replies taught us)."""
        if self._test_clock is not None:
            return int(self._test_clock())
        return int(time.time() * 1000) + self._offset_ms

    def _route_flow(
        self,
        snapshot: Snapshot,
        input_tokens: int,
        max_output_tokens: int | None,
        capability: str | Sequence[str] | None,
        candidates: Sequence[str] | None,
        max_cost: Decimal | int | str | None,
        tenant: str | None,
        request_id: str | None,
        currency: str,
        filters: dict[str, Any],
    ) -> Flow[Route]:
        eligible = routing.candidates(
            snapshot,
            input_tokens=input_tokens,
            max_output_tokens=max_output_tokens,
            capability=capability,
            keys=candidates,
            max_cost=max_cost,
            currency=self._currency(currency),
            filters=filters,
        )

        def acquire(model: ModelSpec) -> Flow[Decision]:
            flow = self._acquire_flow(snapshot, model.key, input_tokens, max_output_tokens, tenant, request_id)
            return self._remember(model.key, tenant, (yield from flow))

        def cached(model_key: str) -> Decision | None:
            return self._cached_denial(model_key, tenant)

        return (yield from routing.route(eligible, acquire, cached))

    def _cached_denial(self, model_key: str, tenant: str | None) -> Decision | None:
        """A refusal remembered locally until its retry_after (``cache_denials=True``)."""
        if not self.cache_denials:
            return None
        try:
            held = self._denials.get((model_key, tenant))
        except TypeError:  # an unhashable key or tenant: the acquire says what is wrong with it
            return None
        if held is None:
            return None
        until, decision = held
        left = until - time.monotonic()
        if left <= 0:
            del self._denials[(model_key, tenant)]
            return None
        return dataclasses.replace(decision, retry_after=left)

    def _remember(self, model_key: str, tenant: str | None, decision: Decision) -> Decision:
        # A budget's refusal may last until its period ends, while a raised budget should
        # admit at once: only the windows' refusals (seconds, exact) are remembered.
        budget = (decision.denied_by or "").startswith("budget:")
        if self.cache_denials and not decision.allowed and not budget:
            self._denials[(model_key, tenant)] = (time.monotonic() + decision.retry_after, decision)
        return decision

    @staticmethod
    def _wait_for(decision: Decision, wait: bool, deadline: float | None) -> float | None:
        """Seconds to sleep before trying again, or None to return ``decision`` now."""
        if decision.allowed or not wait:
            return None
        delay = decision.retry_after
        if deadline is not None and time.monotonic() + delay > deadline:
            return None  # it cannot fit before the timeout: say so now
        return delay

    @staticmethod
    def _deadline(timeout: float | None) -> float | None:
        if timeout is None:
            return None
        if _not_a_number(timeout) or not timeout >= 0:  # NaN too
            raise ConfigError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        return time.monotonic() + timeout

    def _settle_flow(
        self,
        snapshot: Snapshot | None,
        reservation: Reservation,
        input_tokens: int | None,
        output_tokens: int | None,
        success: bool,
        latency_ms: float | None,
        release: bool = False,
        throttled: bool = False,
        cached_input_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> Flow[bool]:
        """Settle (recording the usage in the model's ledger, same script) or release."""
        if latency_ms is not None and (_not_a_number(latency_ms) or not latency_ms >= 0):
            raise ConfigError(f"latency_ms must be a number >= 0, got {latency_ms!r}")
        reservation = check_reservation(reservation)
        row = None if snapshot is None else snapshot.rows.get(getattr(reservation, "model_key", ""))
        tenant = getattr(reservation, "tenant", None) or ""
        tenant_budgets = () if snapshot is None else snapshot.budgets.get(tenant, ())

        def send() -> Flow[bool]:  # again at each replay: the clock is read then
            return admission.settle(
                self.keys,
                reservation,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                release=release,
                now_ms=self._now_ms(),
                model=None if row is None else row.model,  # a model since deleted: windows only
                success=success,
                latency_ms=latency_ms,
                throttled=throttled,
                cached_input_tokens=cached_input_tokens,
                cache_write_tokens=cache_write_tokens,
                predicted_ms=self._predicted_ms(),
                sample_cap=self._sample_cap(),
                budgets={(b.scope, b.period): b for b in tenant_budgets},
            )

        # Spooled, it is accepted: True. Its token makes the replay count once.
        kind = "release" if release else "settle"
        return self._faults.spooling(kind, reservation.token, send(), send, lambda: True)

    # -- ledger, shared by both clients --------------------------------------------------------

    def _record_flow(
        self,
        snapshot: Snapshot,
        model_key: str,
        input_tokens: int,
        output_tokens: int,
        success: bool,
        latency_ms: float | None,
        tenant: str | None,
        request_id: str | None,
        throttled: bool = False,
        cached_input_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> Flow[UsageRecord]:
        model = snapshot.get(self._key(model_key))

        def send(request_id: str | None) -> Flow[UsageRecord]:
            return ledger.record(
                self.keys,
                model,
                input_tokens,
                output_tokens,
                success=success,
                latency_ms=latency_ms,
                tenant=tenant,
                request_id=request_id,
                throttled=throttled,
                cached_input_tokens=cached_input_tokens,
                cache_write_tokens=cache_write_tokens,
                now_ms=self._now_ms(),
                predicted_ms=self._predicted_ms(),
                sample_cap=self._sample_cap(),
                budgets=snapshot.budgets_for(check_tenant(tenant), model),
            )

        def priced() -> UsageRecord:  # spooled: what the ledger will add, priced here
            usage = ledger.Usage.of(
                model,
                input_tokens,
                output_tokens,
                bool(success),
                latency_ms,
                tenant,
                bool(throttled),
                cached_input_tokens,
                cache_write_tokens,
            )
            return UsageRecord(True, usage.cost, usage.units, self._predicted_ms())

        # A record without an id gets one for its replays, so that two replays count once.
        replay_id = request_id or Reservation.new_id()
        return self._faults.spooling("record_usage", replay_id, send(request_id), lambda: send(replay_id), priced)

    def _sample_cap(self) -> int:
        """The usage stream's cap if this record is sampled (``usage_event_rate``), else 0."""
        rate = self.usage_event_rate
        return USAGE_EVENTS_CAP if rate and (rate >= 1.0 or random.random() < rate) else 0

    def _learned(self, record: UsageRecord) -> UsageRecord:
        """Remember how far the server's clock is from ours, to name time buckets right first time."""
        if self._test_clock is None:
            self._offset_ms = record.server_ms - int(time.time() * 1000)
        return record

    def _models_for(self, snapshot: Snapshot, model: str | None, provider: str | None) -> list[ModelSpec]:
        if model is not None:
            return [snapshot.get(self._key(model))]
        return snapshot.search(SearchQuery.build(provider=provider))

    # -- budgets, shared by both clients --------------------------------------------------------

    @staticmethod
    def _budget_put(
        snapshot: Snapshot,
        tenant: str,
        amount: Decimal | int | str,
        period: str,
        model: str | None,
        currency: str,
        thresholds: Sequence[int],
    ) -> tuple[Budget, Callable[[tuple[Budget, ...]], tuple[Budget, ...]]]:
        """The budget to set, and the edit of the tenant's list that sets it."""
        if isinstance(amount, float):
            raise ConfigError(f"amount must be a Decimal, int or decimal string (never a float), got {amount!r}")
        if isinstance(thresholds, str | bytes | Mapping) or not isinstance(thresholds, Iterable):
            raise ConfigError(f"thresholds must be a list of percentages, got {thresholds!r}")
        budget = Budget.build(
            tenant=tenant, amount=amount, period=period, model=model, currency=currency, thresholds=tuple(thresholds)
        )
        if model is not None:
            snapshot.get(model)  # a budget of a model that does not exist is a typo: say so

        def edit(current: tuple[Budget, ...]) -> tuple[Budget, ...]:
            others = [b for b in current if (b.scope, b.period) != (budget.scope, budget.period)]
            return tuple(sorted([*others, budget], key=_budget_order))

        return budget, edit

    @staticmethod
    def _budget_drop(
        tenant: str, period: str, model: str | None
    ) -> tuple[str, Callable[[tuple[Budget, ...]], tuple[Budget, ...]]]:
        checked = _required_tenant(tenant)
        if period not in PERIODS:
            raise ConfigError(f"period must be one of {', '.join(PERIODS)}, got {period!r}")
        scope = model or "*"
        return checked, lambda current: tuple(b for b in current if (b.scope, b.period) != (scope, period))

    def _budget_status_flow(self, snapshot: Snapshot, tenant: str) -> Flow[list[BudgetStatus]]:
        checked = _required_tenant(tenant)
        return budget_ops.status(self.keys, checked, snapshot.budgets.get(checked, ()), self._predicted_ms())

    @staticmethod
    def _budgets_of(snapshot: Snapshot, tenant: str | None) -> list[Budget]:
        if tenant is None:
            return [b for held in snapshot.budgets.values() for b in held]
        return list(snapshot.budgets.get(check_tenant(tenant) or "", ()))

    @staticmethod
    def _restore_plan(document: Any) -> tuple[list[ModelSpec], dict[str, tuple[Budget, ...]]]:
        """From an export: its models, and each tenant's budgets. The whole document is checked
        here (its ledger part too), so that a restore that fails on it has written nothing."""
        transfer.import_commands(Keys(), document)
        catalog = [coerce_model(m, where=f"catalog[{i}]") for i, m in enumerate(_listed(document, "catalog"))]
        if len({m.key for m in catalog}) < len(catalog):
            raise ConfigError("catalog: a model is listed twice")
        by_tenant: dict[str, list[Budget]] = {}
        for raw in _listed(document, "budgets"):
            if not isinstance(raw, dict) or not all(isinstance(name, str) for name in raw):
                raise ConfigError(f"budgets: expected objects, got {raw!r}")
            budget = Budget.build(**raw)
            by_tenant.setdefault(budget.tenant, []).append(budget)
        return catalog, {t: tuple(sorted(b, key=_budget_order)) for t, b in by_tenant.items()}

    @staticmethod
    def compare_versions(a: str, b: str) -> int:
        """-1, 0 or 1 as version ``a`` sorts before, equal to or after ``b`` (semver rules)."""
        return _compare_versions(a, b)

    # -- argument checking shared by both clients ----------------------------------------------

    @staticmethod
    def _currency(currency: str) -> str:
        """An ISO 4217 code in any case, upper-cased (only a string is one)."""
        if not isinstance(currency, str):
            raise ConfigError(f"currency must be a string such as 'USD', got {currency!r}")
        return currency.upper()

    @staticmethod
    def _key(model_key: str) -> str:
        if not isinstance(model_key, str):
            raise ConfigError(f"model key must be a string, got {type(model_key).__name__}")
        try:
            parse_model_key(model_key)
            model_key.encode()  # a lone surrogate (bytes that were not UTF-8) is in no key
        except ValueError as exc:  # UnicodeEncodeError too
            raise ConfigError(str(exc)) from None
        return model_key

    @staticmethod
    def _register_writes(models: Iterable[ModelSpec | Mapping[str, Any]], replace: bool) -> list[Write]:
        if isinstance(models, ModelSpec | Mapping | str | bytes) or not isinstance(models, Iterable):
            raise ConfigError(f"expected a list of models, got {type(models).__name__}")
        specs = [coerce_model(m, where=f"models[{i}]") for i, m in enumerate(models)]
        return [Write("put" if replace else "create", m.key, None, m) for m in specs]

    def _written_entry(self, write: Write, revision: int) -> CatalogEntry:
        """The entry a write just made: from the refreshed local copy, else built from the write."""
        assert write.model is not None
        if self._snapshot is not None and write.key in self._snapshot.rows:
            return self._snapshot.entry(write.key)
        return CatalogEntry(write.model, revision, 0)

    @staticmethod
    def _delete_write(model_key: str, expected_revision: int | None) -> list[Write]:
        return [Write("delete", RegistryBase._key(model_key), expected_revision)]

    @staticmethod
    def _cheapest(
        snapshot: Snapshot,
        capability: str | Sequence[str] | None,
        limit: int | None,
        input_tokens: int,
        output_tokens: int,
        currency: str,
        exclude_deprecated: bool,
        filters: dict[str, Any],
    ) -> list[ModelSpec]:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
        query = SearchQuery.build(
            capability=capability, currency=currency, exclude_deprecated=exclude_deprecated, **filters
        )
        ranked = snapshot.cheapest(query, limit=limit, input_tokens=input_tokens, output_tokens=output_tokens)
        return [model for model, _ in ranked]


def _not_a_number(value: Any) -> bool:
    """Not an int or a float (a bool is no number of seconds or rate either)."""
    return isinstance(value, bool) or not isinstance(value, int | float)


def _listed(document: dict[str, Any], name: str) -> list[Any]:
    value = document.get(name, [])
    if not isinstance(value, list):
        raise ConfigError(f"{name}: expected a list, got {type(value).__name__}")
    return value


def _required_tenant(tenant: str) -> str:
    """A budget always belongs to a tenant: ``None`` is an error here, not "no tenant"."""
    checked = check_tenant(tenant)
    if checked is None:
        raise ConfigError("tenant must be a name, got None")
    return checked


def _budget_order(budget: Budget) -> tuple[str, int]:
    return budget.scope, PERIODS.index(budget.period)


def estimate_from(snapshot: Snapshot, model_key: str, *tokens: int) -> Decimal:
    """``estimate_cost`` on a snapshot: the token counts in :func:`registry.pricing.estimate`'s order."""
    return snapshot.estimate_cost(RegistryBase._key(model_key), *tokens)
