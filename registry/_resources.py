"""Find files shipped beside the package: ``lua/`` and the default config.

An installed wheel carries them inside the package (``registry/lua``, ``registry/data``; see
``[tool.hatch.build.targets.wheel.force-include]``). An editable install or a checkout imports
``registry/`` from the repository, where they live at the top level (``lua/``, ``config/``).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

__all__ = ["data_file", "lua_dir"]

_PACKAGE = Path(__file__).resolve().parent


def _first_existing(*candidates: Path) -> Path:
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise FileNotFoundError("registry's data files are missing; looked in " + ", ".join(str(c) for c in candidates))


@cache
def lua_dir() -> Path:
    """The folder of the Lua scripts."""
    return _first_existing(_PACKAGE / "lua", _PACKAGE.parent / "lua")


def data_file(name: str) -> Path:
    """A file of the default config (``models.json``, ``models.schema.json``)."""
    return _first_existing(_PACKAGE / "data" / name, _PACKAGE.parent / "config" / name)
