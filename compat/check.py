"""One project on one interpreter: built every way, compared, and why it differed.

For a project and an interpreter, in the run's one buildd session:

1. skipped, with the reason, when the sdist's Requires-Python excludes the interpreter;
2. buildd: the metadata (``prepare_metadata_for_build_wheel`` or its fallback),
   then the wheel, of a freshly unpacked copy of the sdist; then the wheel again
   from the sdist file itself; for ``editable`` projects a PEP 660 wheel of
   another copy, installed into a fresh virtualenv of the interpreter, whose
   ``import`` must find the module in the tree;
3. ``buildd-client metadata --json`` of the first copy;
4. pypa/build, run by the interpreter: ``python -m build --wheel --installer uv``
   of a third copy, and ``python -m build --metadata`` of a fourth (of its own
   wheel for a project with config settings, which ``--metadata`` drops);
5. compared: wheels with ``compare.compare_wheels`` and ``record_problems``,
   METADATA with ``metadata_differences``, the JSON texts byte for byte.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from packaging.utils import canonicalize_name

from .compare import (
    compare_wheels,
    metadata_differences,
    metadata_json_differences,
    record_problems,
    wheel_generator,
)
from .compare import wheel_metadata as _wheel_metadata
from .corpus import REPO, Project, requires_python, unpack_sdist
from .frontends import (
    IndexOptions,
    StepError,
    build_reference,
    check_import,
    reference_metadata_json,
    run_logged,
    tail,
)
from .interpreters import Interpreter

if TYPE_CHECKING:
    from buildd_client import Session

# Long enough for the slowest corpus build on a 2-core machine, many times over.
CALL_TIMEOUT = 1800.0

_T = TypeVar("_T")


@dataclass
class ProjectResult:
    """What one project's check on one interpreter found."""

    project: Project
    interpreter: str  # "3.10"
    # Why the project was not built on this interpreter ("" when it was).
    skipped: str = ""
    metadata_equal: bool | None = None
    wheel_equal: bool | None = None
    metadata_json_equal: bool | None = None
    # None: not asked for this project.
    editable: bool | None = None
    buildd_first: float | None = None
    buildd_warm: float | None = None
    build_time: float | None = None
    generator: str = ""
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Built, and every check held (a skipped project did not pass: it did not run)."""
        return (
            not self.skipped
            and not self.failures
            and bool(self.metadata_equal)
            and bool(self.wheel_equal)
            and bool(self.metadata_json_equal)
            and (self.editable is not False)
            and (self.editable is not None or not self.project.editable)
        )

    @property
    def ok(self) -> bool:
        """Passed, or skipped for a reason the project itself gives."""
        return bool(self.skipped) or self.passed


def describe(exc: BaseException) -> str:
    from buildd_client import RequestFailed

    if isinstance(exc, RequestFailed):
        text = f"buildd {exc.kind_name}: {exc.message}"
        if exc.hook:
            text += f" (hook {exc.hook})"
        if exc.last_lines:
            text += "\n" + tail("\n".join(exc.last_lines))
        return text
    if isinstance(exc, StepError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _step(result: ProjectResult, what: str, action: Callable[[], _T]) -> _T | None:
    """Run one step; a failure is recorded (with its reason) and the check goes on."""
    try:
        return action()
    except Exception as exc:
        result.failures.append(f"{what}: {describe(exc)}")
        return None


def skip_reason(sdist: Path, interpreter: Interpreter) -> str:
    """Why the project must not be built on ``interpreter`` ("" when it may)."""
    spec = requires_python(sdist)
    if spec is None or spec.contains(interpreter.version, prereleases=True):
        return ""
    return f"Requires-Python {spec} excludes Python {interpreter.version}"


@dataclass
class _Run:
    """One project on one interpreter: the shared parts of its steps."""

    project: Project
    session: Session
    interpreter: Interpreter
    address: str
    index: IndexOptions
    workdir: Path

    @property
    def log(self) -> Path:
        return self.workdir / "run.log"

    @property
    def python(self) -> str:
        return str(self.interpreter.executable)

    def artifact(self, source: Path, kind: str, out: Path) -> Path:
        call = self.session.build(
            source,
            distributions=(kind,),
            output_directory=out,
            config_settings=self.project.config_settings or None,
            python=self.python,
            timeout=CALL_TIMEOUT,
        )
        artifacts = call.result().artifacts
        if len(artifacts) != 1:
            raise StepError(f"buildd returned {len(artifacts)} artifacts for one {kind}")
        path = Path(artifacts[0].path)
        if path.parent != out.resolve() or not path.is_file():
            raise StepError(f"buildd reported {path}, which is not a file in {out}")
        return path

    def metadata_json(self, tree: Path) -> str:
        """``buildd-client metadata --json``, the command line exactly as a user runs it."""
        cmd = [sys.executable, "-m", "buildd_client", "--address", self.address]
        cmd += ["--session", self.session.id, "-q", "metadata", "--json", "--python", self.python]
        for key, value in self.project.config_settings.items():
            cmd += ["-C", f"{key}={value}"]
        # This checkout's client, whether or not (or however) it is installed.
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO / "proto"), str(REPO / "client")]),
        }
        return run_logged([*cmd, str(tree)], self.log, env=env)


def check_project(
    project: Project,
    session: Session,
    address: str,
    interpreter: Interpreter,
    sdist: Path,
    workdir: Path,
    index: IndexOptions,
) -> ProjectResult:
    """Build ``project`` every way on ``interpreter``, compare, and say what differed and why."""
    result = ProjectResult(project, interpreter.label)
    reason = skip_reason(sdist, interpreter)
    if reason:
        result.skipped = reason
        return result
    workdir.mkdir(parents=True, exist_ok=True)
    run = _Run(project, session, interpreter, address, index, workdir)
    settings = project.config_settings or None

    tree = unpack_sdist(sdist, workdir / "buildd-src")
    started = time.perf_counter()
    metadata = _step(
        result,
        "buildd metadata",
        lambda: session.metadata(
            tree, config_settings=settings, python=run.python, timeout=CALL_TIMEOUT
        ).result(),
    )
    prepared: bytes | None = None
    if metadata is not None:
        prepared = metadata.metadata
        expected = f"{canonicalize_name(project.name)}-"
        if not str(canonicalize_name(metadata.dist_info_name)).startswith(expected):
            result.failures.append(f"buildd metadata: .dist-info named {metadata.dist_info_name!r}")
        on_disk = Path(metadata.dist_info_path) / "METADATA"
        if not on_disk.is_file() or on_disk.read_bytes() != prepared:
            result.failures.append(
                f"buildd metadata: {on_disk} is missing or differs from the METADATA sent"
            )
    tree_wheel = _step(
        result,
        "buildd wheel from the unpacked sdist",
        lambda: run.artifact(tree, "wheel", workdir / "buildd-tree"),
    )
    if metadata is not None and tree_wheel is not None:
        result.buildd_first = time.perf_counter() - started
    started = time.perf_counter()
    sdist_wheel = _step(
        result,
        "buildd wheel from the sdist file",
        lambda: run.artifact(sdist, "wheel", workdir / "buildd-sdist"),
    )
    if sdist_wheel is not None:
        result.buildd_warm = time.perf_counter() - started
    if project.editable:
        result.editable = _check_editable(result, run, sdist)
    ours_json = _step(result, "buildd-client metadata --json", lambda: run.metadata_json(tree))

    tool = interpreter.tool_python
    reference_tree = unpack_sdist(sdist, workdir / "reference-src")
    started = time.perf_counter()
    reference = _step(
        result,
        "pypa/build wheel",
        lambda: build_reference(
            tool, reference_tree, workdir / "reference", project, index, run.log
        ),
    )
    if reference is not None:
        result.build_time = time.perf_counter() - started
        result.generator = wheel_generator(reference)
    theirs_json: str | None = None
    if not project.config_settings:
        json_source: Path | None = unpack_sdist(sdist, workdir / "reference-json-src")
    else:
        # pypa/build's --metadata drops config settings (frontends.py): its wheel.
        json_source = reference
    if json_source is not None:
        theirs_json = _step(
            result,
            "python -m build --metadata",
            lambda: reference_metadata_json(
                tool, json_source, project, index, workdir / "reference-json", run.log
            ),
        )
    if ours_json is not None and theirs_json is not None:
        differences = metadata_json_differences(ours_json, theirs_json)
        result.metadata_json_equal = not differences
        result.failures.extend(f"metadata --json: {problem}" for problem in differences)
    _compare(result, prepared, tree_wheel, sdist_wheel, reference)
    return result


def _check_editable(result: ProjectResult, run: _Run, sdist: Path) -> bool:
    project = result.project
    assert project.import_name is not None
    tree = unpack_sdist(sdist, run.workdir / "editable-src")
    wheel = _step(
        result,
        "buildd editable wheel",
        lambda: run.artifact(tree, "editable", run.workdir / "editable"),
    )
    if wheel is None:
        return False
    problems = record_problems(wheel)
    for problem in problems:
        result.failures.append(f"editable wheel {wheel.name}: {problem}")
    module = project.import_name
    imported = _step(
        result,
        f"installing the editable wheel and importing {module}",
        lambda: check_import(
            run.interpreter.executable, wheel, module, tree, run.workdir, run.index, run.log
        ),
    )
    return imported is not None and not problems


def _compare(
    result: ProjectResult,
    prepared: bytes | None,
    tree_wheel: Path | None,
    sdist_wheel: Path | None,
    reference: Path | None,
) -> None:
    failures = result.failures
    wheels = {
        "buildd wheel from the unpacked sdist": tree_wheel,
        "buildd wheel from the sdist file": sdist_wheel,
        "pypa/build wheel": reference,
    }
    valid = True
    for label, wheel in wheels.items():
        if wheel is None:
            continue
        for problem in record_problems(wheel):
            valid = False
            failures.append(f"{label} {wheel.name}: {problem}")

    if reference is not None and tree_wheel is not None and sdist_wheel is not None:
        differences = [
            f"{label}: {problem}"
            for label, wheel in list(wheels.items())[:2]
            if wheel is not None
            for problem in compare_wheels(wheel, reference)
        ]
        failures.extend(differences)
        result.wheel_equal = valid and not differences
    else:
        result.wheel_equal = False

    if prepared is not None and tree_wheel is not None and reference is not None:
        differences = [
            f"prepared metadata vs {label}: {problem}"
            for label, wheel in (("buildd wheel", tree_wheel), ("pypa/build wheel", reference))
            for problem in metadata_differences(prepared, _wheel_metadata(wheel), "prepared", label)
        ]
        failures.extend(differences)
        result.metadata_equal = not differences
    else:
        result.metadata_equal = False
