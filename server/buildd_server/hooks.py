"""Running PEP 517 hooks: one fresh process per hook call (rule 4).

``HookRunner`` plugs processes.run_process (or, when warm, a fork of the
environment's fork server: zygotes.py) into pyproject_hooks; ``Hooks`` is the
typed face the service calls.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeGuard

import pyproject_hooks

from . import containment, errors, zygotes
from .checks import missing_mandatory_hook
from .events import Emit, HookOutcome, Log, Phase
from .processes import TAIL_LINES, mentions_enospc

if TYPE_CHECKING:
    import threading

    from .environments import Environment
    from .sources import Project

ConfigSettings = Mapping[str, "str | list[str]"]

# Variables of the daemon that would make a hook import the daemon's packages
# or escape its environment.
_STRIPPED = frozenset(
    [
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "PYTHONSAFEPATH",
        "PYTHONUSERBASE",
        "PYTHONEXECUTABLE",
        "VIRTUAL_ENV",
        "__PYVENV_LAUNCHER__",
    ]
)

# The runner reports backend warnings itself, as log lines of the hook; the
# copy pyproject_hooks re-raises in the daemon would only reach its stderr.
warnings.filterwarnings("ignore", category=pyproject_hooks.BuildBackendWarning)


def hook_environment(env_path: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The daemon's environment, minus what would leak into the hook, plus the venv's."""
    environ = {name: value for name, value in os.environ.items() if name not in _STRIPPED}
    bin_dir = env_path / ("Scripts" if os.name == "nt" else "bin")
    environ["VIRTUAL_ENV"] = str(env_path)
    environ["PATH"] = os.pathsep.join([str(bin_dir), environ.get("PATH", os.defpath)])
    environ["PYTHONNOUSERSITE"] = "1"
    # Log lines should reach the client as the backend prints them.
    environ["PYTHONUNBUFFERED"] = "1"
    if extra:
        environ.update(extra)
    return environ


@dataclass(kw_only=True)
class HookRunner:
    """A pyproject_hooks subprocess runner: one call, one fresh process and its group.

    The process is a plain subprocess, or a fork of the environment's fork
    server when zygotes.py finds one usable: either way the same watching.
    """

    env: Environment
    backend: str
    emit: Emit
    cancel: threading.Event
    timeout: float | None
    quiet: bool = False
    # The call's own folders besides its source tree (cwd) and control folder:
    # what a sandboxed hook may write, and may only read (containment.py).
    writable: tuple[Path, ...] = ()
    readable: tuple[Path, ...] = ()

    def __call__(
        self,
        cmd: Sequence[str],
        cwd: str | None = None,
        extra_environ: Mapping[str, str] | None = None,
    ) -> None:
        # pyproject_hooks runs [python, _in_process.py, hook_name, control_dir].
        hook = cmd[2] if len(cmd) > 2 else "hook"
        label = f"hook {hook} of backend {self.backend!r} (in {cwd})"
        if self.cancel.is_set():
            raise errors.Cancelled(f"{label} was cancelled before it started", hook=hook)
        self.env.hook_calls += 1
        control = (Path(cmd[3]),) if len(cmd) > 3 else ()
        confine = containment.Confinement(
            environment=self.env.path,
            writable=(*control, *self.writable),
            readable=self.readable,
        )
        try:
            result = zygotes.REGISTRY.run(
                self.env,
                cmd,
                environ=hook_environment(self.env.path, extra_environ),
                cwd=cwd,
                label=label,
                hook=hook,
                emit=self.emit,
                cancel=self.cancel,
                timeout=self.timeout,
                confine=confine,
                quiet=self.quiet,
            )
        except OSError as exc:
            raise errors.BackendFailed(
                f"{label} could not start {cmd[0]}: {exc}", hook=hook
            ) from exc
        if result.returncode < 0:
            raise errors.BackendFailed(
                f"{label} was killed by signal {_signal_name(-result.returncode)}",
                hook=hook,
                last_lines=result.last_lines,
            )
        if result.returncode > 0 and any(map(mentions_enospc, result.last_lines)):
            raise errors.ResourceExhausted(
                f"{label} ran out of disk space", hook=hook, last_lines=result.last_lines
            )
        if result.returncode > 0 and missing_mandatory_hook(hook, result.last_lines):
            raise errors.HookMissing(
                f"backend {self.backend!r} has no {hook} hook, which PEP 517 makes mandatory",
                hook=hook,
                last_lines=result.last_lines,
            )
        if result.returncode > 0:
            last = next((line for line in reversed(result.last_lines) if line.strip()), "")
            raise errors.BackendFailed(
                f"{label} failed with exit code {result.returncode}"
                + (f": {last}" if last else ""),
                hook=hook,
                last_lines=result.last_lines,
            )
        if len(cmd) > 3 and not self.quiet:
            self._report_warnings(Path(cmd[3]) / "output.json", hook)

    def _report_warnings(self, output: Path, hook: str) -> None:
        try:
            data: Any = json.loads(output.read_text(encoding="utf-8"))
            for item in data.get("warnings", []):
                text = f"{item['filename']}:{item['lineno']}: warning: {item['message']}"
                self.emit(Log(stream="stderr", text=text, hook=hook))
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            # Best effort: pyproject_hooks itself reports a missing or bad output.json.
            return


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


