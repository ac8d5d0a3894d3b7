"""Building on a daemon that cannot read our files: pack, upload by digest, download.

A source tree is packed into a gzip-compressed tar with one top-level folder
(the tree's own name), deterministically: members sorted, mtimes fixed, owners
blank, so the same files give the same digest on every machine and the daemon's
cache answers the second upload with "already there". What a build never needs
is left out (``EXCLUDED``). An sdist file is sent as it is.

The daemon keeps artifacts of uploaded sources in a folder of the session;
``download`` fetches each one in chunks into ``OUTDIR`` under a temporary
name, checks its size and SHA-256, and only then renames it into place.

Standard library, grpcio and protobuf only.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import secrets
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

import grpc

from buildd.v1 import buildd_pb2 as pb
from buildd_client.errors import RequestFailed

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from buildd.v1 import buildd_pb2_grpc

__all__ = ["EXCLUDED", "PackedSource", "download", "pack_source", "pack_tree", "upload"]

# Left out wherever they appear.
EXCLUDED = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "__pycache__",
        ".tox",
        ".nox",
        ".venv",
        "node_modules",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
    }
)
# Left out only at the top of the tree: inside it these can be real packages
# (pypa/build keeps its code in src/build/).
EXCLUDED_AT_TOP = frozenset({"build", "dist", "venv"})
# 1980-01-01: wheels are zip files, and zip cannot store earlier times.
FIXED_MTIME = 315532800
# Upload chunks: 256 KiB measured best (1 MiB chunks add ~20 MiB to the daemon's
# peak memory per upload for ~20% more speed; see docs/remote.md).
CHUNK = 256 << 10
_UNARY_TIMEOUT = 60.0


class PackError(ValueError):
    """The source cannot be packed (a link leading out of it, an unreadable file)."""


@dataclass(frozen=True)
class PackedSource:
    """An archive ready to upload."""

    path: Path
    digest: str
    size: int
    kind: Literal["sdist", "tree"]
    # Members in the archive (0 for an sdist, which is not opened).
    members: int = 0


def excluded(relative: str, name: str, is_dir: bool) -> bool:
    """True when the entry ``name`` at ``relative`` (POSIX, from the top) is left out."""
    if name in EXCLUDED or name.endswith(".egg-info"):
        return True
    return is_dir and "/" not in relative and name in EXCLUDED_AT_TOP


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def pack_source(source: str | os.PathLike[str], workdir: Path) -> PackedSource:
    """Pack a tree into ``workdir``, or take an sdist file as it is."""
    path = Path(source).resolve()
    if path.is_file():
        if not path.name.endswith(".tar.gz"):
            raise PackError(f"{path}: neither a project folder nor an sdist (.tar.gz)")
        return PackedSource(path, sha256_file(path), path.stat().st_size, "sdist")
    if not path.is_dir():
        raise PackError(f"{path}: does not exist")
    archive = workdir / "source.tar.gz"
    members = pack_tree(path, archive)
    return PackedSource(archive, sha256_file(archive), archive.stat().st_size, "tree", members)


def pack_tree(root: Path, archive: Path) -> int:
    """Write ``root`` into ``archive`` (tar.gz, deterministic); return the member count."""
    root = root.resolve()
    top = root.name if root.name not in ("", ".", "..") else "source"
    count = 0
    with (
        archive.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        tar.addfile(_info(top, tarfile.DIRTYPE, 0o755))
        count = 1
        for relative, full in _walk(root, ""):
            name = f"{top}/{relative}"
            count += _add(tar, root, full, relative, name)
    return count


def _walk(root: Path, relative: str) -> Iterator[tuple[str, Path]]:
    folder = root / relative if relative else root
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise PackError(f"{folder}: cannot be listed: {exc.strerror}") from exc
    for name in names:
        full = folder / name
        child = f"{relative}/{name}" if relative else name
        is_dir = full.is_dir() and not full.is_symlink()
        if excluded(child, name, is_dir or full.is_dir()):
            continue
        yield child, full
        if is_dir:
            yield from _walk(root, child)


def _info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = link
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add(tar: tarfile.TarFile, root: Path, full: Path, relative: str, name: str) -> int:
    try:
        info = full.lstat()
    except OSError as exc:
        raise PackError(f"{full}: {exc.strerror}") from exc
    if stat.S_ISLNK(info.st_mode):
        real = Path(os.path.realpath(full))
        if root in real.parents:
            # Kept as a link, relative, so it resolves inside the unpacked tree.
            target = os.path.relpath(real, root / os.path.dirname(relative))
            tar.addfile(_info(name, tarfile.SYMTYPE, 0o777, link=target))
            return 1
        if real.is_file():
            # A link out of the tree (a shared README...): its content goes in.
            return _add_file(tar, real, name)
        raise PackError(
            f"{full}: a link to {os.readlink(full)!r}, which is outside the project and not "
            "a file; the daemon cannot follow it"
        )
    if stat.S_ISDIR(info.st_mode):
        tar.addfile(_info(name, tarfile.DIRTYPE, 0o755))
        return 1
    if stat.S_ISREG(info.st_mode):
        return _add_file(tar, full, name)
    return 0  # sockets, fifos, devices: nothing a build reads


def _add_file(tar: tarfile.TarFile, path: Path, name: str) -> int:
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            mode = 0o755 if os.fstat(handle.fileno()).st_mode & 0o111 else 0o644
            tar.addfile(_info(name, tarfile.REGTYPE, mode, size=size), handle)
    except OSError as exc:
        raise PackError(f"{path}: cannot be read: {exc.strerror}") from exc
    return 1


# ------------------------------------------------------------------ the wire --


def missing(
    stub: buildd_pb2_grpc.BuilddStub,
    digests: Sequence[str],
    *,
    metadata: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """The digests the daemon lacks.

    ``metadata`` is the routing header of the session the blobs are for
    (``routing.session_metadata``); with it, NOT_FOUND means that session is gone.
    """
    try:
        answer = stub.FindMissingBlobs(
            pb.FindMissingBlobsRequest(digests=list(digests)),
            timeout=_UNARY_TIMEOUT,
            metadata=tuple(metadata),
        )
    except grpc.RpcError as exc:
        raise RequestFailed.from_rpc_error(exc, not_found=_not_found(metadata)) from exc
    return list(answer.missing)


def upload(
    stub: buildd_pb2_grpc.BuilddStub,
    packed: PackedSource,
    *,
    force: bool = False,
    metadata: Sequence[tuple[str, str]] = (),
) -> bool:
    """Upload ``packed`` unless the daemon has it; True when bytes were sent.

    ``metadata``: the routing header of the session that will build it, so that
    behind a proxy the blob lands on that session's daemon.
    """
    if not force and not missing(stub, [packed.digest], metadata=metadata):
        return False
    kind = pb.BLOB_KIND_SDIST if packed.kind == "sdist" else pb.BLOB_KIND_TREE_ARCHIVE

    def messages() -> Iterator[pb.UploadBlobRequest]:
        yield pb.UploadBlobRequest(
            header=pb.UploadBlobHeader(digest=packed.digest, size_bytes=packed.size, kind=kind)
        )
        with packed.path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                yield pb.UploadBlobRequest(chunk=chunk)

    try:
        stub.UploadBlob(messages(), metadata=tuple(metadata))
    except grpc.RpcError as exc:
        raise RequestFailed.from_rpc_error(exc, not_found=_not_found(metadata)) from exc
    return True


def _not_found(metadata: Sequence[tuple[str, str]]) -> int:
    # With a session's routing header, the daemon answers NOT_FOUND for the session.
    if metadata:
        return pb.FAILURE_KIND_SESSION_NOT_FOUND
    return pb.FAILURE_KIND_SOURCE_NOT_FOUND


def download(
    stub: buildd_pb2_grpc.BuilddStub,
    session_id: str,
    artifacts: Sequence[pb.Artifact],
    outdir: str | os.PathLike[str],
) -> list[Path]:
    """Fetch each artifact into ``outdir``; return the local paths, in order."""
    folder = Path(outdir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return [_download_one(stub, session_id, artifact, folder) for artifact in artifacts]


def _download_one(
    stub: buildd_pb2_grpc.BuilddStub, session_id: str, artifact: pb.Artifact, folder: Path
) -> Path:
    name = artifact.filename or os.path.basename(artifact.path)
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise _corrupt(f"the daemon named an artifact {name!r}, which is not a file name")
    stream = stub.DownloadArtifact(
        pb.DownloadArtifactRequest(session_id=session_id, path=artifact.path)
    )
    # Like any file we write: 0666 less the umask (mkstemp would make it 0600).
    temporary = str(folder / f".{name}.{secrets.token_hex(6)}.part")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            received, digest = _receive(stream, handle, name, artifact)
        if received != size_of(artifact) or digest != digest_of(artifact):
            raise _corrupt(
                f"{name}: received {received} bytes with digest {digest}; the build reported "
                f"{size_of(artifact)} bytes with digest {digest_of(artifact)}"
            )
        final = folder / name
        os.replace(temporary, final)
        return final
    except grpc.RpcError as exc:
        raise RequestFailed.from_rpc_error(exc) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _receive(
    stream: Iterator[pb.DownloadArtifactResponse],
    handle: BinaryIO,
    name: str,
    artifact: pb.Artifact,
) -> tuple[int, str]:
    hasher = hashlib.sha256()
    received = 0
    header: pb.ArtifactHeader | None = None
    for message in stream:
        if message.WhichOneof("payload") == "header":
            header = message.header
            if header.filename != name or digest_of(header) != digest_of(artifact):
                raise _corrupt(
                    f"{name}: the download announced {header.filename!r} with digest "
                    f"{digest_of(header)}, not the artifact the build reported"
                )
            continue
        if header is None:
            raise _corrupt(f"{name}: the download sent bytes before its header")
        received += len(message.chunk)
        hasher.update(message.chunk)
        handle.write(message.chunk)
    if header is None:
        raise _corrupt(f"{name}: the download ended without a header")
    return received, f"sha256:{hasher.hexdigest()}"


def digest_of(artifact: pb.Artifact | pb.ArtifactHeader) -> str:
    """``sha256:<hex>`` of an artifact; from the bare ``sha256`` of an older daemon."""
    return artifact.digest or f"sha256:{artifact.sha256}"


def size_of(artifact: pb.Artifact | pb.ArtifactHeader) -> int:
    """Size in bytes of an artifact; from ``size`` of an older daemon."""
    return artifact.size_bytes or artifact.size


def _corrupt(message: str) -> RequestFailed:
    return RequestFailed(pb.FAILURE_KIND_INTERNAL, grpc.StatusCode.DATA_LOSS, message)
