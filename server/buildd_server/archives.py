"""Unpacking sdists and uploaded archives safely, with bounded memory.

Every member is checked before anything is written (names, links, kinds,
caps); tarfile's ``data`` filter, where present, checks again on disk.

tarfile reads a pax extended header, a GNU long name or long link, or a
sparse map into memory whole before it yields the member it belongs to: a
1 MiB upload carrying a 1 GiB pax record would cost gigabytes before any
member check runs. tarfile offers no limit for that, so ``_CappedTarInfo``
(a ``TarInfo`` subclass, tarfile's documented way of adding ``_proc_*``
handling) refuses such a header by its size field, before its data is read;
sparse members (which no sdist holds) are refused outright; and every
member's name and link target are held to the path caps as soon as tarfile
has parsed them.
"""

from __future__ import annotations

import errno
import gzip
import os
import tarfile
import zlib
from typing import TYPE_CHECKING, ClassVar

from buildd_server.errors import (
    InvalidProject,
    ResourceExhausted,
    SourceNotFound,
    SourceUnreadable,
)

if TYPE_CHECKING:
    from pathlib import Path

    from buildd_server.config import SourceLimits

# tarfile's data filter (3.12, backported to 3.8.17+, 3.9.17+, 3.10.12+, 3.11.4+)
# rechecks every member against the real file system while extracting.
_HAS_DATA_FILTER = hasattr(tarfile, "data_filter")
_FILTER_ERRORS: tuple[type[Exception], ...] = (tarfile.FilterError,) if _HAS_DATA_FILTER else ()
_MAX_LINK_HOPS = 40  # the kernel's own limit on symlink chains

# Caps on what a member's headers may hold, checked before tarfile reads them.
# A pax header carries a path, a link target, times and ids, and now and then
# extended attributes: kilobytes. The total bounds what all members' headers
# may keep in memory together (tarfile keeps each member's pax records).
MAX_EXTENDED_HEADER = 1 << 20
MAX_LONG_NAME = 8 << 10
MAX_HEADER_BYTES = 16 << 20
# PATH_MAX and NAME_MAX of Linux; deeper than this no project goes.
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
MAX_DEPTH = 256

_EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
_LONG = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


class HeaderRefused(Exception):
    """A member header past a cap; ``member`` names it as far as it is known."""

    def __init__(self, member: str, why: str) -> None:
        super().__init__(why)
        self.member = member
        self.why = why


class _CappedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses oversized headers before tarfile reads their data."""

    # Header bytes still allowed in this archive; a fresh subclass per archive.
    budget: ClassVar[list[int]] = [MAX_HEADER_BYTES]

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED or self.type in _LONG:
            cap = MAX_EXTENDED_HEADER if self.type in _EXTENDED else MAX_LONG_NAME
            kind = "pax extended header" if self.type in _EXTENDED else "GNU long name or link"
            if self.size > cap:
                raise HeaderRefused(self.name, f"{kind} of {self.size} bytes, at most {cap}")
            self.budget[0] -= self.size
            if self.budget[0] < 0:
                raise HeaderRefused(
                    self.name, f"the archive's extended headers pass {MAX_HEADER_BYTES} bytes"
                )
        elif self.type == tarfile.GNUTYPE_SPARSE:
            raise HeaderRefused(self.name, "a sparse file (not accepted in a source archive)")
        member: tarfile.TarInfo = super()._proc_member(archive)  # type: ignore[misc]
        _check_path(member.name, member.name, "name")
        if member.linkname:
            _check_path(member.name, member.linkname, "link target")
        return member

    # pax sparse formats: their maps are read into memory, and sdists hold none.
    def _proc_gnusparse_00(self, next: tarfile.TarInfo, *args: object) -> None:
        raise HeaderRefused(next.name, "a sparse file (not accepted in a source archive)")

    _proc_gnusparse_01 = _proc_gnusparse_00
    _proc_gnusparse_10 = _proc_gnusparse_00


def _check_path(member: str, path: str, what: str) -> None:
    size = len(path.encode("utf-8", "surrogateescape"))
    if size > MAX_PATH_BYTES:
        raise HeaderRefused(member, f"its {what} is {size} bytes long, at most {MAX_PATH_BYTES}")
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    if len(parts) > MAX_DEPTH:
        raise HeaderRefused(member, f"its {what} is {len(parts)} folders deep, at most {MAX_DEPTH}")
    for part in parts:
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise HeaderRefused(
                member, f"its {what} has a component longer than {MAX_NAME_BYTES} bytes"
            )


def _capped() -> type[tarfile.TarInfo]:
    return type("_CappedTarInfo", (_CappedTarInfo,), {"budget": [MAX_HEADER_BYTES]})


def _shown(name: str) -> str:
    """A member name as an error shows it: at most 200 characters."""
    return repr(name) if len(name) <= 200 else f"{name[:200]!r}… ({len(name)} characters)"


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

    Whatever the archive, tarfile holds at most ``MAX_EXTENDED_HEADER`` bytes
    of one header and ``MAX_HEADER_BYTES`` of all of them in memory.
    """
    where = label or str(sdist)
    broken = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)
    try:
        archive = tarfile.open(sdist, "r:gz", tarinfo=_capped())  # noqa: SIM115 - closed below
    except HeaderRefused as exc:
        raise InvalidProject(
            f"{where}: member {_shown(exc.member)}: {exc.why}", path=where
        ) from exc
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
        except HeaderRefused as exc:
            raise InvalidProject(
                f"{where}: member {_shown(exc.member)}: {exc.why}", path=where
            ) from exc
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
    return InvalidProject(f"{where}: member {_shown(member.name)}: {why}", path=where)


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
