"""Build environments on disk: create, fill, check and delete one instance.

An environment is a virtualenv made by virtualenv for one interpreter, filled
by one installer with the requirements of its key, compiled to bytecode once,
and described by ``buildd-env.json``. Its fingerprint (every file of
site-packages: path, size, mtime) lets ``validate`` notice, cheaply, that a
hook or a person changed it (rule 5).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import containment, errors, zygotes
from .events import Emit, Event, Log, LogSource, Phase
from .installers import Installer, base_environment
from .processes import TAIL_LINES, mentions_enospc, run_process

if TYPE_CHECKING:
    import threading
    from collections.abc import Sequence

    from .config import InstallerOptions
    from .interpreters import Interpreter
    from .keys import EnvKey

METADATA_FILE = "buildd-env.json"


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
    fingerprint: str
    hook_calls: int = 0
    # Whether warm hook calls may fork from a fork server (zygotes.py).
    fork_server: bool = False
    # Set once destroyed: what it answered is no longer reused (hookcache.py).
    retired: bool = False

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
    ) -> None:
        # root holds what the factory shares between environments: virtualenv's
        # app-data (its unpacked seed wheels), so that user settings of
        # virtualenv do not reach the daemon's environments.
        self.root = root
        self.installer = installer
        self.options = options
        self.fork_server = fork_server

    # ------------------------------------------------------------ create --

    def create(
        self,
        key: EnvKey,
        interpreter: Interpreter,
        owner_dir: Path,
        *,
        emit: Emit,
        cancel: threading.Event,
    ) -> Environment:
        """A new instance of ``key`` in ``owner_dir/<id>``, installed and compiled.

        Raises InstallFailed, ResourceExhausted (disk full) or Cancelled; on
        any failure the partial folder is gone.
        """
        # Short ids keep shebang lines of console scripts under the kernel's limit.
        env_id = secrets.token_hex(6)
        path = owner_dir / env_id
        started = time.monotonic()
        phase = Phase(
            "creating_environment", key_id=key.id, environment_path=str(path), step="start"
        )
        emit(phase)
        try:
            _check_cancel(cancel, f"creating environment {path}")
            owner_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            python, site_packages = self._make_venv(path, interpreter)
            _check_cancel(cancel, f"creating environment {path}")
            if key.requirements:
                self._install(python, path, key.id, key.requirements, emit=emit, cancel=cancel)
            self._compile(python, site_packages, path, emit=emit, cancel=cancel)
            now = time.time()
            env = Environment(
                id=env_id,
                path=path,
                key=key,
                interpreter=interpreter,
                python=python,
                site_packages=site_packages,
                created_at=now,
                last_used_at=now,
                fingerprint="",
                fork_server=self.fork_server,
            )
            _write_metadata(env)
            env.fingerprint = site_fingerprint(site_packages)
        except BaseException as exc:
            shutil.rmtree(path, ignore_errors=True)
            if isinstance(exc, errors.BuilddError):
                raise
            if _is_enospc(exc):
                raise errors.ResourceExhausted(
                    f"no space left on device while creating environment {path}: {exc}",
                    path=str(path),
                ) from exc
            if isinstance(exc, Exception):
                raise errors.InstallFailed(
                    f"creating environment {path} for {interpreter.executable} failed: {exc}",
                    path=str(path),
                ) from exc
            raise
        emit(_ended(phase, started))
        return env

    def install(
        self, env: Environment, requirements: Sequence[str], *, emit: Emit, cancel: threading.Event
    ) -> None:
        """Add (already normalised) requirements to ``env``; it then carries the larger key."""
        # Its backend, imported before the install, may be what the install replaces.
        zygotes.stop(env.id, "installing")
        try:
            self._install(env.python, env.path, env.key.id, requirements, emit=emit, cancel=cancel)
            env.key = env.key.with_requirements(requirements)
            _write_metadata(env)
            env.fingerprint = site_fingerprint(env.site_packages)
        except OSError as exc:
            if _is_enospc(exc):
                raise errors.ResourceExhausted(
                    f"no space left on device while installing into {env.path}: {exc}",
                    path=str(env.path),
                ) from exc
            raise errors.InstallFailed(
                f"installing {', '.join(requirements)} into {env.path} failed: {exc}",
                path=str(env.path),
            ) from exc

    # ---------------------------------------------------------- validate --

    def validate(self, env: Environment) -> bool:
        """Whether ``env`` is still exactly what was created: no process is started."""
        try:
            if not os.access(env.python, os.X_OK):  # follows the link to the base python
                return False
            meta = json.loads((env.path / METADATA_FILE).read_text(encoding="utf-8"))
            if meta.get("id") != env.id or meta.get("key_id") != env.key.id:
                return False
            return site_fingerprint(env.site_packages) == env.fingerprint
        except (OSError, ValueError, AttributeError):
            return False

    def destroy(self, env: Environment) -> None:
        # First the process that runs from the folder, then the folder.
        env.retired = True
        zygotes.stop(env.id, "destroyed")
        shutil.rmtree(env.path, ignore_errors=True)

    # ---------------------------------------------------------- internals --

    def _make_venv(self, path: Path, interpreter: Interpreter) -> tuple[Path, Path]:
        from virtualenv import cli_run

        args = [
            str(path),
            "--python",
            interpreter.executable,
            "--no-download",
            "--no-periodic-update",
            "--app-data",
            str(self.root / "virtualenv-app-data"),
            # Activation scripts, .gitignore and PEP 832 redirect files are
            # for people; nothing reads them here.
            "--activators",
            "",
            "--no-vcs-ignore",
            "--no-venv-redirect",
        ]
        if self.installer.seeds_pip:
            args += ["--pip", "bundle", "--no-setuptools"]
        else:
            args.append("--no-seed")
        environ = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUALENV_")}
        environ["VIRTUALENV_CONFIG_FILE"] = os.devnull
        session = cli_run(args, setup_logging=False, env=environ)
        creator = session.creator
        return Path(creator.exe), Path(creator.purelib)

    def _install(
        self,
        python: Path,
        path: Path,
        key_id: str,
        requirements: Sequence[str],
        *,
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
        argv, environ = self.installer.command(python, requirements, self.options)
        label = f"{self.installer.name} installing {listed} into {path}"
        try:
            result = run_process(
                argv,
                env=environ,
                confine=containment.Confinement(environment=path, install=True),
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

    def _compile(
        self, python: Path, site_packages: Path, path: Path, *, emit: Emit, cancel: threading.Event
    ) -> None:
        # Once, here: hooks may run with PYTHONDONTWRITEBYTECODE=1 and would
        # otherwise compile the backend on every call. The installers compile
        # what they install; this catches what virtualenv seeded (pip).
        argv = [str(python), "-I", "-m", "compileall", "-q", str(site_packages)]
        result = run_process(
            argv,
            env=base_environment(),
            confine=containment.Confinement(environment=path, install=True),
            label=f"compiling {site_packages}",
            hook="install",
            emit=_from_source(emit, "compiler"),
            cancel=cancel,
        )
        if result.returncode != 0 and any(mentions_enospc(x) for x in result.last_lines):
            raise errors.ResourceExhausted(
                f"no space left on device while compiling {path}",
                path=str(path),
                last_lines=result.last_lines,
            )
        # Any other failure is a file that does not compile (test data in
        # Python 2 syntax, say): its import was never going to work anyway.


def site_fingerprint(site_packages: Path) -> str:
    """sha256 over (relative path, size, mtime_ns) of every file but bytecode caches.

    Runs on every borrow, so it stays to one scandir per folder and one lstat
    per file (about 3 ms for a setuptools environment).
    """
    root = str(site_packages)
    cut = len(root) + 1
    entries: list[str] = []
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        stack.append(entry.path)
                    continue
                st = entry.stat(follow_symlinks=False)
                entries.append(f"{entry.path[cut:]}\0{st.st_size}\0{st.st_mtime_ns}")
    entries.sort()
    return hashlib.sha256("\n".join(entries).encode("utf-8", "surrogateescape")).hexdigest()


def _write_metadata(env: Environment) -> None:
    key = env.key
    data = {
        "id": env.id,
        "key_id": key.id,
        "interpreter": list(key.interpreter),
        "requirements": list(key.requirements),
        "installer": key.installer,
        "installer_options": [list(pair) for pair in key.installer_options],
        "isolation": key.isolation,
        "created_at": env.created_at,
        "daemon_pid": os.getpid(),
        "daemon_python": sys.executable,
    }
    target = env.path / METADATA_FILE
    scratch = target.with_suffix(".tmp")
    scratch.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(scratch, target)


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
