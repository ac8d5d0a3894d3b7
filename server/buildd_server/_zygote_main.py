"""The fork server ("zygote") of one build environment: see zygotes.py.

This file runs inside the ENVIRONMENT's interpreter, started by path:

    python _zygote_main.py CONTROL_FD IN_PROCESS_SCRIPT BACKEND_MODULE [pid]

so it must stay valid on every Python a build environment may have (3.8 and
later: no 3.9+ syntax or library calls; a test parses it as 3.8) and import
nothing of buildd_server.

It makes itself what a plain ``python _in_process.py`` run is just before
that script imports the backend, then imports the backend once. For every
request on the control socket (a SOCK_SEQPACKET socketpair end; one JSON
message, plus the child's stdout and stderr write ends as SCM_RIGHTS) it
forks one child, which becomes the hook process: new session, the given fds
on 1 and 2, the given cwd, environment and argv, then ``_in_process.main()``
and an exit exactly like the interpreter's own. Messages to the daemon:

    {"ready": true, "pid": P}      once, after the import (or {"error": TEXT})
    {"pid": CHILD}                 right after each fork
    {"pid": CHILD, "returncode": N}  when CHILD has exited (N < 0: signal)

The exited child is reaped only when the daemon next writes (``{"op":
"reap"}``): until then its pid, which is also its process group id, stays
reserved, so the daemon may kill that group without risk of hitting a
stranger (what WNOWAIT gives the plain path). One child at a time: the
daemon leases an environment to one hook call at a time (rule 1).

With ``pid`` (the daemon contains its calls: containment.py), the child is
the first process of a PID namespace of its own (unshare(CLONE_NEWPID)
before the fork, setns back after it): a tiny init that forks the hook,
reaps whatever gets re-parented to it, and on the hook's end writes its
wait status to a pipe and exits, at which the kernel kills everything left
in the namespace. Its pid may be this process's namespace's rather than the
daemon's, so the daemon never signals it: it sends ``{"op": "kill"}`` and
this process kills the init. The end of the control socket (the daemon is
gone) kills the running child too.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import traceback
import types
from importlib import import_module
from importlib.machinery import SourceFileLoader
from typing import Any

_MAX_MESSAGE = 1 << 20
_CLONE_NEWPID = 0x20000000
_PR_SET_PDEATHSIG = 1


def main() -> None:
    control_fd, script, backend_module = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    sock = socket.socket(fileno=control_fd)
    try:
        namespaces = _Namespaces() if sys.argv[4:5] == ["pid"] else None
        module = _prepare(script, backend_module)
    except BaseException:
        _send(sock, {"error": traceback.format_exc()})
        return
    _send(sock, {"ready": True, "pid": os.getpid()})
    child = 0
    while True:
        message, fds = _recv(sock)
        if child and (message is None or message.get("op") != "kill"):
            # The daemon has read the child's status (and killed what it
            # wanted to): only now may the pid be recycled.
            _reap(child)
            child = 0
        if message is None:
            return  # the daemon is gone: nothing left to serve
        if message.get("op") != "run" or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            if message.get("op") in ("reap", "kill"):
                # A kill after the child's end finds only its zombie: nothing to do.
                continue
            _send(sock, {"error": f"bad request: {message!r}"})
            return
        # Nothing buffered may be written twice, by this process and the child.
        sys.stdout.flush()
        sys.stderr.flush()
        if namespaces is None:
            child = os.fork()
            if child == 0:
                sock.close()
                _become_hook(module, message, fds)  # never returns
            for fd in fds:
                os.close(fd)
            _send(sock, {"pid": child})
            returncode = _wait_exited(child)
            # Whatever the hook left running in its group goes with it, as after
            # a plain hook; the zombie still holds the group id, so this is safe.
            with contextlib.suppress(OSError):
                os.killpg(child, signal.SIGKILL)
        else:
            status_r, status_w = os.pipe()
            child = namespaces.fork()
            if child == 0:
                sock.close()
                os.close(status_r)
                _be_init(namespaces, module, message, fds, status_w)  # never returns
            os.close(status_w)
            for fd in fds:
                os.close(fd)
            _send(sock, {"pid": child})
            ended = _await_init(sock, child, status_r)
            if ended is None:
                return  # the daemon is gone; the child was killed
            returncode = ended
        _send(sock, {"pid": child, "returncode": returncode})


class _Namespaces:
    """unshare(CLONE_NEWPID) before a fork, setns back after it: one namespace per fork."""

    def __init__(self) -> None:
        import ctypes

        self._libc = ctypes.CDLL(None, use_errno=True)
        self._get_errno = ctypes.get_errno
        self._own = os.open("/proc/self/ns/pid", os.O_RDONLY)
        # Fail now, at start-up, rather than at the first call.
        self._call("unshare", _CLONE_NEWPID)
        self._call("setns", self._own, _CLONE_NEWPID)

    def fork(self) -> int:
        me = os.getpid()
        self._call("unshare", _CLONE_NEWPID)
        try:
            pid = os.fork()
        finally:
            if os.getpid() == me:  # the parent: the next fork starts afresh
                self._call("setns", self._own, _CLONE_NEWPID)
        if pid == 0:
            os.close(self._own)
        return pid

    def die_with_parent(self) -> None:
        self._libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    def _call(self, name: str, *args: int) -> None:
        if getattr(self._libc, name)(*args) != 0:
            code = self._get_errno()
            raise OSError(code, f"{name}: {os.strerror(code)}")


def _be_init(
    namespaces: _Namespaces,
    module: types.ModuleType,
    message: dict[str, Any],
    fds: list[int],
    status: int,
) -> None:
    """The first process of the hook's namespace: fork the hook, reap, report, exit."""
    try:
        # Dies with the fork server, and so does the whole namespace.
        namespaces.die_with_parent()
        os.setsid()  # a group of its own, as a plain hook's starter has
        hook = os.fork()
        if hook == 0:
            os.close(status)
            _become_hook(module, message, fds)  # never returns
        for fd in fds:
            os.close(fd)  # the hook's pipes must end with the hook's tree
        while True:
            pid, wait_status = os.waitpid(-1, 0)
            if pid == hook:
                break
        _write_all(status, str(wait_status).encode())
    finally:
        os._exit(0)


