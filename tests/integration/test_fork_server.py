"""The fork server changes no byte: real backends, both paths, the same artifacts.

For setuptools, hatchling and flit_core, the same project is taken through
get_requires, prepare_metadata, build_wheel (with that metadata) and
build_sdist once with every hook a plain subprocess and once with every hook
a fork of the environment's fork server; the METADATA files, the wheels'
members and the sdists' members must be identical, byte for byte (archive
timestamps aside). Then the daemon: with and without ``--no-fork-server``.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import textwrap
import threading
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest

from buildd_client import Client
from buildd_server import zygotes
from buildd_server.config import InstallerOptions
from buildd_server.environments import Environment, EnvironmentFactory, Placement
from buildd_server.hooks import Hooks
from buildd_server.installers import select_installer
from buildd_server.interpreters import resolve_interpreter
from buildd_server.keys import make_key
from buildd_server.sources import load_project
from support.projects import flit_project, hatchling_project, setuptools_project

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from .conftest import MakeDaemon

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::pyproject_hooks.BuildBackendWarning"),
]

BACKENDS: dict[str, tuple[list[str], Callable[[Path], Path]]] = {
    "setuptools": (["setuptools>=61"], setuptools_project),
    "hatchling": (["hatchling"], hatchling_project),
    "flit": (["flit_core>=3.4,<4"], flit_project),
}


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> EnvironmentFactory:
    options = InstallerOptions(no_index=True, find_links=(str(wheelhouse),))
    return EnvironmentFactory(tmp_path_factory.mktemp("root"), select_installer("uv"), options)


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def backend_env(
    request: pytest.FixtureRequest,
    factory: EnvironmentFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Environment]]:
    requirements, _ = BACKENDS[request.param]
    interpreter = resolve_interpreter("")
    key = make_key(interpreter, requirements, "uv", factory.options, origin="test")
    owner = tmp_path_factory.mktemp("owner")
    placement = Placement(path=owner / "0", owner="test")
    env = factory.create(key, interpreter, placement, emit=lambda e: None, cancel=threading.Event())
    yield request.param, env
    factory.destroy(env)


def hooks(env: Environment, root: Path) -> Hooks:
    return Hooks(
        env, load_project(str(root)), timeout=120.0, cancel=threading.Event(), emit=lambda e: None
    )


def ready_zygote(env: Environment, root: Path) -> zygotes.Zygote:
    """A fork server for ``env``, started by a plain call on a scratch copy of the project."""
    zygotes.stop(env.id, "test")
    hooks(env, root).get_requires("wheel", {})
    zygote = zygotes.REGISTRY.get(env.id)
    assert zygote is not None
    assert zygote.await_ready(threading.Event(), 120.0), zygote.error
    return zygote


def build_everything(env: Environment, root: Path, out: Path) -> dict[str, object]:
    """Every hook a frontend calls, in order; what each produced."""
    calls = hooks(env, root)
    requires = calls.get_requires("wheel", {})
    metadata = out / "metadata"
    metadata.mkdir(parents=True)
    dist_info, from_wheel = calls.prepare_metadata("wheel", metadata, {})
    wheels = out / "wheels"
    wheels.mkdir()
    wheel = calls.build("wheel", wheels, {}, metadata / dist_info)
    sdists = out / "sdists"
    sdists.mkdir()
    sdist = calls.build("sdist", sdists, {})
    with zipfile.ZipFile(wheels / wheel) as archive:
        wheel_members = {name: archive.read(name) for name in archive.namelist()}
    with tarfile.open(sdists / sdist) as archive:
        sdist_members = {
            member.name: (archive.extractfile(member) or _Empty()).read()
            for member in archive.getmembers()
        }
    return {
        "requires": requires,
        "dist_info": dist_info,
        "from_wheel": from_wheel,
        "metadata": {
            str(path.relative_to(metadata)): path.read_bytes()
            for path in sorted(metadata.rglob("*"))
            if path.is_file()
        },
        "wheel": wheel,
        "wheel_members": wheel_members,
        "sdist": sdist,
        "sdist_members": sdist_members,
    }


class _Empty:
    def read(self) -> bytes:
        return b""


def test_forked_hooks_give_byte_identical_metadata_wheels_and_sdists(
    backend_env: tuple[str, Environment], tmp_path: Path
) -> None:
    kind, env = backend_env
    _, make = BACKENDS[kind]
    # The same paths both times: nothing may differ but the way the process started.
    source = tmp_path / "src" / "project"
    out = tmp_path / "out"
    results = []
    for fork_server in (False, True):
        if fork_server:
            zygote = ready_zygote(env, make(tmp_path / "scratch" / "project"))
        for folder in (source, out):
            shutil.rmtree(folder, ignore_errors=True)
        make(source)
        env.fork_server = fork_server
        try:
            results.append(build_everything(env, source, out))
        finally:
            env.fork_server = True
    # All four hook calls of the second run were forks.
    assert zygote.forks == 4
    plain, forked = results
    assert forked["metadata"] == plain["metadata"]
    assert sorted(forked["wheel_members"]) == sorted(plain["wheel_members"])  # type: ignore[call-overload]
    assert forked == plain


SETUP_PY = """
import json, os, setuptools

