"""The Lua scripts, read once from ``lua/`` and addressed by name.

Redis scripts cannot import each other, so a fragment shared by several scripts lives once in
``lua/lib/<name>.lua`` and a script includes it with a line ``--! include <name>``, replaced
by the fragment's text when the script is loaded (and hashed: the SHA is of the whole).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache

from registry._resources import lua_dir

__all__ = ["LuaScript", "load", "names"]


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A script's name, source and SHA1 (what EVALSHA takes)."""

    name: str
    source: str
    sha: str


@cache
def load(name: str) -> LuaScript:
    """The script ``lua/<name>.lua``."""
    path = lua_dir() / f"{name}.lua"
    source = _INCLUDE.sub(_inline, path.read_text(encoding="utf-8"))
    return LuaScript(name, source, hashlib.sha1(source.encode()).hexdigest())


_INCLUDE = re.compile(r"^--! include ([a-z_]+)$", re.MULTILINE)


def _inline(match: re.Match[str]) -> str:
    return (lua_dir() / "lib" / f"{match[1]}.lua").read_text(encoding="utf-8").rstrip("\n")


def names() -> list[str]:
    """Every script shipped, by name."""
    return sorted(p.stem for p in lua_dir().glob("*.lua"))
