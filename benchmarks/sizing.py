"""Redis memory by key kind, and what a model, a tenant and a budget add up to: the numbers of
docs/operations.md ("Sizing Redis").

    python benchmarks/sizing.py [--redis-url URL] [--quick]

Starts a private ``redis-server`` (``registry.embedded``) unless given ``--redis-url``, where it
writes under the namespace ``sizing`` and deletes that namespace's keys at the end. Every size
is ``MEMORY USAGE key SAMPLES 0``: the value, the key's name and Redis' per-key overhead, as
the server reports it (it leaves out allocator fragmentation).

What it builds, through the library's own API (a fake clock places requests in the past; the
scripts take the time from it as from ``TIME``):

- the shipped catalog (``config/models.json``, 15 models) and one tenant's two budgets;
- one model, ``openai:gpt-5.2``, limited per minute (requests, tokens) and per day (requests),
  and the same limits for tenant ``acme`` on it, its windows full: a request in each of the 96
  quarter-hour buckets of the last day and several in each of the 60 one-second buckets of the
  last minute;
- that model's ledger in the steady state of continuous traffic: usage every minute of the last
  2 days, every hour of the 90 days before and every day of the 2 years before (what the
  ledger keeps: minute buckets 2 days, hour buckets 90 days, day buckets 2 years), with the
  tenant, several latencies and a failure in each, so each time bucket holds the fields a
  busy one holds;
- requests in flight, with and without a request id, a settle marker, a budget hold;
- the model's usage event stream filled to its cap (10,000 entries).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python benchmarks/sizing.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from registry import Registry, embedded
from registry.catalog.sync import read_catalog_file
from registry.testing import FakeClock, use_clock

ROOT = Path(__file__).resolve().parent.parent
MODEL = "openai:gpt-5.2"
TENANT = "acme"
LIMITS = {"requests_per_minute": 10_000, "tokens_per_minute": 20_000_000, "requests_per_day": 10_000_000}
LATENCIES_MS = (200, 400, 900, 2_000, 4_500, 9_000, 25_000)  # one request each per time bucket
MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000


def _bytes(raw: redis.Redis, key: str) -> int:
    return int(raw.memory_usage(key, samples=0) or 0)


def _kind(key: str, ns: str) -> str:
    """The key's kind: its name with the model, tenant, ids and bucket numbers generalised."""
    tag, _, rest = key.partition("}")
    if tag == f"{{{ns}:catalog":
        part = rest.split(":")[1]
        return {"model": "{ns:catalog}:model:<provider>:<id>", "budget": "{ns:catalog}:budget:<tenant>"}.get(
            part, f"{{ns:catalog}}:{part}"
        )
    if tag.startswith(f"{{{ns}:adm:"):
        words = rest.split(":")[1:]
        scope = ""
        if words[:1] == ["t"]:
            scope, words = ":t:<tenant>", words[2:]
        head = words[0]
        if head == "w":
            return f"{{ns:adm:<model>}}{scope}:w:{words[1]}"
        if head in ("r", "s"):
            return f"{{ns:adm:<model>}}{scope}:{head}:<{'request id' if head == 'r' else 'token'}>"
        if head == "l":
            sub = words[1]
            if sub in ("m", "h", "d"):
                return f"{{ns:adm:<model>}}{scope}:l:{sub}:<n>"
            if sub == "id":
                return "{ns:adm:<model>}:l:id:<request id>"
            return f"{{ns:adm:<model>}}{scope}:l:{sub}"
        return f"{{ns:adm:<model>}}{scope}:{head}"
    if tag.startswith(f"{{{ns}:bud:"):
        words = rest.split(":")[1:]
        if words[0] == "s":
            return "{ns:bud:<tenant>}:s:<scope>:<period>:<n>"
        if words[0] == "r":
            return "{ns:bud:<tenant>}:r:<reservation>"
        return "{ns:bud:<tenant>}:" + words[0]
    return key


