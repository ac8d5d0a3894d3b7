"""Principals are isolated: sessions, status, downloads, and daemon paths."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd_client import RequestFailed
from support.projects import setuptools_project
from support.remote import TOKENS, RemoteDaemon


def _fail(call: object) -> RequestFailed:
    with pytest.raises(RequestFailed) as caught:
        result = call() if callable(call) else call
        if hasattr(result, "result"):
            result.result()
    return caught.value


def test_another_principal_cannot_see_or_use_a_session(remote: RemoteDaemon) -> None:
    with remote.client("alice") as alice, remote.client("bob") as bob:
        mine = alice.open_session("alice-ide")
        unknown = "U" * len(mine.id)
        stub = bob.stub
        md = (("authorization", f"Bearer {TOKENS['bob']}"),)

        def refusals(session_id: str) -> list[tuple[grpc.StatusCode, str]]:
            """What bob gets for every way of touching a session."""
            out: list[tuple[grpc.StatusCode, str]] = []
            for error in (
                _fail(lambda: bob.join_session(session_id)),
                _fail(lambda: bob.close_session(session_id)),
                _fail(lambda: bob.status(session_id)),
            ):
                out.append((error.status, error.message))
            try:
                next(stub.KeepAlive(pb.KeepAliveRequest(session_id=session_id), metadata=md))
            except grpc.RpcError as exc:
                out.append((exc.code(), exc.details() or ""))
            digest = pb.Source(digest="sha256:" + "0" * 64)
            context = pb.BuildContext(session_id=session_id, source=digest)
            events = []
            try:
                for event in stub.GetRequires(
                    pb.GetRequiresRequest(context=context, distribution=pb.DISTRIBUTION_WHEEL),
                    metadata=md,
                ):
                    events.append(event)
            except grpc.RpcError as exc:
                out.append((exc.code(), exc.details() or ""))
            assert events[-1].failure.kind == pb.FAILURE_KIND_SESSION_NOT_FOUND
            try:
                list(
                    stub.DownloadArtifact(
                        pb.DownloadArtifactRequest(session_id=session_id, path="/x"), metadata=md
                    )
                )
            except grpc.RpcError as exc:
                out.append((exc.code(), exc.details() or ""))
            return out

        theirs = refusals(mine.id)
        nobody = refusals(unknown)
        assert all(code == grpc.StatusCode.NOT_FOUND for code, _ in theirs), theirs
        # Word for word what an unknown id gets: nothing tells that it exists.
        assert [(c, m.replace(mine.id, "ID")) for c, m in theirs] == [
            (c, m.replace(unknown, "ID")) for c, m in nobody
        ]
        # Status leaves alice's session out for bob, shows it to alice and to the admin.
        assert [s.session_id for s in bob.status().sessions if s.session_id == mine.id] == []
        [own] = [s for s in alice.status().sessions if s.session_id == mine.id]
        assert own.principal == "alice"
        assert {s.principal for s in alice.status().sessions} == {"alice"}
        with remote.client("ops") as ops:
            assert mine.id in {s.session_id for s in ops.status().sessions}
        # And after all that, alice's session is intact.
        assert alice.join_session(mine.id).id == mine.id
        mine.close()


def test_a_remote_principal_names_only_allowed_paths(
    remote: RemoteDaemon, allowed_root: Path, tmp_path: Path
) -> None:
    outside = setuptools_project(tmp_path / "outside", name="outside-project")
    inside = setuptools_project(allowed_root / "inside", name="inside-project")
    with remote.client("alice") as client, client.open_session("t") as session:
        refused = _fail(lambda: session.get_requires(outside, python=""))
        assert refused.status == grpc.StatusCode.PERMISSION_DENIED
        assert refused.kind == pb.FAILURE_KIND_PERMISSION_DENIED
        assert str(outside) in refused.message and "--allow-path" in refused.message
        # An output folder is a daemon path too.
        refused = _fail(
            lambda: session.build(
                inside, distributions=["wheel"], output_directory=tmp_path / "out", python=""
            )
        )
        assert refused.status == grpc.StatusCode.PERMISSION_DENIED
        assert "output_directory" in refused.message and str(tmp_path / "out") in refused.message
        # A link inside the allowed folder that leads out of it is out.
        (allowed_root / "sneaky").symlink_to(outside)
        refused = _fail(lambda: session.get_requires(allowed_root / "sneaky", python=""))
        assert refused.status == grpc.StatusCode.PERMISSION_DENIED
        # Under --allow-path, paths work as on a local daemon.
        result = session.build(inside, distributions=["wheel"], python="").result()
        [wheel] = result.artifacts
        assert Path(wheel.path).parent == allowed_root / "inside" / "dist"
    assert not (tmp_path / "out").exists()
    assert not (outside / "dist").exists()


def test_downloads_are_limited_to_the_sessions_own_artifacts(
    remote: RemoteDaemon, allowed_root: Path, tmp_path: Path
) -> None:
    project = setuptools_project(allowed_root / "dl", name="dl-project")
    with remote.client("alice") as alice, remote.client("bob") as bob:
        mine = alice.open_session("a")
        [wheel] = mine.build(project, distributions=["wheel"], python="").result().artifacts
        [local] = mine.download([wheel], tmp_path / "a")
        assert local.read_bytes() == Path(wheel.path).read_bytes()
        # The same path, asked from bob's own session, or from alice's other session.
        for session in (bob.open_session("b"), alice.open_session("a2")):
            refused = _fail(lambda s=session: s.download([wheel], tmp_path / "b"))
            assert refused.status == grpc.StatusCode.NOT_FOUND
            assert "not an artifact built in this session" in refused.message
            session.close()
        # A path that is no artifact at all, in the session that built one.
        forged = pb.Artifact(path=str(project / "pyproject.toml"), filename="pyproject.toml")
        refused = _fail(lambda: mine.download([forged], tmp_path / "c"))
        assert refused.status == grpc.StatusCode.NOT_FOUND
        mine.close()
    assert not list((tmp_path / "b").glob("*")) and not list((tmp_path / "c").glob("*"))
