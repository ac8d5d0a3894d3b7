"""The daemon's inotify instances as the kernel shows them in /proc.

watchfiles (through notify 8.0) does not say when inotify refused a watch
for a folder created after the watcher started: it drops the error, and
changes inside that folder then go unseen. The kernel lists every watch of
an instance in ``/proc/self/fdinfo/<fd>`` (``inotify wd:N ino:HEX ...``,
newest first), so the daemon can check that a new folder is watched.
Everything here answers "unknown" (None) where /proc cannot tell.
"""

from __future__ import annotations

import os

_FD = "/proc/self/fd"
_INFO = "/proc/self/fdinfo"
_KIND = "anon_inode:inotify"


def instance_fds(pid: int | str = "self") -> set[int]:
    """The fds of ``pid`` that are inotify instances (empty where /proc cannot tell)."""
    found: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == _KIND:
                found.add(int(fd))
        except (OSError, ValueError):
            continue
    return found


def watched_inodes(fd: int) -> set[int] | None:
    """The inode numbers instance ``fd`` of this process watches; None: unknown."""
    try:
        with open(f"{_INFO}/{fd}") as info:
            lines = info.read().splitlines()
    except OSError:
        return None
    inodes: set[int] = set()
    for line in lines:
        if line.startswith("inotify wd:"):
            for field in line.split():
                if field.startswith("ino:"):
                    inodes.add(int(field[4:], 16))
    return inodes


def find_instance(root: str, before: set[int]) -> int | None:
    """The fd of the instance just made for ``root`` (its first watch, wd 1, is root).

    ``before``: the instance fds before it was made. Among the instances
    whose first watch is ``root``'s inode, a new fd is preferred (an older
    watcher of the same tree may still be closing); None when unsure.
    """
    try:
        inode = os.stat(root).st_ino
    except OSError:
        return None
    candidates = [fd for fd in instance_fds() if _first_watch(fd) == inode]
    new = [fd for fd in candidates if fd not in before]
    if len(new) == 1:
        return new[0]
    return candidates[0] if len(candidates) == 1 and not new else None


def _first_watch(fd: int) -> int | None:
    try:
        with open(f"{_INFO}/{fd}") as info:
            lines = info.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):  # newest first: wd 1 comes last
        if line.startswith("inotify wd:1 "):
            for field in line.split():
                if field.startswith("ino:"):
                    return int(field[4:], 16)
    return None
