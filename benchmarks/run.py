"""buildd's benchmark harness (issue 5): buildd side by side with uv, pypa/build and pip.

One command, run from the repository root in the venv that has buildd installed
(plus pypa/build: ``pip install build``)::

    python benchmarks/run.py [--rounds N] [--projects NAME ...] [--only P1,P2,...] [--out FILE]

It downloads the pinned sdists of ``benchmarks/projects.toml`` once into
``benchmarks/.cache``, starts its own daemon on a private socket under /tmp
with its own state folder, measures the figures P1 to P5 and prints a Markdown
report, also written to ``--out`` (default ``benchmarks/results/latest.md``)
with every raw sample next to it as JSON. ``benchmarks/README.md`` explains
each figure and how the medians and ratios are computed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from buildd_client import Client

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - buildd depends on tomli there
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
PROJECTS_FILE = HERE / "projects.toml"
DEFAULT_OUT = HERE / "results" / "latest.md"

# Every tool resolves build requirements from this index and nothing else.
INDEX_URL = "https://pypi.org/simple"
# A run that takes longer than this is killed and counted as failed.
RUN_TIMEOUT = 900.0

FIGURES = ("P1", "P1b", "P2", "P3", "P4", "P5")
BUILD_FIGURES = frozenset({"P1", "P1b", "P3"})

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

# Runs inside a build environment's interpreter, in the source tree: imports the
# backend, then times prepare_metadata_for_build_wheel alone (P2) and reports
# how long the import took. Its parent measures the CPU time of the whole
# process (P4). Arguments: backend spec, JSON list of backend-path entries.
HOOK_PROBE = r"""
import importlib, json, os, sys, tempfile, time

spec, backend_path = sys.argv[1], json.loads(sys.argv[2])
for entry in reversed(backend_path):
    sys.path.insert(0, os.path.abspath(entry))
t0 = time.perf_counter()
module, _, attrs = spec.partition(":")
backend = importlib.import_module(module.strip())
for part in attrs.strip().split(".") if attrs.strip() else ():
    backend = getattr(backend, part)
t1 = time.perf_counter()
out = tempfile.mkdtemp(prefix="hook-probe-")
hook = getattr(backend, "prepare_metadata_for_build_wheel", None)
t2 = time.perf_counter()
if hook is not None:
    hook(out, None)
else:  # what pyproject_hooks falls back to
    backend.build_wheel(out, None)
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "hook": t3 - t2, "has_hook": hook is not None}))
"""

# Runs inside a build environment's interpreter: what is installed there.
LIST_DISTRIBUTIONS = (
    "import importlib.metadata as m, json; "
    "print(json.dumps(sorted({d.metadata['Name'] + '==' + d.version for d in m.distributions()})))"
)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ projects --


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


def tool_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any installer or buildd configuration.

    The machine's pip.conf (extra local indexes, find-links) must not matter:
    PIP_CONFIG_FILE points at /dev/null, every PIP_*/UV_*/BUILDD_* variable
    goes, and each tool is told the index explicitly. The pip version check
    is off so that no tool makes an extra request per run.
    """
    drop = ("PIP_", "UV_", "BUILDD_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX"):
        env.pop(name, None)
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra or {})
    return env


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


# ----------------------------------------------------------------- workspace --


