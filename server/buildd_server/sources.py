"""Reading a source tree's build declaration, and unpacking sdists safely.

Every error names the path and, for pyproject.toml, the field and value at
fault, because the message is all a remote client gets to fix its input.
"""

from __future__ import annotations

import errno
import gzip
import os
import stat
import sys
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.requirements import InvalidRequirement, Requirement

from buildd_server.errors import (
    InvalidProject,
    InvalidRequest,
    ResourceExhausted,
    SourceNotFound,
    SourceUnreadable,
)
from buildd_server.lint import pyproject_warnings

if TYPE_CHECKING:
    from buildd_server.config import SourceLimits
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
# tarfile's data filter (3.12, backported to 3.8.17+, 3.9.17+, 3.10.12+, 3.11.4+)
# rechecks every member against the real file system while extracting.
_HAS_DATA_FILTER = hasattr(tarfile, "data_filter")
_FILTER_ERRORS: tuple[type[Exception], ...] = (tarfile.FilterError,) if _HAS_DATA_FILTER else ()
_MAX_LINK_HOPS = 40  # the kernel's own limit on symlink chains

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


def unpack_sdist(
    sdist: Path, dest: Path, *, label: str = "", limits: SourceLimits | None = None
) -> Path:
    """Extract ``sdist`` under ``dest`` and return its single top-level directory.

    Every member is checked before anything is written: no absolute names, no
    ``..``, no links resolving outside the tree, nothing but files, folders and
    links; then tarfile's data filter, where present, checks again on disk.
    ``label`` names the archive in errors (default: its path). With ``limits``
    (uploads), the member headers are read one by one and reading stops at the
    first member past a cap, before its data is decompressed.
    """
    where = label or str(sdist)
    broken = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)
    try:
        archive = tarfile.open(sdist, "r:gz")  # noqa: SIM115 - closed by the with below
    except PermissionError as exc:
        raise SourceUnreadable(f"{sdist}: permission denied", path=where) from exc
    except FileNotFoundError as exc:
        raise SourceNotFound(f"{sdist}: does not exist", path=where) from exc
    except broken as exc:
        raise InvalidProject(f"{where}: not a valid .tar.gz sdist: {exc}", path=where) from exc
    # Errors while extracting may leave part of the tree in dest: the caller
    # owns dest and removes it.
    with archive:
        try:
            if limits is not None:
                _check_limits(archive, sdist.stat().st_size, limits, where)
            members = archive.getmembers()
            top = _check_members(where, members)
            dest.mkdir(parents=True, exist_ok=True)
            if _HAS_DATA_FILTER:
                archive.extractall(dest, filter="data")
            else:
                archive.extractall(dest, members=[_tame(m) for m in members])
        except _FILTER_ERRORS as exc:
            raise InvalidProject(f"{where}: member refused: {exc}", path=where) from exc
        except broken as exc:
            raise InvalidProject(f"{where}: not a valid .tar.gz sdist: {exc}", path=where) from exc
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise ResourceExhausted(f"{dest}: no space left unpacking {sdist}") from exc
            raise
    return dest / top


def _check_limits(
    archive: tarfile.TarFile, compressed: int, limits: SourceLimits, where: str
) -> None:
    """Walk the member headers lazily; refuse at the first one past a cap."""
    total = 0
    for count, member in enumerate(archive, 1):
        if count > limits.max_files:
            raise _refuse(where, member, f"more than {limits.max_files} members")
        if member.isfile():
            total += member.size
        if total > limits.max_bytes:
            raise _refuse(
                where, member, f"the archive unpacks to more than {limits.max_bytes} bytes"
            )
        if total > limits.ratio_floor and total > limits.max_ratio * compressed:
            raise _refuse(
                where,
                member,
                f"the archive unpacks to more than {limits.max_ratio:g} times its "
                f"{compressed} bytes (compression bomb?)",
            )


def _refuse(where: str, member: tarfile.TarInfo, why: str) -> InvalidProject:
    return InvalidProject(f"{where}: member {member.name!r}: {why}", path=where)


def _check_members(where: str, members: list[tarfile.TarInfo]) -> str:
    def refuse(member: tarfile.TarInfo, why: str) -> InvalidProject:
        return _refuse(where, member, why)

    links: dict[tuple[str, ...], str] = {}
    tops: set[str] = set()
    for member in members:
        parts = _parts(member.name)
        if member.name.startswith(("/", "\\")) or member.name[:2].endswith(":"):
            raise refuse(member, "absolute path")
        if ".." in parts:
            raise refuse(member, "'..' in the path")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise refuse(member, "not a regular file, directory or link (device or fifo)")
        if len(parts) == 1 and not member.isdir():
            raise InvalidProject(
                f"{where}: expected one top-level directory, {member.name!r} is not one",
                path=where,
            )
        if member.issym():
            links[parts] = member.linkname
        tops.update(parts[:1])
    if len(tops) != 1:
        raise InvalidProject(
            f"{where}: expected one top-level directory, found {sorted(tops)}", path=where
        )
    top = tops.pop()

    def inside(path: tuple[str, ...]) -> bool:
        resolved = _resolve(path, links)
        return resolved is not None and resolved[:1] == (top,)

    # Every link target, followed through the archive's other links, must land
    # in the tree. Names hold no "..", so paths through such links stay inside.
    for member in members:
        if member.linkname.startswith("/") and (member.issym() or member.islnk()):
            raise refuse(member, f"absolute link target {member.linkname!r}")
        if member.issym():
            parent = _parts(member.name)[:-1]
            if not inside((*parent, *member.linkname.split("/"))):
                raise refuse(member, f"link target {member.linkname!r} leads outside the tree")
        elif member.islnk() and not inside(_parts(member.linkname)):
            raise refuse(member, f"hard link to {member.linkname!r} outside the tree")
    return top


def _parts(name: str) -> tuple[str, ...]:
    return tuple(p for p in name.replace("\\", "/").split("/") if p not in ("", "."))


def _resolve(parts: tuple[str, ...], links: dict[tuple[str, ...], str]) -> tuple[str, ...] | None:
    """Where ``parts`` lands after following the archive's own symlinks.

    None when it climbs above the extraction folder or loops.
    """
    pending = list(parts)
    done: list[str] = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not done:
                return None
            done.pop()
            continue
        done.append(part)
        target = links.get(tuple(done))
        if target is not None:
            hops += 1
            if hops > _MAX_LINK_HOPS or target.startswith("/"):
                return None
            done.pop()
            pending = target.split("/") + pending
    return tuple(done)


def _tame(member: tarfile.TarInfo) -> tarfile.TarInfo:
    # What the data filter does beyond our checks: no setuid/setgid/sticky bits,
    # no group/other write, no ownership taken from the archive.
    if member.isfile() or member.isdir():
        member.mode &= 0o755
    member.uid, member.gid = os.getuid(), os.getgid()
    member.uname = member.gname = ""
    return member
