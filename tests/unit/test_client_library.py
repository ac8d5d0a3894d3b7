"""The client library end to end against an in-process fake daemon on a Unix socket.

``FakeBuildd`` and ``serve_fake`` are also used by test_client_cli.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd.v1 import buildd_pb2_grpc
from buildd_client import Client, DaemonUnavailable, RequestFailed, autostart
from buildd_client.addresses import default_address, parse_address
from buildd_client.calls import Call

if TYPE_CHECKING:
    from collections.abc import Iterator

# Bounds for waiting on another thread; reaching one means the test failed.
WAIT = 10.0


class FakeBuildd(buildd_pb2_grpc.BuilddServicer):
    """A scriptable daemon: long calls send ``events``, then maybe abort or block."""

    def __init__(self) -> None:
        self.address = ""
        self.sessions: dict[str, pb.SessionInfo] = {}
        self.opened = 0
        self.requests: list[Any] = []
        self.events: list[pb.Event] = []
        # After the events: abort with this status, or block until cancelled.
        self.abort: tuple[grpc.StatusCode, str] | None = None
        self.block = False
        self.call_ended = threading.Event()
        self.keepalive_ended = threading.Event()
        self.status = pb.StatusResponse()

    # ------------------------------------------------------------ sessions --
    def OpenSession(self, request: pb.OpenSessionRequest, context: Any) -> pb.SessionInfo:
        self.opened += 1
        self.requests.append(request)
        info = pb.SessionInfo(session_id=f"session-{self.opened}", ttl_seconds=900.0)
        self.sessions[info.session_id] = info
        return info

    def JoinSession(self, request: pb.JoinSessionRequest, context: Any) -> pb.SessionInfo:
        if request.session_id not in self.sessions:
            context.abort(grpc.StatusCode.NOT_FOUND, f"session {request.session_id!r} not found")
        return self.sessions[request.session_id]

    def CloseSession(
        self, request: pb.CloseSessionRequest, context: Any
    ) -> pb.CloseSessionResponse:
        if self.sessions.pop(request.session_id, None) is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"session {request.session_id!r} not found")
        return pb.CloseSessionResponse(environments_deleted=2)

    def KeepAlive(self, request: pb.KeepAliveRequest, context: Any) -> Iterator[Any]:
        ended = threading.Event()
        context.add_callback(ended.set)
        context.add_callback(self.keepalive_ended.set)
        yield pb.KeepAliveResponse(now=1.0)
        # Heartbeats until the client goes away; bounded so a bug cannot hang.
        while not ended.wait(request.interval_seconds or 0.05):
            yield pb.KeepAliveResponse(now=2.0)

    def GetStatus(self, request: pb.GetStatusRequest, context: Any) -> pb.StatusResponse:
        self.requests.append(request)
        return self.status

    def PruneStore(self, request: pb.PruneStoreRequest, context: Any) -> pb.PruneStoreResponse:
        self.requests.append(request)
        return pb.PruneStoreResponse(
            environments_removed=3, bytes_freed=3 << 20, environments_kept=1
        )

    # ---------------------------------------------------------- long calls --
    def _stream(self, request: Any, context: Any) -> Iterator[pb.Event]:
        self.requests.append(request)
        context.add_callback(self.call_ended.set)
        if request.context.session_id not in self.sessions:
            yield pb.Event(
                failure=pb.Failure(
                    kind=pb.FAILURE_KIND_SESSION_NOT_FOUND,
                    status_code=grpc.StatusCode.NOT_FOUND.value[0],
                    message=f"session {request.context.session_id!r} not found",
                )
            )
            context.abort(grpc.StatusCode.NOT_FOUND, "session not found")
        yield from self.events
        if self.block:
            self.call_ended.wait(WAIT)
        if self.abort is not None:
            context.abort(*self.abort)

    def GetRequires(self, request: pb.GetRequiresRequest, context: Any) -> Iterator[pb.Event]:
        return self._stream(request, context)

    def PrepareMetadata(
        self, request: pb.PrepareMetadataRequest, context: Any
    ) -> Iterator[pb.Event]:
        return self._stream(request, context)

    def Build(self, request: pb.BuildRequest, context: Any) -> Iterator[pb.Event]:
        return self._stream(request, context)


def failure_events(
    kind: int, status: grpc.StatusCode, message: str, last_lines: list[str] | None = None
) -> list[pb.Event]:
    return [
        pb.Event(log=pb.LogLine(text="compiling...", hook="build_wheel")),
        pb.Event(
            failure=pb.Failure(
                kind=kind,  # type: ignore[arg-type]
                status_code=status.value[0],
                message=message,
                hook="build_wheel",
                last_lines=last_lines or [],
                path="/src/pyproject.toml",
            )
        ),
    ]


@contextlib.contextmanager
def serve_fake() -> Iterator[FakeBuildd]:
    # A short folder: Unix socket paths are limited to ~107 bytes.
    folder = tempfile.mkdtemp(prefix="bc-", dir="/tmp")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    fake = FakeBuildd()
    buildd_pb2_grpc.add_BuilddServicer_to_server(fake, server)
    fake.address = f"unix://{folder}/d.sock"
    server.add_insecure_port(fake.address)
    server.start()
    try:
        yield fake
    finally:
        server.stop(None)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    for name in ("BUILDD_ADDRESS", "BUILDD_SESSION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BUILDD_NO_AUTOSTART", "1")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    runtime = tempfile.mkdtemp(prefix="bc-run-", dir="/tmp")
    monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
    yield Path(runtime)
    shutil.rmtree(runtime, ignore_errors=True)


@pytest.fixture
def fake() -> Iterator[FakeBuildd]:
    with serve_fake() as daemon:
        yield daemon


@pytest.fixture
def client(fake: FakeBuildd) -> Iterator[Client]:
    with Client(fake.address) as connected:
        yield connected


METADATA_RESULT = pb.Event(
    result=pb.Result(
        metadata=pb.MetadataResult(
            metadata=b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n",
            dist_info_name="demo-1.0.dist-info",
        )
    )
)
PHASE = pb.Event(phase=pb.Phase(kind=pb.PHASE_KIND_RUNNING_HOOK, hook="prepare_metadata"))
LOG = pb.Event(log=pb.LogLine(text="running egg_info", hook="prepare_metadata"))


def test_iterating_yields_every_event_then_result(fake: FakeBuildd, client: Client) -> None:
    fake.events = [PHASE, LOG, METADATA_RESULT]
    session = client.open_session()
    call = session.metadata("relative/src", config_settings={"a": "1", "b": ["x", "y"]})
    assert [event.WhichOneof("kind") for event in call] == ["phase", "log", "result"]
    assert call.done
    assert call.final == METADATA_RESULT
    assert call.result().dist_info_name == "demo-1.0.dist-info"

    request = fake.requests[-1]
    assert request.context.session_id == session.id
    assert request.context.source.path == os.path.abspath("relative/src")
    assert request.context.python == sys.executable
    assert request.distribution == pb.DISTRIBUTION_WHEEL
    assert [(s.key, list(s.values)) for s in request.context.config_settings] == [
        ("a", ["1"]),
        ("b", ["x", "y"]),
    ]


def test_result_alone_consumes_the_stream(fake: FakeBuildd, client: Client) -> None:
    fake.events = [PHASE, LOG, METADATA_RESULT]
    result = client.open_session().metadata("/src", distribution="editable").result()
    assert result.metadata.startswith(b"Metadata-Version")
    assert fake.requests[-1].distribution == pb.DISTRIBUTION_EDITABLE


def test_build_request_follows_python_m_build(fake: FakeBuildd, client: Client) -> None:
    artifact = pb.Artifact(path="/out/demo-1.0.tar.gz", distribution=pb.DISTRIBUTION_SDIST)
    fake.events = [pb.Event(result=pb.Result(build=pb.BuildResult(artifacts=[artifact])))]
    session = client.open_session()
    assert session.build("/src", output_directory="out").result().artifacts[0] == artifact
    default = fake.requests[-1]
    assert list(default.distributions) == [pb.DISTRIBUTION_SDIST, pb.DISTRIBUTION_WHEEL]
    assert default.wheel_from_sdist
    assert default.output_directory == os.path.abspath("out")

    session.build("/src", distributions=["wheel"], python="3.12").result()
    wheel_only = fake.requests[-1]
    assert list(wheel_only.distributions) == [pb.DISTRIBUTION_WHEEL]
    assert not wheel_only.wheel_from_sdist
    assert wheel_only.output_directory == ""
    assert wheel_only.context.python == "3.12"


def test_bad_distribution_is_rejected_before_sending(fake: FakeBuildd, client: Client) -> None:
    session = client.open_session()
    with pytest.raises(ValueError, match="'sdist'"):
        session.metadata("/src", distribution="sdist")
    with pytest.raises(ValueError, match="non-empty"):
        session.build("/src", distributions=[])
    assert not any(isinstance(r, pb.BuildRequest) for r in fake.requests)


def test_failure_event_becomes_request_failed(fake: FakeBuildd, client: Client) -> None:
    fake.events = failure_events(
        pb.FAILURE_KIND_BACKEND_FAILED,
        grpc.StatusCode.FAILED_PRECONDITION,
        "build_wheel failed: exit code 1",
        ["error: gcc not found"],
    )
    fake.abort = (grpc.StatusCode.FAILED_PRECONDITION, "build_wheel failed")
    call = client.open_session().build("/src", distributions=["wheel"])
    with pytest.raises(RequestFailed) as info:
        call.result()
    error = info.value
    assert error.kind == pb.FAILURE_KIND_BACKEND_FAILED
    assert error.kind_name == "backend_failed"
    assert error.status == grpc.StatusCode.FAILED_PRECONDITION
    assert error.message == "build_wheel failed: exit code 1"
    assert error.hook == "build_wheel"
    assert error.last_lines == ["error: gcc not found"]
    assert error.path == "/src/pyproject.toml"
    assert error.exit_code == 1
    assert call.final is not None and call.final.HasField("failure")


@pytest.mark.parametrize(
    ("status", "kind", "exit_code"),
    [
        (grpc.StatusCode.INTERNAL, pb.FAILURE_KIND_INTERNAL, 1),
        (grpc.StatusCode.UNAVAILABLE, pb.FAILURE_KIND_UNAVAILABLE, 3),
        (grpc.StatusCode.INVALID_ARGUMENT, pb.FAILURE_KIND_INVALID_REQUEST, 2),
        (grpc.StatusCode.DEADLINE_EXCEEDED, pb.FAILURE_KIND_TIMEOUT, 1),
    ],
)
def test_rpc_error_without_failure_event(
    fake: FakeBuildd, client: Client, status: grpc.StatusCode, kind: int, exit_code: int
) -> None:
    fake.events = [PHASE]
    fake.abort = (status, "the daemon says no")
    call = client.open_session().metadata("/src")
    assert [event.WhichOneof("kind") for event in call] == ["phase"]
    with pytest.raises(RequestFailed) as info:
        call.result()
    assert (info.value.kind, info.value.status) == (kind, status)
    assert info.value.message == "the daemon says no"
    assert info.value.exit_code == exit_code


def test_stream_ending_without_a_result_is_an_error(fake: FakeBuildd, client: Client) -> None:
    fake.events = [PHASE]
    with pytest.raises(RequestFailed, match="without a result"):
        client.open_session().metadata("/src").result()


def test_result_of_the_wrong_kind_is_an_error(fake: FakeBuildd, client: Client) -> None:
    fake.events = [METADATA_RESULT]
    with pytest.raises(RequestFailed, match="'metadata' result where a 'build'"):
        client.open_session().build("/src").result()


def test_unknown_session_in_a_long_call(fake: FakeBuildd, client: Client) -> None:
    session = client.open_session()
    fake.sessions.clear()
    with pytest.raises(RequestFailed) as info:
        session.metadata("/src").result()
    assert info.value.kind == pb.FAILURE_KIND_SESSION_NOT_FOUND
    assert info.value.exit_code == 2


def test_cancel_ends_the_call_on_the_daemon(fake: FakeBuildd, client: Client) -> None:
    fake.events = [PHASE]
    fake.block = True
    call = client.open_session().build("/src")
    assert next(iter(call)) == PHASE
    call.cancel()
    assert fake.call_ended.wait(WAIT)
    with pytest.raises(RequestFailed) as info:
        call.result()
    assert info.value.kind == pb.FAILURE_KIND_CANCELLED
    assert call.cancelled


def test_leaving_the_with_block_early_cancels(fake: FakeBuildd, client: Client) -> None:
    fake.events = [PHASE]
    fake.block = True
    with pytest.raises(RuntimeError), client.open_session().build("/src") as call:
        for _ in call:
            raise RuntimeError("the consumer gave up")
    assert fake.call_ended.wait(WAIT)
    assert call.cancelled


def test_cancel_after_the_end_is_a_no_op(fake: FakeBuildd, client: Client) -> None:
    fake.events = [METADATA_RESULT]
    with client.open_session().metadata("/src") as call:
        call.result()
    assert not call.cancelled


class _InterruptedStream:
    def __init__(self) -> None:
        self.cancelled = False

    def __next__(self) -> pb.Event:
        raise KeyboardInterrupt

    def cancel(self) -> bool:
        self.cancelled = True
        return True


def test_keyboard_interrupt_while_waiting_cancels_the_rpc() -> None:
    stream = _InterruptedStream()
    call: Call[pb.MetadataResult] = Call(stream, "metadata", lambda r: r.metadata)
    with pytest.raises(KeyboardInterrupt):
        call.result()
    assert stream.cancelled


def test_join_and_close(fake: FakeBuildd, client: Client) -> None:
    session = client.open_session("my-ide/1.0")
    assert fake.requests[0].client_name == "my-ide/1.0"
    assert client.join_session(session.id).id == session.id
    assert session.close().environments_deleted == 2
    with pytest.raises(RequestFailed) as info:
        client.join_session(session.id)
    assert info.value.kind == pb.FAILURE_KIND_SESSION_NOT_FOUND
    assert info.value.exit_code == 2
    with pytest.raises(RequestFailed):
        session.close()


def test_default_session_is_reused_then_recreated(
    fake: FakeBuildd, client: Client, tmp_path: Path
) -> None:
    first = client.default_session()
    with Client(fake.address) as other:
        assert other.default_session().id == first.id
    assert fake.opened == 1
    stored = json.loads((tmp_path / "state" / "buildd" / "sessions.json").read_text())
    assert stored == {fake.address: first.id}

    fake.sessions.clear()  # the daemon restarted, or the session expired
    second = client.default_session()
    assert second.id != first.id
    assert fake.opened == 2
    assert client.default_session_id() == second.id

    client.close_session(second.id)
    assert client.default_session_id() is None


def test_damaged_sessions_file_is_replaced(
    fake: FakeBuildd, client: Client, tmp_path: Path
) -> None:
    state = tmp_path / "state" / "buildd"
    state.mkdir(parents=True)
    (state / "sessions.json").write_text("{not json")
    session = client.default_session()
    assert json.loads((state / "sessions.json").read_text()) == {fake.address: session.id}


def test_keepalive_holds_a_stream_until_exit(fake: FakeBuildd, client: Client) -> None:
    session = client.open_session()
    with session.keepalive(interval=0.01) as keepalive:
        assert keepalive.wait_heartbeat(WAIT)
        assert keepalive.active
        assert keepalive.last_heartbeat is not None
    assert fake.keepalive_ended.wait(WAIT)
    assert not keepalive.active
    assert keepalive.error is None


def test_status_passes_the_session(fake: FakeBuildd, client: Client) -> None:
    fake.status = pb.StatusResponse(daemon=pb.DaemonInfo(pid=42, version="0.1.0"))
    assert client.status("abc").daemon.pid == 42
    assert fake.requests[-1].session_id == "abc"


def test_missing_socket_fails_at_once_without_autostart(isolated_env: Path) -> None:
    with pytest.raises(DaemonUnavailable, match="no buildd daemon answers") as info:
        Client(f"unix://{isolated_env}/nothing.sock")
    assert info.value.exit_code == 3


def test_default_address_with_autostart_disabled(isolated_env: Path) -> None:
    with pytest.raises(DaemonUnavailable, match="BUILDD_NO_AUTOSTART"):
        Client()


def test_buildd_address_variable_is_the_default(
    fake: FakeBuildd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUILDD_ADDRESS", fake.address)
    with Client() as client:
        assert client.address.target == fake.address
        assert not client.is_default_address


# ---------------------------------------------------------------- autostart --

FAKE_DAEMON = """
import os, sys
from concurrent import futures
import grpc
from buildd.v1 import buildd_pb2 as pb, buildd_pb2_grpc