class Workspace:
    """A private folder under /tmp: the daemon's socket and state, work trees, outputs."""

    def __init__(self, pristine: Mapping[str, Path], keep: bool) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="buildd-bench-", dir="/tmp"))
        self.pristine = dict(pristine)
        self.keep = keep
        self._outputs = 0
        for name in ("work", "out", "logs"):
            (self.root / name).mkdir()

    def tree(self, project: Project, copy: str = "") -> Path:
        """The work tree of ``project`` at a stable path (the daemon keys affinity by it)."""
        return self.root / "work" / (copy or "main") / project.id

    def fresh_tree(self, project: Project, copy: str = "") -> Path:
        """Put back a pristine copy of the sdist tree: no build/, no *.egg-info, no objects.

        Every tool starts from exactly what the sdist holds, so no tool can
        reuse another's (or its own earlier) in-tree build output.
        """
        path = self.tree(project, copy)
        if path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self.pristine[project.id], path, symlinks=True)
        return path

    def fresh_outdir(self) -> Path:
        self._outputs += 1
        path = self.root / "out" / f"{self._outputs:05d}"
        path.mkdir()
        return path

    def log_file(self, name: str) -> Path:
        return self.root / "logs" / name

    def cleanup(self) -> None:
        if self.keep:
            log(f"kept {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# -------------------------------------------------------------------- daemon --


def console_script(name: str) -> str:
    """A console script of this venv (next to sys.executable), else from PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found next to {sys.executable} nor on PATH")
    return found


class Daemon:
    """A buildd-server started by the harness on a private socket with its own state folder."""

    def __init__(self, folder: Path, name: str = "daemon") -> None:
        self.folder = folder
        self.socket = folder / f"{name}.sock"
        self.state_dir = folder / f"{name}-state"
        self.log_path = folder / f"{name}.log"
        self.address = f"unix://{self.socket}"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 60.0) -> None:
        command = [
            console_script("buildd-server"),
            "--address",
            self.address,
            "--state-dir",
            str(self.state_dir),
            "--index-url",
            INDEX_URL,
            # Longer than any benchmark: the warm session must not expire
            # between two rounds on a slow machine.
            "--session-ttl",
            "86400",
        ]
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            env=tool_environ(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(
                    f"buildd-server exited with {self.process.returncode}:\n{tail(self.log_path)}"
                )
            if self.socket.exists():
                try:
                    with self.client() as client:
                        client.status()
                    return
                except Exception as exc:
                    last_error = str(exc)
            time.sleep(0.05)
        self.stop()
        raise SystemExit(
            f"buildd-server did not answer at {self.address} within {timeout:.0f}s "
            f"({last_error}):\n{tail(self.log_path)}"
        )

    def client(self) -> Client:
        from buildd_client import Client

        return Client(self.address, autostart=False)

    def rss_kib(self) -> int:
        """VmRSS of the daemon process, from /proc/PID/status."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS in /proc/{self.pid}/status")

    def cpu_seconds(self) -> float:
        """utime + stime + cutime + cstime of the daemon: itself and its reaped children."""
        raw = Path(f"/proc/{self.pid}/stat").read_text()
        fields = raw[raw.rindex(")") + 2 :].split()
        # Fields 14-17 of proc(5); ``fields`` starts at field 3.
        ticks = sum(int(value) for value in fields[11:15])
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                log(f"buildd-server {self.pid} ignored SIGTERM for 60s; killing it")
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


# --------------------------------------------------------------------- tools --


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


# ------------------------------------------------------------------- context --


@dataclass
class HookCost:
    """A build environment's own cost for prepare_metadata_for_build_wheel."""

    env_python: str
    hook_seconds: list[float]  # the hook call alone, backend already imported
    import_seconds: list[float]  # importing the backend
    process_cpu: list[float]  # CPU (user+sys) of the whole fresh process
    process_wall: list[float]
    has_hook: bool


