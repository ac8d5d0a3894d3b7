"""What the daemon checks about what a backend produced, before calling it a success.

A backend's hook may exit 0 and still return something no installer can use:
a wheel without its ``.dist-info``, an sdist without ``PKG-INFO``, a file that
is not an archive at all. pypa/build refuses such an sdist before building a
wheel from it ("does not contain .../PKG-INFO"); the daemon checks every
artifact, whoever built it and whatever flow asked for it, before it is moved
into the output folder:

- a **wheel** (``build_wheel``, ``build_editable``): its file name parses
  (``packaging.utils.parse_wheel_filename``); it is a zip with exactly one
  top-level ``{name}-{version}.dist-info`` holding METADATA, WHEEL and
  RECORD, no member path absolute or climbing out; WHEEL has a
  ``Wheel-Version`` 1.x; METADATA's Name and Version agree with the file name,
  with the folder name and with the metadata prepared for it, or with the
  sdist it was built from;
- an **sdist** (``build_sdist``): its file
  name parses (``parse_sdist_filename``) and ends in ``.tar.gz``; it is a
  gzip-compressed tar with a single top-level folder ``{name}-{version}/``
  holding a ``PKG-INFO`` file, whose Name and Version agree with the file name;
- a **prepared .dist-info** (``prepare_metadata_for_build_*``): it holds a
  METADATA file whose Name and Version agree with the folder name.

Names are compared canonicalised (``canonicalize_name``), versions as
``Version`` objects, so ``Foo.Bar-1.0`` and ``foo_bar-1.0.0`` agree. A
failure is ``BACKEND_FAILED`` naming the hook, the file and what is wrong; an
sdist given as the source is held to pypa/build's rules only (a parsable
name, a PKG-INFO) and fails with ``INVALID_PROJECT``: it is the caller's
input. ``missing_mandatory_hook`` tells a ``build_wheel``/``build_sdist`` that
the backend lacks from any other failure of the hook process.
"""

from __future__ import annotations

import email.parser
import email.policy
import gzip
import re
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from packaging.metadata import parse_email
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from .. import errors

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

    from ..sources.sources import Project

__all__ = [
    "Identity",
    "check_artifact",
    "check_prepared",
    "check_sdist_source",
    "missing_mandatory_hook",
    "sdist_identity",
]

Dist = Literal["wheel", "sdist", "editable"]

# The files a wheel's .dist-info must hold (binary distribution format spec).
WHEEL_DIST_INFO_FILES = ("METADATA", "WHEEL", "RECORD")
# Hooks PEP 517 makes mandatory: pyproject_hooks calls them as attributes of the
# backend, so a missing one is an AttributeError in its _in_process.py.
MANDATORY_HOOKS = ("build_wheel", "build_sdist")
_ATTRIBUTE_ERROR = re.compile(r"^AttributeError: .* has no attribute '(?P<name>[A-Za-z_]+)'")
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line \d+, in (?P<function>\S+)')


@dataclass(frozen=True)
class Identity:
    """A distribution's name (canonical) and version, as an artifact declares them."""

    name: NormalizedName
    version: Version

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


class _Broken(Exception):
    """What is wrong with an artifact, in a few words."""


# ----------------------------------------------------------------- entries --


def check_artifact(
    dist: Dist,
    path: Path,
    project: Project,
    *,
    metadata_directory: Path | None = None,
    expected: Sequence[tuple[str, Identity]] = (),
) -> Identity:
    """Check what ``build_<dist>`` wrote at ``path``; its identity, or BackendFailed.

    A wheel built with ``metadata_directory`` must agree with that prepared
    metadata (PEP 517); ``expected`` adds (what, identity) pairs it must agree
    with too, e.g. the sdist it was built from.
    """
    hook, backend, where = f"build_{dist}", project.backend, _where(project)
    try:
        found = _sdist(path) if dist == "sdist" else _wheel(path)
        for what, identity in [*expected, *_prepared_expectation(metadata_directory, dist)]:
            if identity != found:
                raise _Broken(f"it is {found}, but {what} is {identity}")
    except _Broken as exc:
        kind = "an sdist" if dist == "sdist" else "a wheel"
        raise errors.ArtifactInvalid(
            f"hook {hook} of backend {backend!r} of {where} returned {path.name!r}, which is "
            f"not {kind} an installer can use: {exc}",
            path=where,
            hook=hook,
        ) from exc
    return found


