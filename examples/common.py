"""What the examples share: a Redis to run against, and the catalog loaded into it.

``REGISTRY_REDIS_URL`` names the fleet's Redis; without it an example starts a private one
(``redis-server`` if installed, else fakeredis), as ``registry demo`` does, and stops it at
the end. Each example works in a namespace of its own, so it never touches a fleet's keys.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from registry import Registry, embedded

CONFIG = Path(__file__).resolve().parent.parent / "config" / "models.json"


@contextmanager
def redis_url() -> Iterator[str]:
    """``REGISTRY_REDIS_URL``, or a private server for the length of the block."""
    url = os.environ.get("REGISTRY_REDIS_URL")
    if url:
        yield url
        return
    server = embedded.start()
    print(f"(no REGISTRY_REDIS_URL: a private {server.kind} {server.version} at {server.url})")
    try:
        yield server.url
    finally:
        server.stop()


def open_registry(url: str, namespace: str) -> Registry:
    """A client in ``namespace``, with config/models.json loaded (a no-op when it already is)."""
    reg = Registry.from_url(url, namespace=namespace)
    reg.load_config(CONFIG)
    return reg
