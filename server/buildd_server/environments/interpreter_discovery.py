"""Which interpreters the daemon can build with, and where it found each.

The same places ``resolve_interpreter`` searches for a version: the daemon's
own interpreter, ``python3``/``python3.N`` on its PATH, and pyenv's versions
folder. Every candidate is probed (``interpreters.describe``, cached by file),
unusable ones (too old, a pyenv shim of an inactive version, not a Python)
are left out, and paths that resolve to the same base interpreter are listed
once, at the first place found.
"""

from __future__ import annotations

import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import InterpreterNotFound
from .interpreters import Interpreter, _pyenv_root, _version_tuple, describe

Source = Literal["daemon", "path", "pyenv"]

_NAME = re.compile(r"python3(?:\.\d+)?")
# Probes are subprocesses that mostly wait (pyenv shims are shell scripts).
_PROBES_AT_ONCE = 8


@dataclass(frozen=True)
class FoundInterpreter:
    """An interpreter and the path and place it was found at."""

    path: str
    source: Source
    interpreter: Interpreter


def candidates() -> list[tuple[str, Source]]:
    """Every path worth probing, in listing order, without duplicates."""
    found: list[tuple[str, Source]] = [(sys.executable, "daemon")]
    for entry in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if not entry or not os.path.isabs(entry):
            continue
        try:
            names = sorted(
                (name for name in os.listdir(entry) if _NAME.fullmatch(name)),
                key=lambda name: _version_tuple(name.removeprefix("python")),
                reverse=True,
            )
        except OSError:
            continue
        found += [(os.path.join(entry, name), "path") for name in names]
    versions = _pyenv_root() / "versions"
    try:
        folders = [d for d in versions.iterdir() if d.is_dir()]
    except OSError:
        folders = []
    folders.sort(key=lambda d: (_version_tuple(d.name), d.name), reverse=True)
    for folder in folders:
        for name in ("python3", "python"):
            if (folder / "bin" / name).is_file():
                found.append((str(folder / "bin" / name), "pyenv"))
                break
    seen: set[str] = set()
    unique = []
    for path, source in found:
        if path not in seen and _is_executable(Path(path)):
            seen.add(path)
            unique.append((path, source))
    return unique


def discover_interpreters() -> list[FoundInterpreter]:
    """The usable interpreters, once per resolved base executable, in listing order."""
    paths = candidates()
    with ThreadPoolExecutor(max_workers=_PROBES_AT_ONCE, thread_name_prefix="buildd-probe") as pool:
        probed = list(pool.map(_try_describe, [path for path, _ in paths]))
    listed: list[FoundInterpreter] = []
    executables: set[str] = set()
    for (path, source), interpreter in zip(paths, probed, strict=True):
        if interpreter is None or interpreter.executable in executables:
            continue
        executables.add(interpreter.executable)
        listed.append(FoundInterpreter(path, source, interpreter))
    return listed


def _try_describe(path: str) -> Interpreter | None:
    try:
        return describe(path)
    except InterpreterNotFound:
        return None


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)