def check_prepared(dist_info: Path, dist: Dist, project: Project) -> Identity:
    """Check the .dist-info folder prepared for ``dist``; its identity, or BackendFailed."""
    hook, backend, where = f"prepare_metadata_for_build_{dist}", project.backend, _where(project)
    try:
        named = _dist_info_identity(dist_info.name)
        if named is None or not dist_info.name.endswith(".dist-info"):
            raise _Broken("the folder is not named {name}-{version}.dist-info")
        metadata = dist_info / "METADATA"
        try:
            data = metadata.read_bytes()
        except FileNotFoundError:
            raise _Broken(f"{dist_info.name}/METADATA is missing") from None
        except OSError as exc:
            raise _Broken(f"{dist_info.name}/METADATA cannot be read: {exc.strerror}") from exc
        found = _metadata_identity(data, f"{dist_info.name}/METADATA")
        if named != found:
            raise _Broken(f"{dist_info.name}/METADATA says {found}, the folder name {named}")
    except _Broken as exc:
        raise errors.ArtifactInvalid(
            f"hook {hook} of backend {backend!r} of {where} prepared {dist_info.name!r}, "
            f"which is not usable metadata: {exc}",
            path=where,
            hook=hook,
        ) from exc
    return found


def check_sdist_source(path: Path, root: Path) -> None:
    """An sdist given as the source, unpacked at ``root``: as pypa/build checks it.

    Its name must parse and its top folder hold PKG-INFO (pypa/build's
    ``_validate_sdist_archive``); InvalidProject otherwise, since the file is
    the caller's input. The archive itself was checked while unpacking.
    """
    where = str(path)
    problem = ""
    try:
        parse_sdist_filename(path.name)
    except (InvalidSdistFilename, InvalidVersion) as exc:
        problem = f"its name does not look like a source distribution's ({exc})"
    else:
        if not (root / "PKG-INFO").is_file():
            problem = f"it does not contain {root.name}/PKG-INFO"
    if problem:
        raise errors.InvalidProject(
            f"{where}: not a valid source distribution: {problem}", path=where
        )


def sdist_identity(filename: str) -> Identity:
    """The identity an sdist's (already checked) file name declares."""
    name, version = parse_sdist_filename(filename)
    return Identity(name, version)


def _prepared_expectation(dist_info: Path | None, dist: Dist) -> list[tuple[str, Identity]]:
    """What a wheel built with ``metadata_directory=dist_info`` must agree with (PEP 517).

    Empty without one, or when that METADATA cannot be read (it was checked
    when it was prepared; the wheel's own check still applies).
    """
    if dist_info is None:
        return []
    try:
        identity = _metadata_identity((dist_info / "METADATA").read_bytes(), "METADATA")
    except (OSError, _Broken):
        return []
    return [(f"the metadata prepared by prepare_metadata_for_build_{dist}", identity)]


def _where(project: Project) -> str:
    return str(project.pyproject or project.root)


def missing_mandatory_hook(hook: str, lines: Iterable[str]) -> bool:
    """Whether a failed ``hook`` call failed because the backend has no such hook.

    pyproject_hooks reports a missing optional hook through its protocol, but a
    missing ``build_wheel`` or ``build_sdist`` is an AttributeError raised in
    its own ``_in_process.py``, in the function of that name: that frame as the
    traceback's last, and the error naming that attribute, tell it from an
    AttributeError inside the backend.
    """
    if hook not in MANDATORY_HOOKS:
        return False
    text = [line for line in lines if line.strip()]
    if not text:
        return False
    error = _ATTRIBUTE_ERROR.match(text[-1])
    if error is None or error.group("name") != hook:
        return False
    frames = [m for m in map(_FRAME.match, text) if m is not None]
    return bool(frames) and (
        frames[-1].group("file").endswith("_in_process.py") and frames[-1].group("function") == hook
    )


# ------------------------------------------------------------------ wheels --


def _wheel(path: Path) -> Identity:
    try:
        name, version, _build, _tags = parse_wheel_filename(path.name)
    except (InvalidWheelFilename, InvalidVersion) as exc:
        raise _Broken(f"not a wheel file name ({exc})") from exc
    declared = Identity(name, version)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise _Broken(f"not a zip archive ({exc})") from exc
    with archive:
        names = archive.namelist()
        for member in names:
            if member.startswith("/") or ".." in member.split("/"):
                raise _Broken(f"member {member!r} would be installed outside site-packages")
        folders = sorted({n.split("/", 1)[0] for n in names if _top_dist_info(n)})
        if len(folders) != 1:
            seen = f"found {folders}" if folders else "found none"
            raise _Broken(f"expected exactly one top-level {{name}}-{{version}}.dist-info, {seen}")
        folder = folders[0]
        named = _dist_info_identity(folder)
        if named is None:
            raise _Broken(f"{folder} is not named {{name}}-{{version}}.dist-info")
        if named != declared:
            raise _Broken(f"{folder} is for {named}, the file name for {declared}")
        present = set(names)
        missing = [f for f in WHEEL_DIST_INFO_FILES if f"{folder}/{f}" not in present]
        if missing:
            raise _Broken(f"{folder} holds no {', '.join(missing)}")
        try:
            metadata = archive.read(f"{folder}/METADATA")
            wheel = archive.read(f"{folder}/WHEEL")
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
            raise _Broken(f"{folder} cannot be read ({exc})") from exc
    _check_wheel_file(wheel, f"{folder}/WHEEL")
    found = _metadata_identity(metadata, f"{folder}/METADATA")
    if found != declared:
        raise _Broken(f"{folder}/METADATA says {found}, the file name {declared}")
    return found


