"""Hook calls in real subprocesses: isolation, streaming, timeouts, cancel, failures."""

from __future__ import annotations

import json
import os
import secrets
import sys
import textwrap
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from buildd_server import errors
from buildd_server.config import InstallerOptions
from buildd_server.environments.environments import Environment, EnvironmentFactory, Placement
from buildd_server.environments.installers import select_installer
from buildd_server.environments.interpreters import resolve_interpreter
from buildd_server.environments.keys import make_key
from buildd_server.events import Event, Log, Phase
from buildd_server.hooks import processes
from buildd_server.hooks.hooks import Hooks
from buildd_server.hooks.processes import CUT_MARK, MAX_LINE_BYTES, TAIL_LINES
from buildd_server.sources.sources import load_project
from support.projects import setuptools_project

# The runner turns backend warnings into log lines; pyproject_hooks' own copy
# in this process is noise here (the daemon filters it once at import).
pytestmark = pytest.mark.filterwarnings("ignore::pyproject_hooks.BuildBackendWarning")

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# --------------------------------------------------------------- fixtures --


def _make_env(factory: EnvironmentFactory, owner: Path, reqs: list[str]) -> Environment:
    interpreter = resolve_interpreter("")
    key = make_key(interpreter, reqs, "uv", factory.options, origin="test")
    placement = Placement(path=owner / secrets.token_hex(6), owner="test")
    return factory.create(
        key, interpreter, placement, emit=lambda e: None, cancel=threading.Event()
    )


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> EnvironmentFactory:
    options = InstallerOptions(no_index=True, find_links=(str(wheelhouse),))
    return EnvironmentFactory(tmp_path_factory.mktemp("root"), select_installer("uv"), options)


@pytest.fixture(scope="module")
def bare_env(
    factory: EnvironmentFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Environment]:
    """No requirements: for in-tree backends loaded through backend-path."""
    env = _make_env(factory, tmp_path_factory.mktemp("owner"), [])
    yield env
    factory.destroy(env)


@pytest.fixture(scope="module")
def setuptools_env(
    factory: EnvironmentFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Environment]:
    env = _make_env(factory, tmp_path_factory.mktemp("owner"), ["setuptools"])
    yield env
    factory.destroy(env)


class Recorder:
    """An Emit that keeps events, optionally reacting to each one."""

    def __init__(self, react: Callable[[Event], None] | None = None) -> None:
        self.events: list[Event] = []
        self._react = react

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if self._react is not None:
            self._react(event)

    def lines(self, hook: str | None = None) -> list[str]:
        return [
            e.text for e in self.events if isinstance(e, Log) and (hook is None or e.hook == hook)
        ]


def backend_project(root: Path, backend: str) -> Path:
    """A project whose backend is ``backend`` (module source), loaded via backend-path."""
    (root / "_be").mkdir(parents=True)
    (root / "_be" / "test_backend.py").write_text(textwrap.dedent(backend))
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "test_backend"\nbackend-path = ["_be"]\n'
    )
    return root


def hooks_for(
    env: Environment,
    root: Path,
    *,
    emit: Callable[[Event], None] | None = None,
    cancel: threading.Event | None = None,
    timeout: float | None = 60.0,
    quiet: bool = False,
) -> Hooks:
    return Hooks(
        env,
        load_project(str(root)),
        timeout=timeout,
        cancel=cancel or threading.Event(),
        emit=emit or Recorder(),
        quiet=quiet,
    )


def wait_until_gone(pid: int) -> bool:
    """Whether ``pid`` is dead (gone, or a zombie nobody has reaped yet)."""
    for _ in range(500):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        # No event tells when SIGKILL has landed: poll, bounded (5 s in all).
        time.sleep(0.01)
    return False


# ------------------------------------------------------------- isolation --

PROBE = """
import json, os, sys

def get_requires_for_build_wheel(config_settings=None):
    with open("probe.json", "w") as out:
        json.dump({
            "environ": dict(os.environ),
            "prefix": sys.prefix,
            "path": sys.path,
            "cwd": os.getcwd(),
            "stdin": sys.stdin.read(),
            "no_user_site": sys.flags.no_user_site,
            "config_settings": config_settings,
        }, out)
    return ["probe-req>=1"]
"""


@pytest.fixture
def stdin_never_ends() -> Iterator[None]:
    """The daemon's fd 0 becomes a pipe nobody closes: a hook inheriting it would block."""
    read_end, write_end = os.pipe()
    saved = os.dup(0)
    os.dup2(read_end, 0)
    try:
        yield
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read_end, write_end):
            os.close(fd)


