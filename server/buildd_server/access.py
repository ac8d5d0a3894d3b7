"""Who on this machine can reach the daemon: its folders, and loopback TCP.

A Unix socket is only as private as its folder: whoever can write there can
replace the socket with one of their own and collect what clients send. The
state folder holds every session's sources, environments and uploads. So the
daemon refuses to start when either folder, or a folder above it, can be
written by another user (the ``StrictModes`` rule of OpenSSH: owned by the
daemon's user or root, no group or other write, except a parent with the
sticky bit, such as ``/tmp``, where others cannot rename what is not theirs).

Loopback TCP reaches every local user. Without ``--token-file`` the daemon
makes a token of its own (as notebook servers do) and writes it, mode 0600,
into its user's private runtime folder, where the client finds it
(``buildd_client.addresses.local_token_path``); other users cannot read it and
get UNAUTHENTICATED.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from buildd_client.addresses import ensure_private_dir, local_token_path

from .errors import DaemonStartupError


def check_folder(folder: Path, what: str) -> None:
    """Refuse ``folder`` (and its parents) when a user other than ours or root may write it."""
    me = os.geteuid()
    current = Path(os.path.abspath(folder))
    first = True
    while True:
        try:
            info = os.stat(current)
        except OSError as exc:
            raise DaemonStartupError(
                f"{what} {current}: cannot be checked: {exc.strerror}"
            ) from exc
        mode = stat.S_IMODE(info.st_mode)
        if info.st_uid not in (me, 0):
            raise DaemonStartupError(
                f"{what} {current} belongs to uid {info.st_uid}, who could replace what the "
                f"daemon keeps there; use a folder of uid {me} (or root)"
            )
        sticky = bool(mode & stat.S_ISVTX) and not first
        if mode & 0o022 and not sticky:
            who = (
                "group and others"
                if mode & 0o022 == 0o022
                else ("its group" if mode & 0o020 else "others")
            )
            raise DaemonStartupError(
                f"{what} {current} is writable by {who} (mode {mode:04o}), who could replace "
                f"what the daemon keeps there; run 'chmod go-w {current}' or choose another folder"
            )
        if current.parent == current:
            return
        current, first = current.parent, False


class LocalToken:
    """The token a loopback TCP daemon without a token file makes for its own user."""

    def __init__(self) -> None:
        self.value = secrets.token_urlsafe(32)
        self.path: Path | None = None

    def write(self, port: int) -> None:
        """Write the token, 0600, into the user's private folder (made private if new)."""
        self.path = Path(local_token_path(port))
        try:
            ensure_private_dir(self.path.parent)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # left by a daemon that was killed
            fd = os.open(
                self.path,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(f"local:{self.value}\n")
        except OSError as exc:
            raise DaemonStartupError(
                f"cannot write the local token {self.path}: {exc}; give --token-file, or "
                "--insecure to let every local user in"
            ) from exc

    def remove(self) -> None:
        if self.path is None:
            return
        with contextlib.suppress(OSError):
            if self.path.read_text(encoding="utf-8").strip() == f"local:{self.value}":
                self.path.unlink()
