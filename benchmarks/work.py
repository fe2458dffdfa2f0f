"""Work per call, at full windows: the round trips, scripts and inner Redis commands each
operation issues and the server time of its scripts (``INFO commandstats``), and the sweeps
of that server time over the limit and the token weight.

Full windows, ours: a fake clock (:mod:`registry.testing`) walks through the 96 quarter-hour
buckets of a day and the 60 one-second buckets of a minute (:func:`benchmarks.ours.fill_windows`),
leaving every window of the model half used; the measured calls then run at that time, in the
current bucket (the common case: nothing expired since the last call), and the windows are
put back exactly (DUMP/RESTORE) before each batch so that every call is admitted from the same
state. "bucket roll every call" moves the clock 1 s before each call instead, so each call
finds its oldest bucket expired and recounts the window: what happens once per bucket (1 s)
per limit in a busy fleet, here on every call.

Full windows, ``limits``' moving window: its list holds the limit in entries, the oldest just
out of the window (:func:`benchmarks.peers.limits_mw_full`), so each hit is admitted, pushes
its cost in entries and trims as many, the state a limit used at its full rate stays in.
The sliding window counters and GCRA keep one or two numbers whatever the traffic.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

from benchmarks import ours, peers
from benchmarks.floor import NOOP, NOOP_KEY
from benchmarks.harness import Report, measure_work, wait_quiet
from registry import Registry
from registry.testing import FakeClock, use_clock

__all__ = ["LIMIT_SWEEP", "MW_WEIGHTS", "WEIGHT_SWEEP", "run_sweeps", "run_work"]

NAMESPACE = "work"
MODEL = "work:m"
LIMIT_SWEEP = (10**3, 10**4, 10**5, 10**6, 10**7)
WEIGHT_SWEEP = (1, 10, 100, 500, 5_000, 100_000)
WEIGHT_TPM = 10**7
MW_WEIGHTS = (1, 500, 5_000)
PEER_LIMIT = 1_000_000  # per minute, as our model's tokens per minute
WEIGHT = ours.INPUT + ours.OUTPUT
MW_500 = f"{peers.LIMITS_MW} w=500, full window"


def _model(model_id: str, price: str, rate_limit: dict[str, int], tenants: dict[str, Any] | None = None) -> dict:
    return {
        "provider": "work",
        "id": model_id,
        "context_window": 10**9,
        "max_output_tokens": 512,
        "capabilities": ["chat"],
        "cost": {"input": price, "output": str(2 * int(price))},
        "rate_limit": rate_limit,
        "tenant_limits": tenants or {},
    }


def _models() -> list[dict]:
    models = [
        _model(
            "m",
            "1",
            {"requests_per_minute": 10_000, "tokens_per_minute": 1_000_000, "requests_per_day": 10_000_000},
            {"*": {"requests_per_minute": 5_000, "tokens_per_minute": 500_000}},
        ),
        _model("w", "9", {"requests_per_minute": 10**6, "tokens_per_minute": WEIGHT_TPM, "requests_per_day": 10**9}),
    ]
    models += [
        _model(
            f"tpm-{limit}", "9", {"requests_per_minute": 10**6, "tokens_per_minute": limit, "requests_per_day": 10**9}
        )
        for limit in LIMIT_SWEEP
    ]
    return models


class _Setup:
    """The work namespace: models, a budget, a fake-clock client and a raw client for INFO."""

    def __init__(self, url: str) -> None:
        self.url = url
        with Registry.from_url(url, namespace=NAMESPACE, watch=False) as writer:
            writer.sync_models(_models())
            writer.set_budget(ours.RICH, "9000000", "day")
        self.raw = redis.Redis.from_url(url, decode_responses=True)
        # watch=True (reads from the local copy, as in production) with a watcher that never
        # polls during a measurement: only the operations' own commands are counted.
        self.reg = Registry.from_url(url, namespace=NAMESPACE, refresh_interval=3600)
        self.reg.get_model(MODEL)
        wait_quiet(self.raw)  # the watcher's first refresh done: from now on it never polls
        self.clock = FakeClock(now_ms=(int(time.time() * 1000) // 1000) * 1000 + 500)
        use_clock(self.reg, self.clock)
        self.end_ms = self.clock.now_ms

    def full(self, model_key: str, tenants: tuple[str | None, ...] = (None,)) -> tuple[ours.Windows, int]:
        model = self.reg.get_model(model_key)
        held = ours.fill_windows(self.reg, self.clock, model, end_ms=self.end_ms, tenants=tenants)
        windows = ours.Windows(self.url, self.reg.keys, model_key)
        windows.save()
        return windows, held

    def close(self) -> None:
        ours.close(self.reg)
        self.raw.close()


def _admitted(fn: Callable[[], Any], counter: list[int]) -> Callable[[], Any]:
    """``fn``, counting [admitted, answers that say whether they admitted]."""

    def call() -> Any:
        result = fn()
        decision = getattr(result, "decision", result)  # route's (decision, model_key, tried)
        allowed = getattr(decision, "allowed", decision)
        if isinstance(allowed, bool):
            counter[0] += allowed
            counter[1] += 1
        elif hasattr(allowed, "limited"):  # throttled-py's result
            counter[0] += not allowed.limited
            counter[1] += 1
        return result

    return call


def _note(counter: list[int], calls: int, extra: str = "") -> str:
    if not counter[1]:
        return extra
    text = f"admitted {counter[0]}/{calls}" + (f"; {extra}" if extra else "")
    return text if counter[0] == calls else f"NOT ALL ADMITTED: {text}"


Probe = Callable[[], dict[str, Any]]


def _probe(
    raw: redis.Redis,
    fn: Callable[[], Any],
    calls: int,
    *,
    batch: int | None = None,
    prepare: Callable[[int], Any] | None = None,
    what: str = "",
    **extra: Any,
) -> Probe:
    """A measurement that can be repeated: ``calls`` calls of ``fn``, admitted ones counted."""

    def run() -> dict[str, Any]:
        counter = [0, 0]
        work = measure_work(raw, _admitted(fn, counter), calls, batch=batch, prepare=prepare)
        return {**work, **extra, "note": _note(counter, calls, what)}

    return run


def _repeat(probes: dict[str, Probe], reps: int) -> dict[str, dict[str, Any]]:
    """Each probe ``reps`` times, in alternating order (forward, backward, ...); for each, the
    run of median server time, with every run's server time beside it. A busy machine slows
    Redis' own clock too (the server time of a script is wall time inside Redis), so one run
    may be off; the median of alternating runs is what the rows report."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in probes}
    names = list(probes)
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            runs[name].append(probes[name]())
    out = {}
    for name in names:
        ordered = sorted(runs[name], key=lambda w: w["server_us_per_op"])
        chosen = dict(ordered[(len(ordered) - 1) // 2])
        chosen["server_us_runs"] = [round(w["server_us_per_op"], 2) for w in runs[name]]
        chosen["server_us_min"] = ordered[0]["server_us_per_op"]
        out[name] = chosen
    return out


def run_work(report: Report, url: str, *, calls: int, reps: int = 3) -> dict[str, Any]:
    """Section e: every operation of ours at full windows, and the peers' per call (their moving
    window at a full window); ratio: server time over ``limits``' moving window's at a weight
    of 500. Each is measured ``reps`` times, alternating, and the median reported."""
    s = _Setup(url)
    reg, clock = s.reg, s.clock
    probes: dict[str, Probe] = {}

    # Peers at our model's token limit (1,000,000 per minute).
    if peers.available(peers.LIMITS_MW):
        for weight in (WEIGHT, 1):
            probes[f"{peers.LIMITS_MW} w={weight}, full window"] = _limits_mw_probe(s.raw, url, weight, calls)
    for peer in (peers.LIMITS_SWC, peers.THROTTLED_SW, peers.THROTTLED_GCRA):
        if not peers.available(peer):
            continue
        if peer == peers.LIMITS_SWC:
            bench = peers.limits_bench(url, peer, PEER_LIMIT, WEIGHT, identifier="work")
        else:
            bench = peers.throttled_bench(url, peer, PEER_LIMIT, WEIGHT, key="work")
        clear = peers.clear_one(url, "work")
        probes[f"{peer} w={WEIGHT}"] = _probe(
            s.raw, bench.call, min(calls, PEER_LIMIT // 2 // WEIGHT), prepare=clear, what="from a fresh key"
        )

    # Ours, at full windows (half of every limit used, over a whole day and minute of buckets).
    windows, _ = s.full(MODEL, tenants=(ours.TENANT, ours.RICH))
    batch = 500  # the tenants' token windows have room for 500 requests of 500 tokens

    def restore(_n: int = 0) -> None:
        clock.now_ms = s.end_ms
        windows.restore()

    ops: dict[str, tuple[Callable[[], Any], str]] = {
        "acquire RPM+TPM+RPD, full windows": (lambda: reg.acquire(MODEL, ours.INPUT, ours.OUTPUT), "3 limits"),
        "acquire + tenant limits, full windows": (
            lambda: reg.acquire(MODEL, ours.INPUT, ours.OUTPUT, tenant=ours.TENANT),
            "5 limits",
        ),
        "acquire + tenant budget, full windows": (
            lambda: reg.acquire(MODEL, ours.INPUT, ours.OUTPUT, tenant=ours.RICH),
            "budget hold, then 5 limits",
        ),
        "check_rate_limit, full windows": (lambda: reg.check_rate_limit(MODEL, WEIGHT), "peek"),
        "route, full windows": (
            lambda: reg.route(input_tokens=ours.INPUT, max_output_tokens=ours.OUTPUT, capability="chat"),
            "the cheapest of 7 models has room: 1 acquire",
        ),
        "acquire + settle, full windows": (
            lambda: ours._settled(reg, reg.acquire(MODEL, ours.INPUT, ours.OUTPUT)),
            "the pair",
        ),
        "record_usage (tenant)": (
            lambda: reg.record_usage(MODEL, ours.INPUT, ours.USED_OUTPUT, tenant=ours.TENANT, latency_ms=300),
            "model and tenant ledgers",
        ),
    }
    for name, (fn, what) in ops.items():
        fn()  # its script loaded (SCRIPT LOAD after a NOSCRIPT), outside the counts
        probes[name] = _probe(s.raw, fn, calls, batch=batch, prepare=restore, what=what)

    # settle alone: a batch's reservations are acquired before it, outside the counts.
    pending: list[Any] = []

    def acquire_batch(n: int) -> None:
        restore()
        for _ in range(n):
            decision = reg.acquire(MODEL, ours.INPUT, ours.OUTPUT)
            assert decision.allowed, decision
            pending.append(decision.reservation)

    def settle() -> bool:
        return reg.settle(pending.pop(), ours.INPUT, ours.USED_OUTPUT, latency_ms=300)

    probes["settle, full windows"] = _probe(s.raw, settle, calls, batch=batch, prepare=acquire_batch, what="settled")

    # The worst case: the clock moves 1 s before every call, so every limit recounts.
    def roll() -> Any:
        clock.advance(1.0)
        return reg.acquire(MODEL, ours.INPUT, ours.OUTPUT)

    probes["acquire RPM+TPM+RPD, bucket roll every call"] = _probe(
        s.raw, roll, calls, prepare=restore, what="worst case: every window recounts on every call"
    )

    # The floor, for scale.
    noop = s.raw.register_script(NOOP)
    noop(keys=[NOOP_KEY])
    probes["floor: no-op EVALSHA (EXISTS, one key)"] = _probe(s.raw, lambda: noop(keys=[NOOP_KEY]), calls)
    probes["floor: PING"] = _probe(s.raw, s.raw.ping, calls)

    results = _repeat(probes, reps)
    restore()
    base = results.get(MW_500, {}).get("server_us_per_op")
    if base:
        report.note(f"ratio: server µs per call over {MW_500}'s; medians of {reps} alternating runs")
    for name, work in results.items():
        report.add(operation=name, **work, ratio=work["server_us_per_op"] / base if base else None)
    s.close()
    return results


def _limits_mw_probe(raw: redis.Redis, url: str, weight: int, calls: int, limit: int = PEER_LIMIT) -> Probe:
    """``limits``' moving window at a full window (rebuilt before each run), ``calls`` hits."""
    identifier = f"work-{weight}"
    bench = peers.limits_bench(url, peers.LIMITS_MW, limit, weight, identifier=identifier)
    n = max(1, min(calls, limit // 2 // weight - 1))
    key = peers.limits_key(url, peers.LIMITS_MW, limit, identifier)

    def fill(_n: int) -> None:
        peers.limits_mw_full(raw, key, limit, expired=(n + 1) * weight)

    probe = _probe(
        raw,
        bench.call,
        n,
        prepare=fill,
        what=f"list of {limit:,} entries, the oldest expiring",
        weight=weight,
        limit=limit,
    )

    def run() -> dict[str, Any]:
        try:
            return probe()
        finally:
            raw.unlink(key)

    return run


def run_sweeps(report: Report, url: str, *, calls: int, reps: int = 3) -> dict[str, dict[str, Any]]:
    """Section f: server time per acquire as the limit grows and as the weight grows (ours, at
    full windows), and per hit of ``limits``' moving window as the weight grows; each point
    measured ``reps`` times, alternating, and the median reported."""
    s = _Setup(url)
    reg, clock = s.reg, s.clock
    sweeps: dict[str, dict[str, Probe]] = {"limit": {}, "weight": {}, "limits_mw": {}}

    def restorer(windows: ours.Windows) -> Callable[[int], None]:
        def restore(_n: int = 0) -> None:
            clock.now_ms = s.end_ms
            windows.restore()

        return restore

    for limit in LIMIT_SWEEP:
        model = f"work:tpm-{limit}"
        windows, held = s.full(model)
        sweeps["limit"][f"acquire, TPM limit {limit:,} (w=1)"] = _probe(
            s.raw,
            lambda model=model: reg.acquire(model, 1, 0),
            calls,
            batch=limit - held,
            prepare=restorer(windows),
            what=f"windows hold {held:,} tokens",
            limit=limit,
            weight=1,
        )
    windows, held = s.full("work:w")
    for weight in WEIGHT_SWEEP:
        sweeps["weight"][f"acquire, weight {weight:,} (TPM {WEIGHT_TPM:,})"] = _probe(
            s.raw,
            lambda weight=weight: reg.acquire("work:w", weight, 0),
            calls,
            batch=(WEIGHT_TPM - held) // weight,
            prepare=restorer(windows),
            limit=WEIGHT_TPM,
            weight=weight,
        )
    if peers.available(peers.LIMITS_MW):
        for weight in MW_WEIGHTS:
            name = f"{peers.LIMITS_MW}, weight {weight:,} (limit {PEER_LIMIT:,})"
            sweeps["limits_mw"][name] = _limits_mw_probe(s.raw, url, weight, calls)

    out: dict[str, dict[str, Any]] = {}
    for kind, probes in sweeps.items():
        if not probes:
            continue
        results = _repeat(probes, reps)
        first = next(iter(results.values()))["server_us_per_op"]
        for name, work in results.items():
            report.add(operation=name, **work, ratio=work["server_us_per_op"] / first if first else None)
        values = [w["server_us_per_op"] for w in results.values()]
        report.note(
            f"ratio: to the sweep's first row; spread max/min {max(values) / min(values):.2f} "
            f"({min(values):.2f} .. {max(values):.2f} µs); medians of {reps} alternating runs"
        )
        out[kind] = results
    s.close()
    return out
