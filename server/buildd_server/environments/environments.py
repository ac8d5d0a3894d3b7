"""Build environments on disk: create, fill, check and delete one instance.

An environment is a virtual environment for one interpreter (venvs.py),
filled by one installer with the requirements of its key, and described by
``buildd-env.json``, its *marker*: written last, when the instance is
complete, and taken away while an install changes it, so that an instance
without a marker is half-made and reclaimed at start (rule 7). The marker
records what validation compares on every borrow (rule 5): the interpreter
(its file's size and mtime), the key, and the digest of every installed file
(manifest.py); markers.py reads and writes it. Bytecode is compiled in the
background (bytecode.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from .. import errors
from ..events import Emit, Event, Log, LogSource, Phase
from ..hooks import containment, zygotes
from ..hooks.processes import TAIL_LINES, mentions_enospc, run_process
from . import manifest, markers
from .bytecode import COMPILER, Compiler
from .markers import LEASE_FILE, METADATA_FILE, OFF_FILE, mark_leased, unmark_leased
from .venvs import make_venv

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from ..config import InstallerOptions
    from .installers import Installer
    from .interpreters import Interpreter
    from .keys import EnvKey

log = structlog.get_logger("buildd.environments")

__all__ = [
    "LEASE_FILE",
    "METADATA_FILE",
    "Environment",
    "EnvironmentFactory",
    "Placement",
    "mark_leased",
    "unmark_leased",
]


@dataclass(frozen=True)
class Placement:
    """Where a new instance goes, who holds it, and the cache it may hard-link from."""

    path: Path
    owner: str
    principal: str = "local"
    # The key id at creation (the folder of the store it lives in) and its
    # slot number there; "" and -1 for an instance outside the store.
    key_dir: str = ""
    slot: int = -1
    cache_dir: Path | None = None


@dataclass
class Environment:
    """One environment instance; the pool leases it to one hook call at a time."""

    id: str
    path: Path
    key: EnvKey
    interpreter: Interpreter
    python: Path
    site_packages: Path
    created_at: float
    last_used_at: float
    # The digest of its files (manifest.py) as recorded when it was made.
    fingerprint: str
    hook_calls: int = 0
    # Whether warm hook calls may fork from a fork server (zygotes.py).
    fork_server: bool = False
    owner: str = ""
    principal: str = "local"
    key_dir: str = ""
    slot: int = -1
    cache_dir: Path | None = None
    # Bytes on disk (manifest.Survey.size_bytes), measured after each change.
    size_bytes: int = 0
    # (size, mtime_ns) of the base interpreter's file when the instance was made.
    interpreter_stamp: tuple[int, int] = (0, 0)
    # How long the last validation took, in seconds (reported on the next lease).
    validation_seconds: float = 0.0
    # The session that made it ("" when found on disk at start): a lease by
    # any other session adopts it from the store.
    created_by: str = ""

    @property
    def in_store(self) -> bool:
        return bool(self.key_dir)

    # Set once destroyed: what it answered is no longer reused (hookcache.py).
    retired: bool = False
    # get_requires_for_build_* answers given in this instance, for any session
    # of its principal: (source path, dist, settings id) -> (generation,
    # source fingerprint, dynamic requirements); hookcache.py decides reuse.
    requires_answers: dict[
        tuple[str, str, str], tuple[tuple[str, str, str], str, tuple[str, ...]]
    ] = field(default_factory=dict, repr=False, compare=False)

    @property
    def generation(self) -> tuple[str, str, str]:
        """What must stay the same for this instance's hook answers to hold."""
        return (self.id, self.key.id, self.fingerprint)