# setuptools is imported by the fork server: a global set on it by one hook
# call, like a variable set in os.environ, must not reach the next call.
def ancestors():
    # As the machine sees them (the call may be in a PID namespace of its own).
    found, pid = [], os.readlink("/proc/self")
    while pid not in ("0", "1"):
        with open("/proc/%s/status" % pid) as status:
            pid = [l.split()[1] for l in status if l.startswith("PPid:")][0]
        found.append(int(pid))
    return found

with open("calls.jsonl", "a") as out:
    out.write(json.dumps({
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "ancestors": ancestors(),
        "env": os.environ.get("BUILDD_SETUP_MARKER"),
        "global": getattr(setuptools, "_buildd_setup_marker", None),
    }) + "\\n")
os.environ["BUILDD_SETUP_MARKER"] = "leaked"
setuptools._buildd_setup_marker = "leaked"
setuptools.setup()
"""


def _recording_setuptools_project(root: Path, name: str = "demo-recorder") -> Path:
    setuptools_project(root, name=name)
    (root / "setup.py").write_text(textwrap.dedent(SETUP_PY))
    return root


def _calls(root: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (root / "calls.jsonl").read_text().splitlines()]


def test_setuptools_state_stays_in_its_own_forked_call(
    factory: EnvironmentFactory, tmp_path: Path
) -> None:
    interpreter = resolve_interpreter("")
    key = make_key(interpreter, ["setuptools>=61"], "uv", factory.options, origin="test")
    owner = tmp_path / "owner"
    placement = Placement(path=owner / "0", owner="test")
    env = factory.create(key, interpreter, placement, emit=lambda e: None, cancel=threading.Event())
    try:
        zygote = ready_zygote(env, _recording_setuptools_project(tmp_path / "scratch"))
        root = _recording_setuptools_project(tmp_path / "proj")
        calls = hooks(env, root)
        for _ in range(3):
            calls.get_requires("wheel", {})
        assert zygote.forks == 3
        entries = _calls(root)
        assert len({entry["pid"] for entry in entries}) == 3
        for entry in entries:
            assert entry["ppid"] == zygote.proc.pid
            assert entry["env"] is None
            assert entry["global"] is None
    finally:
        factory.destroy(env)


@pytest.mark.parametrize("fork_server", [True, False])
def test_the_daemon_forks_warm_hooks_unless_told_not_to(
    make_daemon: MakeDaemon, tmp_path: Path, fork_server: bool
) -> None:
    daemon = make_daemon([] if fork_server else ["--no-fork-server"])
    root = _recording_setuptools_project(tmp_path / "proj")
    with Client(daemon.address, autostart=False) as client:
        session = client.open_session("fork-server")
        metadata = [session.metadata(str(root)).result().metadata for _ in range(3)]
    assert metadata[0] == metadata[1] == metadata[2]
    assert b"Name: demo-recorder" in metadata[0]
    # Each hook's ancestors as the machine sees them: under the daemon's
    # default containment a PID namespace's init (and bubblewrap, for a
    # plain start) stand between a hook and the process that started it.
    lines = [cast("list[int]", entry["ancestors"]) for entry in _calls(root)]
    # Two hooks per metadata request (get_requires, prepare_metadata).
    assert len(lines) == 6
    assert all(daemon.pid in line for line in lines)
    started = [json.loads(line) for line in daemon.log().splitlines() if "fork_server_" in line]
    if not fork_server:
        assert started == []
        return
    # The first hook after the environment was made runs plain; it starts the
    # fork server, which every later hook is forked from.
    assert [e["event"] for e in started][:2] == ["fork_server_started", "fork_server_ready"]
    zygote = started[0]["pid"]
    assert zygote not in lines[0]
    assert all(zygote in line for line in lines[1:])
    assert os.path.basename(str(started[0]["backend"])) == "setuptools.build_meta"
