"""Warnings about a project's ``pyproject.toml``: what is ignored, and was probably meant.

A ``[build_sytem]`` table is no ``[build-system]``: PEP 517 then says to build
with the default backend, which builds ``UNKNOWN-0.0.0`` or fails far from the
cause. pypa/build warns about such near misses ("Found 'build_sytem' in
pyproject.toml, did you mean 'build-system'?", the same 0.8 similarity of
difflib), and so does the daemon, as warning events the request carries on
after. pypa/build refuses unknown ``[build-system]`` keys outright; PEP 518
reserves them for future PEPs, so the daemon warns and goes on.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

from ..events import BuildWarning

__all__ = ["BUILD_SYSTEM_KEYS", "TOP_LEVEL_TABLES", "near_miss", "pyproject_warnings"]

# Top-level tables defined by PEP 518 (build-system, tool), PEP 621 (project)
# and PEP 735 (dependency-groups).
TOP_LEVEL_TABLES = ("build-system", "project", "tool", "dependency-groups")
# The keys of [build-system] that PEP 518 and PEP 517 define.
BUILD_SYSTEM_KEYS = ("requires", "build-backend", "backend-path")
# pypa/build's threshold: difflib.SequenceMatcher(None, expected, found).ratio().
SIMILARITY = 0.8


def near_miss(found: str, known: Iterable[str]) -> str | None:
    """The known name ``found`` is probably a misspelling of, if any (the closest one)."""
    best: tuple[float, str] | None = None
    for name in known:
        if name == found:
            return None
        ratio = difflib.SequenceMatcher(None, name, found).ratio()
        if ratio >= SIMILARITY and (best is None or ratio > best[0]):
            best = (ratio, name)
    return None if best is None else best[1]


def pyproject_warnings(data: Mapping[str, object], where: str) -> list[BuildWarning]:
    """Near-miss top-level tables and unknown ``[build-system]`` keys, in file order."""
    found: list[BuildWarning] = []
    for key in data:
        if key in TOP_LEVEL_TABLES:
            continue
        meant = near_miss(key, TOP_LEVEL_TABLES)
        if meant is not None and meant not in data:
            found.append(_near(where, key, meant))
    table = data.get("build-system")
    if isinstance(table, Mapping):
        for key in table:
            if key in BUILD_SYSTEM_KEYS:
                continue
            field = f"build-system.{key}"
            meant = near_miss(key, BUILD_SYSTEM_KEYS)
            if meant is not None and meant not in table:
                found.append(_near(where, field, f"build-system.{meant}"))
            else:
                found.append(
                    BuildWarning(
                        "unknown_key",
                        f"Unknown key '{key}' in [build-system] of {where} (PEP 518 defines "
                        f"only {', '.join(BUILD_SYSTEM_KEYS)}): ignored",
                        path=where,
                        field=field,
                    )
                )
    return found


def _near(where: str, field: str, meant: str) -> BuildWarning:
    return BuildWarning(
        "near_miss",
        f"Found '{field}' in {where}, did you mean '{meant}'? It is ignored",
        path=where,
        field=field,
        suggestion=meant,
    )
