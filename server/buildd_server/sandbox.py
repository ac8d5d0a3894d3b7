"""bubblewrap command lines: a PID namespace alone, or the sandbox of a remote principal.

bubblewrap (``bwrap``, Debian package ``bubblewrap``) applies its mount
options in order, so the sandbox is built in layers:

1. the whole file system read-only (``--ro-bind / /``), a minimal ``/dev``,
   a ``/proc`` of the sandbox's own PID namespace (the daemon's and other
   calls' processes are not in it), a private, empty ``/tmp``;
2. the call's own folders that lie outside the state folder, read-write or
   read-only;
3. an empty tmpfs over the state folder (blobs, other sessions, the store,
   the daemon's lock and pid file: all gone from view);
4. the call's own folders inside the state folder, put back, and the tmpfs
   made read-only around them;
5. ``/dev/null`` over each secret file (token file, TLS key, the socket).

``--die-with-parent`` kills the sandbox when the thread that started it
goes (the daemon's request thread, or the daemon itself); the PID namespace
makes everything in it die with its first process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


@dataclass(frozen=True)
class Layout:
    """What one sandboxed process may see beyond the read-only system."""

    state_dir: Path | None = None
    hidden_files: tuple[Path, ...] = ()
    writable: tuple[Path, ...] = ()
    readable: tuple[Path, ...] = ()


def pid_prefix(bwrap: str, cwd: str | None, info_fd: int | None = None) -> list[str]:
    """The file system as it is, in a PID namespace that dies with its first process.

    Privileges stay what they were (bubblewrap drops a root caller's
    capabilities unless told otherwise): only the lifetime is contained.
    """
    args = [bwrap, "--dev-bind", "/", "/", "--unshare-pid", "--die-with-parent"]
    if os.geteuid() == 0:
        args += ["--cap-add", "ALL"]
    args += _info(info_fd)
    if cwd:
        args += ["--chdir", cwd]
    return [*args, "--"]


def zygote_prefix(bwrap: str) -> tuple[str, ...]:
    """For a daemon without CAP_SYS_ADMIN: a fork server that may unshare PID namespaces.

    A user namespace of its own gives it CAP_SYS_ADMIN there (and nowhere
    else), enough for unshare(CLONE_NEWPID) and setns on namespaces it owns.
    """
    return (
        bwrap,
        "--dev-bind",
        "/",
        "/",
        "--unshare-user",
        "--unshare-pid",
        "--cap-add",
        "CAP_SYS_ADMIN",
        "--",
    )


def sandbox_prefix(
    bwrap: str, layout: Layout, cwd: str | None, info_fd: int | None = None
) -> list[str]:
    """The bubblewrap arguments (up to ``--``) for one sandboxed process."""
    args = [
        bwrap,
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        # No controlling terminal to push input into (TIOCSTI).
        "--new-session",
    ]
    state = layout.state_dir
    binds = [(p, "--bind") for p in _existing(layout.writable)]
    binds += [(p, "--ro-bind") for p in _existing(layout.readable) if p not in dict(binds)]
    # Parents before children, so that a child's bind is not hidden by its parent's.
    binds.sort(key=lambda item: len(item[0].parts))
    inside = [(p, flag) for p, flag in binds if state is not None and _under(p, state)]
    for path, flag in binds:
        if (path, flag) not in inside:
            args += [flag, str(path), str(path)]
    if state is not None:
        args += ["--tmpfs", str(state)]
    for path, flag in inside:
        args += [flag, str(path), str(path)]
    if state is not None:
        # Read-only once the call's own folders are bound in: nothing can be
        # left there for a later reader to mistake for the daemon's.
        args += ["--remount-ro", str(state)]
    for secret in layout.hidden_files:
        if state is not None and _under(secret, state):
            continue
        args += ["--ro-bind", os.devnull, str(secret)]
    args += _info(info_fd)
    if cwd:
        args += ["--chdir", cwd]
    return [*args, "--"]


def _info(fd: int | None) -> list[str]:
    # bubblewrap writes {"child-pid": N, ...} there: N is the namespace's first
    # process, whose end (after every other process in it) ends the call.
    return [] if fd is None else ["--info-fd", str(fd)]


def sandbox_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of a sandboxed process: the daemon's own settings left out, /tmp private."""
    env = {k: v for k, v in environ.items() if not k.startswith("BUILDD_")}
    env["TMPDIR"] = "/tmp"
    return env


def _existing(paths: Sequence[Path]) -> list[Path]:
    seen: dict[Path, None] = {}
    for path in paths:
        real = Path(os.path.realpath(path))
        if real.exists() and real != Path("/"):
            seen.setdefault(real)
    return list(seen)


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents
