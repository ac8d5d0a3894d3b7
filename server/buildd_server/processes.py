"""Running one child process tree to completion, watched.

``run_process`` is the one place where the daemon starts a plain child: its
own process group (so the whole tree can be killed), contained as the
request's principal requires (containment.py: a PID namespace, or a
sandbox), stdin closed, stdout and stderr read line by line as they come,
bounded memory whatever the child writes, timeout and cancel enforced.
``supervise`` is that watching part on its own, for a child someone else
started (the fork server's, see zygotes.py): anything that offers a ``Child``
gets the same streaming, bounds and kills.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Literal, Protocol

from . import containment, errors
from .events import Emit, Log

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

TAIL_LINES = 50
# A minified file or a progress bar without newlines must not become one huge line.
MAX_LINE_BYTES = 8 * 1024
CUT_MARK = " [line cut at 8 KiB]"
# How often a waiting runner looks at the cancel event and the clock.
_TICK = 0.1
# After the group is killed, how long to wait for the pipes to close: only a
# process that left the group (setsid) can hold them open past that.
_PIPE_GRACE = 5.0
# How long, at most, a PID namespace's end may trail its bubblewrap's
# (microseconds in practice: the kernel kills what is left at once).
_NAMESPACE_GRACE = 10


@dataclass(frozen=True)
class ProcessResult:
    returncode: int
    last_lines: tuple[str, ...]


class Child(Protocol):
    """A started child that leads its own process group (its pid is the group id)."""

    @property
    def pid(self) -> int: ...

    @property
    def stdout(self) -> IO[bytes]: ...

    @property
    def stderr(self) -> IO[bytes]: ...

    def wait_exited(self) -> None:
        """Block until the child has exited, leaving its pid reserved (not reaped).

        While the pid is reserved it cannot name another process, so killing
        its group stays safe until ``reap``.
        """

    def reap(self) -> int:
        """Release the pid and return the exit code (negative: killed by that signal)."""

    def kill(self) -> None:
        """SIGKILL the child's whole tree; harmless once it has exited (until ``reap``)."""


def run_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    confine: containment.Confinement,
    label: str,
    hook: str,
    emit: Emit,
    cancel: threading.Event,
    timeout: float | None = None,
    cwd: str | None = None,
    quiet: bool = False,
) -> ProcessResult:
    """Run ``argv`` to completion and return its exit code and last lines.

    ``label`` names the process in error messages, ``hook`` tags its Log
    events, ``confine`` says which of the request's folders it needs (used
    when the request's principal is sandboxed). Raises errors.Timeout /
    errors.Cancelled after killing the process group; OSError when the
    process cannot be started.
    """
    info_r, info_w = os.pipe() if containment.current_mode() != "none" else (-1, -1)
    try:
        command, environ, wrapped = containment.command(
            argv, env, cwd, confine, info_w if info_w >= 0 else None
        )
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            pass_fds=(info_w,) if info_w >= 0 else (),
        )
    except BaseException:
        for fd in (info_r, info_w):
            if fd >= 0:
                os.close(fd)
        raise
    if info_w >= 0:
        os.close(info_w)
    return supervise(
        _Popened(proc, wrapped, _namespace_pidfd(info_r) if info_r >= 0 else None),
        label=label,
        hook=hook,
        emit=emit,
        cancel=cancel,
        timeout=timeout,
        quiet=quiet,
    )


