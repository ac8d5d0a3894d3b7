"""Fork servers ("zygotes"): a warm hook call costs a fork, not an interpreter start.

A zygote is a process of one environment's interpreter that has started,
loaded pyproject_hooks' ``_in_process.py`` and imported the backend
(``zygote.py``, ``_zygote_main.py``); each hook call is one fork of it, a fresh process watched
by processes.supervise exactly like a plain hook. Used only where a fork
cannot be told from a plain start, else the call runs plain: the reasons and
figures are in docs/performance.md ("Fork server").
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import structlog

from .. import errors
from . import containment
from .processes import ProcessResult, run_process, supervise
from .zygote import Identity, Zygote

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ..environments.environments import Environment
    from ..events import Emit

log = structlog.get_logger("buildd.zygotes")

# Backends whose import, proven by test_fork_server.py, leaves no trace of the
# cwd or argv it happened in: add one here only together with its test.
PREIMPORT_SAFE = frozenset({"setuptools.build_meta", "hatchling.build", "flit_core.buildapi"})
# Each zygote holds its interpreter with the backend imported (14 to 28 MiB
# RSS measured); past this many, the least recently used idle one is stopped.
MAX_ZYGOTES = 16
# Longest a call waits for a starting zygote.
_READY_TIMEOUT = 60.0
# After this many failures of an environment's zygotes, it runs plain only.
_MAX_FAILURES = 3
# Linux only: SOCK_SEQPACKET on AF_UNIX and waitid(WNOWAIT) are what keeps
# the protocol simple and the group kill safe; elsewhere every hook runs plain.
SUPPORTED = sys.platform.startswith("linux") and hasattr(socket, "SOCK_SEQPACKET")
_BACKEND = "_PYPROJECT_HOOKS_BUILD_BACKEND"
_BACKEND_PATH = "_PYPROJECT_HOOKS_BACKEND_PATH_JSON"


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
