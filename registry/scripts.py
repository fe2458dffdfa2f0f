"""The Lua scripts, read once from ``lua/`` and addressed by name."""

from __future__ import annotations

import hashlib
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
    source = path.read_text(encoding="utf-8")
    return LuaScript(name, source, hashlib.sha1(source.encode()).hexdigest())


def names() -> list[str]:
    """Every script shipped, by name."""
    return sorted(p.stem for p in lua_dir().glob("*.lua"))
