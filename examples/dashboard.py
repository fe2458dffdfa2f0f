"""A dashboard that reads the fleet's ledger and windows live, as an operator's screen would.

Each refresh is one ``fleet_view()``: every model's all-time and today's spend and requests,
how full each limit's window is now, and refusals. Point it at a fleet's namespace with
``--namespace``; on its own it runs the batch example in the background so that there is
something to watch, and stops when that job is done.

    python examples/dashboard.py                        # private Redis, with traffic
    REGISTRY_REDIS_URL=redis://... python examples/dashboard.py --namespace registry --seconds 30
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])  # examples/common.py, when run as a script

import batch_route
from common import open_registry, redis_url

from registry import Registry


def _short(limit: str) -> str:
    """requests_per_minute -> req/min"""
    what, _, per = limit.partition("_per_")
    return f"{what[:3]}/{per[:3]}"


def render(reg: Registry) -> str:
    """One screen: the models with traffic, busiest first."""
    view = reg.fleet_view()
    lines = [f"{'model':30} {'requests':>8} {'failed':>6} {'spent':>12}  windows (used/limit)"]
    busy = sorted((m for m in view.models if m.total.requests), key=lambda m: -m.total.requests)
    for m in busy:
        windows = "  ".join(f"{_short(w.name)} {w.used}/{w.limit}" for w in m.windows)
        refused = sum(m.denials.values())
        spent = f"{m.model.cost.currency} {m.total.total_cost:>8.4f}"
        note = f"  refused {refused}" if refused else ""
        lines.append(f"{m.model.key:30} {m.total.requests:>8} {m.total.failures:>6} {spent}  {windows}{note}")
    if not busy:
        lines.append("(no traffic yet)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", help="watch this namespace (default: run the batch example and watch it)")
    parser.add_argument("--seconds", type=float, default=60.0, help="stop after this long (default 60)")
    parser.add_argument("--every", type=float, default=1.0, help="refresh period in seconds (default 1)")
    args = parser.parse_args(argv)
    with redis_url() as url:
        namespace = args.namespace or f"example-dashboard-{int(time.time())}"
        reg = open_registry(url, namespace)
        job = None
        if args.namespace is None:
            worker = open_registry(url, namespace)
            job = threading.Thread(target=lambda: (batch_route.run(worker), worker.close()), daemon=True)
            job.start()
        try:
            end = time.monotonic() + args.seconds
            while True:
                done = job is not None and not job.is_alive()
                print(f"-- {time.strftime('%H:%M:%S')} namespace {namespace}\n{render(reg)}\n", flush=True)
                if done or time.monotonic() >= end:
                    break
                time.sleep(args.every)
        finally:
            reg.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
