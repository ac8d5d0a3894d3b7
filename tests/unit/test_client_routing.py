"""The client sends x-buildd-session on every call that names a session, unasked.

A recording server (in process, a fake of the daemon's wire) notes the
metadata of every call the real client library makes; the interceptor is also
checked against every RPC of the service descriptor, so an RPC added later
whose request names a session is covered without this file changing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd.v1 import buildd_pb2_grpc
from buildd_client import Client
from buildd_client.credentials import Credentials
from buildd_client.routing import SESSION_HEADER, SessionHeader, session_of

WHEEL = b"not really a wheel, but bytes with a digest"


class Recorder(buildd_pb2_grpc.BuilddServicer):
    """Answers every call minimally and records (method, x-buildd-session)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def _note(self, method: str, context: grpc.ServicerContext) -> None:
        values = [v for k, v in context.invocation_metadata() if k == SESSION_HEADER]
        assert len(values) <= 1, values
        self.calls.append((method, str(values[0]) if values else None))

    def OpenSession(self, request: pb.OpenSessionRequest, context: Any) -> pb.SessionInfo:
        self._note("OpenSession", context)
        return pb.SessionInfo(session_id=request.session_id, daemon_id="rec")

    def JoinSession(self, request: pb.JoinSessionRequest, context: Any) -> pb.SessionInfo:
        self._note("JoinSession", context)
        return pb.SessionInfo(session_id=request.session_id)

    def KeepAlive(self, request: pb.KeepAliveRequest, context: Any) -> Iterator[Any]:
        self._note("KeepAlive", context)
        yield pb.KeepAliveResponse(now=1.0)

    def CloseSession(self, request: pb.CloseSessionRequest, context: Any) -> Any:
        self._note("CloseSession", context)
        return pb.CloseSessionResponse()

    def GetRequires(self, request: pb.GetRequiresRequest, context: Any) -> Iterator[Any]:
        self._note("GetRequires", context)
        yield pb.Event(result=pb.Result(requires=pb.RequiresResult()))

    def PrepareMetadata(self, request: pb.PrepareMetadataRequest, context: Any) -> Iterator[Any]:
        self._note("PrepareMetadata", context)
        yield pb.Event(result=pb.Result(metadata=pb.MetadataResult(metadata=b"Name: x\n")))

    def Build(self, request: pb.BuildRequest, context: Any) -> Iterator[Any]:
        self._note("Build", context)
        artifact = pb.Artifact(
            path="/daemon/x-1.0-py3-none-any.whl",
            filename="x-1.0-py3-none-any.whl",
            size=len(WHEEL),
            sha256=hashlib.sha256(WHEEL).hexdigest(),
        )
        yield pb.Event(result=pb.Result(build=pb.BuildResult(artifacts=[artifact])))

    def WatchMetadata(self, request: pb.WatchMetadataRequest, context: Any) -> Iterator[Any]:
        self._note("WatchMetadata", context)
        yield pb.WatchMetadataEvent(metadata=pb.MetadataResult(metadata=b"Name: x\n"))

    def GetStatus(self, request: pb.GetStatusRequest, context: Any) -> pb.StatusResponse:
        self._note("GetStatus", context)
        return pb.StatusResponse()

    def FindMissingBlobs(self, request: pb.FindMissingBlobsRequest, context: Any) -> Any:
        self._note("FindMissingBlobs", context)
        return pb.FindMissingBlobsResponse(missing=list(request.digests))

    def UploadBlob(self, request_iterator: Iterator[Any], context: Any) -> Any:
        self._note("UploadBlob", context)
        for _ in request_iterator:
            pass
        return pb.UploadBlobResponse()

    def DownloadArtifact(self, request: pb.DownloadArtifactRequest, context: Any) -> Iterator[Any]:
        self._note("DownloadArtifact", context)
        digest = hashlib.sha256(WHEEL).hexdigest()
        name = Path(request.path).name
        yield pb.DownloadArtifactResponse(
            header=pb.ArtifactHeader(filename=name, size=len(WHEEL), sha256=digest)
        )
        yield pb.DownloadArtifactResponse(chunk=WHEEL)


