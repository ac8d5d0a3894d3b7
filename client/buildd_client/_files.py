"""The client's own files: its XDG state folder, fcntl locks, atomic writes."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator


def state_dir() -> Path:
    """``$XDG_STATE_HOME/buildd``, else ``~/.local/state/buildd`` (not created here)."""
    value = os.environ.get("XDG_STATE_HOME", "")
    # The XDG base directory spec says relative values must be ignored.
    base = Path(value) if value and os.path.isabs(value) else Path.home() / ".local" / "state"
    return base / "buildd"


def make_state_dir() -> Path:
    """Create the state folder (0700: it holds session ids, which are credentials)."""
    folder = state_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created 0600) for the ``with`` block.

    flock is released by the kernel when the process dies, so a crashed client
    never leaves a stale lock behind.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        # Closing the descriptor releases the lock.
        os.close(fd)


def write_atomic(path: Path, data: str) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never half."""
    # Imported here: tempfile brings shutil, bz2, lzma and random, which the
    # common commands (a build in the remembered session) never need.
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
