"""The demo's fleet: worker processes (spawned), their replacements, and their logs read live.

Every worker is its own process with its own client, as in a real fleet. The workers connect
and load the catalog first; the clock starts when all of them are ready, so that a slow start
(a loaded machine, the spawn start method) takes nothing from the run. A worker that died on
purpose (:data:`~registry.demo.worker.DIE_EXIT_CODE`) is replaced while there is time left; one
that exits otherwise, or has to be stopped after the deadline, is *lost*: its log may be
incomplete, and the verdict fails.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.demo import worker
from registry.demo.evidence import Evidence, LogReader
from registry.demo.scenario import Scenario
from registry.errors import RegistryError

__all__ = ["Fleet", "FleetStatus"]

READY_TIMEOUT = 60.0  # for every worker to connect (spawning 8 interpreters on 2 cores)
RESPAWN_MIN = 1.0  # seconds the run must still have for a dead worker to be replaced
GRACE = 15.0  # after the deadline, for the workers to finish the request they are in


@dataclass
class _Slot:
    index: int
    mortal: bool
    generation: int = 0
    process: Any = None
    name: str = ""
    over: bool = False  # exited at the end, or lost


@dataclass
class FleetStatus:
    """Where the run stands (what the dashboard shows), and in the end its result."""

    duration: float
    evidence: Evidence
    started_at: float = 0.0  # time.time() of the start, 0 before
    alive: int = 0
    started: int = 0  # worker processes, replacements included
    dead: int = 0  # died on purpose
    lost: list[str] = field(default_factory=list)
    finished: bool = False

    @property
    def elapsed(self) -> float:
        if not self.started_at:
            return 0.0
        return min(time.time() - self.started_at, self.duration) if not self.finished else self.duration


class Fleet:
    """``scenario.workers`` worker processes against ``url``, logging into ``directory``."""

    def __init__(self, url: str, scenario: Scenario, directory: Path) -> None:
        self.url = url
        self.scenario = scenario
        self.directory = directory
        self._mp = multiprocessing.get_context("spawn")
        self._go = self._mp.Event()
        self._deadline = self._mp.Value("d", 0.0)
        self.reader = LogReader(directory)
        self.status = FleetStatus(scenario.duration, self.reader.evidence)
        first_mortal = scenario.workers - scenario.mortal
        self._slots = [_Slot(i, i >= first_mortal) for i in range(scenario.workers)]

    def _spawn(self, slot: _Slot) -> None:
        slot.name = f"w{slot.index}" if slot.generation == 0 else f"w{slot.index}.{slot.generation}"
        spec = worker.WorkerSpec(
            name=slot.name,
            url=self.url,
            namespace=self.scenario.namespace,
            scenario=self.scenario,
            log_path=str(self.directory / f"{slot.name}.jsonl"),
            seed=self.scenario.seed * 1_000_003 + slot.index * 1_009 + slot.generation,
            mortal=slot.mortal,
        )
        slot.process = self._mp.Process(
            target=worker.run, args=(spec, self._go, self._deadline), name=f"registry-demo-{slot.name}", daemon=True
        )
        slot.process.start()
        self.status.started += 1

    def run(self, tick: Callable[[FleetStatus], None], *, every: float = 0.5) -> FleetStatus:
        """Start, supervise until every worker is done, and return the final status."""
        try:
            for slot in self._slots:
                self._spawn(slot)
            self._wait_ready()
            self._deadline.value = time.time() + self.scenario.duration
            self.status.started_at = time.time()
            self._go.set()
            while not self._supervise():
                tick(self.status)
                time.sleep(every)
        finally:
            for slot in self._slots:
                if slot.process is not None and slot.process.is_alive():
                    slot.process.terminate()
                    slot.process.join(5)
        self.reader.poll()
        self.status.finished = True
        tick(self.status)
        return self.status

    def _wait_ready(self) -> None:
        limit = time.monotonic() + READY_TIMEOUT
        while len(self.reader.poll().ready) < len(self._slots):
            for slot in self._slots:
                if slot.process.exitcode is not None:
                    raise RegistryError(f"demo worker {slot.name} exited with code {slot.process.exitcode} at start")
            if time.monotonic() > limit:
                raise RegistryError(f"demo workers not ready after {READY_TIMEOUT:.0f} s")
            time.sleep(0.05)

    def _supervise(self) -> bool:
        """One look at every worker: replace the dead, note the lost; True when all are over."""
        self.reader.poll()
        left = self._deadline.value - time.time()
        for slot in self._slots:
            if slot.over:
                continue
            code = slot.process.exitcode
            if code is None:
                if left < -GRACE:
                    slot.process.terminate()
                    slot.process.join(5)
                    self.status.lost.append(f"{slot.name} (stopped {GRACE:.0f} s after the deadline)")
                    slot.over = True
                continue
            if code == worker.DIE_EXIT_CODE:
                self.status.dead += 1
            elif code != 0:
                self.status.lost.append(f"{slot.name} (exit code {code})")
            if code != 0 and left > RESPAWN_MIN:
                slot.generation += 1
                self._spawn(slot)
            else:
                slot.over = True
        self.status.alive = sum(1 for s in self._slots if not s.over and s.process.exitcode is None)
        return all(s.over for s in self._slots)
