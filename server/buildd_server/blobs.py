"""Uploaded sources: a content-addressed cache with a size cap, and safe unpacking.

Blobs live in ``<state>/blobs/<hex>`` where ``<hex>`` is the SHA-256 of the
bytes. An upload streams into ``<state>/blobs/tmp/`` while it is hashed and
counted; only when its size and digest match what the client announced is the
file renamed into place, so the cache never holds a wrong or partial blob and
an interrupted upload leaves nothing (the temporary file is removed, and a
daemon killed mid-upload removes the leftovers when it starts again).

The cache is bounded: after each upload the least recently used blobs (use =
upload, FindMissingBlobs, unpack) are deleted until the total fits the cap. A
blob evicted between FindMissingBlobs and Build gives NOT_FOUND naming the
digest, and the client uploads it again. A blob being unpacked is pinned and
never evicted under the unpacking.

Unpacking goes through ``sources.unpack_sdist`` with the daemon's caps, so a
tree archive gets exactly the checks an sdist gets (no absolute names, no
``..``, no links or hard links leading out, no devices or fifos) plus the caps
on unpacked size, member count and compression ratio.

A blob is hashed again before every unpacking: one that no longer matches its
name (changed on disk since it was uploaded, by a hook or by hand) is
refused with BLOB_CORRUPT and evicted, so the next upload replaces it. Blob
files are read-only (0400) in a 0700 folder, and sandboxed hooks do not see
the folder at all (containment.py); the check is for what can still write
there: the daemon's own user, and hooks of local principals.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from . import errors
from .sources import unpack_sdist

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from typing import BinaryIO

    from .config import SourceLimits
    from .requests import SourceState

log = structlog.get_logger("buildd.blobs")

DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
MAX_FIND = 1000


def parse_digest(text: str, field: str = "digest") -> str:
    """The hex part of ``sha256:<hex>``; InvalidRequest naming ``field`` otherwise."""
    match = DIGEST.fullmatch(text)
    if match is None:
        shown = text[:80] + ("…" if len(text) > 80 else "")
        raise errors.InvalidRequest(
            f"{field}: {shown!r} is not a digest: expected 'sha256:' and 64 lowercase hex digits"
        )
    return match.group(1)


def is_digest(source: str) -> bool:
    """True for a request source naming an uploaded archive rather than a path."""
    return source.startswith("sha256:")


def unpack_upload(store: BlobStore | None, digest: str, work: Path, state: SourceState) -> Path:
    """The project root of an uploaded archive in one session, unpacked on first use.

    The folder lives in the session's ``work`` folder and goes away with it;
    later requests for the same digest find it through ``state``.
    """
    if store is None:
        raise errors.InvalidRequest("context.source.digest: this daemon takes no uploads")
    if state.unpacked is not None and state.unpacked[1].is_dir():
        return state.unpacked[1]
    dest = Path(tempfile.mkdtemp(prefix="upload-", dir=work))
    try:
        root = store.unpack(digest, dest)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    state.unpacked = ((0, 0), root)
    return root


class BlobStore:
    """The daemon's cache of uploaded archives; thread-safe."""

    def __init__(self, root: Path, capacity: int, limits: SourceLimits) -> None:
        self.root = root
        self.capacity = capacity
        self.limits = limits
        self._tmp = root / "tmp"
        self._lock = threading.Lock()
        # hex -> size, least recently used first.
        self._entries: OrderedDict[str, int] = OrderedDict()
        self._pins: dict[str, int] = {}
        self._total = 0
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._tmp.mkdir(mode=0o700, exist_ok=True)
        self._reclaim()

    def _reclaim(self) -> None:
        """Drop what an interrupted run left in tmp/, and index the blobs by age."""
        leftovers = 0
        for child in self._tmp.iterdir():
            with contextlib.suppress(OSError):
                child.unlink()
                leftovers += 1
        found: list[tuple[float, str, int]] = []
        for child in self.root.iterdir():
            if DIGEST.fullmatch(f"sha256:{child.name}") and child.is_file():
                info = child.stat()
                found.append((info.st_mtime, child.name, info.st_size))
        for _mtime, name, size in sorted(found):
            self._entries[name] = size
            self._total += size
        if leftovers or found:
            log.info("blob_cache_loaded", blobs=len(found), bytes=self._total, reclaimed=leftovers)
        with self._lock:
            self._evict_to(self.capacity)

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._total

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def path_of(self, digest: str) -> Path:
        return self.root / parse_digest(digest)

    def missing(self, digests: Sequence[str]) -> list[str]:
        """The digests not in the cache; the present ones count as used."""
        if len(digests) > MAX_FIND:
            raise errors.InvalidRequest(
                f"digests: {len(digests)} given, at most {MAX_FIND} per call"
            )
        hexes = [parse_digest(d, f"digests[{i}]") for i, d in enumerate(digests)]
        with self._lock:
            for name in hexes:
                if name in self._entries:
                    self._touch(name)
            return [d for d, name in zip(digests, hexes, strict=True) if name not in self._entries]

    def receive(self, digest: str, size: int, chunks: Iterable[bytes]) -> bool:
        """Store the upload of ``digest``; False when it was cached already (chunks unread).

        The bytes go to a temporary file as they come; nothing but the current
        chunk is held in memory.
        """
        upload = self.begin(digest, size)
        if upload is None:
            return False
        try:
            for chunk in chunks:
                upload.write(chunk)
            return upload.finish()
        finally:
            upload.discard()

    def begin(self, digest: str, size: int) -> Upload | None:
        """An upload of ``digest`` to feed chunk by chunk; None when it is cached already.

        Nothing waits between chunks: the caller (an RPC on the event loop)
        hands each chunk over as it arrives, and ``discard``s the upload when
        the stream breaks.
        """
        name = parse_digest(digest, "header.digest")
        if size < 0:
            raise errors.InvalidRequest(f"header.size_bytes: {size} is negative")
        if size > self.capacity:
            raise errors.ResourceExhausted(
                f"header.size_bytes: {size} bytes is more than the daemon's blob cache holds "
                f"({self.capacity} bytes, --blob-cache-size)"
            )
        with self._lock:
            if name in self._entries:
                self._touch(name)
                return None
        return Upload(self, name, digest, size, self._tmp / f"upload-{uuid.uuid4().hex}")

    def _commit(self, name: str, temporary: Path, size: int) -> bool:
        """Rename a complete, verified upload into the cache; False when one won the race."""
        with self._lock:
            if name in self._entries:  # a concurrent upload of the same bytes won
                self._touch(name)
                return False
            os.chmod(temporary, 0o400)
            os.replace(temporary, self.root / name)
            self._entries[name] = size
            self._total += size
            self._evict_to(self.capacity, keep=name)
        return True

    def unpack(self, digest: str, dest: Path) -> Path:
        """Unpack the blob into the new folder ``dest``; return the project's root."""
        name = parse_digest(digest, "context.source.digest")
        with self._lock:
            if name not in self._entries:
                raise errors.BlobNotFound(
                    f"context.source.digest: {digest} is not in the daemon's cache (never "
                    "uploaded, or evicted since): upload it again",
                    path=digest,
                    field="context.source.digest",
                    metadata={"digest": digest},
                )
            self._touch(name)
            self._pins[name] = self._pins.get(name, 0) + 1
        try:
            self._verify(name, digest)
            return unpack_sdist(
                self.root / name,
                dest,
                label=f"uploaded archive {digest[:19]}…",
                limits=self.limits,
            )
        finally:
            with self._lock:
                left = self._pins.pop(name) - 1
                if left:
                    self._pins[name] = left

    def _verify(self, name: str, digest: str) -> None:
        """Refuse (and evict) a blob whose bytes no longer hash to its name."""
        hasher = hashlib.sha256()
        try:
            with open(self.root / name, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    hasher.update(chunk)
        except FileNotFoundError as exc:
            self._evict(name, "missing")
            raise errors.BlobNotFound(
                f"context.source.digest: {digest} is gone from the daemon's cache: upload it again",
                path=digest,
                field="context.source.digest",
                metadata={"digest": digest},
            ) from exc
        actual = hasher.hexdigest()
        if actual == name:
            return
        self._evict(name, "corrupt")
        log.warning("blob_corrupt", digest=f"sha256:{name[:12]}", found=f"sha256:{actual[:12]}")
        raise errors.BlobCorrupt(
            f"context.source.digest: the cached upload {digest} now holds bytes with the "
            f"digest sha256:{actual}: it was changed on disk since it was uploaded, so it was "
            "evicted; upload it again",
            path=digest,
            field="context.source.digest",
            metadata={"digest": digest, "found": f"sha256:{actual}"},
        )

    def _evict(self, name: str, why: str) -> None:
        with self._lock:
            size = self._entries.pop(name, None)
            if size is not None:
                self._total -= size
            with contextlib.suppress(FileNotFoundError):
                (self.root / name).unlink()
        log.info("blob_evicted", digest=f"sha256:{name[:12]}", bytes=size, reason=why)

    def _touch(self, name: str) -> None:
        """Lock held."""
        self._entries.move_to_end(name)
        with contextlib.suppress(OSError):
            os.utime(self.root / name)

    def _evict_to(self, capacity: int, keep: str = "") -> None:
        """Lock held: delete least recently used blobs until the total fits."""
        for name, size in list(self._entries.items()):
            if self._total <= capacity:
                return
            if name == keep or name in self._pins:
                continue
            del self._entries[name]
            self._total -= size
            with contextlib.suppress(FileNotFoundError):
                (self.root / name).unlink()
            log.info("blob_evicted", digest=f"sha256:{name[:12]}", bytes=size)


class Upload:
    """One upload in progress: hashed and counted into a temporary file as chunks come.

    The file is opened with the first chunk, so an upload that stalls after
    its header holds no file descriptor.
    """

    def __init__(self, store: BlobStore, name: str, digest: str, size: int, path: Path) -> None:
        self._store = store
        self._name = name
        self._digest = digest
        self._size = size
        self._path = path
        self._hasher = hashlib.sha256()
        self._received = 0
        self._handle: BinaryIO | None = None

    def write(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received > self._size:
            raise errors.InvalidRequest(
                f"chunk: more bytes than the {self._size} announced in header.size_bytes"
            )
        self._hasher.update(chunk)
        with self._disk_errors():
            self._open().write(chunk)

    def finish(self) -> bool:
        """Check size and digest, then store; False when the blob was cached meanwhile."""
        if self._received != self._size:
            raise errors.InvalidRequest(
                f"the upload ended after {self._received} bytes, header.size_bytes announced "
                f"{self._size}"
            )
        actual = f"sha256:{self._hasher.hexdigest()}"
        if actual != self._digest:
            raise errors.InvalidRequest(
                f"the uploaded bytes have the digest {actual}, header.digest announced "
                f"{self._digest}"
            )
        with self._disk_errors():
            handle = self._open()  # opened here for an empty archive
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        return self._store._commit(self._name, self._path, self._size)

    def _open(self) -> BinaryIO:
        if self._handle is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            self._handle = os.fdopen(os.open(self._path, flags, 0o600), "wb")
        return self._handle

    def discard(self) -> None:
        """Close and remove the temporary file (nothing left after ``finish``)."""
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.close()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    @contextlib.contextmanager
    def _disk_errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise errors.ResourceExhausted(
                    f"{self._store.root}: no space left for uploads"
                ) from exc
            raise
