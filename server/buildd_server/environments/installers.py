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

from ..errors import DaemonStartupError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from ..config import InstallerOptions

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
        self,
        env_python: Path,
        requirements: Sequence[str],
        options: InstallerOptions,
        *,
        cache_dir: Path | None = None,
    ) -> tuple[list[str], dict[str, str]]:
        """The install command; ``cache_dir``: a private cache to hard-link files from."""
        ...


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
        self,
        env_python: Path,
        requirements: Sequence[str],
        options: InstallerOptions,
        *,
        cache_dir: Path | None = None,
    ) -> tuple[list[str], dict[str, str]]:
        # pip copies every file: it has no cache to link from (cache_dir unused).
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
            # Bytecode is compiled in the background, after the install
            # (bytecode.py): the first hook need not wait for all of it.
            "--no-compile",
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
        self,
        env_python: Path,
        requirements: Sequence[str],
        options: InstallerOptions,
        *,
        cache_dir: Path | None = None,
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
            # No --compile-bytecode: bytecode is compiled in the background
            # (bytecode.py), the first hook need not wait for all of it.
            *_link_flags(cache_dir),
            "--no-progress",
            "--color",
            "never",
            *_option_flags(options),
            "--",
            *requirements,
        ]
        return argv, env

    def venv_command(
        self, interpreter: str, path: Path, *, cache_dir: Path | None = None
    ) -> tuple[list[str], dict[str, str]]:
        """``uv venv``: a bare virtual environment (no pip) in a few milliseconds."""
        argv = [self.uv, "venv", "--no-config", "--no-project", "--no-python-downloads"]
        argv += ["--python", interpreter, "--quiet", "--color", "never"]
        if cache_dir is not None:
            argv += ["--cache-dir", str(cache_dir)]
        return [*argv, "--", str(path)], base_environment()


def _link_flags(cache_dir: Path | None) -> list[str]:
    if cache_dir is None:
        # Hard links into a cache that is not ours (the user's) would let a
        # backend that edits its own files change that cache, and every
        # environment made from it.
        return ["--link-mode", "copy"]
    # A cache private to the principal (store.py): its files are hard-linked,
    # so an install copies nothing; a change to a linked file is seen by
    # validation (manifest.py) and the cache is then cleared.
    return ["--cache-dir", str(cache_dir), "--link-mode", "hardlink"]


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