@pytest.fixture
def recorder() -> Iterator[tuple[Recorder, str]]:
    servicer = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    buildd_pb2_grpc.add_BuilddServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


def test_every_session_call_of_the_library_carries_the_header(
    recorder: tuple[Recorder, str], tmp_path: Path
) -> None:
    servicer, address = recorder
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\nversion = '1.0'\n")
    with Client(address, autostart=False, credentials=Credentials()) as client:
        session = client.open_session("test")
        # The proposal is the header already, on the very call that opens it.
        assert servicer.calls == [("OpenSession", session.id)]
        client.join_session(session.id)
        session.get_requires(project).result()
        session.metadata(project).result()
        with session.watch_metadata(project) as watch:
            assert watch.get(10).metadata.metadata == b"Name: x\n"
        result = session.build(project).result()
        digest = session.upload(project)
        assert digest.startswith("sha256:")
        session.download(result.artifacts, tmp_path / "out")
        with session.keepalive(0.05) as holder:
            assert holder.wait_heartbeat(10)
        client.status(session.id)
        session.close()
        # Calls that name no session carry none: any daemon may answer them.
        client.status()
        client.health()
    expected = [
        "OpenSession",
        "JoinSession",
        "GetRequires",
        "PrepareMetadata",
        "WatchMetadata",
        "Build",
        "FindMissingBlobs",
        "UploadBlob",
        "DownloadArtifact",
        "KeepAlive",
        "GetStatus",
        "CloseSession",
    ]
    assert servicer.calls == [(method, session.id) for method in expected] + [("GetStatus", None)]
    assert (tmp_path / "out" / "x-1.0-py3-none-any.whl").read_bytes() == WHEEL


def _request_naming(method: Any, session_id: str) -> Any:
    request = getattr(pb, method.input_type.name)()
    fields = method.input_type.fields_by_name
    if "session_id" in fields:
        request.session_id = session_id
    elif "context" in fields and "session_id" in fields["context"].message_type.fields_by_name:
        request.context.session_id = session_id
    else:
        return None
    return request


def test_the_interceptor_covers_every_rpc_whose_request_names_a_session() -> None:
    service = pb.DESCRIPTOR.services_by_name["Buildd"]
    seen: list[Any] = []

    def continuation(details: Any, request: Any) -> None:
        seen.append(details.metadata)

    class Details:
        method = "/m"
        timeout = None
        metadata = (("authorization", "Bearer t"),)
        credentials = None
        wait_for_ready = None
        compression = None

    interceptor = SessionHeader()
    named = []
    for method in service.methods:
        request = _request_naming(method, "S" * 32)
        if request is None:
            continue
        named.append(method.name)
        assert session_of(request) == "S" * 32
        # Uploads are client-streamed: their callers pass the header themselves.
        assert not method.client_streaming, method.name
        intercept = (
            interceptor.intercept_unary_stream
            if method.server_streaming
            else interceptor.intercept_unary_unary
        )
        intercept(continuation, Details(), request)
        assert list(seen[-1]) == [("authorization", "Bearer t"), (SESSION_HEADER, "S" * 32)]
    assert {
        "OpenSession",
        "JoinSession",
        "Build",
        "DownloadArtifact",
        "GetStatus",
        "WatchMetadata",
    } <= set(named)


def test_no_header_for_an_id_that_could_not_be_one() -> None:
    seen: list[Any] = []

    class Details:
        method = "/m"
        timeout = None
        metadata = None
        credentials = None
        wait_for_ready = None
        compression = None

    for bad in ("", "é" * 10, "x" * 65, "a b"):
        SessionHeader().intercept_unary_unary(
            lambda details, request: seen.append(details.metadata),
            Details(),
            pb.JoinSessionRequest(session_id=bad),
        )
    assert seen == [None] * 4