class Servicer(buildd_pb2_grpc.BuilddServicer):
    def OpenSession(self, request, context):
        return pb.SessionInfo(session_id="auto-started")

with open(sys.argv[1], "a") as pids:
    pids.write(f"{os.getpid()}\\n")
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
buildd_pb2_grpc.add_BuilddServicer_to_server(Servicer(), server)
server.add_insecure_port(sys.argv[2])
server.start()
print("fake daemon listening on", sys.argv[2], flush=True)
server.wait_for_termination(timeout=120)
"""


@pytest.fixture
def fake_daemon_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[list[list[str]]]:
    monkeypatch.delenv("BUILDD_NO_AUTOSTART")
    pids = tmp_path / "pids"
    commands: list[list[str]] = []

    def command(target: str) -> list[str]:
        argv = [sys.executable, "-c", FAKE_DAEMON, str(pids), target]
        commands.append(argv)
        return argv

    monkeypatch.setattr(autostart, "daemon_command", command)
    yield commands
    if pids.exists():
        for pid in pids.read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGTERM)


def test_autostart_starts_one_daemon_and_reuses_it(
    fake_daemon_command: list[list[str]], tmp_path: Path
) -> None:
    with Client() as first:
        assert first.started_daemon
        assert first.open_session().id == "auto-started"
    with Client() as second:
        assert not second.started_daemon
    assert len(fake_daemon_command) == 1
    log = (tmp_path / "state" / "buildd" / "daemon.log").read_text()
    assert "fake daemon listening on" in log


def test_concurrent_clients_start_a_single_daemon(
    fake_daemon_command: list[list[str]], isolated_env: Path
) -> None:
    target = parse_address(default_address())
    started: list[bool] = []
    barrier = threading.Barrier(2)

    def start() -> None:
        barrier.wait()
        started.append(autostart.ensure_daemon(target, timeout=WAIT))

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(started) == [False, True]
    assert len(fake_daemon_command) == 1


def test_autostart_reports_a_daemon_that_exits(
    monkeypatch: pytest.MonkeyPatch, isolated_env: Path
) -> None:
    monkeypatch.delenv("BUILDD_NO_AUTOSTART")
    script = "import sys; print('cannot bind: boom'); sys.exit(4)"
    monkeypatch.setattr(autostart, "daemon_command", lambda target: [sys.executable, "-c", script])
    with pytest.raises(DaemonUnavailable, match="exited with code 4") as info:
        Client()
    assert "cannot bind: boom" in info.value.log_lines
    assert info.value.exit_code == 3
    # The socket folder was created private.
    assert (isolated_env / "buildd").stat().st_mode & 0o777 == 0o700


def test_autostart_hints_at_a_missing_daemon_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("BUILDD_NO_AUTOSTART")
    script = "import sys; sys.exit(sys.executable + ': No module named buildd_server')"
    monkeypatch.setattr(autostart, "daemon_command", lambda target: [sys.executable, "-c", script])
    with pytest.raises(DaemonUnavailable, match="the daemon is not installed for"):
        Client()
    log = tmp_path / "state" / "buildd" / "daemon.log"
    assert log.stat().st_mode & 0o777 == 0o600


def test_default_socket_folder_open_to_others_is_refused(
    monkeypatch: pytest.MonkeyPatch, isolated_env: Path
) -> None:
    monkeypatch.setattr(autostart, "daemon_command", lambda target: pytest.fail("started"))
    folder = isolated_env / "buildd"
    folder.mkdir(mode=0o700)
    folder.chmod(0o777)
    with pytest.raises(DaemonUnavailable, match="mode is 0777"):
        Client()