def build(url: str, ns: str, raw: redis.Redis, *, quick: bool) -> dict[str, Any]:
    """Fill the namespace as described in the module docstring; returns notes and the sizes of
    states that do not last to the end (a spend hash while requests hold on it)."""
    notes: dict[str, Any] = {}
    models = read_catalog_file(ROOT / "config" / "models.json")
    with Registry.from_url(url, namespace=ns, watch=False) as admin:
        admin.sync_models(models)
        spec = admin.get_model(MODEL).model_dump(mode="json")
        spec["rate_limit"] = LIMITS
        spec["tenant_limits"] = {"*": LIMITS}
        admin.register_model(spec, replace=True)

    reg = Registry.from_url(url, namespace=ns, watch=False)
    clock = FakeClock(now_ms=int(time.time() * 1000))
    use_clock(reg, clock)
    now = clock.now_ms

    # Full windows, the model's and the tenant's: the day's 96 quarter-hour buckets, then the
    # minute's 60 one-second buckets with several requests of 2,000 tokens each.
    for k in range(1, 96):
        clock.now_ms = now - DAY + k * 900_000
        assert reg.acquire(MODEL, 1_000, 1_000, tenant=TENANT).allowed
    per_second = 2 if quick else 20
    for k in range(1, 61):
        clock.now_ms = now - MINUTE + k * 1_000
        for _ in range(per_second):
            assert reg.acquire(MODEL, 1_000, 1_000, tenant=TENANT).allowed
    clock.now_ms = now
    notes["window"] = f"{per_second * 60:,} requests of 2,000 tokens in the minute window, 1 in each day bucket"
    # One refusal: the model's denial counters.
    assert not reg.acquire(MODEL, LIMITS["tokens_per_minute"] - 1, 0).allowed

    # The ledger's steady state: usage in every minute, hour and day bucket the ledger keeps.
    steps = [now - m * MINUTE for m in range(2 * 24 * 60)]
    steps += [now - 2 * DAY - h * HOUR for h in range(88 * 24)]
    steps += [now - 90 * DAY - d * DAY for d in range(640)]
    if quick:
        steps = steps[:: max(1, len(steps) // 200)]
    for at in steps:
        for i, latency in enumerate(LATENCIES_MS):
            clock.now_ms = at - i  # within the same bucket
            reg.record_usage(MODEL, 1_200, 400, success=i != 3, latency_ms=latency, tenant=TENANT)
    clock.now_ms = now
    # What the TTLs would have removed by now (they run from the real time of the writes): the
    # minute buckets the hourly and daily steps made beyond 2 days, their hour buckets beyond 90.
    oldest = {"m": (now - 2 * DAY) // MINUTE, "h": (now - 90 * DAY) // HOUR}
    for key in raw.scan_iter(match=f"{{{ns}:adm:{MODEL}}}*:l:[mh]:*", count=1000):
        period, index = key.rsplit(":", 2)[-2:]
        if int(index) <= oldest[period]:
            raw.unlink(key)
    notes["ledger"] = (
        f"usage at {len(steps):,} points in time (every minute of 2 days, every hour of the 88 days before, every"
        f" day of the 640 before), {len(LATENCIES_MS)} requests each (7 latency buckets, one failure), the buckets"
        " the TTLs would have removed deleted"
    )
    # A record under a request id: its marker lives 24 h.
    reg.record_usage(MODEL, 1_200, 400, latency_ms=900, tenant=TENANT, request_id="req-000000000042")

    # Requests in flight: without a request id (no key), with one (its record, the model's and
    # a tenant's), and a settled one (its marker).
    reg.acquire(MODEL, 1_200, 800)
    reg.acquire(MODEL, 1_200, 800, request_id="req-000000000043")
    reg.acquire(MODEL, 1_200, 800, tenant=TENANT, request_id="req-000000000044")
    settled = reg.acquire(MODEL, 1_200, 800)
    assert settled.reservation is not None
    reg.settle(settled.reservation, 1_187, 412, latency_ms=950)

    # Budgets: two of another tenant, on every model (a month) and on another model (a day);
    # 100 of its requests on that model in flight hold on both, then settle. That model's keys
    # are deleted afterwards, so that the table shows one model's.
    other = "openai:gpt-5.5"
    reg.set_budget("team-b", "1000000", period="month")
    reg.set_budget("team-b", "50000", period="day", model=other)
    held = [reg.acquire(other, 1_200, 800, tenant="team-b") for _ in range(100)]
    spend = sorted(raw.scan_iter(match=f"{{{ns}:bud:team-b}}:s:*", count=1000))
    holds = sorted(raw.scan_iter(match=f"{{{ns}:bud:team-b}}:r:*", count=1000))
    notes["spend with holds"] = [_bytes(raw, key) for key in spend]
    notes["hold"] = statistics.median(_bytes(raw, key) for key in holds)
    for decision in held:
        assert decision.reservation is not None
        reg.settle(decision.reservation, 1_187, 412)
    notes["spend settled"] = [_bytes(raw, key) for key in spend]
    for key in raw.scan_iter(match=f"{{{ns}:adm:{other}}}*", count=1000):
        raw.unlink(key)

    # The model's usage stream at its cap: every record sampled.
    sampler = Registry.from_url(url, namespace=ns, watch=False, usage_event_rate=1.0)
    use_clock(sampler, clock)  # everything after the fill happens at `now`: one minute bucket
    for _ in range(200 if quick else 10_050):
        sampler.record_usage(MODEL, 1_200, 400, latency_ms=900, tenant=TENANT)
    sampler.close()
    reg.close()
    return notes


def measure(url: str, ns: str) -> tuple[dict[str, list[tuple[str, int, int]]], str]:
    """Every key of the namespace by kind: (key, bytes, TTL ms) each; and the server's version."""
    raw = redis.Redis.from_url(url, decode_responses=True)
    by_kind: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    for key in raw.scan_iter(match=f"{{{ns}:*", count=1000):
        by_kind[_kind(key, ns)].append((key, _bytes(raw, key), int(raw.pttl(key))))
    version = str(raw.info("server")["redis_version"])
    raw.close()
    return by_kind, version


def _ttl(ms: int) -> str:
    if ms < 0:
        return "none"
    for unit, size in (("d", DAY), ("h", HOUR), ("min", MINUTE), ("s", 1000)):
        if ms >= size:
            return f"{ms / size:.0f} {unit}"
    return f"{ms} ms"


def report(by_kind: dict[str, list[tuple[str, int, int]]], version: str, notes: dict[str, Any]) -> str:
    lines = [
        f"Redis {version}; MEMORY USAGE ... SAMPLES 0 in bytes; namespace length 8 (`registry`).",
        "",
        "| key | count | bytes each (min / median / max) | total | longest TTL |",
        "| --- | ---: | --- | ---: | --- |",
    ]
    totals: dict[str, int] = {}
    for kind in sorted(by_kind):
        rows = by_kind[kind]
        sizes = sorted(size for _, size, _ in rows)
        totals[kind] = sum(sizes)
        spread = f"{sizes[0]:,}"
        if sizes[0] != sizes[-1]:
            spread += f" / {statistics.median(sizes):,.0f} / {sizes[-1]:,}"
        ttl = max((t for _, _, t in rows), default=-1)
        if any(t < 0 for _, _, t in rows):
            ttl = -1
        lines.append(f"| `{kind}` | {len(rows):,} | {spread} | {totals[kind]:,} | {_ttl(ttl)} |")

    def total(*kinds: str) -> int:
        return sum(totals.get(k, 0) for k in kinds)

    adm, ten = "{ns:adm:<model>}", "{ns:adm:<model>}:t:<tenant>"
    windows = ("rpm", "tpm", "rpd")
    ledger = [f"{adm}:l:total", f"{adm}:l:m:<n>", f"{adm}:l:h:<n>", f"{adm}:l:d:<n>"]
    tenant_ledger = [k.replace(adm, ten) for k in ledger]
    keys_of = {k: len(by_kind.get(k, ())) for k in ledger}
    lines += [
        "",
        "| what | bytes |",
        "| --- | ---: |",
        f"| the shipped catalog (15 models, meta, index, events) | {total(*(k for k in totals if 'catalog' in k)):,} |",
        f"| one model's full windows (RPM, TPM, RPD) | {total(*(f'{adm}:w:{w}' for w in windows)):,} |",
        f"| one tenant's full windows on a model (RPM, TPM, RPD) | {total(*(f'{ten}:w:{w}' for w in windows)):,} |",
        f"| one model's ledger, steady traffic ({sum(keys_of.values()):,} keys) | {total(*ledger):,} |",
        f"| one tenant's ledger on a model, steady traffic | {total(*tenant_ledger):,} |",
        f"| the model's usage stream at its cap | {total(f'{adm}:events'):,} |",
        "",
        f"Windows: {notes['window']}. Ledger: {notes['ledger']}. A budget's spend hash (one per budget"
        f" and period): {' and '.join(f'{b:,}' for b in notes['spend with holds'])} bytes with 100 requests"
        f" holding on it, {' and '.join(f'{b:,}' for b in notes['spend settled'])} once they settled; a request's"
        f" hold record (`{{ns:bud:<tenant>}}:r:<reservation>`) {notes['hold']:,.0f} bytes until it settles.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--redis-url", help="measure on this Redis, in namespace 'sizing' (deleted at the end)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer buckets and stream entries")
    args = parser.parse_args(argv)
    server = None
    if args.redis_url:
        url, ns = args.redis_url, "sizing"
    else:
        server = embedded.start()
        url, ns = server.url, "registry"
        print(f"# {server.description}", file=sys.stderr)
    try:
        raw = redis.Redis.from_url(url, decode_responses=True)
        notes = build(url, ns, raw, quick=args.quick)
        raw.close()
        by_kind, version = measure(url, ns)
        print(report(by_kind, version, notes))
    finally:
        if args.redis_url:
            raw = redis.Redis.from_url(url)
            for key in raw.scan_iter(match=f"{{{ns}:*", count=1000):
                raw.unlink(key)
            raw.close()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
