"""A local folder of wheels that tests install from, filled once per machine.

Tests create real environments with ``--no-index --find-links <wheelhouse>``,
so after the first run they need no network and get the same versions every
time. ``ensure_wheelhouse`` downloads with pip, cut off from the machine's pip
configuration (pip.conf, ``PIP_*`` variables): what lands here depends on the
requirement list below and the index, nothing else.

Several pytest processes may call it at once: a file lock serialises the
downloads, and a marker written last records which (requirement set, Python
version) pairs are complete, so a finished wheelhouse is reused without
taking the lock or touching the network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

if TYPE_CHECKING:
    from collections.abc import Iterable

INDEX_URL = "https://pypi.org/simple"

# Each set is resolved on its own, so that sets may disagree on versions
# (flit_core 4 for one project, flit_core<4 for another).
REQUIREMENT_SETS: tuple[tuple[str, ...], ...] = (
    # tomli: hatchling needs it below 3.11, and pip evaluates markers for the
    # Python that runs it, not for --python-version.
    ("setuptools", "wheel", "hatchling", "flit_core", "packaging", "tomli"),
    ("flit_core>=3.4,<4",),
    # pypa/build for the interpreters other than the runner's own, with exactly
    # the runner's packaging (compat/interpreters.py, tool_requirements).
    ("build>=1.4", f"packaging=={version('packaging')}"),
    # Versions from git tags (the metadata cache must see a new tag).
    ("setuptools>=64", "setuptools-scm>=8"),
)

# The test runner's own Python, and every interpreter the compatibility
# corpus is built with (compat/corpus.py, INTERPRETERS): the oldest the daemon
# supports, whose newest compatible releases may be older, and the newest.
PYTHON_VERSIONS: tuple[str, ...] = tuple(
    sorted({f"{sys.version_info[0]}.{sys.version_info[1]}", "3.10", "3.11", "3.13"})
)

_MARKER = "wheelhouse.json"


def wheelhouse_dir() -> Path:
    configured = os.environ.get("BUILDD_TEST_WHEELHOUSE")
    if configured:
        return Path(configured).resolve()
    return Path(__file__).resolve().parents[2] / ".cache" / "wheelhouse"


def ensure_wheelhouse(
    requirement_sets: Iterable[Iterable[str]] = REQUIREMENT_SETS,
    python_versions: Iterable[str] = PYTHON_VERSIONS,
) -> Path:
    """The wheelhouse folder, holding wheels for every set and Python version."""
    folder = wheelhouse_dir()
    versions = tuple(python_versions)
    wanted = {_entry(tuple(reqs), version) for reqs in requirement_sets for version in versions}
    if wanted <= _done(folder):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f"{folder.name}.lock")):
        done = _done(folder)
        missing = sorted(wanted - done)
        if missing:
            # Independent downloads: run them side by side, the wait is network.
            with ThreadPoolExecutor(max_workers=4) as pool:
                jobs = [pool.submit(_download, folder, entry, i) for i, entry in enumerate(missing)]
                for job in jobs:
                    job.result()
            _write_done(folder, done | wanted)
    return folder


def _entry(requirements: tuple[str, ...], python_version: str) -> str:
    return json.dumps([python_version, sorted(requirements)])


def _done(folder: Path) -> set[str]:
    try:
        return set(json.loads((folder / _MARKER).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return set()


def _write_done(folder: Path, entries: set[str]) -> None:
    scratch = folder / f"{_MARKER}.{os.getpid()}.tmp"
    scratch.write_text(json.dumps(sorted(entries), indent=1), encoding="utf-8")
    os.replace(scratch, folder / _MARKER)


def _download(folder: Path, entry: str, index: int) -> None:
    python_version, requirements = json.loads(entry)
    # pip copies into --dest non-atomically: each download gets its own
    # folder, and finished files are renamed into place.
    dest = folder / f".download-{os.getpid()}-{index}"
    shutil.rmtree(dest, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--isolated",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        "--only-binary",
        ":all:",
        "--python-version",
        python_version,
        "--index-url",
        INDEX_URL,
        "--dest",
        str(dest),
        *requirements,
    ]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"filling the test wheelhouse {folder} failed ({' '.join(cmd)}):\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        for wheel in dest.iterdir():
            os.replace(wheel, folder / wheel.name)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
