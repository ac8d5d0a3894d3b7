"""The routing header and proposed session ids on a real daemon with tokens.

Behind a proxy, a call is routed by its ``x-buildd-session`` header and served
for the session its request names: the daemon must refuse a call where the
two differ, before it creates anything, and an upload must follow a live
session of the caller. Proposed ids are scoped per principal.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import grpc
import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd_client import RequestFailed
from buildd_client.routing import SESSION_HEADER, new_session_id
from support.projects import probe_project
from support.remote import TOKENS, MakeRemote, RemoteDaemon


def _md(principal: str, session_id: str | None) -> tuple[tuple[str, str], ...]:
    auth = (("authorization", f"Bearer {TOKENS[principal]}"),)
    return auth + (((SESSION_HEADER, session_id),) if session_id else ())


def _code(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        result = call() if callable(call) else call
        if hasattr(result, "__next__"):
            list(result)  # type: ignore[call-overload]
    return caught.value.code(), caught.value.details() or ""


def _archive(tmp_path: Path) -> tuple[bytes, str]:
    project = probe_project(tmp_path / "probe", tmp_path / "probe.log")
    archive = tmp_path / "probe.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(project, arcname="probe")
    data = archive.read_bytes()
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


def _upload_messages(data: bytes, digest: str) -> list[pb.UploadBlobRequest]:
    header = pb.UploadBlobHeader(
        digest=digest, size_bytes=len(data), kind=pb.BLOB_KIND_TREE_ARCHIVE
    )
    return [pb.UploadBlobRequest(header=header), pb.UploadBlobRequest(chunk=data)]


@pytest.fixture
def named(make_remote: MakeRemote) -> RemoteDaemon:
    # --containment pid: the probe backend writes its evidence to the test's
    # folder, which a sandboxed remote principal's hook cannot reach.
    return make_remote(("--daemon-id", "d-test", "--admin", "ops", "--containment", "pid"))


def test_a_proposed_id_becomes_the_session_and_names_its_daemon(named: RemoteDaemon) -> None:
    proposal = new_session_id()
    with named.client("alice") as alice:
        session = alice.open_session("ci", session_id=proposal)
        assert (session.id, session.info.daemon_id, session.info.principal) == (
            proposal,
            "d-test",
            "alice",
        )
        status = alice.status(proposal)
        assert status.daemon.daemon_id == "d-test"
        assert [s.session_id for s in status.sessions] == [proposal]
        # The very call that opens it was routed by the proposal.
        assert alice.join_session(proposal).info.daemon_id == "d-test"


def test_a_header_naming_another_session_is_refused_before_anything_happens(
    named: RemoteDaemon, tmp_path: Path
) -> None:
    _, digest = _archive(tmp_path)
    with named.client("alice") as alice:
        session = alice.open_session("ci")
        assert session.upload(tmp_path / "probe.tar.gz") == digest
        stub, other = alice.stub, new_session_id()
        md = _md("alice", other)
        proposal = new_session_id()
        context = pb.BuildContext(session_id=session.id, source=pb.Source(digest=digest))
        refusals = {
            "OpenSession": _code(
                lambda: stub.OpenSession(pb.OpenSessionRequest(session_id=proposal), metadata=md)
            ),
            "JoinSession": _code(
                lambda: stub.JoinSession(pb.JoinSessionRequest(session_id=session.id), metadata=md)
            ),
            "KeepAlive": _code(
                lambda: stub.KeepAlive(pb.KeepAliveRequest(session_id=session.id), metadata=md)
            ),
            "CloseSession": _code(
                lambda: stub.CloseSession(
                    pb.CloseSessionRequest(session_id=session.id), metadata=md
                )
            ),
            "GetStatus": _code(
                lambda: stub.GetStatus(pb.GetStatusRequest(session_id=session.id), metadata=md)
            ),
            "DownloadArtifact": _code(
                lambda: stub.DownloadArtifact(
                    pb.DownloadArtifactRequest(session_id=session.id, path="/x"), metadata=md
                )
            ),
            "WatchMetadata": _code(
                lambda: stub.WatchMetadata(pb.WatchMetadataRequest(context=context), metadata=md)
            ),
        }
        events: list[pb.Event] = []
        try:
            for event in stub.Build(
                pb.BuildRequest(context=context, distributions=[pb.DISTRIBUTION_WHEEL]),
                metadata=md,
            ):
                events.append(event)
        except grpc.RpcError as exc:
            refusals["Build"] = (exc.code(), exc.details() or "")
        assert [e.WhichOneof("kind") for e in events] == ["failure"]
        assert events[0].failure.kind == pb.FAILURE_KIND_INVALID_REQUEST
        for method, (code, message) in refusals.items():
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, code, message)
            assert f"{SESSION_HEADER} names {other!r}" in message, (method, message)
        assert "context.session_id" in refusals["Build"][1]
        # Nothing was opened, closed or built: the session is as it was.
        with pytest.raises(RequestFailed) as unknown:
            alice.join_session(proposal)
        assert unknown.value.kind == pb.FAILURE_KIND_SESSION_NOT_FOUND
        [status] = alice.status(session.id).sessions
        assert list(status.environments) == []
        assert alice.join_session(session.id).id == session.id


def test_an_upload_must_name_a_live_session_of_its_caller(
    named: RemoteDaemon, tmp_path: Path
) -> None:
    data, digest = _archive(tmp_path)
    with named.client("alice") as alice, named.client("bob") as bob:
        mine = alice.open_session("ci")
        stub = alice.stub
        for session_id in (new_session_id(), bob.open_session("ci").id):
            md = _md("alice", session_id)
            missing = _code(
                lambda md=md: stub.FindMissingBlobs(
                    pb.FindMissingBlobsRequest(digests=[digest]), metadata=md
                )
            )
            upload = _code(
                lambda md=md: stub.UploadBlob(iter(_upload_messages(data, digest)), metadata=md)
            )
            for code, message in (missing, upload):
                assert code == grpc.StatusCode.NOT_FOUND
                assert message.startswith(f"session {session_id!r} is unknown to this daemon")
                assert "(d-test): open a new session" in message
        # Refused uploads left nothing in the cache.
        assert not (named.state_dir / "blobs" / digest.removeprefix("sha256:")).exists()
        md = _md("alice", mine.id)
        answer = stub.FindMissingBlobs(pb.FindMissingBlobsRequest(digests=[digest]), metadata=md)
        assert list(answer.missing) == [digest]
        stub.UploadBlob(iter(_upload_messages(data, digest)), metadata=md)
        assert (named.state_dir / "blobs" / digest.removeprefix("sha256:")).is_file()


def test_session_ids_are_scoped_per_principal(named: RemoteDaemon, tmp_path: Path) -> None:
    proposal = new_session_id()
    with named.client("alice") as alice, named.client("bob") as bob:
        hers = alice.open_session("ci", session_id=proposal)
        # Bob proposing Alice's id learns nothing: he gets a session of his own.
        his = bob.open_session("ci", session_id=proposal)
        assert (his.id, his.info.principal) == (proposal, "bob")
        digest = his.upload(probe_project(tmp_path / "probe", tmp_path / "probe.log"))
        requires = his.get_requires(digest).result()
        assert requires.backend == "probe_backend"
        [bobs] = bob.status(proposal).sessions
        assert bobs.principal == "bob" and len(bobs.environments) == 1
        [alices] = alice.status(proposal).sessions
        assert alices.principal == "alice" and list(alices.environments) == []
        with pytest.raises(RequestFailed) as taken:
            alice.open_session("ci", session_id=proposal)
        assert taken.value.kind == pb.FAILURE_KIND_SESSION_EXISTS
        assert taken.value.status == grpc.StatusCode.ALREADY_EXISTS
        assert taken.value.exit_code == 2
        with named.client("ops") as ops:
            both = ops.status(proposal).sessions
            assert sorted(s.principal for s in both) == ["alice", "bob"]
        hers.close()
        assert bob.join_session(proposal).info.principal == "bob"
        his.close()
