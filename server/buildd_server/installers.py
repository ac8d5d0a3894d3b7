"""The two installers that fill environments: uv and pip.

An installer only turns (environment python, requirements, options) into an
argv and an environment; running it is the factory's job. Both are isolated
from the machine's installer configuration (pip.conf, uv.toml, ``PIP_*`` and
``UV_*`` variables): the environment key records the options the daemon was
given, so nothing outside the key may change what gets installed.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .errors import DaemonStartupError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from .config import InstallerOptions

# Variables that say where to reach the network or how to find the machine's
# tools, but not what to install. Everything else (PIP_*, UV_*, VIRTUAL_ENV,
# PYTHONPATH, XDG_CONFIG_*...) stays out.
_PASS_THROUGH = frozenset(
    {
        "PATH",
        "HOME",
        "TMPDIR",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        # A shared-libpython interpreter may need it to start at all.
        "LD_LIBRARY_PATH",
        # Where caches live, not what they hold.
        "XDG_CACHE_HOME",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
        # Windows needs these for sockets and temp files.
        "SYSTEMROOT",
        "COMSPEC",
        "PATHEXT",
        "TEMP",
        "TMP",
        "USERPROFILE",
        "LOCALAPPDATA",
        "APPDATA",
    }
)


class Installer(Protocol):
    """Builds the command that installs requirements into one environment."""

    @property
    def name(self) -> str: ...

    @property
    def seeds_pip(self) -> bool:
        """Whether the environment must hold pip itself (it runs pip from inside)."""
        ...

    def command(
        self, env_python: Path, requirements: Sequence[str], options: InstallerOptions
    ) -> tuple[list[str], dict[str, str]]: ...


def base_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The daemon's environment cut down to what an installer may see."""
    source = os.environ if environ is None else environ
    env = {name: value for name, value in source.items() if name in _PASS_THROUGH}
    # Lines must arrive as they are written, and decode the same everywhere.
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def _option_flags(options: InstallerOptions) -> list[str]:
    flags: list[str] = []
    if options.index_url:
        flags += ["--index-url", options.index_url]
    for url in options.extra_index_urls:
        flags += ["--extra-index-url", url]
    for link in options.find_links:
        flags += ["--find-links", link]
    if options.no_index:
        flags.append("--no-index")
    return flags


@dataclass(frozen=True)
class PipInstaller:
    """pip from inside the environment (virtualenv seeds it)."""

    name: str = "pip"
    seeds_pip: bool = True

    def command(
        self, env_python: Path, requirements: Sequence[str], options: InstallerOptions
    ) -> tuple[list[str], dict[str, str]]:
        environ = os.environ
        env = base_environment(environ)
        # os.devnull is pip's documented switch to skip every config file,
        # including the global /etc/xdg/pip/pip.conf that --isolated still reads.
        env["PIP_CONFIG_FILE"] = os.devnull
        argv = [
            str(env_python),
            "-m",
            "pip",
            "install",
            "--isolated",
            "--no-input",
            "--disable-pip-version-check",
            "--compile",
            "--progress-bar",
            "off",
            "--no-color",
            "--no-warn-script-location",
        ]
        # --isolated ignores PIP_CERT, so carry the certificate over explicitly.
        if environ.get("PIP_CERT"):
            argv += ["--cert", environ["PIP_CERT"]]
        argv += _option_flags(options)
        argv += ["--", *requirements]
        return argv, env


@dataclass(frozen=True)
class UvInstaller:
    """``uv pip install --python <env python>``: the environment needs no pip."""

    uv: str
    name: str = "uv"
    seeds_pip: bool = False

    def command(
        self, env_python: Path, requirements: Sequence[str], options: InstallerOptions
    ) -> tuple[list[str], dict[str, str]]:
        environ = os.environ
        env = base_environment(environ)
        if environ.get("PIP_CERT") and "SSL_CERT_FILE" not in env:
            env["SSL_CERT_FILE"] = environ["PIP_CERT"]
        argv = [
            self.uv,
            "pip",
            "install",
            "--no-config",
            "--python",
            str(env_python),
            # Hooks run with PYTHONDONTWRITEBYTECODE=1 on some machines: without
            # .pyc files every hook call would compile the backend again.
            "--compile-bytecode",
            # Hard links into uv's cache would let a backend that edits its own
            # files (or a cache prune) change another environment.
            "--link-mode",
            "copy",
            "--no-progress",
            "--color",
            "never",
            *_option_flags(options),
            "--",
            *requirements,
        ]
        return argv, env


def find_uv() -> str | None:
    """The uv binary: the one of the ``uv`` package, else one on PATH."""
    try:
        import uv

        found = uv.find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = None
    if found and os.access(found, os.X_OK):
        return str(found)
    return shutil.which("uv")


def select_installer(name: str) -> Installer:
    """``auto`` prefers uv (seconds faster per environment) and falls back to pip."""
    if name == "pip":
        return PipInstaller()
    if name in ("uv", "auto"):
        uv = find_uv()
        if uv is not None:
            return UvInstaller(uv)
        if name == "auto":
            return PipInstaller()
        raise DaemonStartupError(
            "installer 'uv' was requested, but neither the uv package nor a uv on PATH was found"
        )
    raise DaemonStartupError(f"installer {name!r} is not one of 'auto', 'pip', 'uv'")
