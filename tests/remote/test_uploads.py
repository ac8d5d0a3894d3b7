"""Uploads: sent once per digest, verified while streaming, and never half-kept."""

from __future__ import annotations

import argparse
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd_client import RequestFailed
from buildd_client._uploads import run_call
from buildd_client.remote import PackedSource, missing, pack_source, upload
from support.projects import flit_project
from support.remote import MakeRemote, RemoteDaemon, wait_for

UPLOADED = ("buildd_bytes_total", 'direction="uploaded"')
DOWNLOADED = ("buildd_bytes_total", 'direction="downloaded"')


def _temporaries(daemon: RemoteDaemon) -> list[Path]:
    return list((daemon.state_dir / "blobs" / "tmp").iterdir())


def test_an_upload_is_skipped_once_the_digest_is_known(
    remote: RemoteDaemon, tmp_path: Path
) -> None:
    project = flit_project(tmp_path / "src" / "skip", name="skip_me")
    packed = pack_source(project, tmp_path)
    before = remote.metric(*UPLOADED)
    with remote.client("alice") as alice, remote.client("bob") as bob:
        assert missing(alice.stub, [packed.digest]) == [packed.digest]
        assert upload(alice.stub, packed) is True
        assert remote.metric(*UPLOADED) == before + packed.size
        # Known now, to every principal: nothing is sent again.
        assert missing(alice.stub, [packed.digest]) == []
        assert missing(bob.stub, [packed.digest]) == []
        assert upload(bob.stub, packed) is False
        with alice.open_session("x") as session:
            assert session.upload(project) == packed.digest
        # Even a client that sends anyway gets its answer without the bytes being read.
        assert upload(bob.stub, packed, force=True) is True
        assert remote.metric(*UPLOADED) == before + packed.size
        assert '"event": "blob_already_cached"' in remote.log()
        # Both build from it, each in a session of their own, and download.
        for who in (alice, bob):
            with who.open_session("build") as session:
                downloaded = remote.metric(*DOWNLOADED)
                [wheel] = session.build(packed.digest, distributions=["wheel"]).result().artifacts
                [local] = session.download([wheel], tmp_path / who.status().principal)
                assert hashlib.sha256(local.read_bytes()).hexdigest() == wheel.sha256
                assert remote.metric(*DOWNLOADED) == downloaded + wheel.size
    assert remote.metric(*UPLOADED) == before + packed.size


def _raw_upload(
    daemon: RemoteDaemon, header: pb.UploadBlobHeader | None, chunks: list[bytes]
) -> grpc.RpcError:
    messages = [pb.UploadBlobRequest(header=header)] if header is not None else []
    messages += [pb.UploadBlobRequest(chunk=c) for c in chunks]
    with daemon.client("alice") as client, pytest.raises(grpc.RpcError) as caught:
        client.stub.UploadBlob(iter(messages), timeout=60)
    assert isinstance(caught.value, grpc.RpcError)
    return caught.value


def _header(data: bytes, **override: object) -> pb.UploadBlobHeader:
    fields: dict[str, object] = {
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "kind": pb.BLOB_KIND_TREE_ARCHIVE,
    }
    fields.update(override)
    return pb.UploadBlobHeader(**fields)  # type: ignore[arg-type]


def test_uploads_are_verified_while_streaming(remote: RemoteDaemon) -> None:
    data = b"x" * 300_000
    halves = [data[:150_000], data[150_000:]]
    big = b"y" * ((1 << 20) + 1)
    other = "sha256:" + hashlib.sha256(b"other").hexdigest()
    cases: list[tuple[pb.UploadBlobHeader | None, list[bytes], grpc.StatusCode, str]] = [
        (_header(data, digest=other), halves, grpc.StatusCode.INVALID_ARGUMENT, "digest"),
        (_header(data), halves[:1], grpc.StatusCode.INVALID_ARGUMENT, "ended after 150000"),
        (_header(data), [*halves, b"+"], grpc.StatusCode.INVALID_ARGUMENT, "more bytes than"),
        # Past the 1 MiB chunk limit; past the message limit gRPC parses nothing.
        (_header(big), [big], grpc.StatusCode.INVALID_ARGUMENT, "at most 1048576 per chunk"),
        (_header(data), [data * 4], grpc.StatusCode.RESOURCE_EXHAUSTED, "UploadBlob: a request"),
        (None, halves, grpc.StatusCode.INVALID_ARGUMENT, "must carry the header"),
        (_header(data, kind=0), halves, grpc.StatusCode.INVALID_ARGUMENT, "header.kind"),
        (_header(data, digest="md5:1"), halves, grpc.StatusCode.INVALID_ARGUMENT, "not a digest"),
        (_header(data, size_bytes=3 << 30), [], grpc.StatusCode.RESOURCE_EXHAUSTED, "cache"),
    ]
    for header, chunks, code, words in cases:
        error = _raw_upload(remote, header, chunks)
        assert error.code() == code, (words, error)
        assert words in (error.details() or ""), (words, error.details())
        assert _temporaries(remote) == []
    with remote.client("alice") as client:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        assert missing(client.stub, [digest, other]) == [digest, other]


