"""The corpus: compat/corpus.toml's projects, their pinned sdists, and what they require.

A project is one real sdist from PyPI, pinned by name, version and SHA-256.
``fetch_sdist`` downloads it once into ``.cache/compat/sdists``; after that no
network is needed to read or unpack it. ``requires_python`` reads the sdist's
own PKG-INFO, so a project is skipped (with the reason) on an interpreter its
Requires-Python excludes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from packaging.metadata import parse_email
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import InvalidSdistFilename, canonicalize_name, parse_sdist_filename
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    # The dev venv runs 3.11+, so mypy's 3.10 view may not find tomli there.
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "compat" / "corpus.toml"
DEFAULT_CACHE = REPO / ".cache" / "compat"
PYPI = "https://pypi.org/simple"
# Every project is built on each of these, side by side in one daemon.
INTERPRETERS = ("3.10", "3.11", "3.13")


@dataclass(frozen=True)
class Project:
    """One entry of compat/corpus.toml."""

    name: str
    version: str
    sha256: str
    backend: str
    editable: bool = False
    import_name: str | None = None
    fast: bool = False
    config_settings: Mapping[str, str] = field(default_factory=dict)
    note: str = ""

    @property
    def key(self) -> str:
        return str(canonicalize_name(self.name))


def load_corpus(path: Path = CORPUS) -> list[Project]:
    """The projects of the corpus file, validated."""
    return load_corpus_file(path)[0]


def load_interpreters(path: Path = CORPUS) -> tuple[str, ...]:
    """The Python versions (``"3.10"``...) every project of the corpus is built with."""
    return load_corpus_file(path)[1]


def load_corpus_file(path: Path = CORPUS) -> tuple[list[Project], tuple[str, ...]]:
    """(projects, interpreters) of the corpus file, validated."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    projects: list[Project] = []
    allowed = {
        "name",
        "version",
        "sha256",
        "backend",
        "editable",
        "import",
        "fast",
        "config_settings",
        "note",
    }
    interpreters = data.get("interpreters", list(INTERPRETERS))
    for entry in data.get("project", []):
        unknown = set(entry) - allowed
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {sorted(unknown)} in {entry.get('name')!r}")
        project = Project(
            name=str(entry["name"]),
            version=str(entry["version"]),
            sha256=str(entry["sha256"]).lower(),
            backend=str(entry["backend"]),
            editable=bool(entry.get("editable", False)),
            import_name=entry.get("import"),
            fast=bool(entry.get("fast", False)),
            config_settings={str(k): str(v) for k, v in entry.get("config_settings", {}).items()},
            note=str(entry.get("note", "")),
        )
        if project.editable and not project.import_name:
            raise ValueError(f"{path}: {project.name} is editable but names no `import`")
        if len(project.sha256) != 64:
            raise ValueError(f"{path}: {project.name}: sha256 must be 64 hex digits")
        Version(project.version)  # raises on a version that is not PEP 440
        projects.append(project)
    keys = [p.key for p in projects]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{path}: a project is listed twice")
    if not interpreters or not all(
        isinstance(v, str) and len(v.split(".")) == 2 for v in interpreters
    ):
        raise ValueError(f'{path}: interpreters must be versions like "3.11", not {interpreters}')
    return projects, tuple(interpreters)


# ---------------------------------------------------------------- sdists --


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_sdist_of(filename: str, project: Project) -> bool:
    if not filename.endswith(".tar.gz"):
        return False
    try:
        name, version = parse_sdist_filename(filename)
    except InvalidSdistFilename:
        return False
    return name == project.key and version == Version(project.version)


def fetch_sdist(project: Project, cache: Path = DEFAULT_CACHE, index_url: str = PYPI) -> Path:
    """The project's sdist in ``cache/sdists``, downloaded from the index's JSON API if missing.

    A cached file is used only when its SHA-256 is the pinned one, so after the
    first run no network is needed.
    """
    folder = cache / "sdists"
    if folder.is_dir():
        for candidate in sorted(folder.iterdir()):
            if _is_sdist_of(candidate.name, project) and _sha256_file(candidate) == project.sha256:
                return candidate
    page = index_url.rstrip("/") + f"/{project.key}/"
    request = urllib.request.Request(
        page, headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        listing = json.load(response)
    files = [f for f in listing.get("files", []) if _is_sdist_of(f["filename"], project)]
    if not files:
        raise LookupError(f"{page} lists no .tar.gz sdist of {project.name} {project.version}")
    chosen = files[0]
    expected = chosen.get("hashes", {}).get("sha256")
    if expected and expected != project.sha256:
        raise ValueError(
            f"{page}: {chosen['filename']} has sha256 {expected}, the corpus pins {project.sha256}"
        )
    filename = str(chosen["filename"])
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / filename
    scratch = folder / f".{filename}.{os.getpid()}.part"
    url = urllib.parse.urljoin(page, str(chosen["url"]))
    try:
        with urllib.request.urlopen(url, timeout=300) as response, scratch.open("wb") as out:
            shutil.copyfileobj(response, out)
        got = _sha256_file(scratch)
        if got != project.sha256:
            raise ValueError(f"{url}: downloaded sha256 {got}, the corpus pins {project.sha256}")
        os.replace(scratch, target)
    finally:
        scratch.unlink(missing_ok=True)
    return target


def unpack_sdist(sdist: Path, dest: Path) -> Path:
    """Extract ``sdist`` into a fresh ``dest``; return its single top-level folder."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    with tarfile.open(sdist) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(dest, filter="data")
        else:  # pragma: no cover - Python without PEP 706 filters
            for member in archive.getmembers():
                target = (dest / member.name).resolve()
                if not target.is_relative_to(dest.resolve()) or member.issym() or member.islnk():
                    raise ValueError(f"{sdist}: unsafe member {member.name!r}")
            archive.extractall(dest)
    roots = [p for p in dest.iterdir() if p.is_dir()]
    if len(roots) != 1:
        raise ValueError(f"{sdist}: expected one top-level folder, found {len(roots)}")
    return roots[0]


# ------------------------------------------------------------- comparing --


def requires_python(sdist: Path) -> SpecifierSet | None:
    """The Requires-Python of the sdist's own PKG-INFO; None when it declares none."""
    with tarfile.open(sdist) as archive:
        for member in archive:
            parts = member.name.split("/")
            if len(parts) == 2 and parts[1] == "PKG-INFO" and member.isfile():
                handle = archive.extractfile(member)
                raw, _ = parse_email(handle.read() if handle is not None else b"")
                break
        else:
            return None
    spec = raw.get("requires_python")
    if not spec:
        return None
    try:
        return SpecifierSet(spec)
    except InvalidSpecifier as exc:
        raise ValueError(f"{sdist}: PKG-INFO has Requires-Python {spec!r}: {exc}") from exc
