"""Small real projects written on the fly for tests."""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROBE_SOURCE = Path(__file__).with_name("probe_backend.py")


def probe_project(
    root: Path, log: Path, *, static_requires: Sequence[str] = (), **config: Any
) -> Path:
    """A project whose in-tree backend records every hook call into ``log``.

    ``static_requires`` becomes ``[build-system].requires`` (and so the key):
    the backend itself needs nothing installed.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "_probe").mkdir(exist_ok=True)
    shutil.copy(PROBE_SOURCE, root / "_probe" / "probe_backend.py")
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = {json.dumps(list(static_requires))}
            build-backend = "probe_backend"
            backend-path = ["_probe"]
            """
        )
    )
    write_probe_config(root, log, **config)
    return root


def write_probe_config(root: Path, log: Path, **config: Any) -> None:
    settings = {"log": str(log), "name": root.name.lower().replace("_", "-") or "probe"}
    settings.update(config)
    (root / "probe.json").write_text(json.dumps(settings))


def read_probe_log(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def setuptools_project(root: Path, name: str = "demo-setuptools", version: str = "1.0") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    module = name.replace("-", "_")
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{name}"
            version = "{version}"
            description = "a setuptools test project"
            dependencies = ["packaging>=20"]
            """
        )
    )
    (root / module).mkdir(exist_ok=True)
    (root / module / "__init__.py").write_text(f"VERSION = {version!r}\n")
    return root


def legacy_setuptools_project(root: Path, name: str = "demo-legacy", version: str = "2.0") -> Path:
    """No pyproject.toml: PEP 517's default backend applies."""
    root.mkdir(parents=True, exist_ok=True)
    module = name.replace("-", "_")
    (root / "setup.py").write_text(
        textwrap.dedent(
            f"""\
            from setuptools import setup
            setup(name={name!r}, version={version!r}, py_modules=[{module!r}])
            """
        )
    )
    (root / f"{module}.py").write_text("ANSWER = 42\n")
    return root


def hatchling_project(root: Path, name: str = "demo-hatch", version: str = "3.0") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    module = name.replace("-", "_")
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["hatchling"]
            build-backend = "hatchling.build"

            [project]
            name = "{name}"
            version = "{version}"
            description = "a hatchling test project"
            """
        )
    )
    (root / "src" / module).mkdir(parents=True, exist_ok=True)
    (root / "src" / module / "__init__.py").write_text(f"VERSION = {version!r}\n")
    return root


def flit_project(root: Path, name: str = "demo_flit", version: str = "4.0") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["flit_core>=3.4,<4"]
            build-backend = "flit_core.buildapi"

            [project]
            name = "{name}"
            version = "{version}"
            description = "a flit test project"
            """
        )
    )
    (root / f"{name}.py").write_text('"""A flit module."""\n')
    return root
