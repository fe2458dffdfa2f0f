"""Semantic version comparison (semver 2.0.0 precedence: 1.0.0-alpha < 1.0.0-beta < 1.0.0)."""

from __future__ import annotations

import semver

from registry.errors import ConfigError

__all__ = ["compare_versions", "parse_version"]


def parse_version(value: str) -> semver.Version:
    """Parse ``value`` as a semantic version, raising :class:`ConfigError` if it is not one."""
    try:
        return semver.Version.parse(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{value!r} is not a semantic version") from exc


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` sorts before, equal to or after ``b``; build metadata is ignored."""
    return parse_version(a).compare(parse_version(b))