@dataclass
class Hooks:
    """The hooks of one project, run in one environment; each call a fresh process."""

    env: Environment
    project: Project
    _: KW_ONLY
    timeout: float | None
    cancel: threading.Event
    emit: Emit
    quiet: bool = False

    def get_requires(
        self, dist: Literal["wheel", "sdist", "editable"], config_settings: ConfigSettings
    ) -> list[str]:
        hook = f"get_requires_for_build_{dist}"
        result = self._call(hook, dict(config_settings))
        if not isinstance(result, list) or not all(isinstance(r, str) for r in result):
            raise self._failed(hook, f"returned {result!r:.200}, not a list of strings")
        return [str(r) for r in result]

    def prepare_metadata(
        self,
        dist: Literal["wheel", "editable"],
        metadata_dir: Path,
        config_settings: ConfigSettings,
    ) -> tuple[str, bool]:
        """(dist-info folder name, whether it came from a fallback wheel build)."""
        hook = f"prepare_metadata_for_build_{dist}"
        result = self._call(
            hook, str(metadata_dir), dict(config_settings), writable=(metadata_dir,)
        )
        if not _is_basename(result) or not (metadata_dir / result).is_dir():
            raise self._failed(hook, f"returned {result!r:.200}, not a folder in {metadata_dir}")
        # pyproject_hooks leaves this marker when it built a wheel to get the metadata.
        return str(result), (metadata_dir / "PYPROJECT_HOOKS_ALREADY_BUILT_WHEEL").exists()

    def build(
        self,
        dist: Literal["wheel", "sdist", "editable"],
        output_dir: Path,
        config_settings: ConfigSettings,
        metadata_directory: Path | None = None,
    ) -> str:
        """Build into ``output_dir``; ``metadata_directory`` is the prepared .dist-info.

        The folder that ``prepare_metadata`` wrote into is accepted too: its
        single ``.dist-info`` is used (PEP 517 wants the .dist-info itself).
        """
        hook = f"build_{dist}"
        args: list[object] = [str(output_dir), dict(config_settings)]
        readable: tuple[Path, ...] = ()
        if dist != "sdist":
            args.append(None if metadata_directory is None else str(_dist_info(metadata_directory)))
            readable = () if metadata_directory is None else (metadata_directory,)
        result = self._call(hook, *args, writable=(output_dir,), readable=readable)
        if not _is_basename(result) or not (output_dir / result).is_file():
            raise self._failed(hook, f"returned {result!r:.200}, not a file in {output_dir}")
        return str(result)

    # ------------------------------------------------------------ internals --

    def _call(
        self,
        hook: str,
        *args: object,
        writable: tuple[Path, ...] = (),
        readable: tuple[Path, ...] = (),
    ) -> object:
        """Call the BuildBackendHookCaller method named like the hook, mapping its errors."""
        env, project = self.env, self.project
        where = str(project.pyproject or project.root)
        runner = HookRunner(
            env=env,
            backend=project.backend,
            emit=self.emit,
            cancel=self.cancel,
            timeout=self.timeout,
            quiet=self.quiet,
            writable=writable,
            readable=readable,
        )
        try:
            caller = pyproject_hooks.BuildBackendHookCaller(
                str(project.root),
                project.backend,
                list(project.backend_path) or None,
                runner=runner,
                python_executable=str(env.python),
            )
        except ValueError as exc:
            # pyproject_hooks' own check that backend-path stays inside the tree.
            raise errors.InvalidProject(
                f"{where}: build-system.backend-path {list(project.backend_path)}: {exc}",
                path=where,
            ) from exc
        self.emit(
            Phase(
                "running_hook",
                hook=hook,
                key_id=env.key.id,
                environment_path=str(env.path),
                step="start",
            )
        )
        started = time.monotonic()
        outcome: HookOutcome = "failed"
        try:
            result: object = getattr(caller, hook)(*args)
            outcome = "ok"
            return result
        except errors.BuilddError as exc:
            # The runner knows the process, not the project: name the file too.
            exc.path = exc.path or where
            if isinstance(exc, errors.Timeout):
                outcome = "timed_out"
            elif isinstance(exc, errors.Cancelled):
                outcome = "cancelled"
            raise
        except pyproject_hooks.BackendUnavailable as exc:
            raise errors.BackendUnavailable(
                f"backend {project.backend!r} of {where} cannot be imported in environment "
                f"{env.path}: {str(exc).splitlines()[0]}",
                path=where,
                hook=hook,
                last_lines=exc.traceback.splitlines()[-TAIL_LINES:],
            ) from exc
        except pyproject_hooks.HookMissing as exc:
            raise errors.HookMissing(
                f"backend {project.backend!r} of {where} has no {exc.hook_name} hook",
                path=where,
                hook=hook,
            ) from exc
        except pyproject_hooks.UnsupportedOperation as exc:
            failure = self._failed(hook, "says it cannot do this for this project")
            failure.last_lines = exc.traceback.splitlines()[-TAIL_LINES:]
            raise failure from exc
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise errors.ResourceExhausted(
                    f"no space left for hook {hook} of {where}: {exc}", path=where, hook=hook
                ) from exc
            raise self._failed(hook, f"exited without a result: {exc}") from exc
        except (ValueError, KeyError) as exc:
            # Exit code 0 but no readable output.json: os._exit() in a backend.
            raise self._failed(hook, f"exited without a result: {exc!r}") from exc
        finally:
            self.emit(
                Phase(
                    "hook_finished",
                    hook=hook,
                    # "ok" or "failed", as before the outcome had its own field.
                    detail="ok" if outcome == "ok" else "failed",
                    outcome=outcome,
                    step="end",
                    key_id=env.key.id,
                    environment_path=str(env.path),
                    step_seconds=max(time.monotonic() - started, 1e-6),
                )
            )

    def _failed(self, hook: str, problem: str) -> errors.BackendFailed:
        where = str(self.project.pyproject or self.project.root)
        return errors.BackendFailed(
            f"hook {hook} of backend {self.project.backend!r} of {where} {problem}",
            path=where,
            hook=hook,
        )


def _is_basename(value: object) -> TypeGuard[str]:
    return (
        isinstance(value, str)
        and value not in ("", ".", "..")
        and os.sep not in value
        and (os.altsep is None or os.altsep not in value)
    )


def _dist_info(path: Path) -> Path:
    if path.name.endswith(".dist-info"):
        return path
    try:
        found = [child for child in path.iterdir() if child.name.endswith(".dist-info")]
    except OSError:
        return path
    return found[0] if len(found) == 1 else path
