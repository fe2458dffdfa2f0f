"""The blocking client, :class:`Registry`. Every method is a thin driver of a shared flow."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.exceptions import NoScriptError

from registry import _core, functions
from registry._base import (
    DEFAULT_REFRESH_INTERVAL,
    SCAN_COUNT,
    RegistryBase,
    cluster_commands,
    cluster_replies,
    connect,
    estimate_from,
    log,
    one_slot,
)
from registry.admission.route import Route
from registry.admission.ticket import Admit
from registry.admission.types import Decision, Reservation, check_tenant
from registry.batching import LOAD_ATTEMPTS, ThreadBatcher, script_load
from registry.budgets import ops as budget_ops
from registry.budgets.types import DEFAULT_THRESHOLDS, Budget, BudgetStatus
from registry.catalog import ops
from registry.catalog import sync as catalog_sync
from registry.catalog.codec import CatalogEntry
from registry.catalog.search import SearchQuery
from registry.catalog.snapshot import Snapshot
from registry.catalog.sync import SyncPlan
from registry.errors import REDIS_ERRORS, ModelNotFoundError, RegistryError, map_redis_errors, redis_error
from registry.events import Callback, Event, Follower, Subscription, event_types, recent_events
from registry.faults import FaultPolicy, with_timeouts
from registry.functions import ScriptsMode
from registry.keys import DEFAULT_NAMESPACE
from registry.ledger import stats as ledger_stats
from registry.ledger import transfer
from registry.ledger import view as ledger_view
from registry.ledger.ops import LATENCY_EDGES_MS, UsageRecord
from registry.ledger.stats import Statistics
from registry.ledger.view import FleetView
from registry.models import ModelSpec
from registry.scripts import load

__all__ = ["Registry"]

_STOP_CHECK_S = 0.25  # the watcher looks at its stop flag at least this often


class Registry(RegistryBase):
    """The fleet's catalog, read from a local copy that follows Redis.

    With ``watch=True`` (the default) a background thread follows the catalog's change
    notices and checks the revision every ``refresh_interval`` seconds, so reads cost no
    round trip and see another process's write within about that interval. With
    ``watch=False`` every read first asks Redis for changes (one round trip).

    ``scripts="functions"`` runs the Lua as FCALL of the function library an admin loaded
    (``registry functions load``), for Redis users allowed no EVAL: see :mod:`registry.functions`
    and ``registry acl``. The default, ``"eval"``, runs it by EVALSHA.

    >>> reg = Registry.from_url("redis://localhost:6379/0")          # doctest: +SKIP
    >>> reg.estimate_cost("openai:gpt-4o", 1000, 200)                # doctest: +SKIP
    Decimal('0.0045')
    """

    def __init__(
        self,
        client: redis.Redis,
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
        super().__init__(
            client,
            namespace=namespace,
            watch=watch,
            refresh_interval=refresh_interval,
            owns_client=owns_client,
            shadow=shadow,
            cache_denials=cache_denials,
            usage_event_rate=usage_event_rate,
            scripts=scripts,
            fault_policy=fault_policy,
        )
        self._lock = threading.Lock()
        self._replay_lock = threading.Lock()  # one replay of the usage spool at a time
        self._batcher = ThreadBatcher(
            self._evalsha if self.scripts == "eval" else self._fcall,
            client,
            self.scripts,
            node_of=self._node_of if self.cluster else None,
        )
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._watcher_pid = 0

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        watch: bool = True,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        shadow: bool = False,
        cache_denials: bool = False,
        usage_event_rate: float = 0.0,
        scripts: ScriptsMode = "eval",
        fault_policy: FaultPolicy | None = None,
        **redis_options: Any,
    ) -> Registry:
        """Connect to a ``redis://``, ``rediss://``, ``unix://`` or ``redis+cluster://`` ``url``."""
        client = connect(url, **with_timeouts(redis_options))
        return cls(
            client,
            namespace=namespace,
            watch=watch,
            refresh_interval=refresh_interval,
            owns_client=True,
            shadow=shadow,
            cache_denials=cache_denials,
            usage_event_rate=usage_event_rate,
            scripts=scripts,
            fault_policy=fault_policy,
        )

    # -- I/O ------------------------------------------------------------------------------------

    def _execute(self, request: _core.Request) -> Any:
        if type(request) is _core.Script:
            # Threads sharing this client share round trips; a lone call goes straight to _evalsha.
            return self._batcher.call(request)
        with map_redis_errors():
            if isinstance(request, _core.Scan):
                return list(self.redis.scan_iter(match=request.pattern, count=SCAN_COUNT))
            if self.cluster:
                return self._execute_on_cluster(request)
            pipe = self.redis.pipeline(transaction=request.transaction)
            for command in request.commands:
                pipe.execute_command(*command)
            return pipe.execute()

    def _execute_on_cluster(self, request: _core.Commands) -> Any:
        commands, counts, wait_s = cluster_commands(request.commands)
        pipe = self.redis.pipeline(transaction=request.transaction and one_slot(commands))
        for command in commands:
            pipe.execute_command(*command)
        replies, idle = cluster_replies(pipe.execute(), counts)
        if idle and wait_s:
            time.sleep(wait_s)  # what the XREAD's BLOCK would have waited for
        return replies

    def _evalsha(self, request: _core.Script) -> Any:
        """One script call: EVALSHA on the client itself, without redis-py's Script wrapper or
        a context manager around it (the hot path of every acquire)."""
        lua, keys = load(request.name), request.keys
        try:
            for attempt in range(LOAD_ATTEMPTS + 1):
                try:
                    return self.redis.execute_command("EVALSHA", lua.sha, len(keys), *keys, *request.args)
                except NoScriptError:  # a new server, a failover or SCRIPT FLUSH: load it and go again
                    if attempt == LOAD_ATTEMPTS:
                        raise
                    script_load(self.redis, lua.source, keys[:1])  # on a cluster: on keys' node only
            raise AssertionError("unreachable")  # pragma: no cover
        except REDIS_ERRORS as exc:
            raise redis_error(exc) from exc

    def _fcall(self, request: _core.Script) -> Any:
        """One script call in functions mode: :meth:`_evalsha` with FCALL, loading the library
        when the server does not have it (which a worker's ACL refuses: PermissionDenied)."""
        function, keys = functions.library().functions[request.name], request.keys
        try:
            try:
                return self.redis.execute_command("FCALL", function, len(keys), *keys, *request.args)
            except redis.exceptions.ResponseError as exc:
                if not functions.is_missing(exc):
                    raise
                functions.load_library(self.redis)
                return self.redis.execute_command("FCALL", function, len(keys), *keys, *request.args)
        except REDIS_ERRORS as exc:
            raise redis_error(exc) from exc

    def _run(self, flow: _core.Flow[Any]) -> Any:
        return _core.run(flow, self._execute, self._faults.guard, self._faults.guard_for)

    def flush_spool(self) -> int:
        """Write the usage spooled while Redis was unavailable, in order, now; returns how many.

        Stops at the first unavailable error (the rest stay spooled). Runs by itself, in a
        background thread, when the circuit breaker closes; see :mod:`registry.faults`.
        """
        with self._replay_lock:
            return self._run(self._faults.replay())

    def _recovered(self) -> None:
        if not self._replay_lock.locked():  # a replay running now takes what is spooled
            name = f"registry-replay-{self.namespace}"
            threading.Thread(target=self._flush_quietly, name=name, daemon=True).start()

    def _flush_quietly(self) -> None:
        try:
            self.flush_spool()
        except Exception as exc:  # a background thread: say it, do not die silently
            log.warning("usage spool replay: %s", exc)

    def refresh(self) -> int:
        """Bring the local copy up to date now; returns the catalog revision."""
        with self._lock:
            self._snapshot = self._run(ops.refresh(self.keys, self._snapshot))
            return self._snapshot.revision

    def _catalog(self) -> Snapshot:
        snapshot = self._snapshot
        if snapshot is None or not self.watch:
            with self._faults.stale_ok(snapshot):  # Redis unavailable: serve the local copy we have
                self.refresh()
            snapshot = self._snapshot
            assert snapshot is not None
        if self.watch and (self._watcher is None or self._watcher_pid != os.getpid()):
            self._start_watcher()
        return snapshot

    def _written(self, revision: int) -> int:
        """After our own write: read-your-writes in this client, without waiting for pub/sub."""
        if self._snapshot is not None:
            self.refresh()
        return revision

    # -- the watcher ----------------------------------------------------------------------------

    def _start_watcher(self) -> None:
        if self._watcher is not None and self._watcher_pid != os.getpid():
            # A forked child (gunicorn, multiprocessing): the parent's thread did not come
            # along, and its lock may have been held at the fork. Start afresh.
            self._lock = threading.Lock()
            self._watcher = None
        with self._lock:
            if self._watcher is None and not self._stop.is_set():
                self._watcher_pid = os.getpid()
                self._watcher = threading.Thread(
                    target=self._watch_loop, name=f"registry-watch-{self.namespace}", daemon=True
                )
                self._watcher.start()

    def _watch_loop(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._channel)
                self.refresh()  # whatever was missed while (re)connecting
                backoff = 0.05
                due = time.monotonic() + self.refresh_interval
                while not self._stop.is_set():
                    # Short waits, so that close() stops the thread promptly whatever the interval.
                    wait = min(_STOP_CHECK_S, max(0.0, due - time.monotonic()))
                    message = pubsub.get_message(timeout=wait)
                    if message is not None or time.monotonic() >= due:
                        self.refresh()
                        due = time.monotonic() + self.refresh_interval
            except Exception as exc:  # keep following the catalog whatever happens
                log.warning("catalog watcher: %s; retrying in %.2fs", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                pubsub.close()

    def close(self) -> None:
        """Stop the watcher and, if this client made its connection pool, close it."""
        if len(self._faults.spool):  # a last try; what is still spooled then is lost, and said so
            self.flush_spool()
            self._faults.lost_at_close()
        self._stop.set()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.join(timeout=5)
        self._stop_events()
        if self._owns_client:
            self.redis.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- catalog writes -------------------------------------------------------------------------

    def register_model(self, model: ModelSpec | Mapping[str, Any], *, replace: bool = False) -> CatalogEntry:
        """Add one model; with ``replace`` overwrite one of the same key."""
        writes = self._register_writes([model], replace)
        revision = self._written(self._run(ops.write(self.keys, writes)))
        return self._written_entry(writes[0], revision)

    def register_models(self, models: Iterable[ModelSpec | Mapping[str, Any]], *, replace: bool = False) -> int:
        """Add many models in one atomic write (all or none); returns the new revision."""
        return self._written(self._run(ops.write(self.keys, self._register_writes(models, replace))))

    def update_model(
        self, model_key: str, changes: ModelSpec | Mapping[str, Any], *, expected_revision: int | None = None
    ) -> CatalogEntry:
        """Change fields of a model. ``expected_revision`` makes it a compare-and-set."""
        entry = self._run(ops.update(self.keys, self._key(model_key), changes, expected_revision=expected_revision))
        self._written(entry.revision)
        return entry

    def delete_model(self, model_key: str, *, expected_revision: int | None = None) -> bool:
        """Remove a model; False if there was none (and no expected revision was given)."""
        try:
            self._written(self._run(ops.write(self.keys, self._delete_write(model_key, expected_revision))))
        except ModelNotFoundError:
            if expected_revision is not None:
                raise
            return False
        return True

    def sync_models(
        self, models: Sequence[ModelSpec | Mapping[str, Any]], *, prune: bool = False, dry_run: bool = False
    ) -> SyncPlan:
        """Make the catalog hold exactly ``models`` (see :mod:`registry.catalog.sync`)."""
        specs = [w.model for w in self._register_writes(models, True)]
        plan: SyncPlan = self._run(catalog_sync.sync(self.keys, specs, prune=prune, dry_run=dry_run))  # type: ignore[arg-type]
        if plan.applied:
            self._written(plan.revision or 0)
        return plan

    def load_config(self, path: str | Path, *, prune: bool = False, dry_run: bool = False) -> SyncPlan:
        """Sync the catalog to a JSON config file; a bad file raises and changes nothing."""
        return self.sync_models(catalog_sync.read_catalog_file(path), prune=prune, dry_run=dry_run)

    # -- catalog reads (local copy) ----------------------------------------------------------

    def get_model(self, model_key: str) -> ModelSpec:
        """The model under ``provider:id``; raises :class:`ModelNotFoundError`."""
        return self._catalog().get(self._key(model_key))

    def get_entry(self, model_key: str) -> CatalogEntry:
        """The model with the revision of its last write (for ``expected_revision``)."""
        return self._catalog().entry(self._key(model_key))

    def list_models(
        self, *, provider: str | Sequence[str] | None = None, status: str | Sequence[str] | None = None
    ) -> list[ModelSpec]:
        """Every model, by key; optionally of some providers or statuses."""
        return self._catalog().search(SearchQuery.build(provider=provider, status=status))

    def search_models(self, **filters: Any) -> list[ModelSpec]:
        """Models passing every filter given; see :mod:`registry.catalog.search` for each."""
        return self._catalog().search(SearchQuery.build(**filters))

    def most_cost_effective_models(
        self,
        capability: str | Sequence[str] | None = None,
        limit: int | None = 5,
        *,
        input_tokens: int = 3,
        output_tokens: int = 1,
        currency: str = "USD",
        exclude_deprecated: bool = True,
        **filters: Any,
    ) -> list[ModelSpec]:
        """The cheapest models for a request of ``input_tokens``:``output_tokens`` (3:1 default)."""
        return self._cheapest(
            self._catalog(), capability, limit, input_tokens, output_tokens, currency, exclude_deprecated, filters
        )

    def estimate_cost(
        self,
        model_key: str,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
    ) -> Decimal:
        """The exact price of a request, in the model's currency (see :mod:`registry.pricing`).

        ``input_tokens`` include the cached and cache-written ones, ``output_tokens`` the
        reasoning ones.
        """
        return estimate_from(
            self._catalog(),
            model_key,
            input_tokens,
            output_tokens,
            cached_input_tokens,
            cache_write_tokens,
            reasoning_tokens,
        )

    def ping(self) -> bool:
        """True if Redis answers; raises :class:`BackendUnavailable` if it does not."""
        with map_redis_errors():
            return bool(self.redis.ping())

    def load_functions(self) -> str:
        """Load the function library that ``scripts="functions"`` clients call (FUNCTION LOAD, on
        every primary of a cluster); returns its name. Needs a user allowed to (the admin role of
        ``registry acl``); loading it again is harmless. See :mod:`registry.functions`."""
        with map_redis_errors():
            return functions.load_library(self.redis)

    # -- admission ------------------------------------------------------------------------------

    def acquire(
        self,
        model_key: str,
        input_tokens: int,
        max_output_tokens: int | None = None,
        tenant: str | None = None,
        request_id: str | None = None,
        *,
        wait: bool = False,
        timeout: float | None = None,
    ) -> Decision:
        """Check and consume the model's limits (and the tenant's) for one request, atomically.

        Reserves one request against request limits and, against token limits, ``input_tokens
        + max_output_tokens`` (``tokens_per_minute``), ``input_tokens`` alone
        (``input_tokens_per_minute``) or ``max_output_tokens`` alone
        (``output_tokens_per_minute``); ``max_output_tokens`` defaults to the model's. Settle the real
        counts afterwards with :meth:`settle`, or give it all back with :meth:`release`. With
        ``wait`` it sleeps for ``retry_after`` and tries again until admitted or ``timeout``.
        Raises :class:`RequestTooLargeError` for a request bigger than a limit.
        """
        deadline = self._deadline(timeout)
        while True:
            decision = self._cached_denial(model_key, tenant)
            if decision is None:
                flow = self._acquire_flow(
                    self._catalog(), model_key, input_tokens, max_output_tokens, tenant, request_id
                )
                decision = self._remember(model_key, tenant, self._run(flow))
            delay = self._wait_for(decision, wait, deadline)
            if delay is None:
                return decision
            self._sleep(delay)

    def route(
        self,
        *,
        input_tokens: int,
        max_output_tokens: int | None = None,
        capability: str | Sequence[str] | None = None,
        candidates: Sequence[str] | None = None,
        max_cost: Decimal | int | str | None = None,
        tenant: str | None = None,
        request_id: str | None = None,
        currency: str = "USD",
        **filters: Any,
    ) -> Route:
        """Admit the request on the cheapest eligible model that has room now.

        Eligible: has ``capability`` (and passes ``filters``, as :meth:`search_models`), is
        one of ``candidates`` if given, is priced in ``currency``, is neither deprecated nor
        retired, fits ``input_tokens + max_output_tokens`` in its context window, and would
        cost at most ``max_cost``. Models are tried cheapest first (one acquire, one round
        trip each); a refused one is skipped rather than waited for. Returns a
        :class:`~registry.admission.route.Route` ``(decision, model_key, tried)``; settle
        ``decision.reservation`` as after :meth:`acquire`.
        """
        flow = self._route_flow(
            self._catalog(),
            input_tokens,
            max_output_tokens,
            capability,
            candidates,
            max_cost,
            tenant,
            request_id,
            currency,
            filters,
        )
        return self._run(flow)

    def check_rate_limit(self, model_key: str, tokens: int = 0, tenant: str | None = None) -> Decision:
        """Would a request of ``tokens`` input tokens (and no output) be admitted now? Consumes nothing."""
        return self._run(self._acquire_flow(self._catalog(), model_key, tokens, 0, tenant, None, "peek"))

    def settle(
        self,
        reservation: Reservation,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        success: bool = True,
        latency_ms: float | None = None,
        *,
        throttled: bool = False,
        cached_input_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> bool:
        """Replace the reserved estimate with the real counts, once; False if already settled.

        ``throttled``: the provider refused the request for its own rate limit (HTTP 429); it
        counts as a failure and in the ledger's ``throttled`` counter. ``cached_input_tokens``
        and ``cache_write_tokens``: the part of ``input_tokens`` read from and written to the
        provider's prompt cache, billed at the model's ``cached_input`` and ``cache_write``
        prices (as :meth:`estimate_cost` does) and counted in the ledger apart as well; cache
        reads are left out of ``input_tokens_per_minute`` (Anthropic's ITPM does not count them).
        """
        flow = self._settle_flow(
            self._catalog(),
            reservation,
            input_tokens,
            output_tokens,
            success,
            latency_ms,
            throttled=throttled,
            cached_input_tokens=cached_input_tokens,
            cache_write_tokens=cache_write_tokens,
        )
        return self._run(flow)

    def release(self, reservation: Reservation) -> bool:
        """Give back everything a reservation holds (its request was never sent), once."""
        return self._run(self._settle_flow(None, reservation, None, None, False, None, release=True))

    def admit(
        self,
        model_key: str,
        input_tokens: int,
        max_output_tokens: int | None = None,
        tenant: str | None = None,
        request_id: str | None = None,
        *,
        wait: bool = False,
        timeout: float | None = None,
    ) -> Admit:
        """A context manager that acquires, and settles with the real usage on exit.

        Raises :class:`RateLimitedError` (with ``retry_after``) when refused; see
        :mod:`registry.admission.ticket`.
        """
        kwargs = dict(
            input_tokens=input_tokens,
            max_output_tokens=max_output_tokens,
            tenant=tenant,
            request_id=request_id,
            wait=wait,
            timeout=timeout,
        )
        return Admit(self, model_key, kwargs)

    # -- events ---------------------------------------------------------------------------------

    _follower: Follower | None = None
    _follower_thread: threading.Thread | None = None

    def on(self, event_type: str, callback: Callback) -> Subscription:
        """Call ``callback(event)`` for every event of ``event_type`` written from now on.

        ``event_type``: "catalog.changed", "usage.recorded", "budget.threshold" or "*" (all);
        see :class:`registry.events.Event`. Callbacks run one at a time, in order, in one
        background thread that follows the streams (a blocking read of at most a second, so
        ``close()`` stops it promptly); one that raises is logged (logger "registry") and the
        rest go on. Returns a :class:`~registry.events.Subscription`: call it to unsubscribe.
        """
        if self._stop.is_set():
            raise RegistryError("the client is closed")
        with self._lock:
            follower = self._follower = self._follower or Follower(self.keys)
        subscription = self._run(follower.subscribe(event_type, callback, self._catalog()))
        with self._lock:
            if self._follower_thread is None or not self._follower_thread.is_alive():
                self._follower_thread = threading.Thread(
                    target=self._follow, args=(follower,), name=f"registry-events-{self.namespace}", daemon=True
                )
                self._follower_thread.start()
        return subscription

    def events(
        self, event_type: str | Sequence[str] = "*", *, last: int = 20, since_id: str | None = None
    ) -> list[Event]:
        """The last ``last`` events of ``event_type`` (one, several or "*"), oldest first.

        With ``since_id``, the first ``last`` after that stream entry id (usage and budget
        ids are server milliseconds, ``<ms>-<n>``; the catalog's are ``<revision>-0``).
        """
        flow = recent_events(self.keys, self._catalog(), event_types(event_type), last=last, since_id=since_id)
        return self._run(flow)

    def _follow(self, follower: Follower) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                batch = self._run(follower.poll())
            except Exception as exc:  # keep following whatever happens
                log.warning("event follower: %s; retrying in %.2fs", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            for event in batch:
                follower.deliver(event)

    def _stop_events(self) -> None:
        thread, self._follower_thread = self._follower_thread, None
        if thread is not None and thread is not threading.current_thread():  # close() in a callback
            thread.join(timeout=5)

    # -- ledger ---------------------------------------------------------------------------------

    def record_usage(
        self,
        model_key: str,
        input_tokens: int,
        output_tokens: int,
        success: bool = True,
        latency_ms: float | None = None,
        tenant: str | None = None,
        request_id: str | None = None,
        *,
        throttled: bool = False,
        cached_input_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> UsageRecord:
        """Add one request's tokens, exact cost, outcome and latency to the ledger, atomically.

        With a ``request_id`` it counts once however often it is sent (24 h memory); the
        result says whether this call was the one that counted. ``throttled``,
        ``cached_input_tokens`` and ``cache_write_tokens`` as in :meth:`settle`.
        """
        flow = self._record_flow(
            self._catalog(),
            model_key,
            input_tokens,
            output_tokens,
            success,
            latency_ms,
            tenant,
            request_id,
            throttled,
            cached_input_tokens,
            cache_write_tokens,
        )
        return self._learned(self._run(flow))

    def get_statistics(
        self,
        model: str | None = None,
        tenant: str | None = None,
        since: datetime | float | None = None,
        until: datetime | float | None = None,
        *,
        provider: str | None = None,
        currency: str = "USD",
    ) -> Statistics:
        """Ledger totals (cost, tokens, requests, outcomes): overall, ``by_model``,
        ``by_provider``, ``by_capability`` and ``by_tenant``.

        For one model, one provider's models, or every model; for one tenant or everyone;
        over all time or ``since``..``until`` (UTC hour or day buckets); in at most two round
        trips however many models. The totals and breakdowns add up only the models priced in
        ``currency`` (see :class:`~registry.ledger.stats.Statistics`).
        """
        models = self._models_for(self._catalog(), model, provider)
        return self._run(
            ledger_stats.statistics(
                self.keys,
                models,
                tenant=check_tenant(tenant),
                since=since,
                until=until,
                currency=self._currency(currency),
            )
        )

    def usage(
        self,
        model_key: str,
        since: datetime | float,
        until: datetime | float,
        granularity: str = "hour",
        tenant: str | None = None,
    ) -> list[ledger_stats.UsagePoint]:
        """A model's usage (or a tenant's on it) per UTC minute, hour or day, for charts."""
        model = self._catalog().get(self._key(model_key))
        return self._run(
            ledger_stats.usage(
                self.keys, model, tenant=check_tenant(tenant), since=since, until=until, granularity=granularity
            )
        )

    def model_performance(self, model_key: str) -> ledger_stats.Performance:
        """Latency percentiles, success rate and output tokens per second of a model, all time."""
        model = self._catalog().get(self._key(model_key))
        return self._run(ledger_stats.model_performance(self.keys, model, LATENCY_EDGES_MS))

    def rank_models(
        self,
        by: str = "cost_efficiency",
        *,
        provider: str | Sequence[str] | None = None,
        capability: str | Sequence[str] | None = None,
        min_requests: int = 1,
        limit: int | None = None,
    ) -> list[ledger_stats.ModelRanking]:
        """Models ranked by their all-time ledger, in one round trip; best first.

        ``by``: "cost_efficiency" (cheapest per successful request; USD models, others after),
        "latency" (p95, then p50), "throughput" (output tokens per second) or "success_rate".
        Models of ``provider`` / with ``capability`` only; those with fewer than
        ``min_requests`` requests are left out; ``limit`` keeps the first rows. See
        :func:`registry.ledger.stats.rank_models`.
        """
        models = self._catalog().search(SearchQuery.build(provider=provider, capability=capability))
        flow = ledger_stats.rank_models(
            self.keys, models, LATENCY_EDGES_MS, by=by, min_requests=min_requests, limit=limit
        )
        return self._run(flow)

    # -- budgets --------------------------------------------------------------------------------

    def set_budget(
        self,
        tenant: str,
        amount: Decimal | int | str,
        period: str = "day",
        model: str | None = None,
        *,
        currency: str = "USD",
        thresholds: Sequence[int] = DEFAULT_THRESHOLDS,
    ) -> Budget:
        """Cap what ``tenant`` spends per UTC ``period`` ("day", "week" or "month"), on every
        model or on one ``model``; replaces the budget of the same model and period.

        ``acquire`` then refuses a request of the tenant whose estimated cost would take spent
        plus held beyond ``amount``; ``thresholds`` (percent) raise one ``budget.threshold``
        event each per period. Budgets are catalog items: every client follows them.
        """
        budget, edit = self._budget_put(self._catalog(), tenant, amount, period, model, currency, thresholds)
        self._run(budget_ops.change(self.keys, budget.tenant, edit))
        self._written(0)
        return budget

    def delete_budget(self, tenant: str, period: str = "day", model: str | None = None) -> bool:
        """Remove a budget; False if there was none. What was spent stays in the ledger."""
        checked, edit = self._budget_drop(tenant, period, model)
        before = len(self._budgets_of(self._catalog(), checked))
        after = self._run(budget_ops.change(self.keys, checked, edit))
        self._written(0)
        return len(after) < before

    def get_budgets(self, tenant: str | None = None) -> list[Budget]:
        """A tenant's budgets (every tenant's with None), from the local catalog copy."""
        return self._budgets_of(self._catalog(), tenant)

    def budget_status(self, tenant: str) -> list[BudgetStatus]:
        """Spent, held and thresholds reached of each budget of ``tenant``, in its current period."""
        return self._run(self._budget_status_flow(self._catalog(), tenant))

    def fleet_view(self) -> FleetView:
        """Everything a dashboard shows now, in two round trips: per model its windows' use,
        denials, today's and this month's usage, latency; per tenant its usage and budgets."""
        return self._run(ledger_view.fleet_view(self.keys, self._catalog(), self._predicted_ms()))

    def export(self) -> dict[str, Any]:
        """The catalog and every ledger counter, as one JSON-able document (see ``restore``)."""
        return self._run(transfer.export_ledger(self.keys, self._catalog()))

    def restore(self, document: dict[str, Any]) -> int:
        """Load an :meth:`export` into this (empty) namespace: ledger counters, catalog, budgets.

        Returns the number of ledger keys written; every counter equals the exported one.
        """
        catalog, budgets = self._restore_plan(document)
        written = self._run(transfer.import_ledger(self.keys, document))  # refuses a used namespace
        self.sync_models(catalog)
        for tenant, held in budgets.items():
            self._run(budget_ops.change(self.keys, tenant, budget_ops.setting(held)))
        self._written(0)
        return written
