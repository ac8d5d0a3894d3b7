"""FindMissingBlobs, UploadBlob and DownloadArtifact: bytes in and out, in chunks.

The servicer calls these with the caller's principal already known. They run
on the event loop: waiting for the next upload chunk or for a slow download
reader costs a coroutine, and only the disk work of one chunk at a time goes
to the blocking executor. Nothing here holds more than one chunk of a file in
memory: uploads go through ``BlobStore.begin`` into a temporary file,
downloads are read from disk one chunk at a time as gRPC asks for the next
message.

Uploads name no session in their messages, but a client behind a proxy sends
the session they are for as the routing header (routing.py). That session
must then be a live one of the caller: after the loss of a daemon, an upload
for one of its sessions reaches another daemon and gets NOT_FOUND for the
session instead of filling a cache where nothing will build it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from typing import TYPE_CHECKING, BinaryIO

import structlog

from buildd.v1 import buildd_pb2 as pb

from .. import errors
from .decode import check_path, show

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from contextlib import AbstractContextManager

    from ..access.auth import Principal
    from ..metrics import Metrics
    from ..service.sessions import SessionRegistry
    from ..sources.blobs import BlobStore
    from .streams import Blocking

log = structlog.get_logger("buildd.transfers")

# Download chunks: small enough that gRPC's buffering stays a few MiB per call.
CHUNK = 256 << 10
MAX_CHUNK = 1 << 20
_KINDS = {pb.BLOB_KIND_SDIST: "sdist", pb.BLOB_KIND_TREE_ARCHIVE: "tree"}


class Transfers:
    """Uploads into the blob cache and downloads of a session's artifacts."""

    def __init__(
        self, blobs: BlobStore, registry: SessionRegistry, metrics: Metrics, blocking: Blocking
    ) -> None:
        self.blobs = blobs
        self._registry = registry
        self._blocking = blocking
        self._uploaded = metrics.bytes.labels(direction="uploaded")
        self._downloaded = metrics.bytes.labels(direction="downloaded")

    def _for_session(
        self, session_id: str | None, who: Principal
    ) -> AbstractContextManager[object]:
        """Hold the session the routing header names (none: nothing to hold)."""
        if session_id is None:
            return contextlib.nullcontext()
        return self._registry.using(session_id, principal=who.name)

    def find_missing(
        self, request: pb.FindMissingBlobsRequest, who: Principal, session_id: str | None = None
    ) -> pb.FindMissingBlobsResponse:
        with self._for_session(session_id, who):
            missing = self.blobs.missing(list(request.digests))
        log.debug("blobs_missing", principal=who.name, asked=len(request.digests), missing=missing)
        return pb.FindMissingBlobsResponse(missing=missing)

    async def upload(
        self,
        requests: AsyncIterator[pb.UploadBlobRequest],
        who: Principal,
        session_id: str | None = None,
    ) -> pb.UploadBlobResponse:
        # Held for the whole stream, so the session cannot expire mid-upload.
        with self._for_session(session_id, who):
            return await self._upload(requests, who)

    async def _upload(
        self, requests: AsyncIterator[pb.UploadBlobRequest], who: Principal
    ) -> pb.UploadBlobResponse:
        started = time.monotonic()
        first = await anext(requests, None)
        if first is None or first.WhichOneof("payload") != "header":
            raise errors.InvalidRequest(
                "the first UploadBlobRequest must carry the header (digest, size, kind)"
            )
        header = first.header
        kind = _KINDS.get(header.kind)
        if kind is None:
            raise errors.InvalidRequest(
                f"header.kind: {header.kind} is not BLOB_KIND_SDIST or BLOB_KIND_TREE_ARCHIVE"
            )
        upload = await self._blocking(self.blobs.begin, header.digest, header.size_bytes)
        stored = False
        if upload is not None:
            # A broken stream (client gone: CancelledError) leaves no temporary file.
            try:
                index = 0
                async for message in requests:
                    index += 1
                    await self._blocking(upload.write, self._chunk(index, message))
                stored = await self._blocking(upload.finish)
            finally:
                upload.discard()
        seconds = time.monotonic() - started
        log.info(
            "blob_uploaded" if stored else "blob_already_cached",
            principal=who.name,
            digest=header.digest[:19],
            kind=kind,
            bytes=header.size_bytes,
            seconds=round(seconds, 3),
            mib_per_second=round(header.size_bytes / (1 << 20) / seconds, 1) if seconds else None,
        )
        return pb.UploadBlobResponse(digest=header.digest, size_bytes=header.size_bytes)

    def _chunk(self, index: int, message: pb.UploadBlobRequest) -> bytes:
        if message.WhichOneof("payload") != "chunk":
            raise errors.InvalidRequest(f"message {index}: after the header only chunks may follow")
        data = message.chunk
        if len(data) > MAX_CHUNK:
            raise errors.InvalidRequest(
                f"message {index}: a chunk of {len(data)} bytes; at most {MAX_CHUNK} per chunk"
            )
        self._uploaded.inc(len(data))
        return data

    async def download(
        self, request: pb.DownloadArtifactRequest, who: Principal
    ) -> AsyncIterator[pb.DownloadArtifactResponse]:
        check_path(request.path, "path")
        # Holding the session for the whole stream keeps it from expiring mid-download.
        with self._registry.using(request.session_id, principal=who.name) as session:
            with session.lock:
                record = session.artifacts.get(request.path)
            if record is None:
                raise errors.ArtifactNotFound(
                    f"path: {show(request.path, 300)} is not an artifact built in this session",
                    path=request.path[:300],
                    field="path",
                )
            size, sha256 = record
            handle = await self._blocking(_open_artifact, request.path, size)
            try:
                yield pb.DownloadArtifactResponse(
                    header=pb.ArtifactHeader(
                        filename=os.path.basename(request.path),
                        size=size,
                        sha256=sha256,
                        digest=f"sha256:{sha256}",
                        size_bytes=size,
                    )
                )
                while chunk := await self._blocking(handle.read, CHUNK):
                    self._downloaded.inc(len(chunk))
                    yield pb.DownloadArtifactResponse(chunk=chunk)
            finally:
                handle.close()
        log.info("artifact_downloaded", principal=who.name, path=request.path, bytes=size)


def _open_artifact(path: str, size: int) -> BinaryIO:
    """The recorded artifact, still the regular file of ``size`` bytes the build wrote."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise errors.ArtifactNotFound(
            f"path: {path}: the artifact is gone ({exc.strerror})", path=path, field="path"
        ) from exc
    handle = os.fdopen(fd, "rb")
    info = os.fstat(handle.fileno())
    if not stat.S_ISREG(info.st_mode) or info.st_size != size:
        handle.close()
        raise errors.ArtifactNotFound(
            f"path: {path}: changed since the build wrote it", path=path, field="path"
        )
    return handle
