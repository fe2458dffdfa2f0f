"""``registry demo``: a fleet of worker processes against one Redis, and a verdict at the end.

- :mod:`~registry.demo.scenario` picks the models, tightens their limits to this run, and names
  the tenants and their budgets; :func:`~registry.demo.scenario.install` writes all of it into
  a namespace of its own.
- :mod:`~registry.demo.worker` is one worker process: acquire, "call" the model, settle, now
  and then fail, retry a send or die; every step goes to the worker's own log.
- :mod:`~registry.demo.fleet` starts the workers, replaces those that die and reads their logs
  as they grow; :mod:`~registry.demo.dashboard` shows where the run stands.
- :mod:`~registry.demo.evidence` turns the logs into facts, and :mod:`~registry.demo.verdict`
  checks them against the limits and the ledger (no I/O: unit-tested on hand-made logs).
"""

from __future__ import annotations
