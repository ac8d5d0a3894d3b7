"""The machine the run took place on, how busy it was, and the tools' versions."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .settings import REPO, console_script, tool_environ
from .tools import find_uv


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