def _await_init(sock: socket.socket, init: int, status: int) -> int | None:
    """The hook's exit code once the init has reported it (or was killed); None: daemon gone."""
    import select

    poller = select.poll()
    poller.register(sock, select.POLLIN)
    poller.register(status, select.POLLIN)
    data = b""
    gone = False
    while True:
        ready = {fd for fd, _ in poller.poll()}
        if sock.fileno() in ready and not gone:
            message, extra = _recv(sock)
            for fd in extra:
                os.close(fd)
            if message is None:
                gone = True
                poller.unregister(sock)
                _kill(init)
            elif message.get("op") == "kill":
                _kill(init)
        if status in ready:
            chunk = os.read(status, 64)
            data += chunk
            if not chunk:
                break
    os.close(status)
    returncode = _wait_exited(init)
    if gone:
        _reap(init)
        return None
    if not data:
        return returncode  # the init itself was killed: its signal
    wait_status = int(data)
    if os.WIFSIGNALED(wait_status):
        return -os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


def _kill(pid: int) -> None:
    # Not reaped yet: the pid still names our child.
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def _prepare(script: str, backend_module: str) -> types.ModuleType:
    """Load _in_process.py, then the backend, as a plain run would just before main()."""
    # A plain run has the script's (resolved) folder first on sys.path, and
    # main() removes it before importing the backend: do the same now, so the
    # backend is imported with exactly that sys.path. Our own folder (the
    # daemon's package) must never be visible to the environment.
    here = os.path.normcase(os.path.realpath(os.path.dirname(script)))
    sys.path[0] = here
    sys.path[:] = [p for p in sys.path if os.path.normcase(os.path.realpath(p)) != here]
    sys.argv = [script]
    module = types.ModuleType("_in_process")
    module.__file__ = script
    module.__loader__ = SourceFileLoader("__main__", script)
    module.__spec__ = None  # what a script run as __main__ has
    with open(script, "rb") as handle:
        code = compile(handle.read(), script, "exec")
    # Not named __main__ yet: its ``if __name__ == "__main__"`` must not run now.
    exec(code, module.__dict__)

    import warnings

    captured: dict[int, bytes] = {}
    with warnings.catch_warnings(record=True) as seen, _Capture(captured):
        import_module(backend_module)
    # main() reports only UserWarnings, recorded while it imports the backend.
    noted = [
        w for w in seen if isinstance(w.category, type) and issubclass(w.category, UserWarning)
    ]
    original = module.__dict__["_build_backend"]
    done: list[bool] = []

    def build_backend() -> Any:
        # In a plain run the import happens here, inside main()'s
        # catch_warnings and with the hook's pipes on 1 and 2: give back what
        # the import printed and warned, once, at the same point.
        if not done:
            done.append(True)
            for fd, data in sorted(captured.items()):
                _write_all(fd, data)
            for w in noted:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return original()

    module.__dict__["_build_backend"] = build_backend
    return module


