"""A process's inotify instances and watches, read from /proc; a daemon under lower limits.

Linux counts inotify instances and watches per user *per user namespace*
(``/proc/sys/user/max_inotify_instances`` and ``max_inotify_watches``, the
namespaced faces of ``fs.inotify.max_user_*``). A process started in a user
namespace of its own (``unshare -U -r``) may lower them there without
touching the machine-wide sysctls, which stay as they are for everyone else:
that is how a test makes the system refuse a watcher.

Run as a script, ``inotify.py INSTANCES WATCHES -- COMMAND...`` sets those
two limits (0: leave it) in the current user namespace and executes COMMAND.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

LIMITS = Path("/proc/sys/user")


def instances(pid: int) -> int:
    """Open inotify instances of ``pid`` (its fds that are ``anon_inode:inotify``)."""
    return len(_inotify_fds(pid))


def watches(pid: int) -> int:
    """inotify watches of ``pid``, all instances together (``inotify wd:`` lines of fdinfo)."""
    count = 0
    for fd in _inotify_fds(pid):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        count += sum(1 for line in text.splitlines() if line.startswith("inotify wd:"))
    return count


def _inotify_fds(pid: int) -> list[str]:
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                found.append(fd)
        except OSError:
            continue
    return found


def limited(instances: int = 0, watches: int = 0) -> list[str] | None:
    """A command prefix running its command under these limits; None where impossible."""
    prefix = ["unshare", "-U", "-r", sys.executable, __file__, str(instances), str(watches), "--"]
    try:
        probe = subprocess.run(
            [*prefix, sys.executable, "-c", ""], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return prefix if probe.returncode == 0 else None


def _main(argv: list[str]) -> None:
    count, watch_count, dashes, *command = argv
    assert dashes == "--" and command, "usage: inotify.py INSTANCES WATCHES -- COMMAND..."
    for name, value in (("max_inotify_instances", count), ("max_inotify_watches", watch_count)):
        if int(value) > 0:
            (LIMITS / name).write_text(value)
    os.execvp(command[0], command)


if __name__ == "__main__":
    _main(sys.argv[1:])
