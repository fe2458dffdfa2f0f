"""A worker that calls OpenAI through the wrapped SDK client: every call under the fleet's quota.

Two lines put an existing worker under the fleet's limits: ``wrap`` the ``OpenAI`` client with a
``Registry``, and catch ``RateLimitedError`` (or pass ``wait=True`` to wait instead). Here one
tenant may send 5 requests a minute to gpt-5.2; the worker sends 8, and the ledger then holds
exactly the usage the provider reported for the 5 it sent.

With ``OPENAI_API_KEY`` set it calls OpenAI itself (``OPENAI_BASE_URL`` for a compatible
server); without, a fake provider on loopback answers (``registry.fake_provider``).

    python examples/openai_worker.py
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

sys.path.insert(0, __file__.rsplit("/", 1)[0])  # examples/common.py, when run as a script

from common import open_registry, redis_url
from openai import OpenAI

from registry import RateLimitedError
from registry.fake_provider import FakeProvider
from registry.integrations import openai as metered

MODEL = "gpt-5.2"  # the catalog key is openai:gpt-5.2 (the default mapping)
TENANT = "acme"


@contextmanager
def openai_client() -> Iterator[OpenAI]:
    """OpenAI itself when a key is set, else a fake provider for the length of the block."""
    if os.environ.get("OPENAI_API_KEY"):
        yield OpenAI()
        return
    with FakeProvider() as fake:
        print(f"(no OPENAI_API_KEY: a fake provider at {fake.openai_url} answers)")
        yield OpenAI(base_url=fake.openai_url, api_key="sk-fake", max_retries=0)


def main() -> int:
    with redis_url() as url, openai_client() as sdk:
        reg = open_registry(url, namespace=f"example-worker-{int(time.time())}")
        try:
            # The fleet's rule for this run: each tenant 5 requests a minute on gpt-5.2.
            reg.update_model(f"openai:{MODEL}", {"tenant_limits": {"*": {"requests_per_minute": 5}}})
            client = metered.wrap(sdk, reg, tenant=TENANT)  # same interface as the OpenAI client
            for n in range(1, 9):
                try:
                    reply = client.chat.completions.create(
                        model=MODEL,
                        messages=[{"role": "user", "content": f"Say hello to request {n}"}],
                        max_completion_tokens=50,
                    )
                except RateLimitedError as refused:  # sent nothing to the provider
                    print(f"request {n}: refused by {refused.denied_by}, retry after {refused.retry_after:.1f} s")
                    continue
                used = f"{reply.usage.prompt_tokens}+{reply.usage.completion_tokens} tokens"
                print(f"request {n}: {reply.choices[0].message.content!r} ({used})")
            stats = reg.get_statistics(model=f"openai:{MODEL}", tenant=TENANT)
            print(
                f"ledger for {TENANT} on openai:{MODEL}: {stats.requests} requests, "
                f"{stats.input_tokens} input + {stats.output_tokens} output tokens, ${stats.total_cost}"
            )
        finally:
            reg.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
