"""Start a daemon in the background when the default address has none (like sccache).

The daemon is a separate process (``python -m buildd_server``), detached from
the client's session and terminal, logging to ``<state dir>/daemon.log``; it
shuts itself down after ``IDLE_TIMEOUT`` seconds without sessions. An flock
next to the socket makes concurrent clients start one daemon, not several.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

import grpc

from buildd_client import _files
from buildd_client.addresses import ensure_private_dir
from buildd_client.errors import DaemonUnavailable

if TYPE_CHECKING:
    from pathlib import Path

    from buildd_client.addresses import Address

__all__ = [
    "IDLE_TIMEOUT",
    "autostart_disabled",
    "daemon_command",
    "ensure_daemon",
    "is_listening",
]

IDLE_TIMEOUT = 600
LOG_NAME = "daemon.log"
LOCK_NAME = "autostart.lock"
_LOG_TAIL = 20
# While waiting, the probe channel retries quickly: the default reconnect
# backoff (1 s, growing) would add seconds after the daemon is already up.
_PROBE_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
]
# How often the wait also checks that the child is still alive.
_POLL = 0.1


def autostart_disabled() -> bool:
    """True when ``BUILDD_NO_AUTOSTART`` is set to anything but ``""`` or ``"0"``."""
    return os.environ.get("BUILDD_NO_AUTOSTART", "") not in ("", "0")


def daemon_command(target: str) -> list[str]:
    """The daemon's command line (a function so tests can substitute a fake daemon)."""
    return [
        sys.executable,
        "-m",
        "buildd_server",
        "--address",
        target,
        "--idle-timeout",
        str(IDLE_TIMEOUT),
    ]


def is_listening(path: str) -> bool:
    """True when something accepts connections on the Unix socket ``path``.

    A plain connect answers at once: ENOENT (no socket) or ECONNREFUSED (a
    stale socket file left by a dead daemon), where gRPC would keep retrying.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def ensure_daemon(address: Address, *, timeout: float = 20.0) -> bool:
    """Make sure a daemon answers on the Unix socket ``address``; start one if not.

    Returns True when this call started it. Raises DaemonUnavailable when the
    daemon exits while starting or is not ready within ``timeout`` seconds.
    """
    if address.kind != "unix":
        raise ValueError(f"cannot auto-start a daemon on {address.target}: not a Unix socket")
    if is_listening(address.path):
        return False
    try:
        folder = ensure_private_dir(os.path.dirname(address.path))
    except OSError as exc:
        raise DaemonUnavailable(
            f"cannot start a daemon at {address.target}: {exc}", address=address.target
        ) from exc
    with _files.locked(folder / LOCK_NAME):
        # Another client may have started one while we waited for the lock.
        if is_listening(address.path):
            return False
        _start_and_wait(address, timeout)
    return True


def _start_and_wait(address: Address, timeout: float) -> None:
    command = daemon_command(address.target)
    log_path = _files.make_state_dir() / LOG_NAME
    # 0600: the log names sessions and paths.
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    with open(fd, "ab") as log:
        offset = log.seek(0, os.SEEK_END)
        log.write(f"--- buildd-client starting the daemon: {' '.join(command)}\n".encode())
        log.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: no terminal, and Ctrl-C in the client's
                # terminal does not reach it.
                start_new_session=True,
                close_fds=True,
                # Do not pin the user's working folder (unmounts, deletions).
                cwd="/",
                env=env,
            )
        except OSError as exc:
            raise DaemonUnavailable(
                f"cannot start a daemon with {command[0]}: {exc}", address=address.target
            ) from exc
    _wait_ready(address, process, log_path, offset, timeout)


def _wait_ready(
    address: Address,
    process: subprocess.Popen[bytes],
    log_path: Path,
    offset: int,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    channel = grpc.insecure_channel(address.target, options=_PROBE_OPTIONS)
    ready = grpc.channel_ready_future(channel)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DaemonUnavailable(
                    f"the daemon started at {address.target} (pid {process.pid}) did not "
                    f"answer within {timeout:g} s; see {log_path}",
                    address=address.target,
                    log_lines=_log_since(log_path, offset),
                )
            try:
                ready.result(timeout=min(_POLL, remaining))
            except grpc.FutureTimeoutError:
                pass
            else:
                return
            code = process.poll()
            if code is not None:
                lines = _log_since(log_path, offset)
                hint = ""
                if any("No module named buildd_server" in line for line in lines):
                    hint = (
                        f" (the daemon is not installed for {sys.executable}: install "
                        "buildd there, or point BUILDD_ADDRESS at a running daemon)"
                    )
                raise DaemonUnavailable(
                    f"the daemon started at {address.target} exited with code {code} "
                    f"before answering{hint}; see {log_path}",
                    address=address.target,
                    log_lines=lines,
                )
    finally:
        ready.cancel()
        channel.close()
        if process.returncode is None:
            # Reap the daemon when it exits (idle timeout), so a long-lived
            # client such as an IDE keeps no zombie.
            threading.Thread(target=process.wait, name="buildd-reaper", daemon=True).start()


def _log_since(log_path: Path, offset: int) -> list[str]:
    """The last lines this start wrote to the shared log."""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-_LOG_TAIL:]
