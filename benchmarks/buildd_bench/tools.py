"""The wheel builders compared: each run is one whole process, timed start to exit."""

from __future__ import annotations

import contextlib
import math
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .daemon import Daemon
from .projects import Project
from .settings import INDEX_URL, RUN_TIMEOUT, console_script, tail, tool_environ
from .workspace import Workspace

# Tool ids, in the order of the table columns.
WARM = "buildd-warm"
COLD = "buildd-cold"
NEWKEY = "buildd-newkey"
UV = "uv"
PYBUILD = "build"
PIP = "pip"
TOOL_LABELS = {
    WARM: "buildd warm",
    COLD: "buildd new session",
    NEWKEY: "buildd new key",
    UV: "uv build",
    PYBUILD: "python -m build",
    PIP: "pip wheel",
}

# PEP 517 config settings passed to a build (P6: a persistent build folder).
Config = Mapping[str, str]
NO_CONFIG: Config = {}


@dataclass
class Sample:
    """One timed run of one tool on one project."""

    tool: str
    project: str
    round: int
    seconds: float
    ok: bool
    wheel: str = ""
    wheel_files: list[str] = field(default_factory=list)
    error: str = ""
    # The run's whole output (kept until the workspace goes; figures parse it).
    log_path: str = ""


class Tool:
    """A command that builds a wheel of SRC into OUTDIR, timed as a whole process."""

    id = ""

    def command(self, src: Path, outdir: Path, config: Config = NO_CONFIG) -> list[str]:
        raise NotImplementedError

    def environ(self) -> dict[str, str]:
        return tool_environ()

    def before(self) -> None:
        """Untimed preparation of the next run."""

    def after(self) -> None:
        """Untimed cleanup after a run."""


class BuilddWarm(Tool):
    """``buildd-client build --wheel``, the whole CLI process, in one warmed session.

    ``verbose`` adds ``-v``: the daemon's phases (environment created or
    reused, and its path) go to the log as well, for the figures that check
    them. Backend output is in the log either way.
    """

    id = WARM

    def __init__(self, daemon: Daemon, session_id: str, *, verbose: bool = False) -> None:
        self.client = console_script("buildd-client")
        self.daemon = daemon
        self.session_id = session_id
        self.verbose = verbose

    def command(self, src: Path, outdir: Path, config: Config = NO_CONFIG) -> list[str]:
        return [
            self.client,
            "--address",
            self.daemon.address,
            "--session",
            self.session_id,
            *(["-v"] if self.verbose else []),
            "build",
            "--wheel",
            *(f"-C{key}={value}" for key, value in config.items()),
            "-o",
            str(outdir),
            str(src),
        ]


