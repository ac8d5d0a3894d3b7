"""Unit tests of buildd_server.sources: pyproject.toml reading and sdist unpacking."""

from __future__ import annotations

import io
import os
import re
import tarfile
from typing import TYPE_CHECKING

import pytest

from buildd_server import archives
from buildd_server.errors import (
    BuilddError,
    InvalidProject,
    InvalidRequest,
    SourceNotFound,
    SourceUnreadable,
)
from buildd_server.sources import (
    DEFAULT_BACKEND,
    DEFAULT_REQUIRES,
    is_sdist,
    load_project,
    unpack_sdist,
)

if TYPE_CHECKING:
    from pathlib import Path


def project(root: Path, pyproject: str | None = None, *, setup_py: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if pyproject is not None:
        (root / "pyproject.toml").write_text(pyproject, encoding="utf-8")
    if setup_py:
        (root / "setup.py").write_text("from setuptools import setup\nsetup()\n")
    return root


def invalid(root: Path, pyproject: str) -> InvalidProject:
    project(root, pyproject)
    with pytest.raises(InvalidProject) as caught:
        load_project(str(root))
    assert caught.value.path == str(root / "pyproject.toml")
    assert caught.value.message.startswith(f"{root / 'pyproject.toml'}: ")
    return caught.value


# ------------------------------------------------------------------ projects --


def test_full_build_system_in_path_with_spaces_and_non_ascii(tmp_path: Path) -> None:
    root = project(
        tmp_path / "my projéct ü" / "naïve dir",
        '[build-system]\nrequires = ["hatchling>=1.20", "Cython ; python_version >= \'3.8\'"]\n'
        'build-backend = "backend.sub:obj"\nbackend-path = ["_build", "."]\n',
    )
    (root / "_build").mkdir()
    found = load_project(str(root))
    assert found.root == root.resolve()
    assert found.pyproject == root / "pyproject.toml"
    assert found.requires == ("hatchling>=1.20", "Cython ; python_version >= '3.8'")
    assert found.backend == "backend.sub:obj"
    assert found.backend_path == ("_build", ".")


def test_root_is_resolved(tmp_path: Path) -> None:
    real = project(tmp_path / "real", setup_py=True)
    (tmp_path / "link").symlink_to(real)
    assert load_project(str(tmp_path / "link")).root == real


def test_setup_py_only_gets_pep517_defaults(tmp_path: Path) -> None:
    found = load_project(str(project(tmp_path / "p", setup_py=True)))
    assert found.pyproject is None
    assert (found.requires, found.backend, found.backend_path) == (
        DEFAULT_REQUIRES,
        DEFAULT_BACKEND,
        (),
    )
    assert DEFAULT_REQUIRES == ("setuptools>=40.8.0",)
    assert DEFAULT_BACKEND == "setuptools.build_meta:__legacy__"


def test_pyproject_without_build_system_gets_defaults(tmp_path: Path) -> None:
    found = load_project(str(project(tmp_path / "p", '[project]\nname = "x"\n')))
    assert found.pyproject is not None
    assert (found.requires, found.backend) == (DEFAULT_REQUIRES, DEFAULT_BACKEND)


def test_build_system_without_backend_keeps_requires(tmp_path: Path) -> None:
    found = load_project(
        str(project(tmp_path / "p", '[build-system]\nrequires = ["setuptools>=61", "wheel"]\n'))
    )
    assert found.requires == ("setuptools>=61", "wheel")
    assert found.backend == DEFAULT_BACKEND


@pytest.mark.parametrize(
    ("pyproject", "words"),
    [
        ("build-system = 1\n", "build-system: expected a table, got int 1"),
        ("[build-system]\nbuild-backend = 'x'\n", "build-system.requires: missing"),
        ("[build-system]\nrequires = 'setuptools'\n", "build-system.requires: expected a list"),
        ("[build-system]\nrequires = ['a', 3]\n", "build-system.requires[1]: expected a string"),
        (
            "[build-system]\nrequires = ['ok', 'foo>>1']\n",
            "build-system.requires[1]: invalid requirement 'foo>>1': ",
        ),
        (
            "[build-system]\nrequires = []\nbuild-backend = 3\n",
            "build-system.build-backend: expected a string, got int 3",
        ),
        (
            "[build-system]\nrequires = []\nbuild-backend = 'not a module'\n",
            "build-system.build-backend: invalid value 'not a module'",
        ),
        (
            "[build-system]\nrequires = []\nbuild-backend = 'mod:'\n",
            "build-system.build-backend: invalid value 'mod:'",
        ),
        (
            "[build-system]\nrequires = []\nbackend-path = '.'\n",
            "build-system.backend-path: expected a list of strings, got str '.'",
        ),
        (
            "[build-system]\nrequires = []\nbackend-path = ['.', 1]\n",
            "build-system.backend-path[1]: expected a string, got int 1",
        ),
        (
            "[build-system]\nrequires = []\nbackend-path = ['..']\n",
            "build-system.backend-path[0]: '..' resolves to",
        ),
        (
            "[build-system]\nrequires = []\nbackend-path = ['a/../../b']\n",
            "build-system.backend-path[0]: 'a/../../b' resolves to",
        ),
        (
            "[build-system]\nrequires = []\nbackend-path = ['/tmp']\n",
            "build-system.backend-path[0]: '/tmp' must be relative",
        ),
    ],
)
def test_invalid_build_system(tmp_path: Path, pyproject: str, words: str) -> None:
    assert words in invalid(tmp_path / "p", pyproject).message


def test_malformed_toml_names_line_and_column(tmp_path: Path) -> None:
    error = invalid(tmp_path / "p", '[build-system]\nrequires = ["a",\nbuild-backend = = 1\n')
    assert "invalid TOML" in error.message
    assert "line 3, column" in error.message


def test_non_utf8_pyproject(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    (root / "pyproject.toml").write_bytes(b"[build-system]\nrequires = ['\xff']\n")
    with pytest.raises(InvalidProject, match="not UTF-8"):
        load_project(str(root))


def test_pyproject_that_is_a_directory(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    (root / "pyproject.toml").mkdir()
    with pytest.raises(InvalidProject, match="is a directory"):
        load_project(str(root))


def test_backend_path_symlink_leaving_the_tree(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = project(tmp_path / "p")
    (root / "escape").symlink_to(outside)
    error = invalid(root, "[build-system]\nrequires = []\nbackend-path = ['escape']\n")
    assert f"resolves to {outside}, outside the project {root}" in error.message


def test_backend_path_symlink_inside_the_tree_is_kept_as_written(tmp_path: Path) -> None:
    root = project(tmp_path / "p", "[build-system]\nrequires = []\nbackend-path = ['alias']\n")
    (root / "real").mkdir()
    (root / "alias").symlink_to(root / "real")
    assert load_project(str(root)).backend_path == ("alias",)


def test_backend_path_symlink_loop(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    (root / "a").symlink_to(root / "b")
    (root / "b").symlink_to(root / "a")
    error = invalid(root, "[build-system]\nrequires = []\nbackend-path = ['a']\n")
    assert "build-system.backend-path[0]: 'a'" in error.message


@pytest.mark.parametrize("path", ["", "relative/dir", "./p", "/with\0nul"])
def test_path_must_be_absolute(path: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        load_project(path)
    assert repr(path) in caught.value.message


def test_missing_file_and_non_projects(tmp_path: Path) -> None:
    plain = tmp_path / "file.txt"
    plain.write_text("x")
    sdist = make_tar(tmp_path / "pkg-1.0.tar.gz", [dir_("pkg-1.0")])
    empty = project(tmp_path / "empty")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    cases = [
        (tmp_path / "missing", "does not exist"),
        (plain, "is a file, not a project directory"),
        (sdist, "is an sdist archive; unpack it first, not a project directory"),
        (empty, "neither pyproject.toml nor setup.py"),
        (tmp_path / "loop", "symlink loop"),
        (plain / "below", "does not exist"),
    ]
    for path, words in cases:
        with pytest.raises(SourceNotFound) as caught:
            load_project(str(path))
        assert caught.value.message.startswith(str(path))
        assert words in caught.value.message


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root reads everything: permission bits cannot be tested"
)
@pytest.mark.parametrize("what", ["folder", "pyproject"])
def test_unreadable(tmp_path: Path, what: str) -> None:
    root = project(tmp_path / "p", "[build-system]\nrequires = []\n")
    locked = root if what == "folder" else root / "pyproject.toml"
    locked.chmod(0)
    try:
        with pytest.raises(SourceUnreadable, match="permission denied"):
            load_project(str(root))
    finally:
        locked.chmod(0o755)


def test_fingerprint_follows_edits(tmp_path: Path) -> None:
    root = project(tmp_path / "p", "[build-system]\nrequires = []\n", setup_py=True)
    (root / "PKG-INFO").write_text("Metadata-Version: 2.1\n")
    (root / "README").write_text("not part of it")
    found = load_project(str(root))
    first = found.fingerprint()
    assert [name for name, _, _ in first] == ["pyproject.toml", "setup.py", "PKG-INFO"]
    size = (root / "setup.py").stat().st_size
    assert ("setup.py", (root / "setup.py").stat().st_mtime_ns, size) in first
    (root / "README").write_text("changed")
    assert found.fingerprint() == first
    st = (root / "pyproject.toml").stat()
    os.utime(root / "pyproject.toml", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert found.fingerprint() != first
    (root / "setup.cfg").write_text("[metadata]\n")
    assert "setup.cfg" in [name for name, _, _ in found.fingerprint()]


# --------------------------------------------------------------------- sdists --


def file_(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def dir_(name: str) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, None


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


GOOD = [
    dir_("pkg-1.0"),
    file_("pkg-1.0/pyproject.toml", b"[build-system]\nrequires = []\n"),
    dir_("pkg-1.0/src"),
    file_("pkg-1.0/src/mod.py", b"X = 1\n"),
    link("pkg-1.0/alias.py", "src/mod.py"),
    link("pkg-1.0/src/up", ".."),
    link("pkg-1.0/hard.py", "pkg-1.0/src/mod.py", tarfile.LNKTYPE),
]


def test_is_sdist(tmp_path: Path) -> None:
    sdist = make_tar(tmp_path / "pkg-1.0.tar.gz", GOOD)
    (tmp_path / "dir.tar.gz").mkdir()
    (tmp_path / "pkg-1.0.zip").write_bytes(b"PK")
    assert is_sdist(sdist)
    assert not is_sdist(tmp_path / "dir.tar.gz")
    assert not is_sdist(tmp_path / "pkg-1.0.zip")
    assert not is_sdist(tmp_path / "missing-1.0.tar.gz")


@pytest.mark.parametrize("data_filter", [True, False])
def test_unpack_good_sdist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_filter: bool
) -> None:
    monkeypatch.setattr(archives, "_HAS_DATA_FILTER", data_filter)
    sdist = make_tar(tmp_path / "pkg-1.0.tar.gz", GOOD)
    top = unpack_sdist(sdist, tmp_path / "out dir é")
    assert top == tmp_path / "out dir é" / "pkg-1.0"
    assert (top / "src" / "mod.py").read_text() == "X = 1\n"
    assert (top / "alias.py").is_symlink()
    assert (top / "alias.py").read_text() == "X = 1\n"
    assert (top / "hard.py").read_text() == "X = 1\n"
    assert load_project(str(top)).requires == ()


def test_unpack_tolerates_dot_prefix_and_missing_dir_entries(tmp_path: Path) -> None:
    sdist = make_tar(tmp_path / "p.tar.gz", [file_("./pkg-2.0/setup.py", b"")])
    assert unpack_sdist(sdist, tmp_path / "out") == tmp_path / "out" / "pkg-2.0"


@pytest.mark.parametrize(
    ("member", "words"),
    [
        (file_("/abs/evil"), "member '/abs/evil': absolute path"),
        (file_("pkg-1.0/../evil"), "member 'pkg-1.0/../evil': '..' in the path"),
        (file_("../evil"), "member '../evil': '..' in the path"),
        (link("pkg-1.0/l", "/etc/passwd"), "absolute link target '/etc/passwd'"),
        (link("pkg-1.0/l", "../../evil"), "link target '../../evil' leads outside the tree"),
        (link("pkg-1.0/l", ".."), "link target '..' leads outside the tree"),
        (
            link("pkg-1.0/h", "../evil", tarfile.LNKTYPE),
            "member 'pkg-1.0/h': hard link to '../evil' outside the tree",
        ),
        (link("pkg-1.0/h", "/etc/passwd", tarfile.LNKTYPE), "absolute link target '/etc/pa"),
        (special("pkg-1.0/dev", tarfile.CHRTYPE), "member 'pkg-1.0/dev': not a regular file"),
        (special("pkg-1.0/blk", tarfile.BLKTYPE), "member 'pkg-1.0/blk': not a regular file"),
        (special("pkg-1.0/fifo", tarfile.FIFOTYPE), "member 'pkg-1.0/fifo': not a regular"),
        (file_("other-1.0/x"), "expected one top-level directory, found ['other-1.0', 'pkg-1.0']"),
        (file_("stray.txt"), "'stray.txt' is not one"),
    ],
)
def test_unpack_refuses(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None], words: str
) -> None:
    sdist = make_tar(tmp_path / "bad-1.0.tar.gz", [*GOOD, member])
    dest = tmp_path / "out"
    with pytest.raises(InvalidProject) as caught:
        unpack_sdist(sdist, dest)
    assert caught.value.path == str(sdist)
    assert caught.value.message.startswith(f"{sdist}: ")
    assert words in caught.value.message
    # Checked before writing anything.
    assert not dest.exists()
    assert not (tmp_path / "evil").exists()


def test_unpack_refuses_link_chains_that_escape(tmp_path: Path) -> None:
    # Each link looks harmless alone; "b/../.." climbs out because b is "..".
    chain = [dir_("pkg-1.0"), link("pkg-1.0/b", ".."), link("pkg-1.0/a", "b/../..")]
    loop = [dir_("pkg-1.0"), link("pkg-1.0/x", "y"), link("pkg-1.0/y", "x")]
    through = [dir_("pkg-1.0"), link("pkg-1.0/up", ".."), file_("pkg-1.0/up/evil")]
    deep = [dir_("pkg-1.0"), link("pkg-1.0/a", "b"), link("pkg-1.0/b", "c/../../x")]
    for index, members in enumerate([chain, loop, through, deep]):
        sdist = make_tar(tmp_path / f"bad{index}.tar.gz", members)
        with pytest.raises(InvalidProject, match="outside the tree"):
            unpack_sdist(sdist, tmp_path / f"out{index}")
        assert not (tmp_path / f"out{index}").exists()


@pytest.mark.parametrize("content", [b"", b"not gzip at all", b"\x1f\x8b\x08\x00garbage"])
def test_unpack_corrupt_archive(tmp_path: Path, content: bytes) -> None:
    sdist = tmp_path / "pkg-1.0.tar.gz"
    sdist.write_bytes(content)
    with pytest.raises(InvalidProject, match=r"not a valid \.tar\.gz sdist"):
        unpack_sdist(sdist, tmp_path / "out")


def test_unpack_truncated_archive(tmp_path: Path) -> None:
    big = os.urandom(200_000)
    sdist = make_tar(tmp_path / "pkg-1.0.tar.gz", [dir_("pkg-1.0"), file_("pkg-1.0/big", big)])
    sdist.write_bytes(sdist.read_bytes()[:-5000])
    with pytest.raises(InvalidProject, match=re.escape(str(sdist))):
        unpack_sdist(sdist, tmp_path / "out")


def test_unpack_missing_sdist(tmp_path: Path) -> None:
    with pytest.raises(BuilddError, match="does not exist"):
        unpack_sdist(tmp_path / "missing-1.0.tar.gz", tmp_path / "out")
