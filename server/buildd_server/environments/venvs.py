"""Making the bare virtual environment an instance starts as.

With uv as the installer, ``uv venv`` (a few milliseconds, no pip); with pip,
or when ``uv venv`` fails for an interpreter, virtualenv, in this process
(the first call imports it: about 0.5 s), seeding pip only when the installer
runs from inside the environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from ..hooks.processes import mentions_enospc
from .installers import UvInstaller

if TYPE_CHECKING:
    from .installers import Installer
    from .interpreters import Interpreter

log = structlog.get_logger("buildd.venvs")


class VenvFailed(OSError):
    """``uv venv`` failed; its last output line says why."""


def make_venv(
    path: Path,
    interpreter: Interpreter,
    installer: Installer,
    *,
    app_data: Path,
    cache_dir: Path | None,
) -> tuple[Path, Path]:
    """A virtual environment at ``path``; returns its python and site-packages."""
    if isinstance(installer, UvInstaller):
        try:
            return _uv_venv(installer, path, interpreter, cache_dir)
        except VenvFailed as exc:
            if exc.errno == 28:
                raise
            log.warning("uv_venv_failed", path=str(path), error=str(exc), fallback="virtualenv")
            _clear(path)
    return _virtualenv(path, interpreter, seed_pip=installer.seeds_pip, app_data=app_data)


def _uv_venv(
    installer: UvInstaller, path: Path, interpreter: Interpreter, cache_dir: Path | None
) -> tuple[Path, Path]:
    argv, environ = installer.venv_command(interpreter.executable, path, cache_dir=cache_dir)
    done = subprocess.run(
        argv,
        env=environ,
        cwd=str(path.parent),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines() or [""]
        full = any(mentions_enospc(line) for line in lines)
        raise VenvFailed(28 if full else 0, f"uv venv exited with {done.returncode}: {lines[-1]}")
    return _layout(path)


def _layout(path: Path) -> tuple[Path, Path]:
    if sys.platform == "win32":
        return path / "Scripts" / "python.exe", path / "Lib" / "site-packages"
    found = sorted(path.glob("lib/*/site-packages"))
    if not found:
        raise VenvFailed(0, f"{path} has no lib/*/site-packages")
    return path / "bin" / "python", found[0]


def _virtualenv(
    path: Path, interpreter: Interpreter, *, seed_pip: bool, app_data: Path
) -> tuple[Path, Path]:
    from virtualenv import cli_run

    args = [
        str(path),
        "--python",
        interpreter.executable,
        "--no-download",
        "--no-periodic-update",
        "--app-data",
        str(app_data),
        # Activation scripts, .gitignore and PEP 832 redirect files are
        # for people; nothing reads them here.
        "--activators",
        "",
        "--no-vcs-ignore",
        "--no-venv-redirect",
    ]
    if seed_pip:
        args += ["--pip", "bundle", "--no-setuptools"]
    else:
        args.append("--no-seed")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUALENV_")}
    environ["VIRTUALENV_CONFIG_FILE"] = os.devnull
    session = cli_run(args, setup_logging=False, env=environ)
    creator = session.creator
    return Path(creator.exe), Path(creator.purelib)


def _clear(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
