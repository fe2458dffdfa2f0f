"""``python -m registry``: the command line (see :mod:`registry.cli`)."""

from __future__ import annotations

from registry.cli import main

raise SystemExit(main())
