"""A private Redis Cluster on loopback, for tests, the soak and ``registry demo --cluster``.

:func:`start_cluster` runs ``primaries * (1 + replicas)`` ``redis-server --cluster-enabled yes``
processes on free ports (no persistence, each in its own directory), joins them with
``redis-cli --cluster create`` and waits until every node agrees the cluster is ``ok``. The
caller gets a ``redis+cluster://`` URL and handles to kill, restart and fail over nodes.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from registry.embedded import redis_server_path, terminate, wait_ready

__all__ = ["EmbeddedCluster", "RedisProcess", "start_cluster"]


def _free_cluster_port() -> int:
    """A free port whose cluster-bus twin (port + 10000) is free too, so both below 65536."""
    for _ in range(200):
        port = random.randint(20_000, 50_000)
        try:
            for p in (port, port + 10_000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")  # pragma: no cover


@dataclass
class RedisProcess:
    """One ``redis-server`` (a cluster node unless ``cluster=False``) that keeps its port and
    directory across restarts, so that tests can kill it and bring it back as it was."""

    port: int
    workdir: Path
    executable: str
    cluster: bool = True
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def single(cls, workdir: Path, *extra_args: str) -> RedisProcess:
        """A plain (non-cluster) server on a free port in ``workdir``, not started yet."""
        executable = redis_server_path()
        if executable is None:
            raise FileNotFoundError("redis-server is not on PATH")
        return cls(_free_cluster_port(), workdir, executable, cluster=False, extra_args=extra_args)

    @property
    def url(self) -> str:
        return f"redis://{self.address}/0"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=5)

    def start(self) -> None:
        args = [
            self.executable,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--logfile",
            "redis.log",
            "--daemonize",
            "no",
        ]
        if self.cluster:
            # node timeout in ms: a dead primary is failed over within a few seconds
            args += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
            ]
        args += self.extra_args
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(self.url, self.process, 20.0)

    def kill(self) -> None:
        """SIGKILL: the node dies as a crashed machine would, with no goodbye to its peers."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
            self.process = None

    def role(self) -> str:
        with self.client() as client:
            return str(client.execute_command("ROLE")[0])


@dataclass
class EmbeddedCluster:
    """A running cluster: its ``url`` (``redis+cluster://`` naming every node) and its nodes."""

    nodes: list[RedisProcess]
    version: str
    replicas: int = 1  # per primary: wait_ok waits until each range has this many
    _dir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """Every node as a seed: a client still connects while any one of them is down."""
        return "redis+cluster://" + ",".join(n.address for n in self.nodes)

    @property
    def kind(self) -> str:
        return "redis-cluster"

    @property
    def description(self) -> str:
        primaries = sum(1 for n in self.nodes if n.process is not None and n.role() == "master")
        return f"private Redis Cluster {self.version}, {len(self.nodes)} nodes ({primaries} primaries) at {self.url}"

    def primaries(self) -> list[RedisProcess]:
        return [n for n in self.nodes if n.process is not None and n.role() == "master"]

    def node_of(self, key: str) -> RedisProcess:
        """The primary that holds ``key``'s slot now."""
        with self.nodes_alive()[0].client() as client:
            slot = int(client.execute_command("CLUSTER KEYSLOT", key))
            for start, end, primary, *_ in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    port = int(primary[1])
                    return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no node serves slot {slot}")  # pragma: no cover

    def nodes_alive(self) -> list[RedisProcess]:
        return [n for n in self.nodes if n.process is not None]

    def wait_ok(self, timeout: float = 60.0, *, replicas: bool = True) -> None:
        """Until every live node says ``cluster_state:ok`` and they agree on the slots' owners
        (and, with ``replicas``, every primary has its replicas again)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._agreed(self.replicas if replicas else 0):
                    return
            except redis.exceptions.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not become ok in time")
            time.sleep(0.1)

    def _agreed(self, replicas: int) -> bool:
        owners = set()
        most_replicas: dict[tuple[int, int], int] = {}
        for node in self.nodes_alive():
            with node.client() as client:
                if client.cluster("INFO").get("cluster_state") != "ok":
                    return False
                slots = client.execute_command("CLUSTER SLOTS")
                owners.add(tuple(sorted((s, e, int(p[1])) for s, e, p, *_ in slots)))
                for s, e, _p, *r in slots:
                    most_replicas[(s, e)] = max(most_replicas.get((s, e), 0), len(r))
        if len(owners) != 1:
            return False
        (view,) = owners
        covered = sum(e - s + 1 for s, e, _ in view) == 16384
        return covered and all(most_replicas.get((s, e), 0) >= replicas for s, e, _ in view)

    def flushall(self) -> None:
        """Empty every primary (their replicas follow)."""
        for node in self.primaries():
            with node.client() as client:
                client.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> EmbeddedCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_cluster(primaries: int = 3, replicas: int = 1) -> EmbeddedCluster:
    """Start and join a cluster of ``primaries`` primaries with ``replicas`` replicas each."""
    executable = redis_server_path()
    cli = shutil.which("redis-cli")
    if executable is None or cli is None:
        raise FileNotFoundError("a cluster needs redis-server and redis-cli on PATH")
    root = tempfile.TemporaryDirectory(prefix="registry-cluster-")
    nodes: list[RedisProcess] = []
    cluster = EmbeddedCluster(nodes, "?", replicas, _dir=root)
    try:
        for i in range(primaries * (1 + replicas)):
            workdir = Path(root.name) / f"node{i}"
            workdir.mkdir()
            node = RedisProcess(_free_cluster_port(), workdir, executable)
            node.start()
            nodes.append(node)
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(n.address for n in nodes),
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        cluster.wait_ok()
        with nodes[0].client() as client:
            cluster.version = str(client.info("server")["redis_version"])
        return cluster
    except BaseException:
        cluster.stop()
        raise
