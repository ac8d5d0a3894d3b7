"""The fork server: each warm hook call is a fresh fork that behaves like a fresh start.

The environments here hold ``buildd-fork-probe`` (tests/support/fork_probe.py),
an installed backend that reports its pid, parent, session, module globals,
environment and argv, and can hang, spawn, exit or kill its parent on demand.
"""

from __future__ import annotations

import ast
import os
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from buildd_server import errors
from buildd_server.config import InstallerOptions
from buildd_server.environments.environments import Environment, EnvironmentFactory, Placement
from buildd_server.environments.installers import select_installer
from buildd_server.environments.interpreters import resolve_interpreter
from buildd_server.environments.keys import make_key
from buildd_server.events import Event, Log
from buildd_server.hooks import zygotes
from buildd_server.hooks.hooks import Hooks
from buildd_server.hooks.zygote import Zygote
from buildd_server.sources.sources import load_project
from support.fork_probe import MODULE, NAME, fork_probe_project, read_log, write_probe_wheel
from support.projects import probe_project

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.filterwarnings("ignore::pyproject_hooks.BuildBackendWarning")


# --------------------------------------------------------------- fixtures --


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> EnvironmentFactory:
    wheels = tmp_path_factory.mktemp("probe-wheels")
    write_probe_wheel(wheels)
    options = InstallerOptions(no_index=True, find_links=(str(wheelhouse), str(wheels)))
    return EnvironmentFactory(tmp_path_factory.mktemp("root"), select_installer("uv"), options)


def make_env(factory: EnvironmentFactory, owner: Path, reqs: list[str]) -> Environment:
    interpreter = resolve_interpreter("")
    key = make_key(interpreter, reqs, "uv", factory.options, origin="test")
    placement = Placement(path=owner / secrets.token_hex(6), owner="test")
    return factory.create(
        key, interpreter, placement, emit=lambda e: None, cancel=threading.Event()
    )


@pytest.fixture(scope="module")
def probe_env(
    factory: EnvironmentFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Environment]:
    env = make_env(factory, tmp_path_factory.mktemp("owner"), [NAME])
    yield env
    factory.destroy(env)


@pytest.fixture(autouse=True)
def probe_is_preimport_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zygotes, "PREIMPORT_SAFE", zygotes.PREIMPORT_SAFE | {MODULE})


class Recorder:
    def __init__(self, cancel_on: str = "", cancel: threading.Event | None = None) -> None:
        self.events: list[Event] = []
        self.cancel_on = cancel_on
        self.cancel = cancel

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if self.cancel and isinstance(event, Log) and event.text.startswith(self.cancel_on):
            self.cancel.set()

    def lines(self, stream: str) -> list[str]:
        return [e.text for e in self.events if isinstance(e, Log) and e.stream == stream]


def hooks(
    env: Environment,
    root: Path,
    *,
    emit: Recorder | None = None,
    cancel: threading.Event | None = None,
    timeout: float | None = 60.0,
) -> Hooks:
    return Hooks(
        env,
        load_project(str(root)),
        timeout=timeout,
        cancel=cancel or threading.Event(),
        emit=emit or Recorder(),
    )


def ready_zygote(env: Environment, tmp_path: Path) -> Zygote:
    """A fork server for ``env`` started now, with the backend imported, not yet used.

    Started afresh for each test: pytest changes PYTEST_CURRENT_TEST between
    tests, and a fork server serves only the variables it was started with.
    """
    zygotes.stop(env.id, "test")
    # A plain call, at whose end the fork server starts.
    root = fork_probe_project(tmp_path / "warm-up", tmp_path / "warm-up.log")
    hooks(env, root).get_requires("wheel", {})
    zygote = zygotes.REGISTRY.get(env.id)
    assert zygote is not None
    assert zygote.await_ready(threading.Event(), 60.0), zygote.error
    assert zygote.forks == 0
    return zygote


def wait_until_gone(pid: int) -> bool:
    """Whether ``pid`` is dead (gone, or a zombie nobody has reaped yet)."""
    for _ in range(500):
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (ProcessLookupError, OSError):
            return True
        if state == "Z":
            return True
        # No event tells when SIGKILL has landed: poll, bounded (5 s in all).
        time.sleep(0.01)
    return False


# ------------------------------------------------------------ the script --


