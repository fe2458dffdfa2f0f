"""A private Redis for tests and for ``registry demo`` when no Redis URL is given.

:func:`start` runs ``redis-server`` on a free loopback port with no persistence when it is on
PATH; otherwise, if fakeredis is installed, an in-process fakeredis server speaking the Redis
protocol on a free port. Either way the caller gets a ``redis://`` URL, so everything else in
the library, the tests and other processes talk to it the same way.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

__all__ = ["EmbeddedRedis", "free_port", "redis_server_path", "start", "start_tls_redis_server"]


def redis_server_path() -> str | None:
    """Where ``redis-server`` is, or None."""
    return shutil.which("redis-server")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedRedis:
    """A running private server: ``url``, what ``kind`` it is, and :meth:`stop`."""

    url: str
    kind: str  # "redis-server" or "fakeredis"
    version: str
    _process: subprocess.Popen[bytes] | None = None
    _fake: Any = None
    _thread: threading.Thread | None = None
    _dir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def description(self) -> str:
        if self.kind == "redis-server":
            return f"private redis-server {self.version} at {self.url}"
        return f"in-process fakeredis server at {self.url} (no redis-server on PATH)"

    def stop(self) -> None:
        if self._process is not None:
            terminate(self._process)
            self._process = None
        if self._fake is not None:
            self._fake.shutdown()
            self._fake.server_close()
            self._fake = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM and wait (a clean shutdown); SIGKILL if it takes more than 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - a wedged server
        process.kill()
        process.wait()


def wait_ready(url: str, process: subprocess.Popen[bytes] | None, timeout: float, **options: Any) -> str:
    """Until the server at ``url`` answers PING (or ``process`` exits: RuntimeError); its version."""
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, decode_responses=True, **options)
    try:
        while True:
            try:
                client.ping()
            except redis.exceptions.ConnectionError:
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with code {process.returncode}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
                continue
            try:
                return str(client.info("server").get("redis_version", "?"))
            except redis.exceptions.ResponseError:  # fakeredis has no INFO
                import fakeredis

                return f"fakeredis {fakeredis.__version__}"
    finally:
        client.close()


def start_redis_server(*extra_args: str, executable: str | None = None, timeout: float = 20.0) -> EmbeddedRedis:
    """Start ``redis-server`` on a free port: loopback only, no RDB, no AOF, in a temp dir."""
    return _start(executable, extra_args, timeout, None)


def start_tls_redis_server(
    cert: str | Path,
    key: str | Path,
    ca: str | Path,
    *extra_args: str,
    probe: Mapping[str, Any] | None = None,
    executable: str | None = None,
    timeout: float = 20.0,
) -> EmbeddedRedis:
    """Start ``redis-server`` speaking only TLS (``--port 0 --tls-port <free port>``); its URL is ``rediss://``.

    The server presents ``cert`` (private key ``key``) and checks client certificates against ``ca``;
    it asks clients for one only if ``extra_args`` say ``--tls-auth-clients yes``. It is ready when a
    client made with ``probe``, redis-py's TLS options (default ``ssl_ca_certs=ca``), gets an answer.
    A redis-server built without TLS does not start: ``RuntimeError``, with what it printed.
    """
    tls_args = (
        *("--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca)),
        *("--tls-auth-clients", "no"),
    )
    options = dict(probe) if probe is not None else {"ssl_ca_certs": str(ca)}
    return _start(executable, (*tls_args, *extra_args), timeout, options)


def _start(
    executable: str | None, extra_args: tuple[str, ...], timeout: float, tls_probe: dict[str, Any] | None
) -> EmbeddedRedis:
    executable = executable or redis_server_path()
    if executable is None:
        raise FileNotFoundError("redis-server is not on PATH")
    workdir = tempfile.TemporaryDirectory(prefix="registry-redis-")
    try:
        return _start_in(executable, workdir, extra_args, timeout, tls_probe)
    except BaseException:
        workdir.cleanup()
        raise


def _start_in(
    executable: str,
    workdir: tempfile.TemporaryDirectory[str],
    extra_args: tuple[str, ...],
    timeout: float,
    tls_probe: dict[str, Any] | None = None,
) -> EmbeddedRedis:
    failure: Exception | None = None
    stderr_path = Path(workdir.name) / "redis.stderr"  # what it says before its log is open: config errors
    for _attempt in range(5):
        port = free_port()
        listen = ["--port", str(port)] if tls_probe is None else ["--port", "0", "--tls-port", str(port)]
        args = [
            executable,
            *listen,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir.name,
            "--daemonize",
            "no",
            "--logfile",
            str(Path(workdir.name) / "redis.log"),
            *extra_args,
        ]
        with stderr_path.open("wb") as stderr:
            process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr)
        url = f"{'redis' if tls_probe is None else 'rediss'}://127.0.0.1:{port}/0"
        try:
            version = wait_ready(url, process, timeout, **(tls_probe or {}))
        except RuntimeError as exc:
            failure = exc  # most likely the port was taken between free_port() and bind: try another
            continue
        except BaseException:
            process.kill()  # it never became ready: do not leave it running
            process.wait()
            raise
        return EmbeddedRedis(url, "redis-server", version, _process=process, _dir=workdir)
    said = " ".join(stderr_path.read_text(errors="replace").split())[-500:] if stderr_path.exists() else ""
    raise RuntimeError(f"could not start redis-server on a free port: {failure}{': ' + said if said else ''}")


def start_fakeredis() -> EmbeddedRedis:
    """An in-process fakeredis server (with Lua, through lupa) on a free port."""
    try:
        import fakeredis
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "no redis-server on PATH and fakeredis is not installed: install redis-server, "
            "or pip install 'fakeredis[lua]', or pass --redis-url"
        ) from exc
    port = free_port()
    server = fakeredis.TcpFakeServer(("127.0.0.1", port), server_type="redis", server_version=(7, 0))
    thread = threading.Thread(target=server.serve_forever, name="fakeredis", daemon=True)
    thread.start()
    url = f"redis://127.0.0.1:{port}/0"
    version = wait_ready(url, None, 10.0)
    return EmbeddedRedis(url, "fakeredis", version, _fake=server, _thread=thread)


def start(*, prefer: str = "redis-server") -> EmbeddedRedis:
    """A private server: ``redis-server`` if it is on PATH, else fakeredis."""
    if prefer == "redis-server" and redis_server_path() is not None:
        return start_redis_server()
    return start_fakeredis()
