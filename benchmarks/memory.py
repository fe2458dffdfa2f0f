"""Memory: ``MEMORY USAGE key SAMPLES 0`` (exact) of what a limited model keeps in Redis after a
full window, ours against ``limits``' moving window at the same limits.

Ours: a model limited to 10,000 requests and 1,000,000 tokens per minute, its windows filled
through a fake clock as a fleet at 99.6 % of both limits would leave them: 166 requests of 100
tokens in each of the 60 one-second buckets. ``limits``' moving window: the same two limits,
its lists filled by real hits to the limit (10,000 hits of cost 1; 2,000 hits of cost 500).
"""

from __future__ import annotations

import time
from typing import Any

import redis

from benchmarks import ours, peers
from benchmarks.harness import Report
from registry import Registry
from registry.testing import FakeClock, use_clock

__all__ = ["run_memory"]

NAMESPACE = "mem"
RPM, TPM = 10_000, 1_000_000
PER_STEP, TOKENS = 166, 100  # 166 requests of 100 tokens per 1 s bucket: 9,960 RPM, 996,000 TPM


def _models() -> list[dict[str, Any]]:
    base = {
        "provider": "mem",
        "context_window": 128_000,
        "max_output_tokens": 512,
        "cost": {"input": "1", "output": "2"},
    }
    return [
        {**base, "id": "m", "rate_limit": {"requests_per_minute": RPM, "tokens_per_minute": TPM}},
        {
            **base,
            "id": "d",
            "rate_limit": {"requests_per_minute": RPM, "tokens_per_minute": TPM, "requests_per_day": 10_000_000},
            "tenant_limits": {"*": {"requests_per_minute": RPM, "tokens_per_minute": TPM}},
        },
    ]