def test_the_zygote_script_stays_python_3_8_and_standalone() -> None:
    # It runs in the environment's interpreter, which may be older than the daemon's.
    source = Path(zygotes.__file__).with_name("_zygote_main.py").read_text()
    tree = ast.parse(source, feature_version=(3, 8))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert "buildd_server" not in imported
    for newer in ("removeprefix", "removesuffix", "waitstatus_to_exitcode", "send_fds", "recv_fds"):
        assert newer not in source


# ------------------------------------------------------------- fresh forks --


def test_the_first_call_is_plain_then_every_call_is_a_fresh_fork(
    probe_env: Environment, tmp_path: Path
) -> None:
    zygotes.stop(probe_env.id, "test")
    log = tmp_path / "calls.log"
    root = fork_probe_project(tmp_path / "proj", log)
    calls = hooks(probe_env, root)
    for _ in range(3):
        assert calls.get_requires("wheel", {}) == ["fork-probe-req"]
        zygote = zygotes.REGISTRY.get(probe_env.id)
        assert zygote is not None
        assert zygote.await_ready(threading.Event(), 60.0)
    plain, *forked = read_log(log)
    # The first call after the environment (re)appeared ran plain, from this process.
    assert plain["ppid"] == os.getpid()
    assert plain["imported_in"] == plain["pid"]
    assert zygote.forks == 2
    assert len({entry["pid"] for entry in (plain, *forked)}) == 3
    for entry in forked:
        # Forked from the fork server, with the backend imported there, not here...
        assert entry["ppid"] == zygote.proc.pid
        assert entry["imported_in"] == zygote.proc.pid != entry["pid"]
        # ...and still a process of its own, leading its own session and group.
        assert entry["pgid"] == entry["sid"] == entry["pid"]
        # Nothing of an earlier call: not its environment, not its module globals.
        assert entry["marker"] is None
        assert entry["calls"] == ["get_requires_for_build_wheel"]
        # What a fresh `python _in_process.py` would see.
        for field in ("cwd", "argv", "main_file", "main_name", "path", "stdin", "environ"):
            if field == "argv":
                assert entry[field][0] == plain[field][0]
                assert entry[field][1] == plain[field][1]
            else:
                assert entry[field] == plain[field], field
        assert (entry["sigint"], entry["sigpipe"]) == (plain["sigint"], plain["sigpipe"])
    assert plain["main_name"] == "__main__"
    assert plain["main_file"].endswith("_in_process.py")


def test_a_fork_shows_the_import_output_and_warnings_of_a_fresh_start(
    probe_env: Environment, tmp_path: Path
) -> None:
    zygote = ready_zygote(probe_env, tmp_path)
    root = fork_probe_project(tmp_path / "proj", tmp_path / "calls.log")
    seen = []
    for fork_server in (False, True):
        probe_env.fork_server = fork_server
        emit = Recorder()
        try:
            hooks(probe_env, root, emit=emit).get_requires("wheel", {})
        finally:
            probe_env.fork_server = True
        seen.append((emit.lines("stdout"), emit.lines("stderr")))
    assert zygote.forks == 1
    assert seen[0] == seen[1]
    out, err = seen[1]
    assert out[:2] == ["fork-probe: imported", "fork-probe: running get_requires_for_build_wheel"]
    assert "fork-probe: imported, on stderr" in err
    assert any(line.endswith("warning: fork-probe: a warning at import") for line in err)


@pytest.mark.parametrize(
    ("action", "extra"),
    [("exit", {"code": 3}), ("exit", {"code": "a message"}), ("raise", {}), ("kill-self", {})],
)
def test_a_forked_hook_fails_exactly_as_a_plain_one(
    probe_env: Environment, tmp_path: Path, action: str, extra: dict[str, Any]
) -> None:
    zygote = ready_zygote(probe_env, tmp_path)
    root = fork_probe_project(tmp_path / "proj", tmp_path / "calls.log", action=action, **extra)
    failures = []
    for fork_server in (False, True):
        probe_env.fork_server = fork_server
        try:
            with pytest.raises(errors.BackendFailed) as caught:
                hooks(probe_env, root).get_requires("wheel", {})
        finally:
            probe_env.fork_server = True
        failures.append(caught.value)
    assert zygote.forks == 1
    plain, forked = failures
    # The same exit code or signal. (The line quoted after it is the last one
    # read from either pipe: which pipe's reader got there last is a race on
    # both paths, so the lines are compared as a set.)
    assert forked.message.split(": ")[0] == plain.message.split(": ")[0]
    assert " exit code " in plain.message or " signal " in plain.message

    def unframed(lines: tuple[str, ...]) -> list[str]:
        # A forked traceback starts at main(), without the <module> frame above it.
        return sorted(line for line in lines if not line.startswith("  "))

    assert unframed(forked.last_lines) == unframed(plain.last_lines)


