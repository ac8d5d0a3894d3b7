"""The archive attack matrix: every hostile upload is refused, naming its member.

Each archive is a valid project (``proj/pyproject.toml``) plus one hostile
member. The upload itself succeeds (the daemon stores bytes by digest); the
first request that unpacks it fails with INVALID_ARGUMENT naming the member,
nothing lands outside the session's folder, and the half-unpacked folder is
gone. A clean archive of the same shape builds, so the refusals are about
the hostile member and nothing else.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from buildd_client import RequestFailed
from buildd_client.remote import PackedSource, upload
from support.remote import MakeRemote, RemoteDaemon

PYPROJECT = b"""\
[build-system]
requires = ["flit_core>=3.4,<4"]
build-backend = "flit_core.buildapi"

[project]
name = "proj"
version = "1.0"
description = "an archive under attack"
"""
MAX_FILES = 50
MAX_SIZE = 24 << 20  # the ratio check starts at 16 MiB unpacked


def _member(
    name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname, info.mode = kind, size, link, 0o644
    info.mtime = 315532800  # zip (wheels) cannot store times before 1980
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    return info


class _Zeros(io.RawIOBase):
    """``size`` zero bytes, produced as read: no big buffer in the test either."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n

    def readable(self) -> bool:
        return True


def _archive(folder: Path, extra: list[tarfile.TarInfo]) -> PackedSource:
    path = folder / f"{uuid.uuid4().hex}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(_member("proj", tarfile.DIRTYPE))
        tar.addfile(_member("proj/pyproject.toml", size=len(PYPROJECT)), io.BytesIO(PYPROJECT))
        tar.addfile(_member("proj/proj.py", size=22), io.BytesIO(b'"""The proj module."""'))
        for info in extra:
            data = _Zeros(info.size) if info.isfile() else None
            tar.addfile(info, io.BufferedReader(data) if data is not None else None)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return PackedSource(path, f"sha256:{digest}", path.stat().st_size, "tree")


MARK = f"bd-escape-{uuid.uuid4().hex[:8]}"
ATTACKS: dict[str, tuple[list[tarfile.TarInfo], str, str]] = {
    # name: (members, the member named in the error, the reason)
    "absolute path": ([_member(f"/tmp/{MARK}", size=4)], f"/tmp/{MARK}", "absolute path"),
    "dot-dot": ([_member(f"proj/../../{MARK}", size=4)], f"proj/../../{MARK}", "'..'"),
    "symlink escaping": (
        [_member("proj/evil", tarfile.SYMTYPE, link="../../../../tmp")],
        "proj/evil",
        "leads outside the tree",
    ),
    "symlink chain escaping": (
        [
            # proj/a is harmless; proj/c climbs out through it: sub, proj, then above.
            _member("proj/sub", tarfile.DIRTYPE),
            _member("proj/a", tarfile.SYMTYPE, link="sub"),
            _member("proj/c", tarfile.SYMTYPE, link="a/../.."),
        ],
        "proj/c",
        "leads outside the tree",
    ),
    "absolute symlink": (
        [_member("proj/etc", tarfile.SYMTYPE, link="/etc")],
        "proj/etc",
        "absolute link target",
    ),
    "hardlink escaping": (
        [_member("proj/passwd", tarfile.LNKTYPE, link="etc/passwd")],
        "proj/passwd",
        "outside the tree",
    ),
    "absolute hardlink": (
        [_member("proj/shadow", tarfile.LNKTYPE, link="/etc/shadow")],
        "proj/shadow",
        "absolute link target",
    ),
    "device file": (
        [_member("proj/null", tarfile.CHRTYPE)],
        "proj/null",
        "device or fifo",
    ),
    "fifo": ([_member("proj/pipe", tarfile.FIFOTYPE)], "proj/pipe", "device or fifo"),
    "too many files": (
        [_member(f"proj/f{i:03}", size=1) for i in range(MAX_FILES)],
        f"proj/f{MAX_FILES - 3:03}",
        f"more than {MAX_FILES} members",
    ),
    "too large": (
        [_member("proj/big", size=MAX_SIZE + 1)],
        "proj/big",
        f"more than {MAX_SIZE} bytes",
    ),
    "compression bomb": (
        [_member("proj/bomb", size=20 << 20)],
        "proj/bomb",
        "compression bomb",
    ),
}


@pytest.fixture(scope="module")
def strict(
    wheelhouse: Path, pki: object, token_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RemoteDaemon]:
    from support.remote import Pki

    assert isinstance(pki, Pki)
    daemon = RemoteDaemon(
        wheelhouse,
        pki,
        token_file,
        args=["--max-source-files", str(MAX_FILES), "--max-source-size", str(MAX_SIZE)],
        metrics=False,
    )
    daemon.start()
    yield daemon
    daemon.cleanup()


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_hostile_archives_are_refused_naming_the_member(
    strict: RemoteDaemon, tmp_path: Path, attack: str
) -> None:
    members, culprit, reason = ATTACKS[attack]
    packed = _archive(tmp_path, members)
    with strict.client("alice") as client, client.open_session(attack) as session:
        assert upload(client.stub, packed)
        with pytest.raises(RequestFailed) as caught:
            session.get_requires(packed.digest).result()
        error = caught.value
        assert error.status == grpc.StatusCode.INVALID_ARGUMENT, error
        assert f"member {culprit!r}" in error.message, error.message
        assert reason in error.message, error.message
        assert packed.digest[:19] in error.message
        work = strict.state_dir / "sessions" / session.id / "work"
        assert not list(work.glob("upload-*")), "a refused archive left files behind"
    assert not Path(f"/tmp/{MARK}").exists()
    assert not list(strict.state_dir.rglob(f"*{MARK}*"))


def test_a_clean_archive_of_the_same_shape_builds(strict: RemoteDaemon, tmp_path: Path) -> None:
    packed = _archive(tmp_path, [_member("proj/data.txt", size=100)])
    with strict.client("alice") as client, client.open_session("clean") as session:
        upload(client.stub, packed)
        requires = session.get_requires(packed.digest).result()
        assert list(requires.static_requirements) == ["flit_core>=3.4,<4"]
        [wheel] = session.build(packed.digest, distributions=["wheel"]).result().artifacts
        assert wheel.filename == "proj-1.0-py2.py3-none-any.whl"
        [local] = session.download([wheel], tmp_path / "out")
        assert hashlib.sha256(local.read_bytes()).hexdigest() == wheel.sha256


def test_caps_are_flags(make_remote: MakeRemote, tmp_path: Path) -> None:
    """The same too-many-files archive passes a daemon with a higher cap."""
    members, _culprit, _reason = ATTACKS["too many files"]
    packed = _archive(tmp_path, members)
    daemon = make_remote(["--max-source-files", str(MAX_FILES * 2)], metrics=False)
    with daemon.client("alice") as client, client.open_session("caps") as session:
        upload(client.stub, packed)
        assert session.get_requires(packed.digest).result().static_requirements
