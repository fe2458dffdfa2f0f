"""A TCP proxy in front of Redis that loses one reply: the test double of a flaky network.

The command is carried out by Redis; only its reply never reaches the client, whose
connection is closed instead. redis-py then sends the very same command again on a new
connection (its own retry), which is how a reply gets lost in production: a timeout or a
reset after the server did the work.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class LossyProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``; for each of ``triggers`` (bytes), drops the
    reply to the first command that contains it, closing that client connection instead."""

    def __init__(self, upstream: tuple[str, int], *triggers: bytes) -> None:
        self.upstream = upstream
        self._pending = set(triggers)
        self.dropped = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._sockets += [client, server]
            armed = threading.Event()
            threading.Thread(target=self._requests, args=(client, server, armed), daemon=True).start()
            threading.Thread(target=self._replies, args=(server, client, armed), daemon=True).start()

    def _requests(self, client: socket.socket, server: socket.socket, armed: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                with self._lock:
                    hit = next((t for t in self._pending if t in data), None)
                    if hit is not None:
                        self._pending.discard(hit)
                        self.dropped += 1
                        armed.set()
                server.sendall(data)
        except OSError:
            pass
        _close(client, server)

    def _replies(self, server: socket.socket, client: socket.socket, armed: threading.Event) -> None:
        try:
            while data := server.recv(65536):
                if armed.is_set():  # the reply to the triggering command: lost
                    break
                client.sendall(data)
        except OSError:
            pass
        _close(client, server)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            _close(*self._sockets)

    def __enter__(self) -> LossyProxy:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def _close(*sockets: socket.socket) -> None:
    for s in sockets:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()