@pytest.mark.usefixtures("stdin_never_ends")
def test_hook_sees_its_environment_and_nothing_of_the_daemon(
    bare_env: Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    leak = tmp_path / "daemon-lib"
    leak.mkdir()
    monkeypatch.setenv("PYTHONPATH", str(leak))
    monkeypatch.setenv("PYTHONUSERBASE", str(tmp_path / "userbase"))
    monkeypatch.setenv("PYTHONSTARTUP", str(tmp_path / "startup.py"))
    monkeypatch.setenv("VIRTUAL_ENV", sys.prefix)
    monkeypatch.setenv("BUILDD_TEST_MARKER", "kept")
    root = backend_project(tmp_path / "proj", PROBE)

    hooks = hooks_for(bare_env, root, timeout=20.0)
    assert hooks.get_requires("wheel", {"key": ["a", "b"]}) == ["probe-req>=1"]

    seen = json.loads((root / "probe.json").read_text())
    environ = seen["environ"]
    for name in ("PYTHONPATH", "PYTHONUSERBASE", "PYTHONSTARTUP"):
        assert name not in environ
    assert environ["VIRTUAL_ENV"] == str(bare_env.path)
    assert environ["PATH"].split(os.pathsep)[0] == str(bare_env.path / "bin")
    assert environ["PYTHONNOUSERSITE"] == "1"
    assert environ["BUILDD_TEST_MARKER"] == "kept"
    assert seen["prefix"] == str(bare_env.path)
    assert str(leak) not in seen["path"]
    assert not [p for p in seen["path"] if p.startswith(sys.prefix + os.sep)]
    assert seen["cwd"] == str(root)
    assert seen["stdin"] == ""
    assert seen["no_user_site"] or environ["PYTHONNOUSERSITE"] == "1"
    assert seen["config_settings"] == {"key": ["a", "b"]}


def test_every_hook_call_is_a_new_process_and_is_counted(
    bare_env: Environment, tmp_path: Path
) -> None:
    backend = """
    import os
    def get_requires_for_build_wheel(config_settings=None):
        print("pid", os.getpid(), "marker", os.environ.get("MARK"))
        os.environ["MARK"] = "set-by-an-earlier-call"
        return []
    """
    root = backend_project(tmp_path / "proj", backend)
    emit = Recorder()
    hooks = hooks_for(bare_env, root, emit=emit)
    before = bare_env.hook_calls
    hooks.get_requires("wheel", {})
    hooks.get_requires("wheel", {})
    assert bare_env.hook_calls == before + 2
    first, second = emit.lines("get_requires_for_build_wheel")
    assert first.split()[1] != second.split()[1]
    assert first.endswith("marker None") and second.endswith("marker None")
    phases = [(e.name, e.hook) for e in emit.events if isinstance(e, Phase)]
    assert (
        phases
        == [
            ("running_hook", "get_requires_for_build_wheel"),
            ("hook_finished", "get_requires_for_build_wheel"),
        ]
        * 2
    )


# --------------------------------------------------------- kill the group --

SPAWNER = """
import os, subprocess, sys, time

def _spawn():
    child = subprocess.Popen(["sleep", "1000"])
    with open("child.pid", "w") as out:
        out.write(str(child.pid))
    print("spawned", child.pid, flush=True)

def get_requires_for_build_wheel(config_settings=None):
    _spawn()
    time.sleep(1000)

def get_requires_for_build_sdist(config_settings=None):
    _spawn()
    return []
"""


def test_timeout_kills_the_whole_group(bare_env: Environment, tmp_path: Path) -> None:
    root = backend_project(tmp_path / "proj", SPAWNER)
    hooks = hooks_for(bare_env, root, timeout=3.0)
    before = bare_env.hook_calls
    with pytest.raises(errors.Timeout) as caught:
        hooks.get_requires("wheel", {})
    assert "timeout of 3 s" in caught.value.message
    assert caught.value.hook == "get_requires_for_build_wheel"
    assert any(line.startswith("spawned") for line in caught.value.last_lines)
    assert wait_until_gone(int((root / "child.pid").read_text()))
    assert bare_env.hook_calls == before + 1


def test_cancel_kills_the_whole_group(bare_env: Environment, tmp_path: Path) -> None:
    root = backend_project(tmp_path / "proj", SPAWNER)
    cancel = threading.Event()

    def react(event: Event) -> None:
        if isinstance(event, Log) and event.text.startswith("spawned"):
            cancel.set()

    hooks = hooks_for(bare_env, root, emit=Recorder(react), cancel=cancel, timeout=None)
    with pytest.raises(errors.Cancelled):
        hooks.get_requires("wheel", {})
    assert wait_until_gone(int((root / "child.pid").read_text()))


def test_background_children_of_a_finished_hook_are_killed(
    bare_env: Environment, tmp_path: Path
) -> None:
    root = backend_project(tmp_path / "proj", SPAWNER)
    assert hooks_for(bare_env, root).get_requires("sdist", {}) == []
    assert wait_until_gone(int((root / "child.pid").read_text()))


def test_a_child_that_leaves_the_group_cannot_hold_the_call(
    bare_env: Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A backend that starts a server with setsid (a build cache, a Gradle
    # daemon) escapes the group kill and keeps our pipes open.
    backend = """
    import subprocess
    def get_requires_for_build_wheel(config_settings=None):
        child = subprocess.Popen(["sleep", "1000"], start_new_session=True)
        with open("child.pid", "w") as out:
            out.write(str(child.pid))
        return []
    """
    monkeypatch.setattr(processes, "_PIPE_GRACE", 0.2)
    root = backend_project(tmp_path / "proj", backend)
    result: list[object] = []
    call = threading.Thread(
        target=lambda: result.append(hooks_for(bare_env, root).get_requires("wheel", {})),
        daemon=True,
    )
    call.start()
    call.join(30.0)
    escaped = int((root / "child.pid").read_text())
    try:
        assert not call.is_alive()
        assert result == [[]]
    finally:
        os.kill(escaped, 9)


def test_a_cancelled_request_starts_no_hook(bare_env: Environment, tmp_path: Path) -> None:
    root = backend_project(tmp_path / "proj", SPAWNER)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(errors.Cancelled):
        hooks_for(bare_env, root, cancel=cancel).get_requires("sdist", {})
    assert not (root / "child.pid").exists()


# --------------------------------------------------------------- failures --


def test_a_raising_hook_is_backend_failed_with_its_traceback(
    bare_env: Environment, tmp_path: Path
) -> None:
    backend = """
    def get_requires_for_build_wheel(config_settings=None):
        raise RuntimeError("boom from the backend")
    """
    root = backend_project(tmp_path / "proj", backend)
    with pytest.raises(errors.BackendFailed) as caught:
        hooks_for(bare_env, root).get_requires("wheel", {})
    failure = caught.value
    assert "exit code 1" in failure.message
    assert failure.message.endswith("RuntimeError: boom from the backend")
    assert any(line.startswith("Traceback") for line in failure.last_lines)
    assert failure.hook == "get_requires_for_build_wheel"
    assert failure.path == str(root / "pyproject.toml")


def test_a_hook_killed_by_a_signal_is_backend_failed_naming_it(
    bare_env: Environment, tmp_path: Path
) -> None:
    backend = """
    import os, signal
    def get_requires_for_build_wheel(config_settings=None):
        os.kill(os.getpid(), signal.SIGTERM)
    """
    root = backend_project(tmp_path / "proj", backend)
    with pytest.raises(errors.BackendFailed, match="killed by signal SIGTERM"):
        hooks_for(bare_env, root).get_requires("wheel", {})


def test_a_hook_that_fills_the_disk_is_resource_exhausted(
    bare_env: Environment, tmp_path: Path
) -> None:
    backend = """
    import errno, os
    def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "big.whl")
    """
    root = backend_project(tmp_path / "proj", backend)
    with pytest.raises(errors.ResourceExhausted, match="disk space") as caught:
        hooks_for(bare_env, root).build("wheel", tmp_path, {})
    assert "No space left on device" in caught.value.last_lines[-1]


def test_missing_backend_is_backend_unavailable(bare_env: Environment, tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "buildd_no_such_backend"\n'
    )
    with pytest.raises(errors.BackendUnavailable, match="buildd_no_such_backend") as caught:
        hooks_for(bare_env, root).get_requires("wheel", {})
    assert caught.value.path == str(root / "pyproject.toml")


ONLY_WHEEL = """
import os, zipfile

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    with open("builds.log", "a") as log:
        log.write("build_wheel\\n")
    name = "only-1.0-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as whl:
        meta = "Metadata-Version: 2.1\\nName: only\\nVersion: 1.0\\n"
        whl.writestr("only-1.0.dist-info/METADATA", meta)
        whl.writestr("only-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\\n")
        whl.writestr("only-1.0.dist-info/RECORD", "")
    return name
"""


def test_missing_mandatory_hook_is_hook_missing(bare_env: Environment, tmp_path: Path) -> None:
    root = backend_project(tmp_path / "proj", ONLY_WHEEL)
    hooks = hooks_for(bare_env, root)
    with pytest.raises(errors.HookMissing, match="build_editable"):
        hooks.build("editable", tmp_path, {})
    with pytest.raises(errors.HookMissing, match="build_editable"):
        hooks.prepare_metadata("editable", tmp_path, {})


def test_optional_hooks_fall_back(bare_env: Environment, tmp_path: Path) -> None:
    root = backend_project(tmp_path / "proj", ONLY_WHEEL)
    hooks = hooks_for(bare_env, root)
    assert hooks.get_requires("wheel", {}) == []
    assert hooks.get_requires("editable", {}) == []
    metadata = tmp_path / "meta"
    metadata.mkdir()
    before = bare_env.hook_calls
    name, from_wheel = hooks.prepare_metadata("wheel", metadata, {})
    assert (name, from_wheel) == ("only-1.0.dist-info", True)
    out = tmp_path / "out"
    out.mkdir()
    # The wheel built for the metadata is reused, not built again.
    assert hooks.build("wheel", out, {}, metadata / name) == "only-1.0-py3-none-any.whl"
    assert (root / "builds.log").read_text() == "build_wheel\n"
    assert bare_env.hook_calls == before + 2


def test_a_result_that_is_not_there_is_backend_failed(
    bare_env: Environment, tmp_path: Path
) -> None:
    backend = """
    def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
        return "never-written-1.0-py3-none-any.whl"
    def get_requires_for_build_wheel(config_settings=None):
        return "setuptools"
    """
    root = backend_project(tmp_path / "proj", backend)
    hooks = hooks_for(bare_env, root)
    with pytest.raises(errors.BackendFailed, match="never-written"):
        hooks.build("wheel", tmp_path, {})
    with pytest.raises(errors.BackendFailed, match="not a list of strings"):
        hooks.get_requires("wheel", {})


def test_backend_warnings_become_log_lines(bare_env: Environment, tmp_path: Path) -> None:
    backend = """
    import warnings
    def get_requires_for_build_wheel(config_settings=None):
        warnings.warn("mind the gap")
        return []
    """
    root = backend_project(tmp_path / "proj", backend)
    emit = Recorder()
    hooks_for(bare_env, root, emit=emit).get_requires("wheel", {})
    assert any(line.endswith("warning: mind the gap") for line in emit.lines())


# ----------------------------------------------------------------- output --


def test_lines_reach_the_client_while_the_hook_runs(bare_env: Environment, tmp_path: Path) -> None:
    # The hook waits, after its first line, until the test has seen that line:
    # a runner that only reported output at exit would time out here.
    backend = """
    import os, time
    def get_requires_for_build_wheel(config_settings=None):
        print("first", flush=True)
        while not os.path.exists("seen"):
            time.sleep(0.01)
        print("second")
        return []
    """
    root = backend_project(tmp_path / "proj", backend)

    def react(event: Event) -> None:
        if isinstance(event, Log) and event.text == "first":
            (root / "seen").touch()

    emit = Recorder(react)
    hooks_for(bare_env, root, emit=emit, timeout=30.0).get_requires("wheel", {})
    assert emit.lines() == ["first", "second"]


def test_huge_output_keeps_memory_bounded_and_cuts_long_lines(
    bare_env: Environment, tmp_path: Path
) -> None:
    backend = f"""
    import sys
    def get_requires_for_build_wheel(config_settings=None):
        out = sys.stdout.buffer
        out.write(b"L" * ({MAX_LINE_BYTES} * 40) + b"\\n")
        chunk = b"x" * 99 + b"\\n"
        for _ in range(200):
            out.write(chunk * 1000)
        out.write(b"the end\\n")
        out.flush()
        sys.exit(3)
    """
    root = backend_project(tmp_path / "proj", backend)
    count = 0
    longest = 0

    def emit(event: Event) -> None:
        nonlocal count, longest
        if isinstance(event, Log):
            count += 1
            longest = max(longest, len(event.text))

    tracemalloc.start()
    try:
        with pytest.raises(errors.BackendFailed) as caught:
            hooks_for(bare_env, root, emit=emit).get_requires("wheel", {})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 1 + 200_000 + 1
    assert longest == MAX_LINE_BYTES + len(CUT_MARK)
    assert peak < 4 * 1024 * 1024  # the child wrote 20 MB
    failure = caught.value
    assert len(failure.last_lines) == TAIL_LINES
    assert failure.last_lines[-1] == "the end"
    assert "exit code 3" in failure.message


CHATTY = """
import sys, time
def get_requires_for_build_wheel(config_settings=None):
    for i in range(1000):
        print("line", i)
    sys.stdout.flush()
    if config_settings.get("hang"):
        time.sleep(1000)
    return []
"""


def test_a_failing_emit_does_not_stall_the_hook(bare_env: Environment, tmp_path: Path) -> None:
    root = backend_project(tmp_path / "proj", CHATTY)

    def broken(event: Event) -> None:
        if isinstance(event, Log):
            raise ConnectionError("client went away")

    assert hooks_for(bare_env, root, emit=broken).get_requires("wheel", {}) == []


def test_a_blocked_emit_does_not_hold_the_timeout(
    bare_env: Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processes, "_PIPE_GRACE", 0.2)
    root = backend_project(tmp_path / "proj", CHATTY)
    release = threading.Event()

    def stuck(event: Event) -> None:
        if isinstance(event, Log):
            release.wait(60)

    try:
        with pytest.raises(errors.Timeout) as caught:
            hooks_for(bare_env, root, emit=stuck, timeout=1.0).get_requires("wheel", {"hang": "1"})
        # The stuck reader stopped draining its pipe (backpressure), but the
        # call still ended on time with what had been read.
        assert caught.value.last_lines[0] == "line 0"
    finally:
        release.set()


def test_quiet_hooks_emit_no_lines_but_keep_them_for_errors(
    bare_env: Environment, tmp_path: Path
) -> None:
    backend = """
    def get_requires_for_build_wheel(config_settings=None):
        print("chatter")
        raise SystemExit("quiet failure")
    """
    root = backend_project(tmp_path / "proj", backend)
    emit = Recorder()
    with pytest.raises(errors.BackendFailed) as caught:
        hooks_for(bare_env, root, emit=emit, quiet=True).get_requires("wheel", {})
    assert emit.lines() == []
    # Two pipes, two reader threads: no order between them.
    assert sorted(caught.value.last_lines) == ["chatter", "quiet failure"]
    assert [e.name for e in emit.events if isinstance(e, Phase)] == [
        "running_hook",
        "hook_finished",
    ]


# ------------------------------------------------------ a real setuptools --


def test_setuptools_hooks_in_a_real_environment(
    setuptools_env: Environment, tmp_path: Path
) -> None:
    root = setuptools_project(tmp_path / "demo")
    emit = Recorder()
    hooks = hooks_for(setuptools_env, root, emit=emit)
    before = setuptools_env.hook_calls

    assert all(isinstance(r, str) for r in hooks.get_requires("wheel", {}))
    metadata = tmp_path / "meta"
    metadata.mkdir()
    name, from_wheel = hooks.prepare_metadata("wheel", metadata, {})
    assert (name, from_wheel) == ("demo_setuptools-1.0.dist-info", False)
    assert "Version: 1.0" in (metadata / name / "METADATA").read_text()

    out = tmp_path / "out"
    out.mkdir()
    wheel = hooks.build("wheel", out, {}, metadata / name)
    assert wheel == "demo_setuptools-1.0-py3-none-any.whl"
    with zipfile.ZipFile(out / wheel) as archive:
        assert "demo_setuptools/__init__.py" in archive.namelist()
    # setuptools cannot build twice in one process: a fresh process each time.
    assert hooks.build("sdist", out, {}) == "demo_setuptools-1.0.tar.gz"
    assert hooks.build("editable", out, {}).startswith("demo_setuptools-1.0-")

    assert setuptools_env.hook_calls == before + 5
    finished = [e for e in emit.events if isinstance(e, Phase) and e.name == "hook_finished"]
    assert [e.hook for e in finished] == [
        "get_requires_for_build_wheel",
        "prepare_metadata_for_build_wheel",
        "build_wheel",
        "build_sdist",
        "build_editable",
    ]
    assert all(e.detail == "ok" and e.step_seconds > 0 for e in finished)
    assert emit.lines("build_wheel")
