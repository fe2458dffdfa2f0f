"""This project's operations, as benches: admission (acquire, settle, ...), the ledger, and
the helpers that put a model's windows in a full state (a fake clock walks through a day and a
minute of buckets) and put them back between measured batches.

Every request here is 300 input + 200 output tokens: a token weight of 500.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import redis

from benchmarks.harness import AsyncBench, Bench
from registry import AsyncRegistry, Registry
from registry.keys import Keys
from registry.models import ModelSpec
from registry.testing import FakeClock

__all__ = [
    "ASYNC_OPERATIONS",
    "INPUT",
    "NAMESPACE",
    "OPERATIONS",
    "OUTPUT",
    "Windows",
    "async_bench",
    "batching",
    "bench",
    "close",
    "fill_windows",
    "setup",
]

NAMESPACE = "bench"
INPUT, OUTPUT = 300, 200  # a request's weight on a token limit: 500
USED_OUTPUT = 150  # what settle and record_usage say the request really produced
HUGE = 10**12  # a limit no run reaches: every acquire measured is admitted

MODEL = "bench:m"  # RPM + TPM + RPD, tenants' "*" limits (RPM + TPM)
MODEL_TPM = "bench:tpm"  # one limit only (tokens per minute): like a single-limit peer
RICH = "rich"  # a tenant with a budget per day large enough never to refuse
TENANT = "acme"  # a tenant with no budget


def _model(model_id: str, price: str, rate_limit: dict[str, int], tenants: bool = True) -> dict[str, Any]:
    return {
        "provider": "bench",
        "id": model_id,
        "context_window": 128_000,
        "max_output_tokens": 512,
        "capabilities": ["chat"],
        "cost": {"input": price, "output": str(2 * int(price))},
        "rate_limit": rate_limit,
        "tenant_limits": {"*": {"requests_per_minute": HUGE, "tokens_per_minute": HUGE}} if tenants else {},
    }


THREE = {"requests_per_minute": HUGE, "tokens_per_minute": HUGE, "requests_per_day": HUGE}
MODELS = [
    _model("m", "1", THREE),
    _model("tpm", "3", {"tokens_per_minute": HUGE}, tenants=False),
    _model("pricier", "5", THREE),  # route's second choice, never tried (the cheapest has room)
]

ACQUIRE = "acquire RPM+TPM+RPD"
OPERATIONS: dict[str, str] = {
    ACQUIRE: "3 limits, one script",
    "acquire TPM only": "1 limit: the peers' shape",
    "acquire + tenant limits": "5 limits (model's 3, tenant's RPM+TPM)",
    "acquire + tenant budget": "budget hold + 5 limits: 2 scripts",
    "check_rate_limit": "peek, consumes nothing",
    "route": "cheapest eligible of 3 models, 1 acquire",
    "settle": "of an acquire; real usage to the ledger",
    "acquire + settle": "the pair, 2 round trips",
    "record_usage": "ledger only, tenant",
}
ASYNC_OPERATIONS = (ACQUIRE, "acquire + settle")


def setup(url: str) -> None:
    """Register the bench models and the rich tenant's budget (namespace ``bench``)."""
    with Registry.from_url(url, namespace=NAMESPACE, watch=False) as reg:
        reg.sync_models(MODELS)
        reg.set_budget(RICH, "9000000", "day")  # never reached: measures the budget's round trip


def _settled(reg: Registry, decision: Any) -> Any:
    assert decision.allowed, decision
    return reg.settle(decision.reservation, INPUT, USED_OUTPUT, latency_ms=300)


def bench(url: str, operation: str) -> Bench:
    """A blocking :class:`Registry` (default watch: reads from the local copy) running ``operation``."""
    reg = Registry.from_url(url, namespace=NAMESPACE)
    reg.get_model(MODEL)  # the local copy, and its watcher
    if operation == "settle":
        pending: list[Any] = []

        def refill() -> None:
            for _ in range(200):
                decision = reg.acquire(MODEL, INPUT, OUTPUT)
                assert decision.allowed, decision
                pending.append(decision.reservation)

        return Bench(
            lambda: reg.settle(pending.pop(), INPUT, USED_OUTPUT, latency_ms=300),
            due=lambda: not pending,
            refill=refill,
            close=lambda: close(reg),
        )
    calls = {
        ACQUIRE: lambda: reg.acquire(MODEL, INPUT, OUTPUT),
        "acquire TPM only": lambda: reg.acquire(MODEL_TPM, INPUT, OUTPUT),
        "acquire + tenant limits": lambda: reg.acquire(MODEL, INPUT, OUTPUT, tenant=TENANT),
        "acquire + tenant budget": lambda: reg.acquire(MODEL, INPUT, OUTPUT, tenant=RICH),
        "check_rate_limit": lambda: reg.check_rate_limit(MODEL, INPUT + OUTPUT),
        "route": lambda: reg.route(input_tokens=INPUT, max_output_tokens=OUTPUT, capability="chat"),
        "acquire + settle": lambda: _settled(reg, reg.acquire(MODEL, INPUT, OUTPUT)),
        "record_usage": lambda: reg.record_usage(MODEL, INPUT, USED_OUTPUT, tenant=TENANT, latency_ms=300),
    }
    call = calls[operation]
    first = call()
    decision = getattr(first, "decision", first)  # route returns (decision, model_key, tried)
    if hasattr(decision, "allowed"):
        assert decision.allowed, f"{operation}: {decision}"
    return Bench(call, close=lambda: close(reg))


