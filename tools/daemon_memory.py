"""How much memory one daemon takes: idle, and under builds (for sizing a pod).

Usage: ``python tools/daemon_memory.py [--concurrent 4]`` (needs the dev extra and
the test wheelhouse: ``BUILDD_TEST_WHEELHOUSE`` or ``.cache/wheelhouse``).
Starts one daemon on a private socket, installing from the wheelhouse only,
and samples every 20 ms the resident memory (``VmRSS``) of the daemon alone
and of the daemon with every process under it (installers, hook processes,
fork servers): what a container's memory limit has to hold, page cache aside.
Phases: idle after start; a first build of a setuptools and of a hatchling
project (environments created); the same builds warm; ``--concurrent``
projects built at once, each in its own session; idle again after the
sessions closed. Prints the peak of each phase.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from buildd_client import Client  # noqa: E402
from support.daemon import DaemonProcess  # noqa: E402
from support.projects import hatchling_project, setuptools_project  # noqa: E402
from support.wheelhouse import ensure_wheelhouse  # noqa: E402


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


class Sampler:
    """Peaks of the daemon's RSS and of its whole process tree, per phase."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.phase = "start"
        self.peaks: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            own = _rss(self.pid)
            tree = sum(_rss(p) for p in _tree(self.pid))
            daemon_peak, tree_peak = self.peaks.get(self.phase, (0, 0))
            self.peaks[self.phase] = (max(daemon_peak, own), max(tree_peak, tree))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrent", type=int, default=4, help="builds at once (4)")
    args = parser.parse_args()
    wheelhouse = ensure_wheelhouse()
    folder = Path(tempfile.mkdtemp(prefix="bd-memory-", dir="/tmp"))
    daemon = DaemonProcess(wheelhouse, root=folder)
    try:
        daemon.start()
        with Client(daemon.address, autostart=False) as client, Sampler(daemon.pid) as sampler:
            sampler.phase = "idle after start"
            time.sleep(3)
            projects = [
                setuptools_project(folder / "p-setuptools"),
                hatchling_project(folder / "p-hatchling"),
            ]
            session = client.open_session("memory")
            for phase in ("first builds (environments created)", "warm builds"):
                sampler.phase = phase
                for project in projects:
                    session.build(project, distributions=["sdist", "wheel"]).result()
            session.close()
            sampler.phase = f"{args.concurrent} builds at once, one session each"
            many = [
                setuptools_project(folder / f"c-{i}", name=f"demo-c{i}")
                for i in range(args.concurrent)
            ]

            def build(project: Path) -> None:
                with client.open_session("memory") as own:
                    own.build(project, distributions=["wheel"]).result()

            with ThreadPoolExecutor(args.concurrent) as pool:
                list(pool.map(build, many))
            sampler.phase = "idle after the sessions closed"
            time.sleep(3)
        print(f"{'phase':<44} {'daemon RSS':>12} {'with children':>14}")
        for phase, (own, tree) in sampler.peaks.items():
            if phase == "start":
                continue
            print(f"{phase:<44} {own / 2**20:>9.1f} MiB {tree / 2**20:>11.1f} MiB")
    finally:
        daemon.cleanup()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