class EnvironmentFactory:
    """Creates environments for keys; the pool calls it outside its lock."""

    def __init__(
        self,
        root: Path,
        installer: Installer,
        options: InstallerOptions,
        *,
        fork_server: bool = True,
        compiler: Compiler = COMPILER,
    ) -> None:
        # root holds what the factory shares between environments: virtualenv's
        # app-data (its unpacked seed wheels), so that user settings of
        # virtualenv do not reach the daemon's environments.
        self.root = root
        self.installer = installer
        self.options = options
        self.fork_server = fork_server
        self.compiler = compiler
        # Told when an instance's size changed after its bytecode was compiled.
        self.on_resized: Callable[[Environment], None] | None = None

    # ------------------------------------------------------------ create --

    def create(
        self,
        key: EnvKey,
        interpreter: Interpreter,
        placement: Placement,
        *,
        emit: Emit,
        cancel: threading.Event,
        backend: str = "",
        party: str = "",
    ) -> Environment:
        """A new instance of ``key`` at ``placement.path``, installed, marked complete.

        ``backend``: an installed backend module whose imports are compiled
        first. Raises InstallFailed, ResourceExhausted (disk full) or
        Cancelled; on any failure the partial folder is gone.
        """
        path = placement.path
        started = time.monotonic()
        phase = Phase(
            "creating_environment", key_id=key.id, environment_path=str(path), step="start"
        )
        emit(phase)
        try:
            _check_cancel(cancel, f"creating environment {path}")
            if os.path.lexists(path):
                shutil.rmtree(path)  # a leftover nobody holds (the slot was free)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            python, site_packages = make_venv(
                path,
                interpreter,
                self.installer,
                app_data=self.root / "virtualenv-app-data",
                cache_dir=placement.cache_dir,
            )
            venv_done = time.monotonic()
            _check_cancel(cancel, f"creating environment {path}")
            if key.requirements:
                self._install(
                    python, path, key.id, key.requirements, placement.cache_dir, emit, cancel
                )
            install_done = time.monotonic()
            # Made now, so that the background compile adding it later does
            # not change site-packages' mtime (which fork servers watch).
            (site_packages / "__pycache__").mkdir(exist_ok=True)
            now = time.time()
            env = Environment(
                id=secrets.token_hex(6),
                path=path,
                key=key,
                interpreter=interpreter,
                python=python,
                site_packages=site_packages,
                created_at=now,
                last_used_at=now,
                fingerprint="",
                fork_server=self.fork_server,
                owner=placement.owner,
                principal=placement.principal,
                key_dir=placement.key_dir,
                slot=placement.slot,
                cache_dir=placement.cache_dir,
                interpreter_stamp=markers.stamp(interpreter.executable),
                created_by=party,
            )
            found = manifest.survey(str(path))
            env.fingerprint, env.size_bytes = found.digest, found.size_bytes
            markers.write(env)
        except BaseException as exc:
            shutil.rmtree(path, ignore_errors=True)
            mapped = _mapped(exc, f"creating environment {path} for {interpreter.executable}", path)
            if mapped is exc:
                raise
            raise mapped from exc
        emit(_ended(phase, started))
        log.info(
            "environment_created",
            env=env.id,
            path=str(path),
            key=key.id,
            venv_seconds=round(venv_done - started, 4),
            install_seconds=round(install_done - venv_done, 4),
            survey_seconds=round(time.monotonic() - install_done, 4),
            files=found.files,
            size_bytes=found.size_bytes,
        )
        self.compile(env, backend)
        return env

    def install(
        self, env: Environment, requirements: Sequence[str], *, emit: Emit, cancel: threading.Event
    ) -> None:
        """Add (already normalised) requirements to ``env``; it then carries the larger key."""
        # Its backend, imported before the install, may be what the install replaces.
        zygotes.stop(env.id, "installing")
        self.compiler.stop(env.id)
        marker = env.path / METADATA_FILE
        try:
            # No marker while the files change: a crash now leaves a half-made instance.
            os.replace(marker, env.path / OFF_FILE)
            self._install(
                env.python, env.path, env.key.id, requirements, env.cache_dir, emit, cancel
            )
            env.key = env.key.with_requirements(requirements)
            found = manifest.survey(str(env.path))
            env.fingerprint, env.size_bytes = found.digest, found.size_bytes
            markers.write(env)
            (env.path / OFF_FILE).unlink(missing_ok=True)
        except BaseException as exc:
            # Unchanged after all (the installer stopped before touching it): keep it whole.
            with contextlib.suppress(OSError):
                if manifest.digest(str(env.path)) == env.fingerprint:
                    os.replace(env.path / OFF_FILE, marker)
            mapped = _mapped(exc, f"installing {', '.join(requirements)} into {env.path}", env.path)
            if mapped is exc:
                raise
            raise mapped from exc
        self.compile(env)

    # ---------------------------------------------------------- validate --

    def validate(self, env: Environment) -> bool:
        """Whether ``env`` is still exactly what was made: no process is started."""
        started = time.perf_counter()
        try:
            valid = (
                markers.stamp(env.interpreter.executable) == env.interpreter_stamp
                and os.access(env.python, os.X_OK)  # follows the link to the base python
                and markers.matches(env)
                and manifest.digest(str(env.path)) == env.fingerprint
            )
        except (OSError, ValueError, AttributeError, TypeError):
            valid = False
        env.validation_seconds = time.perf_counter() - started
        return valid

    def destroy(self, env: Environment) -> None:
        # First the processes that run from the folder, then the folder.
        self.compiler.stop(env.id)
        # First the process that runs from the folder, then the folder.
        env.retired = True
        zygotes.stop(env.id, "destroyed")
        shutil.rmtree(env.path, ignore_errors=True)

    def load(self, path: Path, owner: str) -> Environment | None:
        """The instance described by ``path``'s marker (not validated); None if unmarked."""
        return markers.load(path, owner, fork_server=self.fork_server)

    # ---------------------------------------------------------- internals --

    def _install(
        self,
        python: Path,
        path: Path,
        key_id: str,
        requirements: Sequence[str],
        cache_dir: Path | None,
        emit: Emit,
        cancel: threading.Event,
    ) -> None:
        listed = ", ".join(requirements)
        started = time.monotonic()
        phase = Phase(
            "installing_requirements",
            detail=listed,
            count=len(requirements),
            key_id=key_id,
            environment_path=str(path),
            step="start",
        )
        emit(phase)
        argv, environ = self.installer.command(
            python, requirements, self.options, cache_dir=cache_dir
        )
        label = f"{self.installer.name} installing {listed} into {path}"
        if cache_dir is not None:
            # A sandboxed install sees only what exists to be bound in.
            with contextlib.suppress(OSError):
                cache_dir.mkdir(parents=True, exist_ok=True)
        # The principal's own installer cache is the install's too. In a
        # sandbox it is a mount of its own, so uv copies from it instead of
        # hard-linking (link(2) refuses across mounts): binding the whole
        # principal folder instead would let one install write the
        # principal's other environments.
        confine = containment.Confinement(
            environment=path,
            install=True,
            writable=(cache_dir,) if cache_dir else (),
            shared_cache=cache_dir is None,
        )
        try:
            result = run_process(
                argv,
                env=environ,
                confine=confine,
                label=label,
                hook="install",
                emit=_from_source(emit, "installer"),
                cancel=cancel,
            )
        except OSError as exc:
            if _is_enospc(exc):
                raise
            raise errors.InstallFailed(
                f"{label}: could not start {argv[0]}: {exc}", path=str(path)
            ) from exc
        if result.returncode != 0:
            if any(mentions_enospc(line) for line in result.last_lines):
                raise errors.ResourceExhausted(
                    f"no space left on device: {label}",
                    path=str(path),
                    hook="install",
                    last_lines=result.last_lines,
                )
            last = next((line for line in reversed(result.last_lines) if line.strip()), "")
            raise errors.InstallFailed(
                f"{label} failed with exit code {result.returncode}"
                + (f": {last}" if last else ""),
                path=str(path),
                hook="install",
                last_lines=result.last_lines[-TAIL_LINES:],
            )
        emit(_ended(phase, started))

    def compile(self, env: Environment, backend: str = "") -> None:
        """Compile ``env``'s bytecode in the background (what is compiled already is skipped)."""

        def done(finished: bool) -> None:
            if not finished:
                return
            with contextlib.suppress(OSError):
                env.size_bytes = manifest.survey(str(env.path)).size_bytes
            if self.on_resized is not None:
                self.on_resized(env)

        self.compiler.start(env.id, env.path, env.python, env.site_packages, backend, on_done=done)


