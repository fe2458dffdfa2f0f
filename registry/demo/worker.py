"""One demo worker process: it behaves like an inference worker and logs what it saw.

Each request: pick a tenant and a model (weighted), acquire with a realistic prompt and max
output; when refused, wait ``retry_after`` and ask once more if that is short, else fall back
to another model; when admitted, "call" the model (sleep a simulated latency), then settle
what it really used (an output of at most the max; sometimes a failure). Now and then the
worker sends something twice, as a client retrying after a lost reply does (an acquire, a
settle, a ``record_usage`` with the same request id), and a *mortal* worker exits between
acquire and settle after a random number of admissions. The price of every request is
computed here, from the catalog's prices, not read from the ledger.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, TypeVar

from registry.client import Registry
from registry.demo import scenario as sc
from registry.errors import BackendError, RequestTooLargeError
from registry.ledger.money import to_units

__all__ = ["DIE_EXIT_CODE", "WorkerSpec", "run"]

DIE_EXIT_CODE = 75  # a worker that died on purpose; anything else non-zero is a crash
WAIT_CAP = 1.0  # a refusal whose retry_after is at most this is waited out, once
FAULT_RETRY_S = 15.0  # how long a call is sent again (same request id) while Redis is away
FAIL_RATE = 0.06
RECORD_RATE = 0.08  # requests reported with record_usage instead of acquire/settle
DUP_ACQUIRE, DUP_SETTLE, DUP_RECORD = 0.03, 0.05, 0.5
T = TypeVar("T")


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process is given (picklable, for the spawn start method)."""

    name: str
    url: str
    namespace: str
    scenario: sc.Scenario
    log_path: str
    seed: int
    mortal: bool


