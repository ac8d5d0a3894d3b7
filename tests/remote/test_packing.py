"""The client's packing: what goes in, deterministically, and what the daemon makes of it."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from buildd_client.remote import FIXED_MTIME, PackError, pack_source
from buildd_server.config import SourceLimits
from buildd_server.sources.sources import unpack_sdist
from support.projects import setuptools_project


def _tree(root: Path) -> Path:
    project = setuptools_project(root, name="packed")
    for junk in (
        ".git/HEAD",
        ".hg/store",
        ".svn/entries",
        "build/lib/x.py",
        "dist/old.whl",
        "venv/bin/python",
        ".venv/bin/python",
        ".tox/py/x",
        ".nox/s/x",
        "node_modules/x/index.js",
        ".mypy_cache/x",
        ".pytest_cache/x",
        ".ruff_cache/x",
        "packed/__pycache__/x.pyc",
        "packed.egg-info/PKG-INFO",
        "src/packed.egg-info/SOURCES.txt",
    ):
        (project / junk).parent.mkdir(parents=True, exist_ok=True)
        (project / junk).write_text("junk")
    # Kept: build/ and dist/ below the top are ordinary folders.
    (project / "packed" / "build").mkdir()
    (project / "packed" / "build" / "__init__.py").write_text("")
    (project / "packed" / "dist").mkdir()
    (project / "packed" / "dist" / "data.txt").write_text("d")
    (project / "run.sh").write_text("#!/bin/sh\n")
    (project / "run.sh").chmod(0o755)
    (project / "README.md").write_text("# packed\n")
    return project


def _names(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return tar.getnames()


def test_what_goes_in_and_what_stays_out(tmp_path: Path) -> None:
    project = _tree(tmp_path / "packed")
    packed = pack_source(project, tmp_path)
    assert packed.kind == "tree" and packed.digest.startswith("sha256:")
    assert _names(packed.path) == [
        "packed",
        "packed/README.md",
        "packed/packed",
        "packed/packed/__init__.py",
        "packed/packed/build",
        "packed/packed/build/__init__.py",
        "packed/packed/dist",
        "packed/packed/dist/data.txt",
        "packed/pyproject.toml",
        "packed/run.sh",
        "packed/src",
    ]
    assert packed.members == 11
    with tarfile.open(packed.path) as tar:
        for member in tar.getmembers():
            assert (member.mtime, member.uid, member.gid, member.uname) == (FIXED_MTIME, 0, 0, "")
        assert tar.getmember("packed/run.sh").mode == 0o755
        assert tar.getmember("packed/README.md").mode == 0o644


def test_the_digest_depends_on_content_only(tmp_path: Path) -> None:
    first = pack_source(_tree(tmp_path / "a" / "packed"), tmp_path / "a")
    second_tree = _tree(tmp_path / "b" / "packed")
    for path in second_tree.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000), follow_symlinks=False)
    (second_tree / ".git" / "HEAD").write_text("another commit")
    second = pack_source(second_tree, tmp_path / "b")
    assert first.digest == second.digest and first.size == second.size
    (second_tree / "README.md").write_text("# changed\n")
    assert pack_source(second_tree, tmp_path / "b").digest != first.digest


def test_links(tmp_path: Path) -> None:
    project = setuptools_project(tmp_path / "linked", name="linked")
    (tmp_path / "shared-readme.md").write_text("# shared\n")
    (project / "README.md").symlink_to(tmp_path / "shared-readme.md")
    (project / "alias").symlink_to("linked")
    (project / "abs-inside").symlink_to(project / "pyproject.toml")
    packed = pack_source(project, tmp_path)
    with tarfile.open(packed.path) as tar:
        readme = tar.getmember("linked/README.md")
        assert readme.isfile()  # a link out of the tree: its content
        assert tar.extractfile(readme).read() == b"# shared\n"  # type: ignore[union-attr]
        assert tar.getmember("linked/alias").linkname == "linked"
        assert tar.getmember("linked/abs-inside").linkname == "pyproject.toml"
    # The daemon's own checks accept what the client made.
    root = unpack_sdist(packed.path, tmp_path / "out", limits=SourceLimits())
    assert (root / "README.md").read_text() == "# shared\n"
    assert (root / "alias" / "__init__.py").is_file()

    (project / "outside-dir").symlink_to(tmp_path)
    with pytest.raises(PackError, match="outside-dir"):
        pack_source(project, tmp_path)


def test_special_files_are_left_out_and_sdists_go_as_they_are(tmp_path: Path) -> None:
    project = setuptools_project(tmp_path / "special", name="special")
    os.mkfifo(project / "pipe")
    packed = pack_source(project, tmp_path)
    assert "special/pipe" not in _names(packed.path)
    sdist = tmp_path / "special-1.0.tar.gz"
    sdist.write_bytes(packed.path.read_bytes())
    as_is = pack_source(sdist, tmp_path / "unused")
    assert (as_is.kind, as_is.path, as_is.digest) == ("sdist", sdist, packed.digest)
    with pytest.raises(PackError, match="neither a project folder nor an sdist"):
        pack_source(project / "pyproject.toml", tmp_path)
    with pytest.raises(PackError, match="does not exist"):
        pack_source(tmp_path / "missing", tmp_path)
