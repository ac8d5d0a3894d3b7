"""The wheel builders compared: each run is one whole process, timed start to exit."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .daemon import Daemon
from .projects import Project
from .settings import INDEX_URL, RUN_TIMEOUT, console_script, tail, tool_environ
from .workspace import Workspace

# Tool ids, in the order of the table columns.
WARM = "buildd-warm"
COLD = "buildd-cold"
UV = "uv"
PYBUILD = "build"
PIP = "pip"
TOOL_LABELS = {
    WARM: "buildd warm",
    COLD: "buildd new session",
    UV: "uv build",
    PYBUILD: "python -m build",
    PIP: "pip wheel",
}


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


class Tool:
    """A command that builds a wheel of SRC into OUTDIR, timed as a whole process."""

    id = ""

    def command(self, src: Path, outdir: Path) -> list[str]:
        raise NotImplementedError

    def environ(self) -> dict[str, str]:
        return tool_environ()

    def before(self) -> None:
        """Untimed preparation of the next run."""

    def after(self) -> None:
        """Untimed cleanup after a run."""


class BuilddWarm(Tool):
    """``buildd-client build --wheel``, the whole CLI process, in one warmed session."""

    id = WARM

    def __init__(self, daemon: Daemon, session_id: str) -> None:
        self.client = console_script("buildd-client")
        self.daemon = daemon
        self.session_id = session_id

    def command(self, src: Path, outdir: Path) -> list[str]:
        return [
            self.client,
            "--address",
            self.daemon.address,
            "--session",
            self.session_id,
            "build",
            "--wheel",
            "-o",
            str(outdir),
            str(src),
        ]


class BuilddCold(BuilddWarm):
    """The same command, as the first build of a session opened just before (untimed)."""

    id = COLD

    def __init__(self, daemon: Daemon) -> None:
        super().__init__(daemon, "")

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


class UvBuild(Tool):
    id = UV

    def __init__(self, uv: str) -> None:
        self.uv = uv

    def command(self, src: Path, outdir: Path) -> list[str]:
        return [
            self.uv,
            "build",
            "--wheel",
            "--no-config",
            "--index-url",
            INDEX_URL,
            "--python",
            sys.executable,
            "--out-dir",
            str(outdir),
            str(src),
        ]


class PyBuild(Tool):
    """``python -m build --wheel``: pypa/build, which installs with pip (its default)."""

    id = PYBUILD

    def command(self, src: Path, outdir: Path) -> list[str]:
        return [sys.executable, "-m", "build", "--wheel", "--outdir", str(outdir), str(src)]

    def environ(self) -> dict[str, str]:
        # build has no index flag: the pip it runs reads the index from here.
        return tool_environ({"PIP_INDEX_URL": INDEX_URL})


class PipWheel(Tool):
    id = PIP

    def command(self, src: Path, outdir: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--index-url",
            INDEX_URL,
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
    outdir = ws.fresh_outdir()
    log_path = ws.log_file(f"r{round_}-{project.id}-{tool.id}.log")
    tool.before()
    try:
        command = tool.command(src, outdir)
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
            seconds = time.perf_counter() - start
    finally:
        tool.after()
    wheels = sorted(outdir.glob("*.whl"))
    sample = Sample(tool.id, project.id, round_, seconds, ok=False)
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
