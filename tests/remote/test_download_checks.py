"""The client trusts no download: name, size and digest are checked before OUTDIR sees it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd_client import RequestFailed
from buildd_client.remote import download

GOOD = b"wheel bytes " * 1000


class _Stub:
    """Stands in for the daemon: answers DownloadArtifact with the given messages."""

    def __init__(self, messages: list[pb.DownloadArtifactResponse]) -> None:
        self.messages = messages

    def DownloadArtifact(
        self, request: pb.DownloadArtifactRequest
    ) -> Iterator[pb.DownloadArtifactResponse]:
        return iter(self.messages)


def _artifact(name: str = "demo-1.0-py3-none-any.whl") -> pb.Artifact:
    return pb.Artifact(
        path=f"/daemon/work/artifacts/{name}",
        filename=name,
        size=len(GOOD),
        sha256=hashlib.sha256(GOOD).hexdigest(),
    )


def _header(artifact: pb.Artifact, **override: object) -> pb.DownloadArtifactResponse:
    fields: dict[str, object] = {
        "filename": artifact.filename,
        "size": artifact.size,
        "sha256": artifact.sha256,
    }
    fields.update(override)
    return pb.DownloadArtifactResponse(header=pb.ArtifactHeader(**fields))  # type: ignore[arg-type]


def _chunks(data: bytes) -> list[pb.DownloadArtifactResponse]:
    return [
        pb.DownloadArtifactResponse(chunk=data[i : i + 5000]) for i in range(0, len(data), 5000)
    ]


def test_a_good_download_lands_whole(tmp_path: Path) -> None:
    artifact = _artifact()
    [path] = download(_Stub([_header(artifact), *_chunks(GOOD)]), "s", [artifact], tmp_path)  # type: ignore[arg-type]
    assert path == tmp_path / artifact.filename and path.read_bytes() == GOOD
    assert sorted(p.name for p in tmp_path.iterdir()) == [artifact.filename]


@pytest.mark.parametrize(
    ("messages", "words"),
    [
        (lambda a: [_header(a), *_chunks(GOOD[:-1] + b"X")], "received"),
        (lambda a: [_header(a), *_chunks(GOOD[:-10])], "received"),
        (lambda a: [_header(a, sha256="0" * 64), *_chunks(GOOD)], "announced"),
        (lambda a: [_header(a, filename="other.whl"), *_chunks(GOOD)], "announced"),
        (lambda a: _chunks(GOOD), "before its header"),
        (lambda a: [], "without a header"),
    ],
)
def test_a_bad_download_never_reaches_outdir(tmp_path: Path, messages: object, words: str) -> None:
    artifact = _artifact()
    (tmp_path / artifact.filename).write_bytes(b"the previous build")
    stub = _Stub(messages(artifact))  # type: ignore[operator]
    with pytest.raises(RequestFailed) as caught:
        download(stub, "s", [artifact], tmp_path)  # type: ignore[arg-type]
    assert caught.value.status == grpc.StatusCode.DATA_LOSS
    assert words in caught.value.message
    # The old file is untouched and no temporary file is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == [artifact.filename]
    assert (tmp_path / artifact.filename).read_bytes() == b"the previous build"


@pytest.mark.parametrize("name", ["../escape.whl", ".hidden.whl", "a/b.whl", ""])
def test_artifact_names_cannot_leave_outdir(tmp_path: Path, name: str) -> None:
    artifact = _artifact(name)
    artifact.path = "/daemon/x/"
    with pytest.raises(RequestFailed, match="not a file name"):
        download(_Stub([]), "s", [artifact], tmp_path / "out")  # type: ignore[arg-type]
    assert list((tmp_path / "out").iterdir()) == []