class _Capture:
    """Send fds 1 and 2 to temporary files for the duration; keep what was written."""

    def __init__(self, into: dict[int, bytes]) -> None:
        self.into = into
        self.saved: list[tuple[int, int, Any]] = []

    def __enter__(self) -> None:
        for fd in (1, 2):
            scratch = tempfile.TemporaryFile()
            self.saved.append((fd, os.dup(fd), scratch))
            os.dup2(scratch.fileno(), fd)

    def __exit__(self, *exc: object) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(AttributeError, OSError, ValueError):
                stream.flush()
        for fd, saved, scratch in self.saved:
            os.dup2(saved, fd)
            os.close(saved)
            scratch.seek(0)
            data = scratch.read()
            scratch.close()
            if data:
                self.into[fd] = data


def _become_hook(module: types.ModuleType, message: dict[str, Any], fds: list[int]) -> None:
    code = 1
    try:
        # Its own session and group, like start_new_session=True: the daemon
        # kills the hook's whole tree with one killpg(child pid).
        os.setsid()
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(message["cwd"])
        os.environ.clear()
        os.environ.update(message["env"])
        sys.argv = list(message["argv"])
        if hasattr(sys, "orig_argv"):
            sys.orig_argv = [sys.executable, *sys.argv]
        # This process installed no signal handler and changed no disposition:
        # the child has exactly those of a freshly started interpreter, which
        # is what a plain hook has (SIGINT raises KeyboardInterrupt, SIGPIPE
        # ignored). Nothing to reset.
        module.__name__ = "__main__"
        sys.modules["__main__"] = module
    except BaseException:
        # Where a plain start would have failed to start at all (a cwd that
        # is gone): say why, on the hook's stderr when it got that far.
        with contextlib.suppress(BaseException):
            traceback.print_exc()
            sys.stderr.flush()
        os._exit(code)
    try:
        code = _run(module)
    finally:
        os._exit(code)


def _run(module: types.ModuleType) -> int:
    """main(), then the interpreter's own ending: exit status, threads, atexit, flush."""
    try:
        module.main()
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException as exc:
        tb = exc.__traceback__
        # Start the traceback in _in_process.py, not in this file.
        sys.excepthook(type(exc), exc, tb.tb_next if tb is not None else None)
        code = 1
    import threading

    # Wait for non-daemon threads, as the interpreter does at exit.
    with contextlib.suppress(Exception):
        threading._shutdown()  # type: ignore[attr-defined]
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            if stream is sys.stdout:
                code = 120  # what Py_FinalizeEx makes of a failed flush
    return code


def _exit_code(value: object) -> int:
    # The interpreter's handle_system_exit: None is 0, an int is itself,
    # anything else is printed and is 1.
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    with contextlib.suppress(Exception):
        sys.stderr.write(f"{value}\n")
    return 1


def _wait_exited(pid: int) -> int:
    """The child's return code (negative: signal), leaving it unreaped where possible."""
    if hasattr(os, "waitid"):
        result = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        if result is not None and result.si_code == os.CLD_EXITED:
            return int(result.si_status)
        if result is not None:
            return -int(result.si_status)
    _, status = os.waitpid(pid, 0)  # pragma: no cover - no waitid: reaped now
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    # A daemon that is gone shows as the end of the next receive.
    with contextlib.suppress(OSError):
        sock.send(json.dumps(message).encode("utf-8"))


def _recv(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    fds = array.array("i")
    try:
        data, ancdata, flags, _ = sock.recvmsg(_MAX_MESSAGE, socket.CMSG_LEN(4 * fds.itemsize))
    except OSError:
        return None, []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    received = list(fds)
    if not data or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in received:
            os.close(fd)
        return None, []
    try:
        message = json.loads(data.decode("utf-8"))
    except ValueError:
        message = {}
    return (message if isinstance(message, dict) else {}), received


def _write_all(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        pass


if __name__ == "__main__":
    main()
