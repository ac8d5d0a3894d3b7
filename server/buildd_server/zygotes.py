"""Fork servers ("zygotes"): a warm hook call costs a fork, not an interpreter start.

A zygote is a process of one environment's interpreter that has started,
loaded pyproject_hooks' ``_in_process.py`` and imported the backend
(_zygote_main.py); each hook call is one fork of it, a fresh process watched
by processes.supervise exactly like a plain hook. Used only where a fork
cannot be told from a plain start, else the call runs plain: the reasons and
figures are in docs/performance.md ("Fork server").
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import structlog

from . import containment, errors
from .processes import ProcessResult, kill_group, run_process, supervise

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .environments import Environment
    from .events import Emit

log = structlog.get_logger("buildd.zygotes")

# Backends whose import, proven by test_fork_server.py, leaves no trace of the
# cwd or argv it happened in: add one here only together with its test.
PREIMPORT_SAFE = frozenset({"setuptools.build_meta", "hatchling.build", "flit_core.buildapi"})
# Each zygote holds its interpreter with the backend imported (14 to 28 MiB
# RSS measured); past this many, the least recently used idle one is stopped.
MAX_ZYGOTES = 16
# Longest a call waits for a starting zygote, and for its answer to a fork.
_READY_TIMEOUT = 60.0
_REPLY_TIMEOUT = 30.0
# After this many failures of an environment's zygotes, it runs plain only.
_MAX_FAILURES = 3
_TICK = 0.1
_MAIN = Path(__file__).with_name("_zygote_main.py")
# Linux only: SOCK_SEQPACKET on AF_UNIX and waitid(WNOWAIT) are what keeps
# the protocol simple and the group kill safe; elsewhere every hook runs plain.
SUPPORTED = sys.platform.startswith("linux") and hasattr(socket, "SOCK_SEQPACKET")
_BACKEND = "_PYPROJECT_HOOKS_BUILD_BACKEND"
_BACKEND_PATH = "_PYPROJECT_HOOKS_BACKEND_PATH_JSON"


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


def identity_for(
    env: Environment, argv: Sequence[str], environ: Mapping[str, str]
) -> Identity | None:
    """The zygote this hook call could use, or None when it must run plain."""
    if not (SUPPORTED and env.fork_server) or len(argv) < 4 or environ.get(_BACKEND_PATH):
        return None
    if not containment.fork_server_allowed():
        return None
    module = environ.get(_BACKEND, "").partition(":")[0].strip()
    if module not in PREIMPORT_SAFE:
        return None
    try:
        mtime = os.stat(env.site_packages).st_mtime_ns
    except OSError:
        return None
    # The object after ':' is looked up per call: one zygote serves
    # setuptools.build_meta and setuptools.build_meta:__legacy__ alike.
    rest = sorted((k, v) for k, v in environ.items() if k != _BACKEND)
    digest = hashlib.sha256(json.dumps(rest).encode("utf-8", "surrogateescape")).hexdigest()
    contained = containment.zygote_launch()[1]
    return Identity(argv[0], argv[1], module, digest, (env.fingerprint, mtime), contained)


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


class Zygotes:
    """The fork servers of the daemon, one per environment at most, bounded LRU."""

    def __init__(self, limit: int = MAX_ZYGOTES) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._zygotes: OrderedDict[str, Zygote] = OrderedDict()
        self._failures: dict[str, int] = {}
        self._broken: dict[str, Identity] = {}

    def run(
        self,
        env: Environment,
        argv: Sequence[str],
        *,
        cwd: str | None,
        environ: Mapping[str, str],
        label: str,
        hook: str,
        emit: Emit,
        cancel: threading.Event,
        timeout: float | None,
        confine: containment.Confinement,
        quiet: bool = False,
    ) -> ProcessResult:
        """Run one hook call: through ``env``'s zygote when it may, else plain."""
        watch: dict[str, Any] = {"label": label, "hook": hook, "emit": emit, "cancel": cancel}
        watch.update(timeout=timeout, quiet=quiet)
        identity = identity_for(env, argv, environ)
        zygote = None if identity is None else self._take(env.id, identity)
        if zygote is not None:
            try:
                result = self._through(zygote, argv, cwd or os.getcwd(), environ, watch)
            finally:
                zygote.in_use = False
            if result is not None:
                return result
            self._failed(zygote)
        result = run_process(argv, env=environ, cwd=cwd, confine=confine, **watch)
        if identity is not None and zygote is None:
            self._start(env, identity, environ)
        return result

    def get(self, env_id: str) -> Zygote | None:
        with self._lock:
            return self._zygotes.get(env_id)

    def stop(self, env_id: str, reason: str) -> None:
        """Stop ``env_id``'s zygote (the environment changes or goes) and forget it."""
        with self._lock:
            zygote = self._zygotes.pop(env_id, None)
            self._failures.pop(env_id, None)
            self._broken.pop(env_id, None)
        if zygote is not None:
            zygote.stop()
            log.info("fork_server_stopped", env=env_id, reason=reason)

    def stop_all(self) -> None:
        """Stop every fork server (daemon stop: stored environments stay, their processes go)."""
        with self._lock:
            running = list(self._zygotes.values())
            self._zygotes.clear()
            self._failures.clear()
            self._broken.clear()
        for zygote in running:
            zygote.stop()

    def rss_kib(self) -> dict[str, int | None]:
        with self._lock:
            zygotes = list(self._zygotes.values())
        return {z.env_id: z.rss_kib() for z in zygotes}

    # ------------------------------------------------------------ internals --

    def _take(self, env_id: str, identity: Identity) -> Zygote | None:
        with self._lock:
            zygote = self._zygotes.get(env_id)
            if zygote is None:
                return None
            if zygote.identity == identity and zygote.proc.poll() is None and not zygote.in_use:
                zygote.in_use = True
                self._zygotes.move_to_end(env_id)
                return zygote
            del self._zygotes[env_id]
        stale = zygote.identity != identity
        zygote.stop()
        log.info("fork_server_stopped", env=env_id, reason="stale" if stale else "exited")
        if not stale:
            self._count_failure(env_id)
        return None

    def _through(
        self,
        zygote: Zygote,
        argv: Sequence[str],
        cwd: str,
        environ: Mapping[str, str],
        watch: dict[str, Any],
    ) -> ProcessResult | None:
        limit = (
            _READY_TIMEOUT if watch["timeout"] is None else min(_READY_TIMEOUT, watch["timeout"])
        )
        if not zygote.await_ready(watch["cancel"], limit):
            if watch["cancel"].is_set():
                # Nothing wrong with the zygote: keep it for the next call.
                label, hook = watch["label"], watch["hook"]
                raise errors.Cancelled(f"{label} was cancelled before it started", hook=hook)
            return None
        child = zygote.fork(argv, cwd, environ)
        if child is None:
            return None
        result = supervise(child, **watch)
        if child.lost:
            # The hook's group is killed and its pipes drained: run it again, plain.
            zygote.error = zygote.error or "lost during the call"
            return None
        return result

    def _failed(self, zygote: Zygote) -> None:
        with self._lock:
            if self._zygotes.get(zygote.env_id) is zygote:
                del self._zygotes[zygote.env_id]
            if zygote.ready is False:
                # It said it could not import the backend: the plain run reports why.
                self._broken[zygote.env_id] = zygote.identity
        zygote.stop()
        self._count_failure(zygote.env_id)
        log.warning(
            "fork_server_failed",
            env=zygote.env_id,
            backend=zygote.identity.module,
            error=zygote.error,
            fallback="plain",
        )

    def _count_failure(self, env_id: str) -> None:
        with self._lock:
            self._failures[env_id] = self._failures.get(env_id, 0) + 1

    def _start(self, env: Environment, identity: Identity, environ: Mapping[str, str]) -> None:
        victims: list[Zygote] = []
        with self._lock:
            if (
                env.id in self._zygotes
                or self._failures.get(env.id, 0) >= _MAX_FAILURES
                or self._broken.get(env.id) == identity
            ):
                return
            while len(self._zygotes) >= self.limit:
                idle = next((z for z in self._zygotes.values() if not z.in_use), None)
                if idle is None:
                    return
                victims.append(self._zygotes.pop(idle.env_id))
        for victim in victims:
            victim.stop()
            log.info("fork_server_stopped", env=victim.env_id, reason="evicted")
        try:
            zygote = Zygote.start(env, identity, environ)
        except OSError as exc:
            self._count_failure(env.id)
            log.warning("fork_server_failed", env=env.id, error=str(exc), fallback="plain")
            return
        with self._lock:
            self._zygotes[env.id] = zygote
        log.info("fork_server_started", env=env.id, backend=identity.module, pid=zygote.proc.pid)


# The daemon's fork servers: environments.py stops them, hooks.py runs through them.
REGISTRY = Zygotes()


def stop(env_id: str, reason: str) -> None:
    REGISTRY.stop(env_id, reason)
