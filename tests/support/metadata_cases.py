"""Real projects and the one change each that a backend reads into its metadata.

Shared by the metadata cache and the metadata watch tests: ``make`` writes the
project, ``change`` makes the edit, and ``before``/``after`` is a line that
METADATA holds before and after it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from support.projects import hatchling_project, legacy_setuptools_project, setuptools_project


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Path], Path]
    change: Callable[[Path], None]
    before: str
    after: str
    needs_git: bool = False

    def available(self) -> bool:
        return not self.needs_git or shutil.which("git") is not None


def git(cwd: Path, *args: str) -> None:
    env = dict(os.environ)
    env.update(
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.invalid",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.invalid",
        GIT_CONFIG_NOSYSTEM="1",
    )
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def flit_dynamic_version(root: Path) -> Path:
    """flit_core reading ``__version__`` and the docstring from the module."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [build-system]
            requires = ["flit_core>=3.4,<4"]
            build-backend = "flit_core.buildapi"

            [project]
            name = "demo_flit"
            dynamic = ["version", "description"]
            """
        )
    )
    (root / "demo_flit.py").write_text('"""A flit module."""\n__version__ = "4.0"\n')
    return root


def _flit_bump(root: Path) -> None:
    (root / "demo_flit.py").write_text('"""A flit module."""\n__version__ = "4.1"\n')


def scm_project(root: Path) -> Path:
    """setuptools-scm: the version is the git tag (v1.0), HEAD on a second commit."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [build-system]
            requires = ["setuptools>=64", "setuptools-scm>=8"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "demo-scm"
            dynamic = ["version"]

            [tool.setuptools]
            py-modules = ["demo_scm"]

            [tool.setuptools_scm]
            """
        )
    )
    (root / "demo_scm.py").write_text("X = 1\n")
    (root / ".gitignore").write_text("build/\n*.egg-info/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "one")
    git(root, "tag", "v1.0")
    (root / "demo_scm.py").write_text("X = 2\n")
    git(root, "commit", "-q", "-am", "two")
    return root


def _tag(root: Path) -> None:
    git(root, "tag", "v1.1")  # only a ref changes: no file of the worktree


def _add_dependency(root: Path) -> None:
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + 'dependencies = ["packaging>=24"]\n')


def _setup_py(root: Path) -> None:
    setup = root / "setup.py"
    setup.write_text(setup.read_text().replace("version='2.0'", "version='2.1'"))


def readme_project(root: Path) -> Path:
    setuptools_project(root, name="demo-readme")
    pyproject = root / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace(
            'description = "a setuptools test project"',
            'description = "a setuptools test project"\nreadme = "README.md"',
        )
    )
    (root / "README.md").write_text("# Demo\n\nFirst words.\n")
    return root


def _readme(root: Path) -> None:
    (root / "README.md").write_text("# Demo\n\nOther words.\n")


CASES = [
    Case("flit-module-version", flit_dynamic_version, _flit_bump, "Version: 4.0", "Version: 4.1"),
    Case(
        "setuptools-scm-tag",
        scm_project,
        _tag,
        "Version: 1.1.dev1+g",
        "Version: 1.1\n",
        needs_git=True,
    ),
    Case(
        "pyproject-dependency",
        hatchling_project,
        _add_dependency,
        "Name: demo-hatch",
        "Requires-Dist: packaging>=24",
    ),
    Case("setup-py-edit", legacy_setuptools_project, _setup_py, "Version: 2.0", "Version: 2.1"),
    Case("readme-long-description", readme_project, _readme, "First words.", "Other words."),
]