@pytest.mark.parametrize(
    ("action", "marker"), [("late-thread", "thread.done"), ("atexit", "atexit.done")]
)
def test_a_fork_ends_like_the_interpreter_does(
    probe_env: Environment, tmp_path: Path, action: str, marker: str
) -> None:
    # Non-daemon threads are waited for and atexit functions run, as at a normal exit.
    zygote = ready_zygote(probe_env, tmp_path)
    root = fork_probe_project(tmp_path / "proj", tmp_path / "calls.log", action=action)
    hooks(probe_env, root).get_requires("wheel", {})
    assert zygote.forks == 1
    assert (root / marker).exists()


# ------------------------------------------------------------ kill groups --


def test_timeout_kills_the_forked_hooks_whole_group(probe_env: Environment, tmp_path: Path) -> None:
    zygote = ready_zygote(probe_env, tmp_path)
    root = fork_probe_project(tmp_path / "proj", tmp_path / "calls.log", action="spawn-hang")
    with pytest.raises(errors.Timeout) as caught:
        hooks(probe_env, root, timeout=3.0).get_requires("wheel", {})
    assert any(line.startswith("spawned") for line in caught.value.last_lines)
    assert wait_until_gone(int((root / "child.pid").read_text()))
    assert zygote.forks == 1
    # The fork server outlives its child's timeout and serves the next call.
    fork_probe_project(root, tmp_path / "calls.log")
    hooks(probe_env, root).get_requires("wheel", {})
    assert zygote.forks == 2


def test_cancel_kills_the_forked_hooks_whole_group(probe_env: Environment, tmp_path: Path) -> None:
    zygote = ready_zygote(probe_env, tmp_path)
    root = fork_probe_project(tmp_path / "proj", tmp_path / "calls.log", action="spawn-hang")
    cancel = threading.Event()
    emit = Recorder(cancel_on="spawned", cancel=cancel)
    with pytest.raises(errors.Cancelled):
        hooks(probe_env, root, emit=emit, cancel=cancel, timeout=None).get_requires("wheel", {})
    assert wait_until_gone(int((root / "child.pid").read_text()))
    assert zygote.forks == 1


def test_what_a_forked_hook_leaves_running_is_killed(
    probe_env: Environment, tmp_path: Path
) -> None:
    zygote = ready_zygote(probe_env, tmp_path)
    root = fork_probe_project(tmp_path / "proj", tmp_path / "calls.log", action="spawn-return")
    hooks(probe_env, root).get_requires("wheel", {})
    assert zygote.forks == 1
    assert wait_until_gone(int((root / "child.pid").read_text()))


# ---------------------------------------------------------------- failures --


def test_a_fork_server_killed_between_calls_gives_way_to_a_plain_call(
    probe_env: Environment, tmp_path: Path
) -> None:
    zygote = ready_zygote(probe_env, tmp_path)
    os.killpg(zygote.proc.pid, signal.SIGKILL)
    log = tmp_path / "calls.log"
    root = fork_probe_project(tmp_path / "proj", log)
    assert hooks(probe_env, root).get_requires("wheel", {}) == ["fork-probe-req"]
    [entry] = read_log(log)
    assert entry["ppid"] == os.getpid()
    assert zygote.proc.poll() is not None
    # The plain call started a new fork server, which serves the next call.
    fresh = ready_zygote(probe_env, tmp_path)
    assert fresh is not zygote
    hooks(probe_env, root).get_requires("wheel", {})
    assert fresh.forks == 1


