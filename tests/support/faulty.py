"""Small projects whose in-tree backend writes valid artifacts but for one fault.

Each fault is one way a backend may exit 0 and still hand back something no
installer can use (or lack a mandatory hook): the daemon must refuse each one
as pypa/build does, naming the hook, the file and what is wrong.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

FAULTS = (
    "none",
    # build_wheel writes a wheel with the module but no .dist-info at all.
    "wheel-without-dist-info",
    # build_wheel's .dist-info has METADATA and WHEEL but no RECORD.
    "wheel-without-record",
    # build_wheel names the wheel for another version than its METADATA.
    "wheel-version-disagrees",
    # build_sdist writes a gzip tar whose top folder lacks PKG-INFO.
    "sdist-without-pkg-info",
    # build_sdist writes an uncompressed tar named .tar.gz.
    "sdist-not-gzip",
    # build_sdist writes two top-level folders.
    "sdist-two-folders",
    # prepare_metadata_for_build_wheel makes a .dist-info without METADATA.
    "prepared-without-metadata",
    # the backend defines no build_sdist (mandatory, PEP 517).
    "no-build-sdist",
    # the backend defines no build_wheel (mandatory, PEP 517).
    "no-build-wheel",
)

BACKEND = '''\
"""An in-tree PEP 517 backend with one fault: {fault}."""

import base64
import hashlib
import io
import os
import tarfile
import zipfile

NAME = {name!r}
VERSION = "1.0"
FAULT = {fault!r}
MODULE = NAME.replace("-", "_")
METADATA = f"Metadata-Version: 2.1\\nName: {{NAME}}\\nVersion: {{VERSION}}\\n"
WHEEL = "Wheel-Version: 1.0\\nGenerator: faulty\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
TREE = ("pyproject.toml", "_backend/faulty_backend.py", f"{{MODULE}}.py")


def _digest(data):
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _build_sdist(sdist_directory, config_settings=None):
    top = f"{{MODULE}}-{{VERSION}}"
    filename = f"{{top}}.tar.gz"
    mode = "w" if FAULT == "sdist-not-gzip" else "w:gz"
    with tarfile.open(os.path.join(sdist_directory, filename), mode) as tar:
        for name in TREE:
            with open(name, "rb") as handle:
                _add(tar, f"{{top}}/{{name}}", handle.read())
        if FAULT != "sdist-without-pkg-info":
            _add(tar, f"{{top}}/PKG-INFO", METADATA.encode())
        if FAULT == "sdist-two-folders":
            _add(tar, "other/README", b"a second top-level folder\\n")
    return filename


def _build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    version = "2.0" if FAULT == "wheel-version-disagrees" else VERSION
    dist_info = f"{{MODULE}}-{{VERSION}}.dist-info"
    with open(f"{{MODULE}}.py", "rb") as handle:
        files = {{f"{{MODULE}}.py": handle.read()}}
    if FAULT != "wheel-without-dist-info":
        files[f"{{dist_info}}/METADATA"] = METADATA.encode()
        files[f"{{dist_info}}/WHEEL"] = WHEEL.encode()
        if FAULT != "wheel-without-record":
            rows = [f"{{n}},sha256={{_digest(d)}},{{len(d)}}" for n, d in files.items()]
            rows.append(f"{{dist_info}}/RECORD,,")
            files[f"{{dist_info}}/RECORD"] = ("\\n".join(rows) + "\\n").encode()
    filename = f"{{MODULE}}-{{version}}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return filename


def _prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    dist_info = f"{{MODULE}}-{{VERSION}}.dist-info"
    os.makedirs(os.path.join(metadata_directory, dist_info))
    if FAULT != "prepared-without-metadata":
        with open(os.path.join(metadata_directory, dist_info, "METADATA"), "w") as handle:
            handle.write(METADATA)
    return dist_info


if FAULT != "no-build-sdist":
    build_sdist = _build_sdist
if FAULT != "no-build-wheel":
    build_wheel = _build_wheel
prepare_metadata_for_build_wheel = _prepare_metadata_for_build_wheel
'''


def faulty_project(root: Path, fault: str, name: str = "") -> Path:
    """A project at ``root`` built by an in-tree backend with ``fault`` (one of FAULTS)."""
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}")
    name = name or f"faulty-{fault}"
    root.mkdir(parents=True, exist_ok=True)
    (root / "_backend").mkdir(exist_ok=True)
    (root / "_backend" / "faulty_backend.py").write_text(BACKEND.format(name=name, fault=fault))
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [build-system]
            requires = []
            build-backend = "faulty_backend"
            backend-path = ["_backend"]
            """
        )
    )
    (root / f"{name.replace('-', '_')}.py").write_text(f"FAULT = {fault!r}\n")
    return root


def typo_project(root: Path, table: str = "build_sytem") -> Path:
    """A setuptools project whose ``[build-system]`` is misspelt as ``[table]``.

    PEP 517 then builds it with the default backend; setuptools reads no
    ``[project]`` here (there is none), so the result is ``UNKNOWN-0.0.0``.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [{table}]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"
            """
        )
    )
    (root / "setup.py").write_text("from setuptools import setup\nsetup()\n")
    return root
