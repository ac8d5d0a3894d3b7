"""The interpreters the corpus is built with, and a pypa/build to run on each.

Each Python version of the corpus (``"3.10"``...) is found on PATH
(``python3.10``) or in pyenv's ``versions/`` folder, and asked for its full
version. The daemon gets that executable as the request's ``python``; pypa/build
must run *on* the interpreter it builds for, so each version other than the
runner's own gets a fresh virtualenv holding pypa/build and exactly the
runner's ``packaging`` (``--metadata`` prints with packaging, so the same
version prints the same JSON), installed with the run's index options.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path

from packaging.version import InvalidVersion, Version

from .frontends import IndexOptions, StepError, find_uv, run_logged, tool_environment

__all__ = ["Interpreter", "find_interpreter", "prepare_interpreter", "tool_requirements"]

_PROBE = "import platform, sys; print(platform.python_version()); print(sys.prefix)"


@dataclass(frozen=True)
class Interpreter:
    """One interpreter of the run: what the daemon builds with, what runs pypa/build."""

    label: str  # "3.10"
    executable: Path
    version: Version  # its full version, for Requires-Python
    tool_python: Path  # runs `python -m build` for this interpreter

    def __str__(self) -> str:
        return f"Python {self.version}"


def tool_requirements() -> list[str]:
    """What a pypa/build virtualenv holds: pypa/build, and the runner's own packaging."""
    return ["build>=1.4", f"packaging=={installed_version('packaging')}"]


def _probe(executable: str) -> Version | None:
    try:
        done = subprocess.run(
            [executable, "-I", "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except OSError:
        return None
    if done.returncode != 0:  # e.g. a pyenv shim of a version not enabled
        return None
    try:
        return Version(done.stdout.splitlines()[0])
    except (InvalidVersion, IndexError):
        return None


def find_interpreter(label: str) -> tuple[Path, Version] | None:
    """The executable and full version of Python ``label`` ("3.10"), or None."""
    wanted = tuple(int(part) for part in label.split("."))
    if sys.version_info[:2] == wanted:
        return Path(sys.executable), Version(".".join(map(str, sys.version_info[:3])))
    candidates: list[str] = []
    found = shutil.which(f"python{label}")
    if found:
        candidates.append(found)
    root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    newest_first = sorted(
        glob.glob(os.path.join(root, "versions", f"{label}.*", "bin", f"python{label}")),
        key=lambda p: _patch(Path(p).parents[1].name),
        reverse=True,
    )
    candidates += newest_first
    for candidate in candidates:
        version = _probe(candidate)
        if version is not None and version.release[:2] == wanted:
            return Path(candidate), version
    return None


def _patch(name: str) -> tuple[int, ...]:
    try:
        return Version(name).release
    except InvalidVersion:
        return ()


def prepare_interpreter(label: str, index: IndexOptions, workroot: Path) -> Interpreter:
    """Python ``label`` with a pypa/build to run on it; StepError when it cannot be had."""
    found = find_interpreter(label)
    if found is None:
        raise StepError(f"Python {label} not found on PATH (python{label}) or in pyenv")
    executable, version = found
    if executable == Path(sys.executable):
        return Interpreter(label, executable, version, executable)
    venv = workroot / f"pypa-build-{label}"
    log = workroot / f"pypa-build-{label}.log"
    shutil.rmtree(venv, ignore_errors=True)
    uv = find_uv()
    env = tool_environment(index, workroot / f"pypa-build-{label}-config")
    run_logged([uv, "venv", "--python", str(executable), str(venv)], log, env=env)
    python = venv / "bin" / "python"
    run_logged([uv, "pip", "install", "--python", str(python), *tool_requirements()], log, env=env)
    return Interpreter(label, executable, version, python)
