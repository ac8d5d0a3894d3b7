"""One fork server ("zygote") process: its start, its control socket, its forks.

The daemon and the zygote (``_zygote_main.py``, run by the environment's
interpreter) speak JSON datagrams over a ``SOCK_SEQPACKET`` socket pair: a
``run`` request carries the hook's stdout and stderr pipes; the answers are
the forked pid, then its exit status. ``zygotes.py`` decides when a call may
use one.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import select
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import structlog

from . import containment
from .processes import kill_group

if TYPE_CHECKING:
    import threading
    from collections.abc import Mapping, Sequence

    from ..environments.environments import Environment

log = structlog.get_logger("buildd.zygotes")

# Longest a fork waits for the zygote's answer.
_REPLY_TIMEOUT = 30.0
_TICK = 0.1
_MAIN = Path(__file__).with_name("_zygote_main.py")


@dataclass(frozen=True)
class Identity:
    """Everything a zygote fixed at start-up; a call may use it only when all match."""

    python: str
    script: str
    module: str
    environ: str  # sha256 of the variables, the backend spec left out
    generation: tuple[str, int]  # environment fingerprint, site-packages mtime
    # Each fork in a PID namespace of its own (containment.py); the zygote
    # then kills its children itself, since their pids may be its own
    # namespace's, not the daemon's.
    contained: bool = False


class Zygote:
    """One fork server process and its end of the control socket."""

    def __init__(
        self, env_id: str, identity: Identity, proc: subprocess.Popen[bytes], sock: socket.socket
    ) -> None:
        self.env_id = env_id
        self.identity = identity
        self.proc = proc
        self.sock = sock
        self.started = time.monotonic()
        self.ready: bool | None = None  # None: still importing
        self.error = ""
        self.in_use = False
        self.forks = 0

    @classmethod
    def start(cls, env: Environment, identity: Identity, environ: Mapping[str, str]) -> Zygote:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # An empty private folder: nothing of the daemon's cwd or of a project.
        cwd = env.path / ".zygote"
        prefix, contained = containment.zygote_launch()
        try:
            cwd.mkdir(mode=0o700, exist_ok=True)
            argv = [*prefix, identity.python, str(_MAIN), str(theirs.fileno())]
            proc = subprocess.Popen(
                [*argv, identity.script, identity.module, *(["pid"] if contained else [])],
                cwd=cwd,
                env=dict(environ),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(env.id, identity, proc, ours)

    def await_ready(self, cancel: threading.Event, limit: float) -> bool:
        """Whether the zygote has imported the backend (waiting up to ``limit`` s for it)."""
        deadline = time.monotonic() + limit
        while self.ready is None and not cancel.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.error = f"not ready after {limit:g} s"
                return False
            if not _readable(self.sock, min(_TICK, remaining)):
                continue
            message = self.receive(None)
            if message is not None and message.get("ready"):
                self.ready = True
                log.info(
                    "fork_server_ready",
                    env=self.env_id,
                    backend=self.identity.module,
                    pid=self.proc.pid,
                    seconds=round(time.monotonic() - self.started, 3),
                    rss_kib=self.rss_kib(),
                )
            else:
                self.ready = False
                error = str((message or {}).get("error") or self.error or "exited")
                self.error = error.strip().splitlines()[-1]
        return bool(self.ready)

    def fork(self, argv: Sequence[str], cwd: str, environ: Mapping[str, str]) -> _Forked | None:
        """Have the zygote fork the hook process; None when the zygote does not answer."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        request = {"op": "run", "argv": list(argv[1:]), "cwd": cwd, "env": dict(environ)}
        try:
            self.sock.sendmsg(
                [json.dumps(request).encode("utf-8", "surrogateescape")],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [out_w, err_w]))],
            )
            reply = self.receive(_REPLY_TIMEOUT)
        except OSError as exc:
            reply = None
            self.error = f"cannot send the request: {exc}"
        finally:
            # The child has its copies; ours would keep the pipes from ending.
            os.close(out_w)
            os.close(err_w)
        if reply is None or not isinstance(reply.get("pid"), int):
            os.close(out_r)
            os.close(err_r)
            self.error = self.error or f"no pid in its answer {reply!r:.200}"
            return None
        self.forks += 1
        return _Forked(self, reply["pid"], os.fdopen(out_r, "rb"), os.fdopen(err_r, "rb"))

    def receive(self, timeout: float | None) -> dict[str, Any] | None:
        """One message; None when the zygote is gone, silent past ``timeout`` or talks nonsense."""
        try:
            if timeout is not None and not _readable(self.sock, timeout):
                self.error = f"no answer within {timeout:g} s"
                return None
            data = self.sock.recv(1 << 16)
        except (OSError, ValueError) as exc:
            self.error = f"control socket: {exc}"
            return None
        if not data:
            self.error = f"exited (status {self.proc.poll()})"
            return None
        try:
            message = json.loads(data)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            self.error = f"sent {data[:100]!r}"
            return None
        return message

    def stop(self) -> None:
        """SIGKILL the zygote's group and collect it; idempotent."""
        # Only while not reaped: a reaped pid may already name another group.
        # (Its hooks are in sessions of their own: the group is the zygote.)
        if self.proc.poll() is None:
            kill_group(self.proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5.0)
        self.sock.close()

    def rss_kib(self) -> int | None:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return None


class _Forked:
    """A hook process forked by a zygote, seen as a processes.Child."""

    def __init__(self, zygote: Zygote, pid: int, stdout: IO[bytes], stderr: IO[bytes]) -> None:
        self.zygote = zygote
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr
        self.returncode = -9
        self.lost = False

    def wait_exited(self) -> None:
        # The zygote answers once the child has exited and, not having reaped
        # it yet, still reserves its pid: killing the group stays safe.
        message = self.zygote.receive(None)
        if message is not None and isinstance(message.get("returncode"), int):
            self.returncode = message["returncode"]
        else:
            self.lost = True

    def reap(self) -> int:
        if not self.lost:
            try:
                self.zygote.sock.send(b'{"op": "reap"}')
            except OSError as exc:
                # The status is known; only the zygote's next call will fail.
                self.zygote.error = f"cannot send reap: {exc}"
        return self.returncode

    def kill(self) -> None:
        if not self.zygote.identity.contained:
            kill_group(self.pid)
            return
        # The pid is the zygote's to signal: the first process of the hook's
        # namespace, whose end takes everything in it along.
        try:
            self.zygote.sock.send(b'{"op": "kill"}')
        except OSError:
            # The zygote is gone, and its children went with it (their
            # namespaces die with their parent's death signal).
            return


def _readable(sock: socket.socket, timeout: float) -> bool:
    # poll, not select: the daemon's descriptors may number past FD_SETSIZE.
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))
