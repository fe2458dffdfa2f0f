"""The headline comparison: alternating rounds on one connection each, in this process.

Each round runs every bench for the same time, one after the other, forward in even rounds
and backward in odd ones (so a drift of the machine's speed during the run favours no one),
and divides each bench's ops/s by the no-op EVALSHA floor's of the same round. A row reports
the median over the rounds of ops/s, of that ratio, and of p50 and p99.

The peers limit one key per minute by ``cost=`` the token weight. Their limit here is
1,000,000,000 per minute, never reached in a round, so that every call measured is admitted,
as every acquire of ours is (the model's limits are 10^12); ``limits``' moving window keeps a
list entry per unit of cost, so its keys are deleted between benches (a round at weight 500
pushes millions of entries). What each does at a full window is in the work section.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks import floor, ours, peers
from benchmarks.harness import Bench, Report, clients, summarize, time_loop, warm

__all__ = ["FLOOR", "ROUND_LIMIT", "Entry", "entries", "run_rounds"]

ROUND_LIMIT = 10**9
FLOOR = "floor: no-op EVALSHA"
WEIGHT = ours.INPUT + ours.OUTPUT


@dataclass
class Entry:
    name: str
    make: Callable[[], Bench]
    note: str
    peer: str | None = None  # the peer's strategy, None for the floor and ours
    weight: int = WEIGHT
    limits_checked: int = 1
    results: list[dict[str, float]] = field(default_factory=list)


def entries(url: str) -> list[Entry]:
    """Every bench of a round: the floor, ours, and each installed peer."""
    out = [
        Entry(FLOOR, lambda: floor.evalsha_bench(url), "EXISTS on one key", weight=0),
        Entry(
            f"ours: {ours.ACQUIRE} w={WEIGHT}",
            lambda: ours.bench(url, ours.ACQUIRE),
            "3 limits, atomic; exact to a 1 s bucket, refuses early, never late",
            limits_checked=3,
        ),
        Entry(
            f"ours: acquire TPM only w={WEIGHT}",
            lambda: ours.bench(url, "acquire TPM only"),
            "1 limit",
        ),
    ]
    for weight in (1, WEIGHT):
        for peer in (peers.LIMITS_MW, peers.LIMITS_SWC, peers.THROTTLED_SW, peers.THROTTLED_GCRA):
            if not peers.available(peer):
                continue
            if peer.startswith("limits"):

                def make(peer: str = peer, weight: int = weight) -> Bench:
                    return peers.limits_bench(url, peer, ROUND_LIMIT, weight, identifier=f"r{weight}")
            else:

                def make(peer: str = peer, weight: int = weight) -> Bench:
                    return peers.throttled_bench(url, peer, ROUND_LIMIT, weight, key=f"r{weight}")

            out.append(Entry(f"{peer} w={weight}", make, peers.SEMANTICS[peer], peer=peer, weight=weight))
    for peer in (peers.LIMITS_MW, peers.LIMITS_SWC):
        if peers.available(peer):

            def make2(peer: str = peer) -> Bench:
                return peers.limits_bench(url, peer, ROUND_LIMIT, WEIGHT, rpm=ROUND_LIMIT, identifier="two")

            out.append(
                Entry(
                    f"{peer}: RPM + TPM w={WEIGHT}",
                    make2,
                    "2 limits: 2 hits, 2 round trips, not atomic",
                    peer=peer,
                    limits_checked=2,
                )
            )
    return out


def run_rounds(report: Report, url: str, *, rounds: int, seconds: float) -> list[Entry]:
    """Run ``rounds`` alternating rounds; add one row per bench (medians); return the entries."""
    benches = entries(url)
    built = [(e, e.make()) for e in benches]
    for r in range(rounds):
        order = built if r % 2 == 0 else built[::-1]
        floor_ops = None
        results: dict[str, dict[str, float]] = {}
        for entry, bench in order:
            if entry.peer is not None:
                peers.clear(url)
            warm(bench, 50)
            results[entry.name] = summarize([time_loop(bench, seconds)])
        floor_ops = results[FLOOR]["ops_per_s"]
        for entry, _ in built:
            row = results[entry.name]
            row["ratio"] = row["ops_per_s"] / floor_ops
            entry.results.append(row)
        acquire = results[benches[1].name]
        report.note(
            f"round {r + 1}/{rounds}: floor {floor_ops:,.0f} ops/s, acquire {acquire['ops_per_s']:,.0f} "
            f"({acquire['ratio']:.2f}×)"
        )
    peers.clear(url)
    for entry in benches:
        report.add(
            operation=entry.name,
            clients=clients(1, 1),
            calls=sum(x["calls"] for x in entry.results),
            ops_per_s=statistics.median(x["ops_per_s"] for x in entry.results),
            p50_us=statistics.median(x["p50_us"] for x in entry.results),
            p99_us=statistics.median(x["p99_us"] for x in entry.results),
            ratio=statistics.median(x["ratio"] for x in entry.results),
            ratios=[x["ratio"] for x in entry.results],
            ops_per_round=[x["ops_per_s"] for x in entry.results],
            peer=entry.peer,
            weight=entry.weight,
            limits_checked=entry.limits_checked,
            note=entry.note,
        )
    for _, bench in built:
        if bench.close is not None:
            bench.close()
    return benches


def fastest_single_limit_peer(rows: list[dict[str, Any]], weight: int | None = None) -> dict[str, Any] | None:
    """The round row of the fastest peer checking one limit (at ``weight`` if given)."""
    candidates = [
        r
        for r in rows
        if r["section"] == "rounds"
        and r.get("peer")
        and r.get("limits_checked") == 1
        and (weight is None or r.get("weight") == weight)
    ]
    return max(candidates, key=lambda r: r["ops_per_s"], default=None)
