"""The daemon's state folder: taken under a lock, reclaimed after a crash, released.

The lock is taken first, so a second daemon on the same folder stops before
touching anything; only then are the orphans of a crashed run deleted (nobody
else can be using them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

import filelock
import structlog

from ..access.access import check_folder
from ..errors import DaemonStartupError

log = structlog.get_logger("buildd.daemon")


def take_state_dir(state: Path) -> filelock.BaseFileLock:
    """Lock ``state`` for this daemon and delete what a crashed one left in it."""
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = state / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise DaemonStartupError(f"state dir {state} is not writable: {exc.strerror}") from exc
    check_folder(state, "state dir")
    lock = filelock.FileLock(str(state / "daemon.lock"))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout as exc:
        owner = _read_text(state / "daemon.pid")
        raise DaemonStartupError(
            f"state dir {state} is in use by another buildd daemon"
            + (f" (pid {owner})" if owner else "")
            + "; give this one its own --state-dir"
        ) from exc
    (state / "daemon.pid").write_text(str(os.getpid()))
    # With the lock held nobody else can be using these: they are what a
    # crashed or killed daemon left behind. Hooks of that daemon may still
    # run (each in its own process group): stop them before deleting the
    # environments they run in.
    sessions = state / "sessions"
    killed = _kill_processes_under(sessions) + _kill_processes_under(state / "envs")
    reclaimed = 0
    if sessions.is_dir():
        for child in sessions.iterdir():
            shutil.rmtree(child, ignore_errors=True)
            reclaimed += 1
    if reclaimed or killed:
        log.info("orphans_reclaimed", sessions=reclaimed, processes=killed, state_dir=str(state))
    return lock


def release_state_dir(state: Path, lock: filelock.BaseFileLock) -> None:
    """Remove the pid file and let the next daemon have the folder."""
    with contextlib.suppress(FileNotFoundError):
        (state / "daemon.pid").unlink()
    lock.release()


def _kill_processes_under(root: Path) -> int:
    """SIGKILL the process group of every process running an interpreter under ``root``.

    Hook processes run ``<env>/bin/python ...`` from an environment under the
    sessions folder, so their command line names it. Linux only (``/proc``);
    elsewhere nothing is found and nothing is killed.
    """
    marker = os.fsencode(str(root)) + b"/"
    groups: set[int] = set()
    proc = Path("/proc")
    if not proc.is_dir():
        return 0
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            if marker in command:
                groups.add(os.getpgid(int(entry.name)))
        except (OSError, ProcessLookupError):
            continue
    groups.discard(os.getpgrp())
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    return len(groups)


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
