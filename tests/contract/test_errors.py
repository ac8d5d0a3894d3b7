"""Every failing call carries google.rpc.Status details that agree with the in-stream Failure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from buildd.v1 import buildd_pb2 as pb
from buildd.v1 import buildd_pb2_grpc
from buildd_client import Client, RequestFailed
from support.daemon import DaemonProcess
from support.projects import probe_project
from support.remote import wait_for, write_token_file

if TYPE_CHECKING:
    from .conftest import MakeDaemon


@pytest.fixture
def stub(daemon: DaemonProcess) -> Iterator[buildd_pb2_grpc.BuilddStub]:
    with grpc.insecure_channel(daemon.address) as channel:
        yield buildd_pb2_grpc.BuilddStub(channel)


class Details:
    """The standard error details of one failed call, unpacked."""

    def __init__(self, error: Any) -> None:
        self.code: grpc.StatusCode = error.code()
        status = rpc_status.from_call(error)
        assert status is not None, f"no google.rpc.Status in the trailer of {error}"
        self.status: status_pb2.Status = status
        self.info = error_details_pb2.ErrorInfo()
        self.bad = error_details_pb2.BadRequest()
        self.retry = error_details_pb2.RetryInfo()
        self.failure = pb.Failure()
        found = set()
        for detail in status.details:
            for name, message in (
                ("info", self.info),
                ("bad", self.bad),
                ("retry", self.retry),
                ("failure", self.failure),
            ):
                if detail.Is(message.DESCRIPTOR):
                    detail.Unpack(message)
                    found.add(name)
        self.found = found
        assert {"info", "failure"} <= found
        assert self.info.domain == "buildd"
        assert self.info.reason == pb.FailureKind.Name(self.failure.kind).removeprefix(
            "FAILURE_KIND_"
        )
        assert self.failure.status_code == self.code.value[0] == status.code
        assert self.failure.message == status.message == error.details()
        assert dict(self.info.metadata) == dict(self.failure.metadata)


def _unary_error(call: Any) -> Details:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return Details(caught.value)


def _stream_error(stream: Any) -> tuple[pb.Failure, Details]:
    events = []
    with pytest.raises(grpc.RpcError) as caught:
        for event in stream:
            events.append(event)
    assert events and events[-1].HasField("failure"), events
    return events[-1].failure, Details(caught.value)


def test_session_never_known_and_session_ended_are_told_apart(
    stub: buildd_pb2_grpc.BuilddStub,
) -> None:
    never = _unary_error(lambda: stub.JoinSession(pb.JoinSessionRequest(session_id="x" * 32)))
    assert never.code == grpc.StatusCode.NOT_FOUND
    assert never.info.reason == "SESSION_NOT_FOUND"
    assert never.info.metadata["session_id"] == "x" * 32
    info = stub.OpenSession(pb.OpenSessionRequest(client_name="t"))
    stub.CloseSession(pb.CloseSessionRequest(session_id=info.session_id))
    for call in (
        lambda: stub.JoinSession(pb.JoinSessionRequest(session_id=info.session_id)),
        lambda: stub.CloseSession(pb.CloseSessionRequest(session_id=info.session_id)),
        lambda: stub.GetStatus(pb.GetStatusRequest(session_id=info.session_id)),
    ):
        ended = _unary_error(call)
        assert ended.code == grpc.StatusCode.NOT_FOUND
        assert ended.info.reason == "SESSION_ENDED"
        assert ended.info.metadata["end_reason"] == "closed"
    keepalive = _unary_error(
        lambda: next(stub.KeepAlive(pb.KeepAliveRequest(session_id=info.session_id)))
    )
    assert keepalive.info.reason == "SESSION_ENDED"


def test_stream_failure_and_trailer_agree(stub: buildd_pb2_grpc.BuilddStub, tmp_path: Path) -> None:
    info = stub.OpenSession(pb.OpenSessionRequest(client_name="t"))
    context = pb.BuildContext(
        session_id=info.session_id, source=pb.Source(path=str(tmp_path / "missing"))
    )
    failure, details = _stream_error(
        stub.GetRequires(pb.GetRequiresRequest(context=context, distribution=pb.DISTRIBUTION_WHEEL))
    )
    assert details.failure == failure
    assert details.info.reason == "SOURCE_NOT_FOUND"
    assert failure.field == "context.source.path"
    assert [v.field for v in details.bad.field_violations] == ["context.source.path"]
    assert "retry" not in details.found
    bad = pb.PrepareMetadataRequest(context=context, distribution=pb.DISTRIBUTION_UNSPECIFIED)
    failure, details = _stream_error(stub.PrepareMetadata(bad))
    assert details.failure == failure
    assert (details.code, details.info.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )
    assert [v.field for v in details.bad.field_violations] == ["distribution"]
    stub.CloseSession(pb.CloseSessionRequest(session_id=info.session_id))


def test_missing_blob_and_missing_artifact_have_their_own_reasons(
    stub: buildd_pb2_grpc.BuilddStub,
) -> None:
    info = stub.OpenSession(pb.OpenSessionRequest(client_name="t"))
    digest = "sha256:" + "0" * 64
    context = pb.BuildContext(session_id=info.session_id, source=pb.Source(digest=digest))
    failure, details = _stream_error(
        stub.GetRequires(pb.GetRequiresRequest(context=context, distribution=pb.DISTRIBUTION_WHEEL))
    )
    assert (details.code, details.info.reason) == (grpc.StatusCode.NOT_FOUND, "BLOB_NOT_FOUND")
    assert details.info.metadata["digest"] == digest
    assert failure.field == "context.source.digest"
    artifact = _unary_error(
        lambda: next(
            stub.DownloadArtifact(
                pb.DownloadArtifactRequest(session_id=info.session_id, path="/etc/passwd")
            )
        )
    )
    assert (artifact.code, artifact.info.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "ARTIFACT_NOT_FOUND",
    )
    assert [v.field for v in artifact.bad.field_violations] == ["path"]
    stub.CloseSession(pb.CloseSessionRequest(session_id=info.session_id))


def test_unary_bad_field_has_bad_request(stub: buildd_pb2_grpc.BuilddStub) -> None:
    details = _unary_error(lambda: stub.OpenSession(pb.OpenSessionRequest(client_name="x" * 300)))
    assert (details.code, details.info.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )
    assert [v.field for v in details.bad.field_violations] == ["client_name"]


def test_draining_daemon_says_retry(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    daemon = make_daemon()
    started = tmp_path / "started.log"
    held_project = probe_project(
        tmp_path / "held", tmp_path / "probe.log", hold=60, start_log=str(started)
    )
    with grpc.insecure_channel(daemon.address) as channel:
        stub = buildd_pb2_grpc.BuilddStub(channel)
        info = stub.OpenSession(pb.OpenSessionRequest(client_name="t"))

        def request(project: Path) -> pb.GetRequiresRequest:
            context = pb.BuildContext(
                session_id=info.session_id, source=pb.Source(path=str(project)), python=""
            )
            return pb.GetRequiresRequest(context=context, distribution=pb.DISTRIBUTION_WHEEL)

        # A hook in flight keeps the drain waiting for the whole grace.
        held = stub.GetRequires(request(held_project))
        wait_for(started.exists, "the held hook to start", timeout=120)
        stub.Shutdown(pb.ShutdownRequest(grace_seconds=60))
        refused = _unary_error(lambda: stub.OpenSession(pb.OpenSessionRequest(client_name="t")))
        assert (refused.code, refused.info.reason) == (grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE")
        assert refused.retry.retry_delay.ToNanoseconds() > 0
        failure, details = _stream_error(stub.GetRequires(request(held_project)))
        assert details.failure == failure and failure.retry_delay_seconds > 0
        assert "retry" in details.found
        held.cancel()


def test_unauthenticated_has_details(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    tokens = write_token_file(tmp_path / "tokens")
    daemon = make_daemon(["--token-file", str(tokens)])
    with grpc.insecure_channel(daemon.address) as channel:
        stub = buildd_pb2_grpc.BuilddStub(channel)
        details = _unary_error(lambda: stub.OpenSession(pb.OpenSessionRequest(client_name="t")))
    assert (details.code, details.info.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
    )


def test_python_client_reads_reason_field_and_metadata(client: Client) -> None:
    session = client.open_session("t")
    session.close()
    with pytest.raises(RequestFailed) as caught:
        client.join_session(session.id)
    error = caught.value
    assert (error.reason, error.kind) == ("SESSION_ENDED", pb.FAILURE_KIND_SESSION_ENDED)
    assert error.metadata["end_reason"] == "closed" and error.session_gone
    with pytest.raises(RequestFailed) as caught:
        client.open_session("x" * 300)
    assert (caught.value.reason, caught.value.field) == ("INVALID_REQUEST", "client_name")


def test_a_cap_says_retry(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(["--max-sessions-per-principal", "1"])
    with grpc.insecure_channel(daemon.address) as channel:
        stub = buildd_pb2_grpc.BuilddStub(channel)
        stub.OpenSession(pb.OpenSessionRequest(client_name="first"))
        refused = _unary_error(lambda: stub.OpenSession(pb.OpenSessionRequest(client_name="t")))
    assert (refused.code, refused.info.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RESOURCE_EXHAUSTED",
    )
    assert refused.retry.retry_delay.ToNanoseconds() > 0


@pytest.mark.parametrize(
    ("settings", "output_directory", "field"),
    [
        ([pb.ConfigSetting(key="", values=["x"])], "", "context.config_settings[0].key"),
        ([], "relative/out", "output_directory"),
    ],
    ids=["empty-setting-key", "relative-output"],
)
def test_every_bad_field_gets_a_field_violation(
    stub: buildd_pb2_grpc.BuilddStub,
    tmp_path: Path,
    settings: list[pb.ConfigSetting],
    output_directory: str,
    field: str,
) -> None:
    info = stub.OpenSession(pb.OpenSessionRequest(client_name="t"))
    context = pb.BuildContext(
        session_id=info.session_id,
        source=pb.Source(path=str(tmp_path)),
        config_settings=settings,
    )
    request = pb.BuildRequest(
        context=context,
        distributions=[pb.DISTRIBUTION_WHEEL],
        output_directory=output_directory,
    )
    failure, details = _stream_error(stub.Build(request))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.field == field == details.info.metadata["field"]
    assert [v.field for v in details.bad.field_violations] == [field]
    stub.CloseSession(pb.CloseSessionRequest(session_id=info.session_id))
