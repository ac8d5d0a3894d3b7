"""Reading a source tree's build declaration (sdists are unpacked by archives.py).

Every error names the path and, for pyproject.toml, the field and value at
fault, because the message is all a remote client gets to fix its input.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.requirements import InvalidRequirement, Requirement

from buildd_server.archives import unpack_sdist
from buildd_server.errors import (
    InvalidProject,
    InvalidRequest,
    SourceNotFound,
    SourceUnreadable,
)
from buildd_server.lint import pyproject_warnings

__all__ = [
    "DEFAULT_BACKEND",
    "DEFAULT_REQUIRES",
    "Project",
    "is_sdist",
    "load_project",
    "unpack_sdist",
]
if TYPE_CHECKING:
    from buildd_server.events import BuildWarning

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    # The dev venv runs 3.11+, so mypy's 3.10 view may not find tomli there.
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

# PEP 517: a project without build-backend is built the way pip always did.
DEFAULT_REQUIRES = ("setuptools>=40.8.0",)
DEFAULT_BACKEND = "setuptools.build_meta:__legacy__"

_FINGERPRINT_FILES = ("pyproject.toml", "setup.py", "setup.cfg", "PKG-INFO")

_BadFactory = Callable[[str, str], InvalidProject]


@dataclass(frozen=True)
class Project:
    """A project directory and its ``[build-system]`` declaration."""

    root: Path
    pyproject: Path | None
    requires: tuple[str, ...]
    backend: str
    backend_path: tuple[str, ...]
    # What pyproject.toml holds that is ignored and probably misspelt (lint.py).
    warnings: tuple[BuildWarning, ...] = field(default=(), compare=False)

    def fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        """(name, mtime_ns, size) of the files that declare how to build; changes on edit."""
        found: list[tuple[str, int, int]] = []
        for name in _FINGERPRINT_FILES:
            try:
                st = os.stat(self.root / name)
            except (FileNotFoundError, NotADirectoryError):
                continue
            found.append((name, st.st_mtime_ns, st.st_size))
        return tuple(found)


def load_project(path: str) -> Project:
    """Read the project at the absolute directory ``path``."""
    if not path or not os.path.isabs(path) or "\0" in path:
        raise InvalidRequest(f"source.path: {path!r} is not an absolute path")
    try:
        st = os.stat(path)
    except PermissionError as exc:
        raise SourceUnreadable(f"{path}: permission denied", path=path) from exc
    except OSError as exc:
        reason = "symlink loop" if exc.errno == errno.ELOOP else "does not exist"
        raise SourceNotFound(f"{path}: {reason} ({exc.strerror})", path=path) from exc
    if not stat.S_ISDIR(st.st_mode):
        what = "an sdist archive; unpack it first" if is_sdist(Path(path)) else "a file"
        raise SourceNotFound(f"{path}: is {what}, not a project directory", path=path)
    root = Path(os.path.realpath(path))
    try:
        names = set(os.listdir(root))
    except PermissionError as exc:
        raise SourceUnreadable(f"{root}: permission denied", path=str(root)) from exc
    except OSError as exc:
        raise SourceNotFound(f"{root}: cannot be listed: {exc.strerror}", path=str(root)) from exc
    if "pyproject.toml" in names:
        pyproject = root / "pyproject.toml"
        return _from_pyproject(root, pyproject, _read_toml(pyproject))
    if "setup.py" in names:
        return Project(root, None, DEFAULT_REQUIRES, DEFAULT_BACKEND, ())
    raise SourceNotFound(
        f"{root}: not a Python project (neither pyproject.toml nor setup.py)", path=str(root)
    )


def _read_toml(pyproject: Path) -> dict[str, object]:
    where = str(pyproject)
    try:
        raw = pyproject.read_bytes()
    except PermissionError as exc:
        raise SourceUnreadable(f"{pyproject}: permission denied", path=where) from exc
    except IsADirectoryError as exc:
        raise InvalidProject(f"{pyproject}: is a directory, not a file", path=where) from exc
    except OSError as exc:
        raise InvalidProject(f"{pyproject}: cannot be read: {exc.strerror}", path=where) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidProject(f"{pyproject}: not UTF-8 text: {exc}", path=where) from exc
    try:
        # The message of TOMLDecodeError carries "(at line L, column C)".
        data: dict[str, object] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidProject(f"{pyproject}: invalid TOML: {exc}", path=where) from exc
    return data


def _from_pyproject(root: Path, pyproject: Path, data: dict[str, object]) -> Project:
    where = str(pyproject)

    def bad(field: str, problem: str) -> InvalidProject:
        return InvalidProject(f"{pyproject}: {field}: {problem}", path=where)

    warnings = tuple(pyproject_warnings(data, where))
    if "build-system" not in data:
        return Project(root, pyproject, DEFAULT_REQUIRES, DEFAULT_BACKEND, (), warnings)
    table = data["build-system"]
    if not isinstance(table, dict):
        raise bad("build-system", f"expected a table, got {_describe(table)}")
    if "requires" not in table:
        # PEP 518: the key is mandatory once the table exists.
        typo = [w.field for w in warnings if w.suggestion == "build-system.requires"]
        hint = f"; found '{typo[0]}', did you mean 'build-system.requires'?" if typo else ""
        raise bad(
            "build-system.requires", f"missing (required when [build-system] is present){hint}"
        )
    requires = _string_list(table["requires"], "build-system.requires", bad)
    for index, text in enumerate(requires):
        try:
            Requirement(text)
        except InvalidRequirement as exc:
            raise bad(
                f"build-system.requires[{index}]", f"invalid requirement {text!r}: {exc}"
            ) from exc
    backend = table.get("build-backend", DEFAULT_BACKEND)
    if not isinstance(backend, str):
        raise bad("build-system.build-backend", f"expected a string, got {_describe(backend)}")
    if not _valid_backend(backend):
        raise bad(
            "build-system.build-backend",
            f"invalid value {backend!r}: expected 'module.path' or 'module.path:object'",
        )
    backend_path = _string_list(table.get("backend-path", []), "build-system.backend-path", bad)
    for index, entry in enumerate(backend_path):
        field = f"build-system.backend-path[{index}]"
        if os.path.isabs(entry):
            raise bad(field, f"{entry!r} must be relative to the project root")
        try:
            # Symlinks followed: a link inside the tree may point anywhere.
            target = (root / entry).resolve()
        except (OSError, RuntimeError) as exc:
            raise bad(field, f"{entry!r} cannot be resolved: {exc}") from exc
        if not target.is_relative_to(root):
            raise bad(field, f"{entry!r} resolves to {target}, outside the project {root}")
    return Project(root, pyproject, tuple(requires), backend, tuple(backend_path), warnings)


def _string_list(value: object, field: str, bad: _BadFactory) -> list[str]:
    if not isinstance(value, list):
        raise bad(field, f"expected a list of strings, got {_describe(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise bad(f"{field}[{index}]", f"expected a string, got {_describe(item)}")
    return [str(item) for item in value]


def _valid_backend(backend: str) -> bool:
    module, sep, obj = backend.partition(":")
    parts = module.split(".") + (obj.split(".") if sep else [])
    return all(part.isidentifier() for part in parts)


def _describe(value: object) -> str:
    return f"{type(value).__name__} {value!r}"[:120]


def is_sdist(path: Path) -> bool:
    """True for an existing ``*.tar.gz`` file (the only sdist format of PEP 625)."""
    return path.name.endswith(".tar.gz") and path.is_file()