def run_memory(report: Report, url: str, *, per_step: int = PER_STEP) -> dict[str, Any]:
    """Section g. Returns the rows by name (``model`` is the per-model total of ours)."""
    raw = redis.Redis.from_url(url)
    out: dict[str, Any] = {}
    with Registry.from_url(url, namespace=NAMESPACE, watch=False) as writer:
        writer.sync_models(_models())
        writer.set_budget(ours.RICH, "9000000", "day")
    reg = Registry.from_url(url, namespace=NAMESPACE, refresh_interval=3600)
    clock = FakeClock(now_ms=int(time.time() * 1000))
    use_clock(reg, clock)
    end = clock.now_ms

    model = reg.get_model("mem:m")
    ours.fill_windows(reg, clock, model, end_ms=end, per_step=per_step, tokens=TOKENS)
    windows = ours.Windows(url, reg.keys, "mem:m")
    sizes = windows.memory()
    for key, size in sorted(sizes.items()):
        limit = key.rsplit(":", 1)[1]
        out[limit] = report.add(operation=f"ours: {limit} window hash (60 buckets), full", bytes=size, note=key)
    total = sum(sizes.values())
    out["model"] = report.add(
        operation=f"ours: per model at {RPM:,} RPM + {TPM:,} TPM, full windows",
        bytes=total,
        note=f"{per_step * 60:,} requests, {per_step * 60 * TOKENS:,} tokens in the window",
    )

    # A day window (96 quarter-hour buckets), a reservation, a tenant's windows, budget keys.
    model = reg.get_model("mem:d")
    ours.fill_windows(reg, clock, model, end_ms=end, tenants=(ours.TENANT,), tokens=TOKENS)
    windows = ours.Windows(url, reg.keys, "mem:d")
    for key, size in sorted(windows.memory().items()):
        if key.endswith(":w:rpd"):
            out["rpd"] = report.add(
                operation="ours: rpd window hash (96 buckets), full",
                bytes=size,
                note="1 request per bucket here: a count up to 127 takes 1 byte, up to 8.3 M 4",
            )
    # A request without a request id leaves no record (its handle says what it holds); with
    # one, the id's record lives until settled (at most the reservation TTL); a settle leaves a
    # marker for what is left of the TTL.
    plain = reg.acquire("mem:d", ours.INPUT, ours.OUTPUT, request_id="mem-plain")
    tenant = reg.acquire("mem:d", ours.INPUT, ours.OUTPUT, tenant=ours.TENANT, request_id="mem-tenant")
    anonymous = reg.acquire("mem:d", ours.INPUT, ours.OUTPUT)
    budget = reg.acquire("mem:m", ours.INPUT, ours.OUTPUT, tenant=ours.RICH)
    tag = reg.keys.admission_tag("mem:d")
    for label, decision, scope in (("3 limits", plain, ""), ("5 limits, tenant", tenant, f":t:{ours.TENANT}")):
        assert decision.allowed
        assert decision.reservation is not None
        key = f"{tag}{scope}:r:{decision.reservation.id}"
        out[f"reservation {label}"] = report.add(
            operation=f"ours: a request id's record ({label}), until settled",
            bytes=int(raw.memory_usage(key, samples=0) or 0),
            note=key,
        )
    assert anonymous.reservation is not None
    assert not raw.exists(f"{tag}:r:{anonymous.reservation.id}")
    report.add(operation="ours: a reservation without a request id", bytes=0, note="no key: the handle holds it")
    reg.settle(anonymous.reservation, ours.INPUT, ours.USED_OUTPUT)
    marker = reg.keys.settled("mem:d", anonymous.reservation.token)
    out["settle marker"] = report.add(
        operation="ours: a settle marker, for the rest of the TTL",
        bytes=int(raw.memory_usage(marker, samples=0) or 0),
        note=marker,
    )
    assert budget.allowed
    for key in sorted(raw.scan_iter(match=f"{reg.keys.budget_tag(ours.RICH)}:*", count=1000)):
        kind = "spend of a period" if b":s:" in key else "hold of a request" if b":r:" in key else "other"
        report.add(
            operation=f"ours: tenant budget, {kind}",
            bytes=int(raw.memory_usage(key, samples=0) or 0),
            note=key.decode(),
        )
    ours.close(reg)

    if peers.available(peers.LIMITS_MW):
        out.update(_limits_memory(report, url, raw))
    raw.close()
    return out


def _limits_memory(report: Report, url: str, raw: redis.Redis) -> dict[str, Any]:
    out: dict[str, Any] = {}
    total = 0
    for label, limit, cost in (("RPM", RPM, 1), ("TPM", TPM, ours.INPUT + ours.OUTPUT)):
        identifier = f"mem-{label}"
        bench = peers.limits_bench(url, peers.LIMITS_MW, limit, cost, identifier=identifier)
        for _ in range(limit // cost - 1):  # the bench's own first hit made one
            bench.call()
        key = peers.limits_key(url, peers.LIMITS_MW, limit, identifier)
        size = int(raw.memory_usage(key, samples=0) or 0)
        total += size
        entries = int(raw.llen(key))
        out[f"limits {label}"] = report.add(
            operation=f"limits moving window: {label} list at {limit:,}/min, full (cost {cost})",
            bytes=size,
            note=f"{entries:,} entries",
        )
        raw.unlink(key)
    out["limits model"] = report.add(
        operation=f"limits moving window: per model at {RPM:,} RPM + {TPM:,} TPM, full",
        bytes=total,
        note="the same two limits",
    )
    if peers.available(peers.LIMITS_SWC):
        bench = peers.limits_bench(url, peers.LIMITS_SWC, TPM, ours.INPUT + ours.OUTPUT, identifier="mem-swc")
        bench.call()
        keys = [k for k in raw.scan_iter(match="LIMITS:*mem-swc*", count=1000)]
        report.add(
            operation="limits sliding window counter: one limit's keys",
            bytes=sum(int(raw.memory_usage(k, samples=0) or 0) for k in keys),
            note=f"{len(keys)} keys (this and the previous window's counters)",
        )
    return out