class Context:
    """What the figures share: the options, the projects, the workspace and the daemon."""

    def __init__(self, args: argparse.Namespace, projects: list[Project], ws: Workspace) -> None:
        self.args = args
        self.projects = projects
        self.ws = ws
        self._daemon: Daemon | None = None
        self._warm_session = ""
        self.warmed: set[str] = set()  # projects with an environment in the warm session
        self.samples: list[Sample] = []
        self.hook_costs: dict[str, HookCost] = {}
        self.env_packages: dict[str, list[str]] = {}
        self.raw: dict[str, Any] = {}

    @property
    def daemon(self) -> Daemon:
        if self._daemon is None:
            daemon = Daemon(self.ws.root)
            log(f"starting buildd-server at {daemon.address}")
            daemon.start()
            self._daemon = daemon
        return self._daemon

    def warm_session(self) -> str:
        """The session of the warm runs, opened once."""
        if not self._warm_session:
            with self.daemon.client() as client:
                self._warm_session = client.open_session("buildd-bench/warm").id
        return self._warm_session

    def ensure_warm(self, project: Project) -> None:
        """Make sure the warm session has an environment for ``project`` (untimed)."""
        if project.id in self.warmed:
            return
        session_id = self.warm_session()
        src = self.ws.fresh_tree(project)
        with self.daemon.client() as client:
            client.join_session(session_id).metadata(src).result()
        self.warmed.add(project.id)

    def warm_env_python(self, project: Project) -> str:
        """The interpreter of the warm session's environment that ``project`` is bound to."""
        self.ensure_warm(project)
        src = os.path.realpath(self.ws.tree(project))
        with self.daemon.client() as client:
            status = client.status(self.warm_session())
        for session in status.sessions:
            for env in session.environments:
                if any(os.path.realpath(s) == src for s in env.sources):
                    return str(Path(env.path) / "bin" / "python")
        raise RuntimeError(f"the warm session has no environment bound to {src}")

    def hook_cost(self, project: Project) -> HookCost:
        """Time the metadata hook in the warm environment, one fresh process per sample."""
        if project.id in self.hook_costs:
            return self.hook_costs[project.id]
        python = self.warm_env_python(project)
        system = read_build_system(self.ws.pristine[project.id])
        probe = self.ws.root / "hook_probe.py"
        probe.write_text(HOOK_PROBE, encoding="utf-8")
        env = tool_environ(
            {
                "VIRTUAL_ENV": str(Path(python).parent.parent),
                "PATH": f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                "PYTHONNOUSERSITE": "1",
            }
        )
        cost = HookCost(python, [], [], [], [], has_hook=True)
        # The tree as a warm IDE session sees it: metadata prepared once already.
        src = self.ws.fresh_tree(project)
        for run in range(self.args.hook_runs + 1):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            completed = subprocess.run(
                [python, str(probe), system.backend, json.dumps(list(system.backend_path))],
                cwd=src,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                check=False,
            )
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if completed.returncode != 0:
                raise RuntimeError(
                    f"the hook probe failed for {project.id} in {python}:\n{completed.stderr}"
                )
            result = json.loads(completed.stdout.strip().splitlines()[-1])
            cost.has_hook = bool(result["has_hook"])
            if run == 0:
                continue  # the first run writes the in-tree egg-info etc.
            cost.hook_seconds.append(float(result["hook"]))
            cost.import_seconds.append(float(result["import"]))
            cost.process_wall.append(wall)
            cost.process_cpu.append(
                (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            )
        self.hook_costs[project.id] = cost
        return cost

    def record_env_packages(self) -> None:
        """What each warm environment holds (the backends' versions), for the report."""
        for project in self.projects:
            if project.id not in self.warmed or project.id in self.env_packages:
                continue
            python = self.warm_env_python(project)
            listed = subprocess.run(
                [python, "-c", LIST_DISTRIBUTIONS],
                # Not the harness's cwd: the repository's buildd.egg-info would show.
                cwd=self.ws.root,
                env=tool_environ(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                check=False,
            )
            if listed.returncode == 0:
                self.env_packages[project.id] = json.loads(listed.stdout)

    def close(self) -> None:
        if self._daemon is not None:
            with contextlib.suppress(Exception):
                self.raw["daemon_rss_kib_at_end"] = self._daemon.rss_kib()
            self._daemon.stop()
            # Keep the daemon's log next to the report (the workspace goes away).
            saved = self.args.out.with_suffix(".daemon.log")
            saved.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.copyfile(self._daemon.log_path, saved)
            if self._daemon.process is not None and self._daemon.process.returncode not in (0,):
                log(f"buildd-server exited with {self._daemon.process.returncode}")
            self._daemon = None


# ------------------------------------------------------------------- figures --


@dataclass
class Figure:
    id: str
    figure: str
    goal: str
    measured: str
    met: bool | None
    details: str = ""


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def geomean(values: Sequence[float]) -> float:
    usable = [v for v in values if v > 0 and math.isfinite(v)]
    if not usable or len(usable) != len(values):
        return math.nan
    return math.exp(sum(math.log(v) for v in usable) / len(usable))


def fmt_s(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds:.3f}"


def fmt_ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def fmt_x(ratio: float) -> str:
    return "n/a" if math.isnan(ratio) else f"{ratio:.2f}x"


def pctl(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class BuildMatrix:
    """Every tool on every project, interleaved run by run, with the medians."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.samples: list[Sample] = []

    def run(self) -> None:
        ctx = self.ctx
        daemon = ctx.daemon
        tools: list[Tool] = [
            BuilddWarm(daemon, ctx.warm_session()),
            BuilddCold(daemon),
            UvBuild(find_uv()),
            PyBuild(),
            PipWheel(),
        ]
        # Warm every cache (uv's, pip's HTTP cache, the warm session) once, untimed.
        for project in ctx.projects:
            for tool in tools:
                log(f"warm-up: {TOOL_LABELS[tool.id]} on {project.id}")
                sample = run_tool(tool, ctx.ws, project, 0)
                if not sample.ok:
                    log(f"warm-up FAILED: {TOOL_LABELS[tool.id]} on {project.id}: {sample.error}")
                elif tool.id == WARM:
                    ctx.warmed.add(project.id)
        for round_ in range(1, ctx.args.rounds + 1):
            # Rotate the tool order every round: no tool always runs right after another.
            shift = (round_ - 1) % len(tools)
            order = tools[shift:] + tools[:shift]
            for project in ctx.projects:
                for tool in order:
                    sample = run_tool(tool, ctx.ws, project, round_)
                    self.samples.append(sample)
                    state = f"{sample.seconds:.3f}s" if sample.ok else "FAILED"
                    log(f"round {round_}/{ctx.args.rounds} {project.id:18} {tool.id:12} {state}")
                    if not sample.ok:
                        log(sample.error)
        ctx.samples.extend(self.samples)

    def times(self, tool: str, project: Project) -> list[float]:
        return [
            s.seconds for s in self.samples if s.tool == tool and s.project == project.id and s.ok
        ]

    def failures(self, tool: str, project: Project) -> int:
        return sum(
            1 for s in self.samples if s.tool == tool and s.project == project.id and not s.ok
        )

    def median(self, tool: str, project: Project) -> float:
        return median(self.times(tool, project))

    def ratios(self, slow: str, fast: str) -> list[float]:
        """Per project: median(slow) / median(fast); above 1 means ``fast`` is faster."""
        return [self.median(slow, p) / self.median(fast, p) for p in self.ctx.projects]

    def table(self) -> str:
        tools = list(TOOL_LABELS)
        head = ["project", "backend", *(TOOL_LABELS[t] for t in tools)]
        head += ["uv / warm", "build / warm", "pip / warm", "uv / new session"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        columns: dict[str, list[float]] = {}
        for project in self.ctx.projects:
            cells = [project.id, project.backend]
            for tool in tools:
                value = fmt_s(self.median(tool, project))
                failed = self.failures(tool, project)
                cells.append(value + (f" ({failed} failed)" if failed else ""))
            for name, (slow, fast) in {
                "uv/warm": (UV, WARM),
                "build/warm": (PYBUILD, WARM),
                "pip/warm": (PIP, WARM),
                "uv/cold": (UV, COLD),
            }.items():
                ratio = self.median(slow, project) / self.median(fast, project)
                columns.setdefault(name, []).append(ratio)
                cells.append(fmt_x(ratio))
            lines.append("| " + " | ".join(cells) + " |")
        geo = ["**geometric mean**", ""]
        geo += [fmt_s(geomean([self.median(t, p) for p in self.ctx.projects])) for t in tools]
        geo += [f"**{fmt_x(geomean(values))}**" for values in columns.values()]
        lines.append("| " + " | ".join(geo) + " |")
        return "\n".join(lines)

    def spread_table(self) -> str:
        tools = list(TOOL_LABELS)
        head = ["project", *(TOOL_LABELS[t] for t in tools)]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for project in self.ctx.projects:
            cells = [project.id]
            for tool in tools:
                values = self.times(tool, project)
                cells.append(f"{min(values):.3f} – {max(values):.3f}" if values else "n/a")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def wheel_check(self) -> str:
        """Do all tools produce the same wheel name and the same list of files?"""
        notes = []
        for project in self.ctx.projects:
            seen: dict[tuple[str, tuple[str, ...]], set[str]] = {}
            for s in self.samples:
                if s.project == project.id and s.ok:
                    seen.setdefault((s.wheel, tuple(s.wheel_files)), set()).add(s.tool)
            if len(seen) > 1:
                variants = "; ".join(
                    f"{', '.join(sorted(tools))}: {name} ({len(files)} files)"
                    for (name, files), tools in seen.items()
                )
                notes.append(f"- {project.id}: the tools' wheels differ: {variants}")
        if not notes:
            return "All tools produced the same wheel file name and the same list of files."
        return "\n".join(notes)


def figure_p1(matrix: BuildMatrix) -> Figure:
    ratio = geomean(matrix.ratios(UV, WARM))
    return Figure(
        "P1",
        "warm `buildd-client build --wheel` (whole CLI process) vs `uv build --wheel`, "
        "geometric mean of the per-project median ratios",
        "at least 4x faster",
        fmt_x(ratio),
        None if math.isnan(ratio) else ratio >= 4.0,
    )


def figure_p1b(matrix: BuildMatrix) -> Figure:
    ratio = geomean(matrix.ratios(PYBUILD, WARM))
    return Figure(
        "P1b",
        "the same vs `python -m build --wheel`",
        "at least 12x faster",
        fmt_x(ratio),
        None if math.isnan(ratio) else ratio >= 12.0,
    )


def figure_p3(matrix: BuildMatrix) -> Figure:
    ratios = matrix.ratios(UV, COLD)
    ratio = geomean(ratios)
    slower = [
        f"{p.id} ({fmt_x(r)})"
        for p, r in zip(matrix.ctx.projects, ratios, strict=True)
        if not r >= 1.0
    ]
    details = f"Slower than uv on: {', '.join(slower)}." if slower else "Not slower on any project."
    return Figure(
        "P3",
        "first build in a new session vs `uv build --wheel` "
        "(uv time / buildd time, geometric mean)",
        "no slower (at least 1.00x)",
        fmt_x(ratio),
        None if math.isnan(ratio) else ratio >= 1.0,
        details,
    )


def figure_p2(ctx: Context) -> Figure:
    """Warm metadata through the client library minus the hook's own cost."""
    calls = ctx.args.p2_calls
    lines = [
        f"{calls} calls of `session.metadata(src).result()` per project on one open channel, "
        "in the warm session, after one untimed call; the hook's own cost is "
        "`prepare_metadata_for_build_wheel` timed alone in a fresh process of the same "
        f"environment with the backend already imported ({ctx.args.hook_runs} processes, "
        "after one untimed).",
        "",
        "| project | client call median | p90 | hook alone median | backend import median "
        "| overhead (call − hook) |",
        "|---|---|---|---|---|---|",
    ]
    overheads: list[float] = []
    raw: dict[str, Any] = {}
    for project in ctx.projects:
        ctx.ensure_warm(project)
        src = ctx.ws.fresh_tree(project)
        with ctx.daemon.client() as client:
            session = client.join_session(ctx.warm_session())
            session.metadata(src).result()  # untimed: the tree as a warm IDE sees it
            times: list[float] = []
            for _ in range(calls):
                start = time.perf_counter()
                session.metadata(src).result()
                times.append(time.perf_counter() - start)
        cost = ctx.hook_cost(project)
        overhead = median(times) - median(cost.hook_seconds)
        overheads.append(overhead)
        note = "" if cost.has_hook else " (no prepare hook: build_wheel timed)"
        lines.append(
            f"| {project.id} | {fmt_ms(median(times))} | {fmt_ms(pctl(times, 0.9))} "
            f"| {fmt_ms(median(cost.hook_seconds))}{note} | {fmt_ms(median(cost.import_seconds))} "
            f"| {fmt_ms(overhead)} |"
        )
        raw[project.id] = {"calls": times, "hook": asdict(cost)}
        log(f"P2 {project.id}: call {fmt_ms(median(times))}, overhead {fmt_ms(overhead)}")
    ctx.raw["P2"] = raw
    worst = max(overheads) if overheads else math.nan
    return Figure(
        "P2",
        "warm metadata through the client library, minus the hook's own cost "
        "(worst project's median)",
        "at most 15 ms at the median",
        fmt_ms(worst),
        None if math.isnan(worst) else worst <= 0.015,
        "\n".join(lines),
    )


def p4_worker(address: str, session_id: str, src: str, calls: int) -> int:
    """One P4 client process: warm up, say ready, wait for go, make ``calls`` calls."""
    from buildd_client import Client

    errors: list[str] = []
    latencies: list[float] = []
    with Client(address, autostart=False) as client:
        session = client.join_session(session_id)
        try:
            session.metadata(src).result()
        except Exception as exc:
            errors.append(f"warm-up: {exc!r}")
        print("ready", flush=True)
        sys.stdin.readline()
        start = time.perf_counter()
        for _ in range(calls):
            t0 = time.perf_counter()
            try:
                session.metadata(src).result()
                latencies.append(time.perf_counter() - t0)
            except Exception as exc:
                errors.append(repr(exc))
        end = time.perf_counter()
    print(json.dumps({"start": start, "end": end, "latencies": latencies, "errors": errors}))
    return 0


def figure_p4(ctx: Context) -> Figure:
    """16 concurrent client processes x 25 metadata calls in one shared session."""
    clients, calls = ctx.args.p4_clients, ctx.args.p4_calls
    cores = len(os.sched_getaffinity(0))
    daemon = ctx.daemon
    with daemon.client() as client:
        session_id = client.open_session("buildd-bench/p4").id
    assignment = [ctx.projects[i % len(ctx.projects)] for i in range(clients)]
    sources = [ctx.ws.fresh_tree(p, copy=f"p4-{i:02d}") for i, p in enumerate(assignment)]
    workers: list[subprocess.Popen[str]] = []
    stderr_paths = [ctx.ws.log_file(f"p4-client-{i:02d}.log") for i in range(clients)]
    try:
        for i, src in enumerate(sources):
            with stderr_paths[i].open("w") as err:
                workers.append(
                    subprocess.Popen(
                        [
                            *(sys.executable, __file__, "--p4-worker", daemon.address),
                            *(session_id, str(src), str(calls)),
                        ],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=err,
                        text=True,
                        env=tool_environ(),
                    )
                )
        log(f"P4: {clients} clients warming up (each one untimed call, concurrently)")
        for i, worker in enumerate(workers):
            assert worker.stdout is not None
            line = worker.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"P4 client {i} did not start:\n{tail(stderr_paths[i])}")
        cpu_before = daemon.cpu_seconds()
        log(f"P4: go ({clients} x {calls} calls)")
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = []
        for i, worker in enumerate(workers):
            out, _ = worker.communicate(timeout=3600)
            if worker.returncode != 0:
                raise RuntimeError(f"P4 client {i} failed:\n{tail(stderr_paths[i])}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        cpu_after = daemon.cpu_seconds()
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        with daemon.client() as client, contextlib.suppress(Exception):
            client.close_session(session_id)
    window = max(r["end"] for r in results) - min(r["start"] for r in results)
    latencies = [v for r in results for v in r["latencies"]]
    errors = [e for r in results for e in r["errors"]]
    done = len(latencies)
    throughput = done / window
    # The CPU-bound limit: the cores divided by the CPU one fresh hook subprocess
    # needs, averaged over the calls actually made (each client's project).
    cpu_per_call = {p.id: median(ctx.hook_cost(p).process_cpu) for p in ctx.projects}
    mean_cpu = statistics.fmean(cpu_per_call[p.id] for p in assignment)
    limit = cores / mean_cpu
    share = throughput / limit
    daemon_cpu = (cpu_after - cpu_before) / max(done, 1)
    details = "\n".join(
        [
            f"{clients} client processes (client library, one channel each) in one shared "
            f"session, client i on a private copy of project i mod {len(ctx.projects)}; "
            f"each makes one untimed call, waits for all, then {calls} timed calls.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| calls completed / errors | {done} / {len(errors)} |",
            f"| window (first start to last end) | {window:.2f} s |",
            f"| throughput | {throughput:.2f} calls/s |",
            f"| latency median / p90 / max | {fmt_ms(median(latencies))} / "
            f"{fmt_ms(pctl(latencies, 0.9))} / {fmt_ms(max(latencies, default=math.nan))} |",
            "| CPU of one fresh hook subprocess (import + hook), per project | "
            + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in cpu_per_call.items())
            + " |",
            f"| CPU-bound limit = {cores} cores / {mean_cpu * 1000:.0f} ms mean CPU per call "
            f"| {limit:.2f} calls/s |",
            f"| throughput / limit | {share:.2f} |",
            f"| daemon CPU per call (daemon + its hook and installer children) "
            f"| {daemon_cpu * 1000:.0f} ms |",
        ]
    )
    if errors:
        details += "\n\nFirst errors:\n\n" + "\n".join(f"    {e}" for e in errors[:5])
    ctx.raw["P4"] = {
        "results": results,
        "cores": cores,
        "cpu_per_call": cpu_per_call,
        "limit": limit,
        "daemon_cpu_per_call": daemon_cpu,
    }
    log(f"P4: {throughput:.2f} calls/s, limit {limit:.2f}, {len(errors)} errors")
    return Figure(
        "P4",
        f"{clients} concurrent clients x {calls} metadata calls",
        "no errors; throughput at least 0.8 of the CPU-bound limit",
        f"{len(errors)} errors; {throughput:.2f} calls/s = {share:.2f} of {limit:.2f}",
        not errors and share >= 0.8,
        details,
    )


def figure_p5(ctx: Context) -> Figure:
    """A fresh daemon's idle RSS, and its growth over opened-and-closed sessions."""
    count = ctx.args.p5_sessions
    daemon = Daemon(ctx.ws.root, name="p5")
    log(f"P5: starting a fresh daemon at {daemon.address}")
    daemon.start()
    try:
        time.sleep(1.0)
        idle = daemon.rss_kib()
        first = min(10, count)
        after_first = idle
        with daemon.client() as client:
            start = time.perf_counter()
            for i in range(count):
                session = client.open_session("buildd-bench/p5")
                session.close()
                if i + 1 == first:
                    time.sleep(0.5)
                    after_first = daemon.rss_kib()
            seconds = time.perf_counter() - start
        time.sleep(1.0)
        after = daemon.rss_kib()
    finally:
        daemon.stop()
    growth = after - idle
    details = "\n".join(
        [
            "VmRSS of the `buildd-server` process (/proc/PID/status), a fresh daemon started "
            "for this figure; sessions opened and closed one after another through one "
            "client channel.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| idle, 1 s after it answered its first status call | {idle / 1024:.1f} MiB |",
            f"| after the first {first} sessions | {after_first / 1024:.1f} MiB |",
            f"| after {count} sessions | {after / 1024:.1f} MiB |",
            f"| growth over idle | {growth / 1024:.2f} MiB |",
            f"| growth after the first {first} | {(after - after_first) / 1024:.2f} MiB |",
            f"| open + close rate | {count / seconds:.0f} sessions/s |",
        ]
    )
    ctx.raw["P5"] = {"idle_kib": idle, "after_first_kib": after_first, "after_kib": after}
    log(f"P5: idle {idle / 1024:.1f} MiB, growth {growth / 1024:.2f} MiB")
    return Figure(
        "P5",
        f"idle daemon RSS; growth after {count} sessions opened and closed",
        "at most 60 MiB; at most 5 MiB",
        f"{idle / 1024:.1f} MiB; +{growth / 1024:.2f} MiB",
        idle <= 60 * 1024 and growth <= 5 * 1024,
        details,
    )


# -------------------------------------------------------------------- report --


def command_output(command: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    try:
        done = subprocess.run(
            list(command),
            env=dict(env) if env is not None else tool_environ(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = done.stdout.strip() or done.stderr.strip()
    return text.splitlines()[0] if text else f"(no output, exit code {done.returncode})"


def machine() -> list[tuple[str, str]]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return [
        ("CPU", model or platform.processor() or "unknown"),
        ("cores (nproc)", str(len(os.sched_getaffinity(0)))),
        ("memory", memory or "unknown"),
        ("OS", f"{platform.system()} {platform.release()} {platform.machine()}"),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("load average (1, 5, 15 min) at start", " ".join(f"{v:.2f}" for v in os.getloadavg())),
        ("PYTHONDONTWRITEBYTECODE", os.environ.get("PYTHONDONTWRITEBYTECODE", "unset")),
    ]


class CpuMeter:
    """How much CPU processes other than the harness's own used during the run.

    The machine's busy time (/proc/stat) minus this process and everything it
    reaped (tools, clients, daemons and the hooks they waited for). A busy
    machine makes every tool slower and noisier; the report says so.
    """

    def __init__(self) -> None:
        self.start_busy, self.start_ours = self._read()
        self.start = time.perf_counter()

    @staticmethod
    def _read() -> tuple[float, float]:
        busy = 0.0
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            ticks = [int(v) for v in fields]
            # user nice system idle iowait irq softirq steal [guest guest_nice]
            busy = (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
        ours = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            ours += usage.ru_utime + usage.ru_stime
        return busy, ours

    def other_share(self) -> tuple[float, float]:
        """(CPU seconds used by other processes, as a share of all cores over the run)."""
        busy, ours = self._read()
        other = max(0.0, (busy - self.start_busy) - (ours - self.start_ours))
        wall = time.perf_counter() - self.start
        return other, other / (wall * len(os.sched_getaffinity(0)))


def tool_versions() -> list[tuple[str, str]]:
    git = command_output(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
    return [
        ("python", sys.version.split()[0]),
        ("buildd-client", command_output([console_script("buildd-client"), "--version"])),
        ("buildd-server", command_output([console_script("buildd-server"), "--version"])),
        ("buildd repository", git),
        ("build (pypa)", command_output([sys.executable, "-m", "build", "--version"])),
        ("pip", command_output([sys.executable, "-m", "pip", "--version"])),
        ("uv", f"{command_output([find_uv(), '--version'])} ({find_uv()})"),
    ]


def markdown_report(
    ctx: Context,
    *,
    machine_info: list[tuple[str, str]],
    other_cpu: tuple[float, float],
    figures: list[Figure],
    matrix: BuildMatrix | None,
    versions: list[tuple[str, str]],
    started: datetime.datetime,
    seconds: float,
) -> str:
    out: list[str] = [
        "# buildd benchmarks",
        "",
        f"Run {started.strftime('%Y-%m-%d %H:%M UTC')}, {seconds / 60:.1f} min: "
        f"`python benchmarks/run.py {' '.join(ctx.args.argv)}`".rstrip()
        + ".",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine_info),
        f"| CPU used by other processes during the run | {other_cpu[0]:.0f} s "
        f"({other_cpu[1]:.0%} of all cores) |",
        "",
        *(
            [
                f"**The machine was busy**: other processes used {other_cpu[1]:.0%} of its "
                "cores during the run, so every tool ran slower and noisier than on an idle "
                "machine; the ratios suffer less than the absolute times, but compare them "
                "with care.",
                "",
            ]
            if other_cpu[1] > 0.1
            else []
        ),
        "## Tools",
        "",
        "| tool | version |",
        "|---|---|",
        *(f"| {k} | `{v}` |" for k, v in versions),
    ]
    if ctx.env_packages:
        out += [
            "",
            "Build backends, as installed in buildd's warm environments (the other tools "
            "resolve the same `[build-system].requires` from the same index in their own "
            "temporary environments):",
            "",
            "| project | backend | environment |",
            "|---|---|---|",
        ]
        for project in ctx.projects:
            packages = ctx.env_packages.get(project.id)
            if packages:
                listed = ", ".join(p for p in packages if not p.lower().startswith("pip=="))
                out.append(f"| {project.id} | {project.backend} | {listed} |")
    out += [
        "",
        "## Summary",
        "",
        "| id | figure | goal | measured | reached |",
        "|---|---|---|---|---|",
    ]
    for f in figures:
        reached = "n/a" if f.met is None else ("yes" if f.met else "**no**")
        out.append(f"| {f.id} | {f.figure} | {f.goal} | {f.measured} | {reached} |")
    if matrix is not None:
        out += [
            "",
            f"## Wheel builds (P1, P1b, P3): median wall time in seconds, {ctx.args.rounds} rounds",
            "",
            matrix.table(),
            "",
            "Ratios are median(other tool) / median(buildd) per project: above 1 means buildd "
            "is faster. The last row is the geometric mean over the projects. "
            "*buildd warm*: `buildd-client build --wheel` in one session warmed by an untimed "
            "first build; *buildd new session*: the same command as the first build of a "
            "session opened (untimed) just before.",
            "",
            "Every run is one whole process timed with `time.perf_counter()` from start to "
            "exit, in a fresh copy of the unpacked sdist (no `build/`, no `*.egg-info` left "
            "by anyone) writing to a fresh output folder. Tools run interleaved: round by "
            "round, project by project, the five tools in an order rotated every round. "
            "All tools use the same index, PyPI, with their configuration isolated "
            "(uv `--no-config`; pip and pypa/build with `PIP_CONFIG_FILE=/dev/null`). "
            "Network fetches are served by each tool's own cache: one untimed warm-up run "
            "of every tool on every project came first, so every tool ran with warm caches.",
            "",
            "Spread (min – max, seconds):",
            "",
            matrix.spread_table(),
            "",
            matrix.wheel_check(),
        ]
    for f in figures:
        if f.details and f.id in BUILD_FIGURES:
            out += ["", f"{f.id}: {f.details}"]
    for f in figures:
        if f.details and f.id not in BUILD_FIGURES:
            out += ["", f"## {f.id}: {f.figure}", "", f.details]
    if "daemon_rss_kib_at_end" in ctx.raw:
        out += [
            "",
            "VmRSS of the benchmark's own daemon after all its figures: "
            f"{ctx.raw['daemon_rss_kib_at_end'] / 1024:.1f} MiB.",
        ]
    failed = [s for s in ctx.samples if not s.ok]
    if failed:
        out += ["", "## Failed runs", ""]
        for s in failed:
            indented = "\n".join("    " + line for line in s.error.splitlines())
            out += [f"- round {s.round}, {s.project}, {TOOL_LABELS[s.tool]}:", "", indented, ""]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------- main --


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="Benchmark buildd against uv build, python -m build and pip wheel.",
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="timed runs per tool and project (default: 5)"
    )
    parser.add_argument(
        "--projects",
        nargs="+",
        metavar="NAME",
        help="only these projects of projects.toml (names, space or comma separated)",
    )
    parser.add_argument(
        "--only",
        metavar="IDS",
        help=f"only these figures, comma separated, of {','.join(FIGURES)} (default: all)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="the Markdown report (default: benchmarks/results/latest.md); raw samples go "
        "next to it as .json",
    )
    parser.add_argument("--p2-calls", type=int, default=30, help="P2 calls per project")
    parser.add_argument(
        "--hook-runs", type=int, default=10, help="processes timing the hook alone per project"
    )
    parser.add_argument("--p4-clients", type=int, default=16, help="P4 client processes")
    parser.add_argument("--p4-calls", type=int, default=25, help="P4 calls per client")
    parser.add_argument("--p5-sessions", type=int, default=1000, help="P5 sessions")
    parser.add_argument(
        "--keep", action="store_true", help="keep the /tmp work folder (trees, logs, daemon state)"
    )
    args = parser.parse_args(argv)
    args.argv = list(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    wanted = {f.strip().lower() for f in (args.only or ",".join(FIGURES)).split(",") if f.strip()}
    unknown = wanted - {f.lower() for f in FIGURES}
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(sorted(unknown))}: choose from {FIGURES}")
    args.figures = [f for f in FIGURES if f.lower() in wanted]
    return args


def select_projects(names: Sequence[str] | None) -> list[Project]:
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


def check_prerequisites() -> None:
    if importlib.util.find_spec("build") is None:
        raise SystemExit(f"pypa/build is missing: {sys.executable} -m pip install build")
    if importlib.util.find_spec("buildd_client") is None:
        raise SystemExit(f"buildd is not installed in {sys.executable}: pip install -e .")
    console_script("buildd-client")
    console_script("buildd-server")
    find_uv()


FIGURE_FUNCTIONS: dict[str, Callable[[Context], Figure]] = {
    "P2": figure_p2,
    "P4": figure_p4,
    "P5": figure_p5,
}
MATRIX_FIGURES: dict[str, Callable[[BuildMatrix], Figure]] = {
    "P1": figure_p1,
    "P1b": figure_p1b,
    "P3": figure_p3,
}


@contextlib.contextmanager
def workspace(pristine: Mapping[str, Path], keep: bool) -> Iterator[Workspace]:
    ws = Workspace(pristine, keep)
    try:
        yield ws
    finally:
        ws.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--p4-worker"]:
        address, session_id, src, calls = argv[1:5]
        return p4_worker(address, session_id, src, int(calls))
    args = parse_args(argv)
    check_prerequisites()
    projects = select_projects(args.projects)
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    machine_info = machine()
    pristine = {p.id: unpack(p) for p in projects}
    meter = CpuMeter()
    versions = tool_versions()
    figures: list[Figure] = []
    matrix: BuildMatrix | None = None
    with workspace(pristine, args.keep) as ws:
        ctx = Context(args, projects, ws)
        try:
            if BUILD_FIGURES & set(args.figures):
                matrix = BuildMatrix(ctx)
                matrix.run()
                figures += [MATRIX_FIGURES[f](matrix) for f in args.figures if f in MATRIX_FIGURES]
            for figure in args.figures:
                if figure in FIGURE_FUNCTIONS:
                    figures.append(FIGURE_FUNCTIONS[figure](ctx))
            figures.sort(key=lambda f: FIGURES.index(f.id))
            ctx.record_env_packages()
        finally:
            ctx.close()
        other_cpu = meter.other_share()
        report = markdown_report(
            ctx,
            machine_info=machine_info,
            other_cpu=other_cpu,
            figures=figures,
            matrix=matrix,
            versions=versions,
            started=started,
            seconds=time.perf_counter() - t0,
        )
        raw = {
            "argv": args.argv,
            "started": started.isoformat(),
            "machine": dict(machine_info),
            "other_cpu_seconds": other_cpu[0],
            "versions": dict(versions),
            "env_packages": ctx.env_packages,
            "figures": [asdict(f) for f in figures],
            "samples": [asdict(s) for s in ctx.samples],
            **ctx.raw,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n", encoding="utf-8")
    print(report)
    log(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
