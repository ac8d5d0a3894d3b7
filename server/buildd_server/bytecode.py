"""Bytecode for new environments, compiled in the background.

Hooks may run with ``PYTHONDONTWRITEBYTECODE=1``: an environment without
``.pyc`` files compiles its backend again in every hook process. Compiling
all of it before the first hook ran (``compileall``, or the installers'
``--compile``) was the largest step of creating an environment (setuptools:
0.5 to 0.9 s of a 1.0 s creation, busy machine). So the installers compile
nothing, and right after an install one process of the environment's
interpreter (_bytecode_main.py) first compiles what the backend imports, then,
at a lower priority, the rest, while the first hook runs. It writes only
``__pycache__`` files, atomically, which validation does not look at; it is
stopped before the environment changes or goes, and at daemon stop.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from . import containment
from .installers import base_environment
from .processes import kill_group

if TYPE_CHECKING:
    from collections.abc import Callable

log = structlog.get_logger("buildd.bytecode")

_MAIN = Path(__file__).with_name("_bytecode_main.py")


class Compiler:
    """At most one compile per environment, tracked so that it can be stopped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, subprocess.Popen[bytes]] = {}
        self._done: dict[str, threading.Event] = {}
        self._closed = False

    def start(
        self,
        env_id: str,
        environment: Path,
        python: Path,
        site_packages: Path,
        backend: str = "",
        on_done: Callable[[bool], None] | None = None,
    ) -> None:
        """Compile ``site_packages`` in the background; ``on_done(finished)`` afterwards.

        ``backend``: an installed backend module to compile first (empty: none).
        """
        self.stop(env_id)
        # Contained like an install of the request that started it: the
        # interpreter runs the environment's .pth files, which requirements of
        # the caller's choosing installed.
        argv, environ, _ = containment.command(
            [str(python), "-I", str(_MAIN), str(site_packages), backend],
            base_environment(),
            str(site_packages),
            containment.Confinement(environment=environment, install=True),
        )
        with self._lock:
            if self._closed:
                return
            try:
                proc = subprocess.Popen(
                    argv,
                    env=environ,
                    cwd=str(site_packages),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as exc:
                log.warning("bytecode_not_started", env=env_id, error=str(exc))
                return
            self._running[env_id] = proc
            done = self._done[env_id] = threading.Event()
        threading.Thread(
            target=self._watch,
            args=(env_id, proc, on_done, done),
            name=f"buildd-bytecode-{env_id}",
            daemon=True,
        ).start()

    def stop(self, env_id: str) -> None:
        """Kill ``env_id``'s compile, if any, and wait for it; idempotent."""
        with self._lock:
            proc = self._running.pop(env_id, None)
        if proc is not None:
            _kill(proc)

    def running(self, env_id: str) -> bool:
        with self._lock:
            return env_id in self._running

    def wait(self, env_id: str, timeout: float) -> bool:
        """Wait for ``env_id``'s latest compile (and its callback) to end; False on timeout."""
        with self._lock:
            done = self._done.get(env_id)
        return done is None or done.wait(timeout)

    def stop_all(self) -> None:
        """Daemon stop: kill every compile; none starts afterwards."""
        with self._lock:
            self._closed = True
            procs = list(self._running.values())
            self._running.clear()
        for proc in procs:
            _kill(proc)

    def _watch(
        self,
        env_id: str,
        proc: subprocess.Popen[bytes],
        on_done: Callable[[bool], None] | None,
        done: threading.Event,
    ) -> None:
        try:
            self._finish(env_id, proc, on_done)
        finally:
            done.set()
            with self._lock:
                if self._done.get(env_id) is done:
                    del self._done[env_id]

    def _finish(
        self,
        env_id: str,
        proc: subprocess.Popen[bytes],
        on_done: Callable[[bool], None] | None,
    ) -> None:
        code = proc.wait()
        with self._lock:
            finished = self._running.get(env_id) is proc
            if finished:
                del self._running[env_id]
        if finished:
            log.debug("bytecode_compiled", env=env_id, returncode=code)
        if on_done is not None:
            try:
                on_done(finished and code == 0)
            except Exception:
                log.exception("bytecode_callback_failed", env=env_id)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill_group(proc.pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5.0)


# The daemon's background compiles: environments.py starts and stops them.
COMPILER = Compiler()
