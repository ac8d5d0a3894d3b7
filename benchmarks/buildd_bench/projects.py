"""The projects the wheel builds run on: pinned sdists from PyPI, unpacked once."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .settings import CACHE, INDEX_URL, PROJECTS_FILE, log, tool_environ

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - buildd depends on tomli there
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]


@dataclass(frozen=True)
class Project:
    name: str
    version: str
    backend: str

    @property
    def id(self) -> str:
        return f"{self.name}-{self.version}"


@dataclass(frozen=True)
class BuildSystem:
    """The [build-system] table of an unpacked tree (PEP 517 defaults applied)."""

    requires: tuple[str, ...]
    backend: str
    backend_path: tuple[str, ...]


def load_projects(path: Path = PROJECTS_FILE) -> list[Project]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return [
        Project(name=str(p["name"]), version=str(p["version"]), backend=str(p.get("backend", "")))
        for p in data["project"]
    ]


def read_build_system(tree: Path) -> BuildSystem:
    pyproject = tree / "pyproject.toml"
    table: dict[str, Any] = {}
    if pyproject.exists():
        table = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("build-system", {})
    return BuildSystem(
        requires=tuple(table.get("requires", ["setuptools>=40.8.0"])),
        backend=table.get("build-backend", "setuptools.build_meta:__legacy__"),
        backend_path=tuple(table.get("backend-path", [])),
    )


def fetch_sdist(project: Project) -> Path:
    """The project's sdist, downloaded from PyPI into .cache/sdists on first use."""
    folder = CACHE / "sdists" / project.id
    found = sorted(p for p in folder.glob("*") if p.name.endswith((".tar.gz", ".zip")))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    log(f"downloading the {project.id} sdist from {INDEX_URL}")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        f"{project.name}=={project.version}",
        "--no-deps",
        "--no-binary",
        project.name,
        "--index-url",
        INDEX_URL,
        "--dest",
        str(folder),
        "--quiet",
    ]
    subprocess.run(command, env=tool_environ(), check=True, stdin=subprocess.DEVNULL)
    found = sorted(p for p in folder.glob("*") if p.name.endswith((".tar.gz", ".zip")))
    if len(found) != 1:
        raise SystemExit(f"expected one sdist of {project.id} in {folder}, found {found}")
    return found[0]


def unpack(project: Project) -> Path:
    """The pristine unpacked tree in .cache/src (unpacked once, never built in)."""
    target = CACHE / "src" / project.id
    if target.is_dir():
        return target
    sdist = fetch_sdist(project)
    staging = Path(tempfile.mkdtemp(prefix=f".{project.id}-", dir=target.parent.parent))
    try:
        if sdist.name.endswith(".zip"):
            with zipfile.ZipFile(sdist) as archive:
                archive.extractall(staging)
        else:
            with tarfile.open(sdist) as archive:
                if hasattr(tarfile, "data_filter"):
                    archive.extractall(staging, filter="data")
                else:  # pragma: no cover - old patch releases
                    archive.extractall(staging)
        tops = list(staging.iterdir())
        if len(tops) != 1 or not tops[0].is_dir():
            raise SystemExit(f"{sdist} does not hold exactly one top-level folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        tops[0].rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def select_projects(names: Sequence[str] | None) -> list[Project]:
    """The projects named on the command line (all of projects.toml when none)."""
    projects = load_projects()
    if not names:
        return projects
    wanted = [n.strip().lower() for item in names for n in item.split(",") if n.strip()]
    by_name = {p.name.lower(): p for p in projects} | {p.id.lower(): p for p in projects}
    missing = [n for n in wanted if n not in by_name]
    if missing:
        raise SystemExit(
            f"unknown project(s) {', '.join(missing)}: choose from "
            + ", ".join(p.name for p in projects)
        )
    return list(dict.fromkeys(by_name[n] for n in wanted))
