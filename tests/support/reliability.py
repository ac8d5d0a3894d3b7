"""Helpers of the reliability tests: polling, processes, memory, a bystander session.

Everything here polls for a condition the daemon must make true, within a
bound, and fails when the bound passes: nothing sleeps and hopes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from buildd.v1 import buildd_pb2 as pb
from buildd_client import Client
from support.projects import probe_project, read_probe_log

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"


def wait_until(
    condition: Callable[[], bool],
    what: str,
    limit: float = 30.0,
    explain: Callable[[], object] | None = None,
) -> float:
    """Poll ``condition`` until true; return the seconds it took, fail after ``limit``.

    ``explain`` adds what the test knows about the failure to its message.
    """
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > limit:
            detail = f": {explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {limit:g} s waiting for {what}{detail}")
        time.sleep(0.02)
    return time.monotonic() - started


# --------------------------------------------------------------- projects --

# What most test backends need besides the hook under test: metadata and a wheel.
BASE_BACKEND = """
import os, zipfile

def get_requires_for_build_wheel(config_settings=None):
    return []

def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    os.makedirs(os.path.join(metadata_directory, "demo-1.0.dist-info"))
    with open(os.path.join(metadata_directory, "demo-1.0.dist-info", "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\\nName: demo\\nVersion: 1.0\\n")
    return "demo-1.0.dist-info"

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    # The least the daemon accepts: METADATA, WHEEL and RECORD (checks.py).
    name = "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as whl:
        metadata = "Metadata-Version: 2.1\\nName: demo\\nVersion: 1.0\\n"
        whl.writestr("demo-1.0.dist-info/METADATA", metadata)
        whl.writestr("demo-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\\nTag: py3-none-any\\n")
        whl.writestr("demo-1.0.dist-info/RECORD", "")
    return name
"""


def backend_project(root: Path, code: str) -> Path:
    """A project whose in-tree backend ``fault_backend`` is ``code`` (after BASE_BACKEND).

    Functions in ``code`` replace those of the base, so a test writes only the
    hook it is about; the key holds no requirements.
    """
    (root / "_be").mkdir(parents=True)
    source = textwrap.dedent(BASE_BACKEND) + textwrap.dedent(code)
    (root / "_be" / "fault_backend.py").write_text(source)
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "fault_backend"\nbackend-path = ["_be"]\n'
    )
    return root


def poll_until(condition: Callable[[], bool], limit: float) -> bool:
    """Poll ``condition`` for up to ``limit`` seconds; whether it came true."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > limit:
            return False
        time.sleep(0.05)
    return True


# ------------------------------------------------------------- processes --


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may hold spaces and parentheses: cut after the last ")".
    return text.rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a killed process nobody has reaped yet is a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        # Fields after the name: state, ppid, pgrp, ...
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def proc_status_kib(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` figure in KiB (``VmRSS``, ``VmHWM``) or count (``Threads``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def env_dirs(state_dir: Path) -> list[Path]:
    """Environment folders under a daemon's state folder: its store's, and sessions' own."""
    stored = [p for p in (state_dir / "envs").glob("*/*/*") if p.name.isdigit()]
    return sorted(stored) + [p for p in (state_dir / "sessions").glob("*/envs/*") if p.is_dir()]


def leftovers(state_dir: Path) -> list[Path]:
    """Anything under ``sessions/``: after a clean stop or the last close, nothing."""
    sessions = state_dir / "sessions"
    try:
        return sorted(sessions.rglob("*")) if sessions.exists() else []
    except FileNotFoundError:
        return [sessions]  # being deleted at this very moment: not empty yet


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = stub.Check(health_pb2.HealthCheckRequest(service="buildd.v1.Buildd"), timeout=10)
        return int(answer.status)


def client_env() -> dict[str, str]:
    """The environment of a client subprocess: this checkout importable, tests as ``support``."""
    env = dict(os.environ)
    paths = [str(REPO / "proto"), str(REPO / "client"), str(REPO / "server"), str(TESTS)]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def start_client_process(module: str, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
    """``python -m support.<module> ARGS`` in a fresh process, stdout piped as text."""
    return subprocess.Popen(
        [sys.executable, "-m", f"support.{module}", *args],
        env=client_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        **kwargs,
    )


# -------------------------------------------------------------- bystander --


class Bystander:
    """A session with a warm environment that a test must leave untouched.

    ``check`` proves it: the daemon still answers health checks, the session
    still holds the same single environment, idle, with exactly the hook calls
    it ran itself; then one more request runs in that very environment.
    """

    def __init__(self, address: str, root: Path) -> None:
        self.address = address
        self.log = root / "bystander.log"
        # A key of its own: sessions of one principal share their store, so a
        # request of the test under way must not even be able to lease it.
        self.source = probe_project(root / "bystander", self.log, static_requires=["flit_core<4"])
        self.client = Client(address, autostart=False)
        self.session = self.client.open_session("bystander")
        self.session.metadata(str(self.source)).result()
        self.path, self.hook_calls = self._env()

    def _env(self) -> tuple[str, int]:
        status = self.client.status(self.session.id)
        [env] = status.sessions[0].environments
        assert env.state == pb.ENVIRONMENT_STATE_IDLE
        return env.path, env.hook_calls

    def check(self) -> None:
        assert health(self.address) == health_pb2.HealthCheckResponse.SERVING
        assert self._env() == (self.path, self.hook_calls), "the bystander's environment changed"
        # Past the cache: the hooks must run in that very environment.
        self.session.metadata(str(self.source), no_cache=True).result()
        self.hook_calls += 2
        assert self._env() == (self.path, self.hook_calls)
        assert read_probe_log(self.log)[-1]["prefix"] == self.path

    def close(self) -> None:
        self.session.close()
        self.client.close()
