"""A batch job that spreads its work over models with ``route``: the cheapest that has room now.

Eighty documents are summarised by whichever of three paid chat models is cheapest *and* has
room in its limits at that moment. Claude Haiku 4.5 is cheapest, but allows 50 requests,
50,000 input tokens and 10,000 output tokens a minute; once a window is full, ``route`` falls
back to GPT-5.2 without waiting, and the ledger shows where the work (and the money) went. No
provider is called: ``summarise`` stands for your SDK call and answers with plausible token
counts.

    python examples/batch_route.py            # private Redis
    REGISTRY_REDIS_URL=redis://... python examples/batch_route.py
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter

sys.path.insert(0, __file__.rsplit("/", 1)[0])  # examples/common.py, when run as a script

from common import open_registry, redis_url

from registry import Registry

CANDIDATES = ["anthropic:claude-haiku-4-5", "openai:gpt-5.2", "openai:gpt-5.5"]
DOCUMENTS = 80


def summarise(model_key: str, prompt_tokens: int, rng: random.Random) -> tuple[int, int]:
    """Stands for the provider call: (input tokens billed, output tokens produced)."""
    return prompt_tokens, rng.randint(150, 400)


def run(reg: Registry, documents: int = DOCUMENTS, seed: int = 7) -> Counter[str]:
    rng = random.Random(seed)
    used: Counter[str] = Counter()
    for n in range(documents):
        prompt = rng.randint(800, 3_000)
        while True:
            route = reg.route(
                input_tokens=prompt,
                max_output_tokens=400,
                capability="chat",
                candidates=CANDIDATES,
                max_cost="0.02",  # dollars per document, at most
                tenant="batch",
                request_id=f"doc-{n}",  # a retried document is admitted once
            )
            if route.decision.allowed:
                break
            # Every candidate is full: wait for the first one to have room.
            time.sleep(route.decision.retry_after)
        billed_in, produced = summarise(route.model_key, prompt, rng)
        reg.settle(route.decision.reservation, billed_in, produced)
        used[route.model_key] += 1
    return used


def main() -> int:
    with redis_url() as url:
        reg = open_registry(url, namespace=f"example-batch-{int(time.time())}")
        try:
            used = run(reg)
            stats = reg.get_statistics(tenant="batch")
            print(f"{DOCUMENTS} documents:")
            for key, count in used.most_common():
                spent = stats.by_model[key].total_cost
                print(f"  {key:32} {count:3} documents  ${spent}")
            print(f"  {'total':32} {stats.requests:3} requests   ${stats.total_cost}")
        finally:
            reg.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