async def async_bench(url: str, operation: str) -> AsyncBench:
    """An :class:`AsyncRegistry` (one connection pool) running ``operation``."""
    reg = AsyncRegistry.from_url(url, namespace=NAMESPACE)
    await reg.get_model(MODEL)

    async def acquire() -> Any:
        return await reg.acquire(MODEL, INPUT, OUTPUT)

    async def pair() -> Any:
        decision = await reg.acquire(MODEL, INPUT, OUTPUT)
        assert decision.allowed, decision
        return await reg.settle(decision.reservation, INPUT, USED_OUTPUT, latency_ms=300)

    call = {ACQUIRE: acquire, "acquire + settle": pair}[operation]
    return AsyncBench(call, close=reg.aclose, stats=lambda: batching(reg))


def batching(reg: AsyncRegistry) -> dict[str, float]:
    """The auto-batcher's counters (item 7): pipelines sent, the calls they carried and the
    script calls those became (merged acquires); empty if AsyncRegistry does not batch."""
    batcher = getattr(reg, "_batcher", None)
    if batcher is None:
        return {}
    return {
        "pipelines": float(batcher.batches),
        "batched_calls": float(batcher.calls),
        "scripts": float(getattr(batcher, "scripts", batcher.calls)),
    }


def close(reg: Registry) -> None:
    """Close a client whose watcher waits a long ``refresh_interval`` (the measurements here
    use 3600 s so that it never polls): ``close()`` joins the watcher for up to 5 s, and it
    wakes only for a change notice, so first tell it to stop and send one."""
    reg._stop.set()
    reg.redis.publish(reg.keys.changes_channel, "0")
    reg.close()


# -- full windows -------------------------------------------------------------------------------

MINUTE_MS, DAY_MS, QUARTER_MS = 60_000, 86_400_000, 900_000


def fill_windows(
    reg: Registry,
    clock: FakeClock,
    model: ModelSpec,
    *,
    end_ms: int,
    tenants: Sequence[str | None] = (None,),
    per_step: int = 1,
    tokens: int | None = None,
) -> int:
    """Leave ``model``'s windows (and each tenant's on it) full, as a steady fleet would.

    With ``reg`` driven by ``clock`` (:func:`registry.testing.use_clock`): ``per_step``
    acquires per tenant in each of the 96 quarter-hour buckets of the day before ``end_ms``
    (if the model limits requests per day), then in each of the 60 one-second buckets of the
    minute before it, of ``tokens`` each (default: what fills half the tokens-per-minute
    limit). The clock is left at ``end_ms``. Returns the tokens each minute window holds.
    """
    tpm = model.rate_limit.tokens_per_minute or HUGE
    if tokens is None:
        tokens = max(1, tpm // 2 // 60 // per_step // len(tenants))
    steps: list[int] = []
    if model.rate_limit.requests_per_day is not None:
        steps += [end_ms - DAY_MS + k * QUARTER_MS for k in range(1, 96)]
    steps += [end_ms - MINUTE_MS + k * 1000 for k in range(1, 61)]
    for t in steps:
        clock.now_ms = t
        for tenant in tenants:
            for _ in range(per_step):
                decision = reg.acquire(model.key, tokens, 0, tenant=tenant)
                if not decision.allowed:
                    raise RuntimeError(f"filling {model.key}: refused at {t}: {decision}")
    clock.now_ms = end_ms
    return 60 * per_step * len(tenants) * tokens


class Windows:
    """The window hashes of one model (its tenants' included): saved once full, and put back
    exactly (DUMP/RESTORE, with their TTLs) before each measured batch."""

    def __init__(self, url: str, keys: Keys, model_key: str) -> None:
        self._r = redis.Redis.from_url(url)  # bytes: DUMP payloads are binary
        self.pattern = f"{keys.admission_tag(model_key)}:*w:*"
        self.saved: list[tuple[bytes, int, bytes]] = []

    def keys(self) -> list[bytes]:
        return sorted(self._r.scan_iter(match=self.pattern, count=1000))

    def save(self) -> None:
        self.saved = [(k, int(self._r.pttl(k)), self._r.dump(k)) for k in self.keys()]  # type: ignore[misc]

    def restore(self, _n: int = 0) -> None:
        pipe = self._r.pipeline(transaction=False)
        for key, ttl, payload in self.saved:
            pipe.restore(key, max(ttl, 0), payload, replace=True)
        pipe.execute()

    def memory(self, names: Iterable[bytes] | None = None) -> dict[str, int]:
        """``MEMORY USAGE ... SAMPLES 0`` of each window key."""
        return {
            k.decode(): int(self._r.memory_usage(k, samples=0) or 0)  # type: ignore[arg-type]
            for k in (names or self.keys())
        }

    def close(self) -> None:
        self._r.close()