class Worker:
    def __init__(self, spec: WorkerSpec, reg: Registry, log: IO[str]) -> None:
        self.spec = spec
        self.reg = reg
        self.log_file = log
        self.rng = random.Random(spec.seed)
        self.lifetime = self.rng.randint(*spec.scenario.lifetime) if spec.mortal else None
        self.sent = 0
        self.admitted = 0
        scenario = spec.scenario
        self.tenants = [t.name for t in scenario.tenants]
        self.tenant_weights = [t.weight for t in scenario.tenants]
        self.unbudgeted = [t.name for t in scenario.tenants if t.budget is None]

    def log(self, event: str, **fields: Any) -> None:
        self.log_file.write(json.dumps({"e": event, **fields}, separators=(",", ":")) + "\n")
        self.log_file.flush()

    def loop(self, deadline: float) -> None:
        interval = self.spec.scenario.workers / self.spec.scenario.rps
        next_at = time.time() + self.rng.uniform(0, interval)
        while True:
            now = time.time()
            if now >= deadline:
                break
            if next_at > now:
                time.sleep(min(next_at, deadline) - now)
                continue
            next_at = max(next_at + interval, now - 1.0)  # catch up, but never in a burst
            try:
                if self.rng.random() < RECORD_RATE:
                    self.report()
                else:
                    self.request(deadline)
            except BackendError as exc:  # the fleet goes on; the verdict counts it
                self.log("error", what=f"{type(exc).__name__}: {exc}")
                time.sleep(0.1)
        self.log("done")

    # -- one request --------------------------------------------------------------------------

    def _shape(self, model: str) -> tuple[int, int]:
        prompt = int(self.rng.lognormvariate(0, sc.INPUT_SIGMA) * sc.INPUT_MEDIAN)
        prompt = min(max(prompt, sc.INPUT_MIN), sc.INPUT_MAX)
        max_output = self.rng.choice(sc.MAX_OUTPUTS)
        cap = self.reg.get_model(model).max_output_tokens
        return prompt, min(max_output, cap) if cap else max_output

    def request(self, deadline: float) -> None:
        scenario = self.spec.scenario
        tenant = self.rng.choices(self.tenants, self.tenant_weights)[0]
        model: str | None = self.rng.choices(scenario.models, scenario.weights)[0]
        self.sent += 1
        request_id = f"{self.spec.name}-{self.sent}"
        tried: list[str] = []
        while model is not None and model not in tried:
            tried.append(model)
            prompt, max_output = self._shape(model)
            if self._try(model, tenant, request_id, prompt, max_output, deadline):
                return
            model = scenario.fallback(model)
        self.log("rejected", t=tenant)

    def _try(self, model: str, tenant: str | None, request_id: str, prompt: int, max_output: int, end: float) -> bool:
        """Acquire on ``model`` (waiting once for a short retry_after), then call and settle."""
        for attempt in range(2):
            try:
                decision = self._retrying(
                    lambda: self.reg.acquire(model, prompt, max_output, tenant=tenant, request_id=request_id)
                )
            except RequestTooLargeError as exc:
                self.log("deny", m=model, t=tenant, by=exc.limit, after=None, wait=False)
                return False
            if decision.allowed:
                break
            by = decision.denied_by or "?"
            # Short waits: a window's oldest bucket about to leave (runs past a minute), or a
            # budget's holds in flight that may come back below their estimates (1 s).
            wait = attempt == 0 and decision.retry_after <= WAIT_CAP and time.time() + decision.retry_after < end
            self.log("deny", m=model, t=tenant, by=by, after=decision.retry_after, wait=wait)
            if not wait:
                return False
            time.sleep(decision.retry_after)
        else:
            return False
        reservation = decision.reservation
        assert reservation is not None
        self.log("admit", m=model, t=tenant, id=request_id, ms=decision.server_ms, **{"in": prompt, "max": max_output})
        self.admitted += 1
        if self.rng.random() < DUP_ACQUIRE:  # the reply was "lost": ask again under the same id
            again = self._retrying(
                lambda: self.reg.acquire(model, prompt, max_output, tenant=tenant, request_id=request_id)
            )
            self.log("dup", kind="acquire", m=model, id=request_id, caught=again.allowed and again.duplicate)
        latency = self.rng.uniform(10, 40)
        if self.lifetime is not None and self.admitted >= self.lifetime:
            time.sleep(latency / 2000)
            self.log("die", m=model, id=request_id)
            os._exit(DIE_EXIT_CODE)  # mid-call, reservation held, nothing settled
        ok = self.rng.random() >= FAIL_RATE
        # A success uses up to its max output; a failure was cut off: some output or none, billed.
        output = self.rng.randint(max(1, max_output // 8), max_output) if ok else self.rng.randint(0, max_output // 4)
        latency += output * 0.04
        time.sleep(latency / 1000)
        settle = lambda: self.reg.settle(reservation, prompt, output, success=ok, latency_ms=latency)  # noqa: E731
        counted = self._once(settle, duplicate=lambda result: result is False)
        self._usage("settle", model, tenant, request_id, prompt, output, ok, counted)
        if self.rng.random() < DUP_SETTLE:
            self.log("dup", kind="settle", m=model, id=request_id, caught=self._retrying(settle) is False)
        return True

    def report(self) -> None:
        """A request the worker does not reserve (a batch job's): its usage, sent afterwards."""
        scenario = self.spec.scenario
        model = self.rng.choices(scenario.models, scenario.weights)[0]
        # Tenants without budgets only: a record is not admitted, so it could pass a budget.
        tenant = self.rng.choice(self.unbudgeted)
        self.sent += 1
        request_id = f"{self.spec.name}-{self.sent}"
        prompt, max_output = self._shape(model)
        output = self.rng.randint(1, max_output)
        latency = self.rng.uniform(10, 40) + output * 0.04

        def record() -> bool:
            return self.reg.record_usage(
                model, prompt, output, success=True, latency_ms=latency, tenant=tenant, request_id=request_id
            ).recorded

        counted = self._once(record, duplicate=lambda recorded: not recorded)
        self._usage("record", model, tenant, request_id, prompt, output, True, counted)
        if self.rng.random() < DUP_RECORD:
            self.log("dup", kind="record", m=model, id=request_id, caught=not self._retrying(record))

    def _usage(
        self,
        via: str,
        model: str,
        tenant: str | None,
        request_id: str,
        prompt: int,
        output: int,
        ok: bool,
        counted: bool,
    ) -> None:
        cost = self.reg.estimate_cost(model, prompt, output)
        fields = {"in": prompt, "out": output, "ok": ok, "counted": counted, "units": to_units(cost), "cost": str(cost)}
        self.log(via, m=model, t=tenant, id=request_id, **fields)

    def _once(self, send: Callable[[], T], *, duplicate: Callable[[T], bool]) -> bool:
        """Send until an answer comes; True if it counted. When an earlier try failed without an
        answer, "a duplicate" means that try counted."""
        tries = 0

        def counted() -> T:
            nonlocal tries
            tries += 1
            return send()

        result = self._retrying(counted)
        return not duplicate(result) or tries > 1

    @staticmethod
    def _retrying(send: Callable[[], T]) -> T:
        """``send()``, sent again while Redis is away (a failover, a restart), for up to
        FAULT_RETRY_S: every call it makes is idempotent under its request id or token."""
        deadline = time.monotonic() + FAULT_RETRY_S
        while True:
            try:
                return send()
            except BackendError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def run(spec: WorkerSpec, go: Any, deadline: Any) -> None:
    """A worker process's main: connect, say ready, wait for the start, work until the deadline."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the fleet
    with (
        open(spec.log_path, "a", encoding="utf-8") as log,
        Registry.from_url(spec.url, namespace=spec.namespace) as reg,
    ):
        worker = Worker(spec, reg, log)
        reg.list_models()  # the local catalog copy, before the clock starts
        worker.log("ready", pid=os.getpid(), mortal=spec.mortal)
        go.wait()
        worker.loop(deadline.value)