def supervise(
    child: Child,
    *,
    label: str,
    hook: str,
    emit: Emit,
    cancel: threading.Event,
    timeout: float | None = None,
    quiet: bool = False,
) -> ProcessResult:
    """Watch a started ``child`` to its end; the contract of ``run_process``."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    tail_lock = threading.Lock()
    # Separate, so that an emit blocked on a slow client never holds up the
    # end of the call, which needs only the tail.
    emit_lock = threading.Lock()
    finished = threading.Event()
    listening = not quiet

    def on_line(stream: Literal["stdout", "stderr"], text: str) -> None:
        nonlocal listening
        with tail_lock:
            if finished.is_set():
                return
            tail.append(text)
        with emit_lock:  # both pipes' readers call it; emit need not be thread-safe
            if not listening or finished.is_set():
                return
            try:
                emit(Log(stream=stream, text=text, hook=hook))
            except Exception:
                # A reader that died here would stop draining the pipe and
                # block the child: keep reading, stop forwarding.
                listening = False

    readers = [
        threading.Thread(target=_pump, args=(pipe, name, on_line), daemon=True)
        for pipe, name in ((child.stdout, "stdout"), (child.stderr, "stderr"))
    ]
    exited = threading.Event()
    waiter = threading.Thread(target=_wait_exit, args=(child, exited), daemon=True)
    for thread in (*readers, waiter):
        thread.start()

    deadline = None if timeout is None else time.monotonic() + timeout
    reason: Literal["timeout", "cancel"] | None = None
    try:
        while not exited.wait(_tick(deadline)):
            if cancel.is_set():
                reason = "cancel"
                break
            if deadline is not None and time.monotonic() >= deadline:
                reason = "timeout"
                break
    finally:
        # Always: on timeout or cancel this stops the work; after a normal exit
        # it removes what the child left running (daemons, sleep loops), which
        # would otherwise outlive the call and keep the pipes open.
        child.kill()
        exited.wait()
        try:
            returncode = child.reap()
        finally:
            for thread in readers:
                thread.join(_PIPE_GRACE)
            with tail_lock:
                finished.set()
                lines = tuple(tail)
        # Each reader closes its own pipe at EOF: closing it here could block
        # on a reader still stuck behind a process that left the group.

    if reason == "timeout":
        raise errors.Timeout(
            f"{label} ran past its timeout of {timeout:g} s; its process group was killed",
            hook=hook,
            last_lines=lines,
        )
    if reason == "cancel":
        raise errors.Cancelled(
            f"{label} was cancelled; its process group was killed", hook=hook, last_lines=lines
        )
    return ProcessResult(returncode, lines)


def mentions_enospc(line: str) -> bool:
    """Whether an output line reports a full disk (Python, pip, uv and Rust spellings)."""
    return "No space left on device" in line or "os error 28" in line or "Errno 28" in line


def kill_group(pgid: int) -> None:
    """SIGKILL every process of group ``pgid``; nothing left to kill is fine."""
    # Nothing left in the group raises (PermissionError: macOS, zombies only).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class _Popened:
    """A subprocess.Popen child seen as a ``Child``."""

    def __init__(
        self, proc: subprocess.Popen[bytes], wrapped: bool = False, namespace: int | None = None
    ) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        self._proc = proc
        self._wrapped = wrapped
        # A pidfd of the PID namespace's first process (under bubblewrap).
        self._namespace = namespace
        self.pid = proc.pid
        self.stdout: IO[bytes] = proc.stdout
        self.stderr: IO[bytes] = proc.stderr

    def wait_exited(self) -> None:
        try:
            if hasattr(os, "waitid"):
                # WNOWAIT leaves the child a zombie: its pid (which is also the
                # group id) cannot be reused before kill_group has run.
                os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
            else:  # pragma: no cover - platforms without waitid
                self._proc.wait()
        except ChildProcessError:
            pass
        if self._namespace is not None:
            # bubblewrap can end before its namespace is empty: the call ends
            # when the namespace's first process (and so everything) is gone.
            poller = select.poll()
            poller.register(self._namespace, select.POLLIN)
            poller.poll(_NAMESPACE_GRACE * 1000)
            os.close(self._namespace)
            self._namespace = None

    def reap(self) -> int:
        return containment.exit_status(self._proc.wait(), self._wrapped)

    def kill(self) -> None:
        # bubblewrap, when wrapped, leads the group; its sandbox dies with it.
        kill_group(self.pid)


def _namespace_pidfd(info: int) -> int | None:
    """A pidfd of the namespace's first process, from bubblewrap's --info-fd JSON."""
    # bubblewrap writes it before it starts the command (its namespace's
    # first process keeps the pipe open, so no end of file comes); one that
    # fails closes the pipe with nothing written.
    data = b""
    poller = select.poll()
    poller.register(info, select.POLLIN)
    deadline = time.monotonic() + _NAMESPACE_GRACE
    try:
        while time.monotonic() < deadline:
            if not poller.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                break
            chunk = os.read(info, 4096)
            if not chunk:
                break
            data += chunk
            try:
                pid = int(json.loads(data)["child-pid"])
            except ValueError:
                continue  # not all of it yet
            except (KeyError, TypeError):
                return None
            return os.pidfd_open(pid)
    except OSError:
        return None
    finally:
        os.close(info)
    return None


def _tick(deadline: float | None) -> float:
    if deadline is None:
        return _TICK
    return max(0.0, min(_TICK, deadline - time.monotonic()))


def _wait_exit(child: Child, exited: threading.Event) -> None:
    try:
        child.wait_exited()
    finally:
        exited.set()


def _pump(
    pipe: IO[bytes],
    stream: Literal["stdout", "stderr"],
    on_line: Callable[[Literal["stdout", "stderr"], str], None],
) -> None:
    cutting = False
    with pipe:
        for chunk in iter(lambda: pipe.readline(MAX_LINE_BYTES), b""):
            complete = chunk.endswith(b"\n")
            if cutting:
                # The rest of an over-long line: drop it up to its newline.
                cutting = not complete
                continue
            text = chunk.rstrip(b"\r\n").decode("utf-8", "replace")
            if not complete and len(chunk) >= MAX_LINE_BYTES:
                cutting = True
                text += CUT_MARK
            on_line(stream, text)
