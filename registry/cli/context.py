"""What every command receives: the parsed arguments, the output, and a way to reach Redis."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from registry.cli.output import Output
from registry.client import Registry
from registry.keys import DEFAULT_NAMESPACE

__all__ = ["DEFAULT_URL", "Context", "redact"]

DEFAULT_URL = "redis://localhost:6379/0"
URL_ENV = "REGISTRY_REDIS_URL"
NAMESPACE_ENV = "REGISTRY_NAMESPACE"
SCRIPTS_ENV = "REGISTRY_SCRIPTS"
CONNECT_TIMEOUT = 5.0

_PASSWORD = re.compile(r"^(?P<head>[a-z+]+://[^:@/]*:)[^@/]*(?P<tail>@)")


def redact(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    return _PASSWORD.sub(r"\g<head>***\g<tail>", url)


@dataclass
class Context:
    """The parsed command line and the output of one run."""

    args: argparse.Namespace
    out: Output

    @property
    def namespace(self) -> str:
        return self.args.namespace or os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE

    @property
    def scripts(self) -> str:
        """How the Lua runs: "eval" or "functions" (``--scripts``, else ``$REGISTRY_SCRIPTS``)."""
        return getattr(self.args, "scripts", None) or os.environ.get(SCRIPTS_ENV) or "eval"

    def given_url(self) -> str | None:
        """The Redis URL from ``--redis-url`` or ``$REGISTRY_REDIS_URL``, or None."""
        return self.args.redis_url or os.environ.get(URL_ENV) or None

    @property
    def url(self) -> str:
        return self.given_url() or DEFAULT_URL

    @contextmanager
    def registry(self, url: str | None = None) -> Iterator[Registry]:
        """A one-shot client (no background watcher: every read asks Redis first)."""
        reg = Registry.from_url(
            url or self.url,
            namespace=self.namespace,
            watch=False,
            socket_connect_timeout=CONNECT_TIMEOUT,
            scripts=self.scripts,  # type: ignore[arg-type]  # checked by Registry
        )
        try:
            yield reg
        finally:
            reg.close()