def test_a_fork_server_dying_during_a_call_gives_way_to_a_plain_rerun(
    probe_env: Environment, tmp_path: Path
) -> None:
    zygote = ready_zygote(probe_env, tmp_path)
    log = tmp_path / "calls.log"
    # The hook kills its parent unless that parent is this process (a plain run).
    root = fork_probe_project(
        tmp_path / "proj", log, action="kill-parent-unless", spare=os.getpid()
    )
    assert hooks(probe_env, root).get_requires("wheel", {}) == ["fork-probe-req"]
    forked, plain = read_log(log)
    assert forked["ppid"] == zygote.proc.pid
    assert plain["ppid"] == os.getpid()
    assert zygote.proc.poll() is not None
    assert zygotes.REGISTRY.get(probe_env.id) is None


def test_a_backend_the_fork_server_cannot_import_runs_plain(
    probe_env: Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zygotes, "PREIMPORT_SAFE", frozenset({"buildd_no_such_backend"}))
    root = tmp_path / "proj"
    root.mkdir()
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "buildd_no_such_backend"\n'
    )
    for _ in range(3):
        with pytest.raises(errors.BackendUnavailable, match="buildd_no_such_backend"):
            hooks(probe_env, root).get_requires("wheel", {})
    # Started after the first call, found broken at the second, never started again.
    assert zygotes.REGISTRY.get(probe_env.id) is None
    zygotes.stop(probe_env.id, "test")  # forget that it is broken


# ------------------------------------------------------ when not to fork --


def test_in_tree_backends_and_a_disabled_fork_server_never_fork(
    factory: EnvironmentFactory, probe_env: Environment, tmp_path: Path
) -> None:
    bare = make_env(factory, tmp_path / "owner", [])
    try:
        root = probe_project(tmp_path / "in-tree", tmp_path / "in-tree.log")
        for _ in range(2):
            hooks(bare, root).get_requires("wheel", {})
        assert zygotes.REGISTRY.get(bare.id) is None
    finally:
        factory.destroy(bare)
    zygotes.stop(probe_env.id, "test")
    probe_env.fork_server = False
    try:
        root = fork_probe_project(tmp_path / "proj", tmp_path / "calls.log")
        for _ in range(2):
            hooks(probe_env, root).get_requires("wheel", {})
        assert zygotes.REGISTRY.get(probe_env.id) is None
    finally:
        probe_env.fork_server = True


def test_changed_daemon_variables_retire_the_fork_server(
    probe_env: Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zygote = ready_zygote(probe_env, tmp_path)
    monkeypatch.setenv("BUILDD_TEST_FORK_VARIABLE", "changed")
    log = tmp_path / "calls.log"
    root = fork_probe_project(tmp_path / "proj", log)
    hooks(probe_env, root).get_requires("wheel", {})
    [entry] = read_log(log)
    # Interpreter flags act at start-up: a fork server started otherwise may not serve.
    assert entry["ppid"] == os.getpid()
    assert entry["environ"]["BUILDD_TEST_FORK_VARIABLE"] == "changed"
    assert zygote.proc.poll() is not None


def test_installing_or_destroying_stops_the_fork_server(
    factory: EnvironmentFactory, tmp_path: Path
) -> None:
    env = make_env(factory, tmp_path / "owner", [NAME])
    try:
        first = ready_zygote(env, tmp_path)
        factory.install(env, ["packaging"], emit=lambda e: None, cancel=threading.Event())
        assert first.proc.poll() is not None
        log = tmp_path / "calls.log"
        root = fork_probe_project(tmp_path / "proj", log)
        hooks(env, root).get_requires("wheel", {})
        # The first call after the change ran plain.
        assert read_log(log)[0]["ppid"] == os.getpid()
        second = ready_zygote(env, tmp_path)
    finally:
        factory.destroy(env)
    assert second.proc.poll() is not None
    assert zygotes.REGISTRY.get(env.id) is None


def test_the_number_of_fork_servers_is_capped_least_recently_used_first(
    factory: EnvironmentFactory,
    probe_env: Environment,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(zygotes.REGISTRY, "limit", 1)
    older = ready_zygote(probe_env, tmp_path)
    other = make_env(factory, tmp_path / "owner", [NAME])
    try:
        newer = ready_zygote(other, tmp_path)
        assert older.proc.poll() is not None
        assert zygotes.REGISTRY.get(probe_env.id) is None
        assert zygotes.REGISTRY.get(other.id) is newer
        rss = zygotes.REGISTRY.rss_kib()[other.id]
        assert rss is not None and rss > 0
    finally:
        factory.destroy(other)
