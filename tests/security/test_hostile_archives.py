"""Hostile archives: small uploads that would cost a lot to read are refused before they are read.

Each archive is a valid gzip stream of a few kilobytes to a megabyte. tarfile
would read a pax extended header, a GNU long name or a sparse map into memory
whole; the daemon refuses such a header by its size field first. Names and
link targets are held to 4096 bytes, 255 per component and 256 folders deep.
The daemon's peak memory (VmHWM, reset before each request) must not move.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd_client import Client
from buildd_client.errors import RequestFailed
from support.daemon import DaemonProcess
from support.remote import proc_status, reset_peak_rss

pytestmark = pytest.mark.integration

GIB = 1 << 30
# What the daemon's peak RSS may grow by while refusing one archive.
PEAK_SLACK = 48 << 20
PYPROJECT = b"[build-system]\nrequires = []\nbuild-backend = 'nothing'\n"


@pytest.fixture(scope="module")
def daemon(wheelhouse: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(wheelhouse).start()
    yield process
    process.cleanup()


def _member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data)
    return info.tobuf(tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % 512)


def _header(name: str, kind: bytes, size: int) -> bytes:
    """A raw header block announcing ``size`` bytes of ``kind`` data (written separately)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    return info.tobuf(tarfile.USTAR_FORMAT)


class _Members:
    """A gzip file written as a series of gzip members (which gzip readers join up).

    A long run of one byte is one compressed mebibyte repeated: a gigabyte of
    archive costs a megabyte and no time to make.
    """

    def __init__(self, path: Path) -> None:
        self._out = path.open("wb")

    def write(self, data: bytes) -> None:
        self._out.write(gzip.compress(data, compresslevel=9, mtime=0))

    def run(self, byte: bytes, count: int) -> None:
        block = gzip.compress(byte * (1 << 20), compresslevel=9, mtime=0)
        for _ in range(count >> 20):
            self._out.write(block)
        self.write(byte * (count & ((1 << 20) - 1)))

    def __enter__(self) -> _Members:
        return self

    def __exit__(self, *exc: object) -> None:
        self._out.close()


def _pax_comment_archive(path: Path, size: int) -> Path:
    """One pax header carrying a ``size``-byte comment record, then a small project."""
    body = size - len(str(size)) - len(" comment=\n")
    with _Members(path) as out:
        out.write(_header("././@PaxHeader", tarfile.XHDTYPE, size) + f"{size} comment=".encode())
        out.run(b"A", body)
        out.write(b"\n" + b"\0" * (-size % 512))
        out.write(_member("demo-1.0/pyproject.toml", PYPROJECT) + b"\0" * 1024)
    return path


def _long_name_archive(path: Path, size: int) -> Path:
    with _Members(path) as out:
        out.write(_header("././@LongLink", tarfile.GNUTYPE_LONGNAME, size + 1))
        out.run(b"a", size)
        out.write(b"\0" + b"\0" * (-(size + 1) % 512))
        out.write(_member("demo-1.0/pyproject.toml", PYPROJECT) + b"\0" * 1024)
    return path


def _pax_archive(path: Path, *names: str, headers: int = 0, header_size: int = 0) -> Path:
    """A project with extra members ``names`` (long ones get pax headers) and ``headers``
    members each carrying a pax comment of about ``header_size`` bytes."""
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as archive:
        for name, data in [("demo-1.0/pyproject.toml", PYPROJECT), *((n, b"x") for n in names)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for index in range(headers):
            info = tarfile.TarInfo(f"demo-1.0/padded-{index}.txt")
            info.pax_headers = {"comment": "c" * header_size}
            archive.addfile(info, io.BytesIO(b""))
    return path


def _sparse_archive(path: Path) -> Path:
    with gzip.GzipFile(path, "wb", mtime=0) as out:
        out.write(_member("demo-1.0/pyproject.toml", PYPROJECT))
        out.write(_member("demo-1.0/holes.bin", b"", tarfile.GNUTYPE_SPARSE))
        out.write(b"\0" * 1024)
    return path


CASES = {
    "pax-comment-1GiB": (
        lambda p: _pax_comment_archive(p, GIB),
        "pax extended header of 1073741824 bytes, at most 1048576",
    ),
    "gnu-long-name-32MB": (
        lambda p: _long_name_archive(p, 32_000_000),
        "GNU long name or link of 32000001 bytes, at most 8192",
    ),
    "path-5000-bytes": (
        lambda p: _pax_archive(p, "demo-1.0/" + "d/" * 2000 + "f.py" + "x" * 987),
        "its name is 5000 bytes long, at most 4096",
    ),
    "name-300-characters": (
        lambda p: _pax_archive(p, "demo-1.0/" + "n" * 300 + ".py"),
        "its name has a component longer than 255 bytes",
    ),
    "3000-folders-deep": (
        lambda p: _pax_archive(p, "demo-1.0/" + "d/" * 3000 + "f.py"),
        "its name is 6013 bytes long, at most 4096",
    ),
    "300-folders-deep": (
        lambda p: _pax_archive(p, "demo-1.0/" + "d/" * 300 + "f.py"),
        "its name is 302 folders deep, at most 256",
    ),
    "extended-headers-past-16MiB": (
        lambda p: _pax_archive(p, headers=20, header_size=1_000_000),
        "the archive's extended headers pass 16777216 bytes",
    ),
    "sparse-member": (_sparse_archive, "a sparse file (not accepted in a source archive)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_archive_is_refused_before_it_is_read(
    daemon: DaemonProcess, tmp_path: Path, case: str
) -> None:
    make, reason = CASES[case]
    archive = make(tmp_path / "demo-1.0.tar.gz")
    assert archive.stat().st_size < 2 << 20  # a small input
    with Client(daemon.address, autostart=False) as client:
        session = client.open_session(f"archive-{case}")
        digest = session.upload(archive)
        reset_peak_rss(daemon.pid)
        before = proc_status(daemon.pid, "VmRSS")
        with pytest.raises(RequestFailed) as refused:
            session.metadata(digest).result()
        grown = proc_status(daemon.pid, "VmHWM") - before
        assert client.health()
    error = refused.value
    print(f"{case}: {archive.stat().st_size} bytes: {error.message}; peak +{grown >> 10} KiB")
    assert error.status == grpc.StatusCode.INVALID_ARGUMENT
    assert error.kind == pb.FAILURE_KIND_INVALID_PROJECT
    assert "member " in error.message and reason in error.message
    # Messages quote at most 200 characters of a name.
    assert len(error.message) < 800
    assert grown < PEAK_SLACK, f"peak RSS grew by {grown >> 20} MiB"