def _blocked_upload(
    daemon: RemoteDaemon, packed: PackedSource, release: threading.Event
) -> grpc.Future:
    """Send the header and 3 MiB, then hold the stream open until ``release``."""

    def messages() -> Iterator[pb.UploadBlobRequest]:
        kind = pb.BLOB_KIND_TREE_ARCHIVE
        yield pb.UploadBlobRequest(
            header=pb.UploadBlobHeader(digest=packed.digest, size_bytes=packed.size, kind=kind)
        )
        with packed.path.open("rb") as handle:
            for _ in range(3):
                yield pb.UploadBlobRequest(chunk=handle.read(1 << 20))
        release.wait(120)

    client = daemon.client("alice")
    return client.stub.UploadBlob.future(messages())  # type: ignore[no-any-return]


def _big(tmp_path: Path, seed: str = "") -> PackedSource:
    """8 MiB of bytes that gzip cannot shrink (an upload's content is not checked)."""
    blob = tmp_path / f"big{seed}.tar.gz"
    with blob.open("wb") as handle:
        for block in range(8):
            handle.write(hashlib.sha512(f"{seed}{block}".encode()).digest() * 16384)
    digest = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    return PackedSource(blob, digest, blob.stat().st_size, "tree")


def test_an_interrupted_upload_leaves_nothing(remote: RemoteDaemon, tmp_path: Path) -> None:
    packed = _big(tmp_path)
    release = threading.Event()
    future = _blocked_upload(remote, packed, release)
    try:
        # The daemon is mid-upload: 3 MiB of 8 sit in its temporary file.
        wait_for(
            lambda: any(p.stat().st_size >= 3 << 20 for p in _temporaries(remote)),
            "the daemon to receive 3 MiB",
        )
        future.cancel()
        wait_for(lambda: _temporaries(remote) == [], "the temporary file to go")
    finally:
        release.set()
    with remote.client("alice") as client:
        assert missing(client.stub, [packed.digest]) == [packed.digest]
    assert not (remote.state_dir / "blobs" / packed.digest.removeprefix("sha256:")).exists()


def test_a_daemon_killed_mid_upload_cleans_up_when_it_starts(
    make_remote: MakeRemote, tmp_path: Path
) -> None:
    daemon = make_remote(metrics=False)
    packed = _big(tmp_path)
    release = threading.Event()
    future = _blocked_upload(daemon, packed, release)
    try:
        wait_for(lambda: bool(_temporaries(daemon)), "the upload to start")
        daemon.stop(9)
        assert _temporaries(daemon), "a killed daemon cannot clean up"
        with pytest.raises(grpc.RpcError):
            future.result(timeout=60)
    finally:
        release.set()
    again = make_remote(metrics=False, root=daemon.root, start=False)
    again.start()
    assert _temporaries(again) == []
    assert '"reclaimed": 1' in again.log()
    with again.client("alice") as client:
        assert missing(client.stub, [packed.digest]) == [packed.digest]
        # And the same bytes upload fine now.
        assert upload(client.stub, packed)
        assert missing(client.stub, [packed.digest]) == []


def test_an_evicted_blob_is_reported_by_digest_and_uploaded_again(
    make_remote: MakeRemote, tmp_path: Path
) -> None:
    daemon = make_remote(["--blob-cache-size", "12M"], metrics=False)
    small = pack_source(flit_project(tmp_path / "evict", name="evict_me"), tmp_path)
    with daemon.client("alice") as client, client.open_session("e") as session:
        big, other = _big(tmp_path, "a"), _big(tmp_path, "b")
        assert upload(client.stub, small)
        assert upload(client.stub, big)  # least recently used first: small, big
        assert missing(client.stub, [small.digest, big.digest]) == []
        # 8 + 8 MiB do not fit in 12: the oldest go until the newest fits.
        assert upload(client.stub, other)
        gone = missing(client.stub, [small.digest, big.digest, other.digest])
        assert gone == [small.digest, big.digest]
        assert '"event": "blob_evicted"' in daemon.log()
        with pytest.raises(RequestFailed) as caught:
            session.get_requires(small.digest).result()
        assert caught.value.status == grpc.StatusCode.NOT_FOUND
        assert caught.value.path == small.digest and "upload it again" in caught.value.message
        # What buildd-client does on that answer: upload again, once, and retry.
        args = argparse.Namespace(source=str(tmp_path / "evict"), upload=True, quiet=True)
        events: list[pb.Event] = []
        result = run_call(args, session, small, events.append, session.get_requires)
        assert result.static_requirements
        assert missing(client.stub, [small.digest]) == []
        failures = [e for e in events if e.HasField("failure")]
        assert len(failures) == 1 and failures[0].failure.path == small.digest