def _top_dist_info(member: str) -> bool:
    top, sep, _rest = member.partition("/")
    return bool(sep) and top.endswith(".dist-info")


def _check_wheel_file(data: bytes, label: str) -> None:
    """WHEEL must declare Wheel-Version 1.x: installers refuse any other major version."""
    text = data.decode("utf-8", "replace")
    message = email.parser.Parser(policy=email.policy.compat32).parsestr(text, headersonly=True)
    value = message.get("Wheel-Version")
    if value is None:
        raise _Broken(f"{label} has no Wheel-Version")
    try:
        major = Version(str(value).strip()).major
    except InvalidVersion as exc:
        raise _Broken(f"{label} has Wheel-Version {str(value).strip()!r}") from exc
    if major != 1:
        raise _Broken(f"{label} has Wheel-Version {str(value).strip()}, not 1.x")


def _dist_info_identity(folder: str) -> Identity | None:
    """``{name}-{version}.dist-info`` to its identity; None when it is not so named.

    The spec escapes '-' in both parts, but a name or version with one is
    still read: every split point is tried, the first that parses wins.
    """
    stem = folder.removesuffix(".dist-info")
    parts = stem.split("-")
    for cut in range(1, len(parts)):
        name, version = "-".join(parts[:cut]), "-".join(parts[cut:])
        try:
            return Identity(canonicalize_name(name, validate=True), Version(version))
        except (InvalidVersion, ValueError):
            continue
    return None


def _metadata_identity(data: bytes, label: str) -> Identity:
    raw, _unparsed = parse_email(data)
    name = raw.get("name")
    version = raw.get("version")
    if not name:
        raise _Broken(f"{label} has no Name")
    if not version:
        raise _Broken(f"{label} has no Version")
    try:
        return Identity(canonicalize_name(name, validate=True), Version(version))
    except InvalidVersion as exc:
        raise _Broken(f"{label} has Version {version!r}, which is not PEP 440") from exc
    except ValueError as exc:
        raise _Broken(f"{label} has Name {name!r}, which is not a valid name") from exc


# ------------------------------------------------------------------ sdists --


def _sdist(path: Path) -> Identity:
    if not path.name.endswith(".tar.gz"):
        raise _Broken("not a .tar.gz file name (PEP 625)")
    try:
        declared = sdist_identity(path.name)
    except (InvalidSdistFilename, InvalidVersion) as exc:
        raise _Broken(f"not an sdist file name ({exc})") from exc
    try:
        archive = tarfile.open(path, "r:gz")  # noqa: SIM115 - closed by the with below
    except (tarfile.ReadError, gzip.BadGzipFile, zlib.error, EOFError, OSError) as exc:
        raise _Broken(f"not a gzip-compressed tar archive ({exc})") from exc
    with archive:
        try:
            members = archive.getmembers()
            tops = sorted({m.name.split("/", 1)[0] for m in members if m.name} - {""})
            if len(tops) != 1:
                raise _Broken(f"expected a single top-level folder, found {tops}")
            top = tops[0]
            named = _sdist_folder_identity(top)
            if named is None:
                raise _Broken(f"its top-level folder {top!r} is not named {{name}}-{{version}}")
            if named != declared:
                raise _Broken(f"its top-level folder {top!r} is for {named}, not {declared}")
            pkg_info = next(
                (m for m in members if m.name == f"{top}/PKG-INFO" and m.isfile()), None
            )
            if pkg_info is None:
                raise _Broken(f"it does not contain {top}/PKG-INFO")
            handle = archive.extractfile(pkg_info)
            data = handle.read() if handle is not None else b""
        except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError, OSError) as exc:
            raise _Broken(f"not a readable gzip-compressed tar archive ({exc})") from exc
    found = _metadata_identity(data, f"{top}/PKG-INFO")
    if found != declared:
        raise _Broken(f"{top}/PKG-INFO says {found}, the file name {declared}")
    return found


def _sdist_folder_identity(folder: str) -> Identity | None:
    try:
        return sdist_identity(f"{folder}.tar.gz")
    except (InvalidSdistFilename, InvalidVersion):
        return None