class BuilddCold(BuilddWarm):
    """The same command, as the first build of a session opened just before (untimed)."""

    id = COLD

    def __init__(self, daemon: Daemon, *, verbose: bool = True) -> None:
        super().__init__(daemon, "", verbose=verbose)

    def before(self) -> None:
        opened = subprocess.run(
            [self.client, "--address", self.daemon.address, "session", "open"],
            env=self.environ(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=True,
        )
        self.session_id = opened.stdout.strip()

    def after(self) -> None:
        if self.session_id:
            subprocess.run(
                [
                    *(self.client, "--address", self.daemon.address, "-q"),
                    *("session", "close", self.session_id),
                ],
                env=self.environ(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
            self.session_id = ""


class BuilddNewKey(BuilddCold):
    """The first build of a new session on a daemon whose store lacks the key.

    ``empty_store`` runs (untimed) before the session is opened: it empties
    the daemon's store and raises when an instance is still on disk, so the
    timed build always creates its environment.
    """

    id = NEWKEY

    def __init__(self, daemon: Daemon, empty_store: Callable[[], None]) -> None:
        super().__init__(daemon)
        self.empty_store = empty_store

    def before(self) -> None:
        self.empty_store()
        super().before()


class UvBuild(Tool):
    id = UV

    def __init__(self, uv: str) -> None:
        self.uv = uv

    def command(self, src: Path, outdir: Path, config: Config = NO_CONFIG) -> list[str]:
        return [
            self.uv,
            "build",
            "--wheel",
            "--no-config",
            "--index-url",
            INDEX_URL,
            "--python",
            sys.executable,
            *(f"--config-setting={key}={value}" for key, value in config.items()),
            "--out-dir",
            str(outdir),
            str(src),
        ]


class PyBuild(Tool):
    """``python -m build --wheel``: pypa/build, which installs with pip (its default)."""

    id = PYBUILD

    def command(self, src: Path, outdir: Path, config: Config = NO_CONFIG) -> list[str]:
        return [
            *(sys.executable, "-m", "build", "--wheel"),
            *(f"--config-setting={key}={value}" for key, value in config.items()),
            *("--outdir", str(outdir), str(src)),
        ]

    def environ(self) -> dict[str, str]:
        # build has no index flag: the pip it runs reads the index from here.
        return tool_environ({"PIP_INDEX_URL": INDEX_URL})


class PipWheel(Tool):
    """``pip wheel --no-deps``; ``verbose`` adds ``-v``, without which pip hides the
    backend's output (P6 reads the compiler lines from it)."""

    id = PIP

    def __init__(self, *, verbose: bool = False) -> None:
        self.verbose = verbose

    def command(self, src: Path, outdir: Path, config: Config = NO_CONFIG) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            *(["-v"] if self.verbose else []),
            "--no-deps",
            "--index-url",
            INDEX_URL,
            *(f"--config-settings={key}={value}" for key, value in config.items()),
            "--wheel-dir",
            str(outdir),
            str(src),
        ]


def find_uv() -> str:
    try:
        import uv

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            raise SystemExit("uv not found: install buildd (it depends on uv)") from None
        return found


def run_tool(tool: Tool, ws: Workspace, project: Project, round_: int) -> Sample:
    """Restore the tree, then time the tool's whole process with perf_counter."""
    src = ws.fresh_tree(project)
    return build_once(tool, ws, src, project.id, round_)


def build_once(
    tool: Tool, ws: Workspace, src: Path, label: str, round_: int, config: Config = NO_CONFIG
) -> Sample:
    """Time one build of ``src`` (as it is) into a fresh output folder; check its wheel.

    The tool's untimed preparation and cleanup run around the timed process;
    a preparation that fails makes a failed sample, not a crash of the run.
    """
    outdir = ws.fresh_outdir()
    log_path = ws.log_file(f"r{round_}-{label}-{tool.id}.log")
    sample = Sample(tool.id, label, round_, math.nan, ok=False, log_path=str(log_path))
    try:
        tool.before()
    except Exception as exc:
        sample.error = f"the untimed preparation failed: {exc!r}"
        with contextlib.suppress(Exception):
            tool.after()
        shutil.rmtree(outdir, ignore_errors=True)
        return sample
    try:
        command = tool.command(src, outdir, config)
        env = tool.environ()
        with log_path.open("wb") as out:
            start = time.perf_counter()
            try:
                returncode = subprocess.run(
                    command,
                    cwd=ws.root,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=False,
                    timeout=RUN_TIMEOUT,
                ).returncode
            except subprocess.TimeoutExpired:
                returncode = None
            sample.seconds = time.perf_counter() - start
    finally:
        tool.after()
    wheels = sorted(outdir.glob("*.whl"))
    if returncode is None:
        sample.error = f"killed after {RUN_TIMEOUT:.0f}s:\n{tail(log_path)}"
    elif returncode != 0:
        sample.error = f"exit code {returncode}:\n{tail(log_path)}"
    elif len(wheels) != 1:
        sample.error = f"expected one wheel in {outdir}, found {[w.name for w in wheels]}"
    else:
        sample.ok = True
        sample.wheel = wheels[0].name
        with zipfile.ZipFile(wheels[0]) as wheel:
            sample.wheel_files = sorted(wheel.namelist())
    shutil.rmtree(outdir, ignore_errors=True)
    return sample
