"""What the figures share: the options, the projects, the workspace, the daemon, hook costs."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .daemon import Daemon
from .projects import Project, read_build_system
from .settings import log, tool_environ
from .tools import Sample
from .workspace import Workspace

# Runs inside a build environment's interpreter, in the source tree: imports the
# backend, then times one hook alone (P2b, P7: default
# prepare_metadata_for_build_wheel) and reports how long the import took. Its
# parent measures the CPU time of the whole process (P4). Arguments: backend
# spec, JSON list of backend-path entries, the hook's name.
HOOK_PROBE = r"""
import importlib, json, os, sys, tempfile, time

spec, backend_path, name = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
for entry in reversed(backend_path):
    sys.path.insert(0, os.path.abspath(entry))
t0 = time.perf_counter()
module, _, attrs = spec.partition(":")
backend = importlib.import_module(module.strip())
for part in attrs.strip().split(".") if attrs.strip() else ():
    backend = getattr(backend, part)
t1 = time.perf_counter()
out = tempfile.mkdtemp(prefix="hook-probe-")
hook = getattr(backend, name, None)
t2 = time.perf_counter()
if hook is None and name == "prepare_metadata_for_build_wheel":
    backend.build_wheel(out, None)  # what pyproject_hooks falls back to
elif hook is not None and name.startswith("get_requires_for_build_"):
    hook(None)
elif hook is not None:
    hook(out, None)
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "hook": t3 - t2, "has_hook": hook is not None}))
"""

PREPARE_METADATA = "prepare_metadata_for_build_wheel"
GET_REQUIRES = "get_requires_for_build_wheel"

# Runs inside a build environment's interpreter: what is installed there.
LIST_DISTRIBUTIONS = (
    "import importlib.metadata as m, json; "
    "print(json.dumps(sorted({d.metadata['Name'] + '==' + d.version for d in m.distributions()})))"
)


@dataclass
class HookCost:
    """A build environment's own cost for one hook (prepare_metadata_for_build_wheel)."""

    env_python: str
    hook_seconds: list[float]  # the hook call alone, backend already imported
    import_seconds: list[float]  # importing the backend
    process_cpu: list[float]  # CPU (user+sys) of the whole fresh process
    process_wall: list[float]
    has_hook: bool
    hook: str = PREPARE_METADATA


class Context:
    """What the figures share: the options, the projects, the workspace and the daemon."""

    def __init__(self, args: argparse.Namespace, projects: list[Project], ws: Workspace) -> None:
        self.args = args
        self.projects = projects
        self.ws = ws
        self._daemon: Daemon | None = None
        self.extra_daemons: list[Daemon] = []  # started by figures, stopped by close()
        self._warm_session = ""
        self.warmed: set[str] = set()  # projects with an environment in the warm session
        self.samples: list[Sample] = []
        self.hook_costs: dict[tuple[str, str], HookCost] = {}
        self.env_packages: dict[str, list[str]] = {}
        self.raw: dict[str, Any] = {}
        # Runs that failed outside the build matrix: (what, error with its log tail).
        self.failures: list[tuple[str, str]] = []
        # P4's load, for P4b's comparison without watches (a LoadRun).
        self.p4_load: Any = None

    @property
    def daemon(self) -> Daemon:
        if self._daemon is None:
            # More environments than the default cap: P4's and P4b's sessions,
            # the warm session and the store's instances all live here, and an
            # eviction in the middle of a figure would time a re-creation.
            daemon = Daemon(self.ws.root, extra_args=["--max-envs", "128"])
            log(f"starting buildd-server at {daemon.address}")
            daemon.start()
            self._daemon = daemon
        return self._daemon

    def start_daemon(
        self,
        name: str,
        *,
        tcp: bool = False,
        extra_args: Sequence[str] = (),
        state_dir: Path | None = None,
    ) -> Daemon:
        """Another daemon of the harness's own, stopped (and its log kept) by close()."""
        daemon = Daemon(self.ws.root, name, tcp=tcp, extra_args=extra_args, state_dir=state_dir)
        log(f"starting buildd-server {name!r} at {daemon.address}")
        self.extra_daemons.append(daemon)
        daemon.start()
        return daemon

    def fail(self, what: str, error: str) -> None:
        """Record a failed run for the report's "Failed runs" section."""
        log(f"FAILED: {what}: {error}")
        self.failures.append((what, error))

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

    def hook_cost(self, project: Project, hook: str = PREPARE_METADATA) -> HookCost:
        """Time ``hook`` in the warm environment, one fresh process per sample."""
        if (project.id, hook) in self.hook_costs:
            return self.hook_costs[project.id, hook]
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
        cost = HookCost(python, [], [], [], [], has_hook=True, hook=hook)
        # The tree as a warm IDE session sees it: metadata prepared once already.
        src = self.ws.fresh_tree(project)
        for run in range(self.args.hook_runs + 1):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            completed = subprocess.run(
                [
                    *(python, str(probe), system.backend),
                    *(json.dumps(list(system.backend_path)), hook),
                ],
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
        self.hook_costs[project.id, hook] = cost
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
        for daemon in self.extra_daemons:
            daemon.stop()
            with contextlib.suppress(OSError):
                self.args.out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(daemon.log_path, self.args.out.with_suffix(f".{daemon.name}.log"))
        self.extra_daemons.clear()
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
