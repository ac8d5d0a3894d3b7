"""GetStatus tells the truth: the bound port, and environments while they are created."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd.v1 import buildd_pb2_grpc
from buildd_client import Client
from support.daemon import DaemonProcess
from support.projects import setuptools_project

if TYPE_CHECKING:
    from .conftest import MakeDaemon


def test_address_names_the_port_bound_for_port_zero(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(start=False)
    daemon.address = "127.0.0.1:0"
    # The real port is only in the log: find it there, then ask the daemon itself.
    daemon.wait_ready = lambda: None  # type: ignore[method-assign]
    daemon.start()
    bound = _logged_address(daemon)
    with Client(bound, autostart=False) as client:
        address = client.status().daemon.address
    assert address == bound
    assert not address.endswith(":0")


def _logged_address(daemon: DaemonProcess) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in daemon.log().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == "daemon_started":
                return str(record["address"])
        assert daemon.process is not None and daemon.process.poll() is None, daemon.log()
        time.sleep(0.05)
    raise AssertionError(f"the daemon never logged its address:\n{daemon.log()}")


class _HeldLinks(http.server.ThreadingHTTPServer):
    """A --find-links page whose wheel downloads wait until the test lets them go."""

    def __init__(self, wheelhouse: Path) -> None:
        self.wheelhouse = wheelhouse
        self.asked = threading.Event()
        self.release = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _HeldLinks

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        name = self.path.strip("/")
        if not name:
            links = "".join(
                f'<a href="/{p.name}">{p.name}</a>\n' for p in self.server.wheelhouse.glob("*.whl")
            )
            self._send(f"<html><body>\n{links}</body></html>".encode(), "text/html", body)
            return
        # The first request for a file holds the installer until the test says so.
        self.server.asked.set()
        self.server.release.wait(120)
        path = self.server.wheelhouse / name
        if not path.is_file():
            self.send_error(404)
            return
        self._send(path.read_bytes(), "application/octet-stream", body)

    def _send(self, data: bytes, kind: str, body: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def held_links(wheelhouse: Path) -> Iterator[_HeldLinks]:
    server = _HeldLinks(wheelhouse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def test_an_environment_being_created_is_reported_creating(
    make_daemon: MakeDaemon, held_links: _HeldLinks, tmp_path: Path
) -> None:
    port = held_links.server_address[1]
    daemon = make_daemon(start=False)
    daemon.wheelhouse = None
    daemon.args = ["--no-index", "--find-links", f"http://127.0.0.1:{port}/"]
    daemon.start()
    project = setuptools_project(tmp_path / "p")
    with Client(daemon.address, autostart=False) as client, client.open_session("t") as session:
        call = session.get_requires(project, quiet=True)
        events = iter(call)
        # The installer is now downloading setuptools from us, and waits.
        assert held_links.asked.wait(120), daemon.log()
        [status] = client.status(session.id).sessions
        states = [env.state for env in status.environments]
        assert states == [pb.ENVIRONMENT_STATE_CREATING]
        [creating] = status.environments
        assert creating.key_id and creating.python_version and creating.id == ""
        assert any(r.startswith("setuptools") for r in creating.requirements)
        held_links.release.set()
        for _ in events:
            pass
        assert call.result().key_id
        [status] = client.status(session.id).sessions
        assert [env.state for env in status.environments] == [pb.ENVIRONMENT_STATE_IDLE]


def test_list_interpreters_names_where_each_was_found(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    from buildd_server.environments.interpreter_discovery import discover_interpreters

    own = discover_interpreters()[0].interpreter.executable
    others = [f.interpreter for f in discover_interpreters()[1:] if f.interpreter.executable != own]
    if len(others) < 2:
        pytest.skip("needs two Python interpreters besides the daemon's own")
    on_path, in_pyenv = others[0], others[1]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3.99").symlink_to(on_path.executable)
    pyenv = tmp_path / "pyenv"
    (pyenv / "versions" / "9.9.9" / "bin").mkdir(parents=True)
    (pyenv / "versions" / "9.9.9" / "bin" / "python3").symlink_to(in_pyenv.executable)
    env = dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin", PYENV_ROOT=str(pyenv))
    daemon = make_daemon(env=env)
    with grpc.insecure_channel(daemon.address) as channel:
        stub = buildd_pb2_grpc.BuilddStub(channel)
        found = stub.ListInterpreters(pb.ListInterpretersRequest(), timeout=120).interpreters
    by_path = {item.path: item for item in found}
    assert found[0].source == pb.INTERPRETER_SOURCE_DAEMON
    assert found[0].executable == own
    listed = by_path[str(bin_dir / "python3.99")]
    assert listed.source == pb.INTERPRETER_SOURCE_PATH
    assert (listed.executable, listed.version) == (on_path.executable, on_path.version)
    assert listed.implementation == on_path.implementation and listed.platform
    pyenv_one = by_path[str(pyenv / "versions" / "9.9.9" / "bin" / "python3")]
    assert pyenv_one.source == pb.INTERPRETER_SOURCE_PYENV
    assert pyenv_one.executable == in_pyenv.executable
    # One entry per interpreter, however many paths lead to it.
    assert len({item.executable for item in found}) == len(found)
