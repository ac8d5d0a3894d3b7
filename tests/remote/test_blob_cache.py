"""The daemon's blob cache on its own: verify, store, evict least recently used, reload."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildd_server import errors
from buildd_server.config import SourceLimits
from buildd_server.sources.blobs import BlobStore, parse_digest

KIB = 1 << 10


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _store(root: Path, capacity: int = 10 * KIB) -> BlobStore:
    return BlobStore(root, capacity, SourceLimits())


def _put(store: BlobStore, data: bytes) -> bool:
    return store.receive(
        _digest(data), len(data), iter([data[: len(data) // 2], data[len(data) // 2 :]])
    )


def test_receive_stores_only_verified_bytes(tmp_path: Path) -> None:
    store = _store(tmp_path / "blobs")
    data = os.urandom(3 * KIB)
    assert _put(store, data) is True
    assert (tmp_path / "blobs" / parse_digest(_digest(data))).read_bytes() == data
    assert _put(store, data) is False  # known: the chunks are not even read
    with pytest.raises(errors.InvalidRequest, match="announced"):
        store.receive(_digest(b"other"), len(data), iter([data]))
    assert store.missing([_digest(data), _digest(b"other")]) == [_digest(b"other")]
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


def test_a_failing_stream_leaves_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path / "blobs")
    seen = threading.Event()

    def chunks() -> Iterator[bytes]:
        yield b"x" * KIB
        assert list((tmp_path / "blobs" / "tmp").iterdir())  # mid-upload: a temporary file
        seen.set()
        raise ConnectionResetError("client gone")

    with pytest.raises(ConnectionResetError):
        store.receive(_digest(b"x" * 2 * KIB), 2 * KIB, chunks())
    assert seen.is_set()
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
    assert len(store) == 0 and store.total_bytes == 0


def test_least_recently_used_blobs_are_evicted(tmp_path: Path) -> None:
    store = _store(tmp_path / "blobs", capacity=10 * KIB)
    a, b, c, d = (bytes([n]) * 4 * KIB for n in range(4))
    _put(store, a)
    _put(store, b)
    assert store.missing([_digest(a)]) == []  # a is now more recent than b
    _put(store, c)  # 12 KiB > 10: b goes
    assert store.missing([_digest(x) for x in (a, b, c)]) == [_digest(b)]
    assert store.total_bytes == 8 * KIB
    assert not (tmp_path / "blobs" / parse_digest(_digest(b))).exists()
    _put(store, d)  # a is oldest now
    assert store.missing([_digest(x) for x in (a, c, d)]) == [_digest(a)]
    with pytest.raises(errors.ResourceExhausted, match="blob-cache-size"):
        store.receive(_digest(b"big"), 11 * KIB, iter([]))


def test_a_blob_being_unpacked_is_not_evicted(tmp_path: Path) -> None:
    store = _store(tmp_path / "blobs", capacity=10 * KIB)
    a, b = bytes(6 * KIB), bytes([1]) * 6 * KIB
    _put(store, a)
    name = parse_digest(_digest(a))
    store._pins[name] = 1  # as unpack() does while it reads the file
    _put(store, b)
    assert store.missing([_digest(a)]) == []  # over the cap for now, but kept
    del store._pins[name]


def test_the_cache_survives_a_restart(tmp_path: Path) -> None:
    store = _store(tmp_path / "blobs")
    data = os.urandom(KIB)
    _put(store, data)
    (tmp_path / "blobs" / "tmp" / "upload-left-by-a-crash").write_bytes(b"half")
    (tmp_path / "blobs" / "not-a-blob").write_bytes(b"ignored")
    again = _store(tmp_path / "blobs")
    assert again.missing([_digest(data)]) == []
    assert again.total_bytes == KIB
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


@pytest.mark.parametrize(
    "digest", ["", "sha256:", "sha256:" + "A" * 64, "md5:" + "0" * 32, "sha256:" + "0" * 63]
)
def test_malformed_digests_are_refused(tmp_path: Path, digest: str) -> None:
    with pytest.raises(errors.InvalidRequest, match="not a digest"):
        _store(tmp_path).missing([digest])


def test_find_missing_is_bounded(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidRequest, match="at most 1000"):
        _store(tmp_path).missing(["sha256:" + "0" * 64] * 1001)