def _mapped(exc: BaseException, what: str, path: Path) -> BaseException:
    """The typed error for a failure while ``what`` (creating or installing)."""
    if isinstance(exc, errors.BuilddError):
        return exc
    if _is_enospc(exc):
        return errors.ResourceExhausted(
            f"no space left on device while {what}: {exc}", path=str(path)
        )
    if isinstance(exc, Exception):
        return errors.InstallFailed(f"{what} failed: {exc}", path=str(path))
    return exc


def _ended(phase: Phase, started: float) -> Phase:
    return Phase(
        phase.name,
        detail=phase.detail,
        key_id=phase.key_id,
        environment_path=phase.environment_path,
        count=phase.count,
        step_seconds=max(time.monotonic() - started, 1e-6),
        step="end",
    )


def _from_source(emit: Emit, source: LogSource) -> Emit:
    """``emit`` with every Log event marked as written by ``source``."""

    def tagged(event: Event) -> None:
        emit(dataclasses.replace(event, source=source) if isinstance(event, Log) else event)

    return tagged


def _check_cancel(cancel: threading.Event, what: str) -> None:
    if cancel.is_set():
        raise errors.Cancelled(f"{what} was cancelled")


def _is_enospc(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return True
        if mentions_enospc(str(current)):
            return True
        current = current.__cause__ or current.__context__
    return False
