"""A bounded soak: the demo fleet in rounds on a private Redis Cluster while faults are injected.

    python benchmarks/soak.py                       # 5 minutes, 3 primaries + 3 replicas
    python benchmarks/soak.py --duration 60 --round 20 --seed 7
    python benchmarks/soak.py --single              # one redis-server instead of a cluster

Each round runs ``registry demo --json`` (worker processes acquiring, settling and recording
against tightened limits, then the demo's verdict from the workers' own logs) in a namespace
of its own. Meanwhile a fault thread picks, every 2 to 6 s, one of:

* ``script-flush``: SCRIPT FLUSH on every node (NOSCRIPT, reloaded by the clients);
* ``kill-clients``: CLIENT KILL TYPE normal on every node (every connection dropped);
* ``pause``: CLIENT PAUSE 300 ms on a primary (a slow Redis);
* ``failover``: CLUSTER FAILOVER on a replica (its primary steps down: MOVED, new slot map);
* ``replica-restart``: SIGKILL a replica and start it again.

A hard kill of a primary can lose acknowledged writes (replication is asynchronous), which no
client can prevent; it is exercised and measured in ``tests/test_failover.py`` and described in
``docs/guarantees.md``, not here, where every check must hold exactly.

At the end: every round's verdict (no over-admission, ledger exact, budgets held, duplicates
caught), no key of any round without a TTL except the kinds meant to last (catalog, all-time
ledger totals, capped event streams), and Redis' dataset memory and key count back to their
baseline once the rounds' keys are removed.
Exit 0 when all of it holds. A JSON document goes to ``benchmarks/results/soak.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from registry.embedded import start_redis_server  # noqa: E402
from registry.embedded_cluster import EmbeddedCluster, start_cluster  # noqa: E402

# Keys meant to outlive every TTL: the catalog (models, budgets, its index, meta and change log),
# a model's all-time ledger, refusal counters and tenant set, and the capped event streams
# (usage records, budget thresholds: bounded by their cap, not by time).
PERMANENT = (":catalog}:", ":l:total", ":l:denied", ":l:tenants", ":events")
# Bytes of dataset per primary that an emptied Redis keeps anyway: a FLUSHALL after 50 acquires
# leaves 0.1 to 0.6 MB more than a new node (allocator and internal tables, not keys). A leak of
# the fleet's keys would be tens of MB; the key count itself must come back exactly.
MEMORY_SLACK_PER_PRIMARY = 1024 * 1024


class Faults:
    """Injects one random fault every 2 to 6 s until stopped; counts what it did."""

    def __init__(self, cluster: EmbeddedCluster | None, single_url: str | None, seed: int) -> None:
        self.cluster, self.single_url = cluster, single_url
        self.rng = random.Random(seed)
        self.done: Counter[str] = Counter()
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="faults", daemon=True)

    def _clients(self) -> list[redis.Redis]:
        if self.cluster is None:
            assert self.single_url is not None
            return [redis.Redis.from_url(self.single_url, decode_responses=True)]
        return [n.client() for n in self.cluster.nodes_alive()]

    def _loop(self) -> None:
        kinds = ["script-flush", "kill-clients", "pause"]
        if self.cluster is not None:
            kinds += ["failover", "replica-restart"]
        while not self.stop.wait(self.rng.uniform(2, 6)):
            kind = self.rng.choice(kinds)
            try:
                getattr(self, "_" + kind.replace("-", "_"))()
                self.done[kind] += 1
            except Exception as exc:  # a fault that could not be injected is reported, not fatal
                self.failed.append(f"{kind}: {exc}")
                if self.cluster is not None:
                    for node in self.cluster.nodes_alive():
                        with node.client() as client:
                            print(f"  {node.port}: {client.execute_command('CLUSTER NODES')}", flush=True)

    def _script_flush(self) -> None:
        for client in self._clients():
            client.script_flush()
            client.close()

    def _kill_clients(self) -> None:
        for client in self._clients():
            client.client_kill_filter(_type="normal", skipme=True)
            client.close()

    def _pause(self) -> None:
        clients = self._clients()
        target = clients[0] if self.cluster is None else self.rng.choice(self.cluster.primaries()).client()
        target.client_pause(300)
        for client in {*clients, target}:
            client.close()

    def _replicas(self) -> list[Any]:
        assert self.cluster is not None
        return [n for n in self.cluster.nodes_alive() if n.role() == "slave"]

    def _failover(self) -> None:
        assert self.cluster is not None
        self.cluster.wait_ok()
        node = self.rng.choice(self._replicas())
        with node.client() as client:
            client.execute_command("CLUSTER FAILOVER")  # graceful: the replica catches up first
        self.cluster.wait_ok(replicas=False)

    def _replica_restart(self) -> None:
        assert self.cluster is not None
        node = self.rng.choice(self._replicas())
        node.kill()
        time.sleep(self.rng.uniform(0.5, 2))
        node.start()


def _run_round(url: str, namespace: str, seconds: float, seed: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "registry", "--redis-url", url, "--namespace", namespace, "--json"]
    command += ["demo", "--keep", "--duration", str(seconds), "--workers", "6", "--rps", "60", "--seed", str(seed)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds * 4 + 120, cwd=ROOT)
    try:
        document: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        return {"passed": False, "error": (done.stderr or done.stdout)[-2000:], "exit": done.returncode}
    verdict = document["verdict"]
    return {
        "passed": verdict["passed"] and done.returncode == 0,
        "failed_checks": [f"{c['group']} {c['subject']}: {c['text']}" for c in verdict["checks"] if not c["passed"]],
        "checks": len(verdict["checks"]),
        "totals": verdict["totals"],
        "run": document["run"],
    }


def _keys(client: Any, namespace: str) -> list[str]:
    return list(client.scan_iter(match=f"{{{namespace}:*", count=1000))


def _memory(cluster: EmbeddedCluster | None, client: Any) -> tuple[int, int]:
    """Redis' dataset memory (used_memory without its overhead: replication backlogs, client
    buffers, scripts) and its key count, added up over the primaries."""
    nodes = [client] if cluster is None else [n.client() for n in cluster.primaries()]
    dataset = keys = 0
    for node in nodes:
        deadline = time.monotonic() + 10
        while int(node.info("memory").get("lazyfree_pending_objects", 0)) and time.monotonic() < deadline:
            time.sleep(0.05)  # UNLINK frees in the background
        node.execute_command("MEMORY PURGE")
        dataset += int(node.info("memory")["used_memory_dataset"])
        keys += int(node.dbsize())
        if cluster is not None:
            node.close()
    return dataset, keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of rounds in all (default 300)")
    parser.add_argument("--round", type=float, default=30.0, help="seconds per demo round (default 30)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--single", action="store_true", help="one redis-server, not a cluster")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "soak.json"))
    args = parser.parse_args(argv)

    cluster = None if args.single else start_cluster(primaries=3, replicas=1)
    single = start_redis_server() if args.single else None
    url = single.url if single is not None else cluster.url  # type: ignore[union-attr]
    from registry._base import connect

    client = connect(url)
    try:
        baseline = _memory(cluster, client)
        faults = Faults(cluster, url if single else None, args.seed)
        faults.thread.start()
        rounds: list[dict[str, Any]] = []
        started = time.monotonic()
        i = 0
        while time.monotonic() - started < args.duration:
            namespace = f"soak-{args.seed}-{i}"
            result = _run_round(url, namespace, args.round, args.seed * 1000 + i)
            if cluster is not None:
                cluster.wait_ok(replicas=False)
            keys = _keys(client, namespace)
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.pttl(key)
            no_ttl = [k for k, ttl in zip(keys, pipe.execute(), strict=True) if ttl == -1 and not k.endswith(PERMANENT)]
            no_ttl = [k for k in no_ttl if not any(p in k for p in PERMANENT)]
            result.update(namespace=namespace, keys=len(keys), keys_without_ttl=no_ttl[:10], no_ttl=len(no_ttl))
            rounds.append(result)
            state = "PASS" if result["passed"] and not no_ttl else "FAIL"
            print(
                f"round {i}: {state} {result.get('checks', 0)} checks, {len(keys):,} keys, {len(no_ttl)} without TTL,"
                f" faults so far {dict(faults.done)}",
                flush=True,
            )
            for line in result.get("failed_checks", []) or [result.get("error", "")]:
                if line:
                    print(f"    {line}", flush=True)
            i += 1
        faults.stop.set()
        faults.thread.join()
        if cluster is not None:
            cluster.wait_ok()
        for r in rounds:
            keys = _keys(client, r["namespace"])
            for start in range(0, len(keys), 500):
                for key in keys[start : start + 500]:
                    client.unlink(key)
        after = _memory(cluster, client)
        slack = MEMORY_SLACK_PER_PRIMARY * (1 if cluster is None else len(cluster.primaries()))
        memory_back = after[1] == baseline[1] and after[0] <= baseline[0] + slack
        passed = all(r["passed"] and not r["no_ttl"] for r in rounds) and memory_back
        document = {
            "passed": passed,
            "backend": "single" if single else "cluster 3+3",
            "seconds": round(time.monotonic() - started, 1),
            "rounds": rounds,
            "faults": dict(faults.done),
            "faults_not_injected": faults.failed,
            "memory": {
                "dataset_bytes_before": baseline[0],
                "dataset_bytes_after": after[0],
                "keys_before": baseline[1],
                "keys_after": after[1],
                "slack": slack,
            },
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        print(
            f"soak: {'PASS' if passed else 'FAIL'}: {len(rounds)} rounds, "
            f"{sum(r['passed'] for r in rounds)} passed; faults {dict(faults.done)}"
            f"{' (not injected: ' + str(len(faults.failed)) + ')' if faults.failed else ''}; "
            f"dataset {baseline[0]:,} B and {baseline[1]} keys before, {after[0]:,} B and {after[1]} keys after"
            f" removing the rounds' keys; {args.json}"
        )
        return 0 if passed else 1
    finally:
        client.close()
        if cluster is not None:
            cluster.stop()
        if single is not None:
            single.stop()


if __name__ == "__main__":
    raise SystemExit(main())
