"""The source fingerprint: what it covers, what it leaves out, and the stat index."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from buildd_server.sources import fingerprints
from buildd_server.sources.fingerprints import TreeIndex


def _tree(root: Path) -> Path:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "x"\n')
    (root / "pkg" / "__init__.py").write_text('__version__ = "1.0"\n')
    (root / "pkg" / "sub" / "data.txt").write_text("data\n")
    (root / "README.md").write_text("readme\n")
    return root


@pytest.fixture
def index() -> TreeIndex:
    return TreeIndex()


def _digest(index: TreeIndex, root: Path) -> str:
    found = index.fingerprint(root)
    assert found is not None
    return found.digest


def test_same_content_same_digest_even_as_a_fresh_copy(index: TreeIndex, tmp_path: Path) -> None:
    root = _tree(tmp_path / "p")
    first = _digest(index, root)
    assert _digest(index, root) == first
    shutil.rmtree(root)
    _tree(tmp_path / "p")
    assert _digest(index, root) == first
    # A second index (another daemon) agrees: content decides, not stat.
    assert _digest(TreeIndex(), root) == first


@pytest.mark.parametrize(
    "change",
    [
        lambda r: (r / "pkg" / "__init__.py").write_text('__version__ = "1.1"\n'),
        lambda r: (r / "README.md").write_text("README\n"),  # same size
        lambda r: (r / "new.txt").write_text(""),
        lambda r: (r / "pkg" / "sub" / "data.txt").unlink(),
        lambda r: (r / "pkg" / "sub" / "data.txt").chmod(0o755),
        lambda r: (r / "pkg" / "empty").mkdir() or (r / "pkg" / "empty" / "f").write_text("x"),
        lambda r: (r / "link").symlink_to("README.md"),
        lambda r: (r / "pkg" / "build").mkdir() or (r / "pkg" / "build" / "m.py").write_text(""),
    ],
    ids=["content", "same-size", "new-file", "removed", "mode", "new-folder", "link", "pkg-build"],
)
def test_every_change_of_the_tree_counts(index: TreeIndex, tmp_path: Path, change: object) -> None:
    root = _tree(tmp_path / "p")
    before = _digest(index, root)
    change(root)  # type: ignore[operator]
    assert _digest(index, root) != before


def test_same_size_same_mtime_rewrite_is_seen(index: TreeIndex, tmp_path: Path) -> None:
    root = _tree(tmp_path / "p")
    target = root / "pkg" / "__init__.py"
    before = _digest(index, root)
    st = target.stat()
    target.write_text('__version__ = "2.0"\n')
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # the editor kept the mtime
    assert _digest(index, root) != before


@pytest.mark.parametrize(
    "where",
    [
        "build/lib/x.py",
        "dist/x-1.0.whl",
        ".eggs/setuptools_scm/x.py",
        "x.egg-info/PKG-INFO",
        "pkg/x.egg-info/PKG-INFO",
        "pkg/__pycache__/x.pyc",
        ".mypy_cache/x.json",
        ".tox/py/x",
        ".git/objects/ab/cdef",
        "pkg/.git/HEAD",
    ],
)
def test_outputs_and_caches_do_not_count(index: TreeIndex, tmp_path: Path, where: str) -> None:
    root = _tree(tmp_path / "p")
    before = _digest(index, root)
    (root / where).parent.mkdir(parents=True, exist_ok=True)
    (root / where).write_text("anything")
    assert _digest(index, root) == before


def test_a_virtualenv_inside_the_tree_is_skipped(index: TreeIndex, tmp_path: Path) -> None:
    root = _tree(tmp_path / "p")
    (root / ".venv" / "lib").mkdir(parents=True)
    (root / ".venv" / "pyvenv.cfg").write_text("home = /usr\n")
    before = _digest(index, root)
    (root / ".venv" / "lib" / "site.py").write_text("x")
    assert _digest(index, root) == before


def _git_tree(root: Path) -> Path:
    _tree(root)
    git = root / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "refs" / "tags").mkdir()
    (git / "objects").mkdir()
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text("a" * 40 + "\n")
    return root


@pytest.mark.parametrize(
    "change",
    [
        lambda g: (g / "refs" / "tags" / "v1.0").write_text("b" * 40 + "\n"),
        lambda g: (g / "refs" / "heads" / "main").write_text("c" * 40 + "\n"),
        lambda g: (g / "HEAD").write_text("d" * 40 + "\n"),
        lambda g: (g / "packed-refs").write_text("e" * 40 + " refs/tags/v2\n"),
        lambda g: (g / "index").write_bytes(b"DIRC"),
        lambda g: (g / "shallow").write_text("f" * 40 + "\n"),
    ],
    ids=["tag", "commit", "detached", "packed-refs", "index", "shallow"],
)
def test_git_state_counts(index: TreeIndex, tmp_path: Path, change: object) -> None:
    root = _git_tree(tmp_path / "repo")
    before = _digest(index, root)
    change(root / ".git")  # type: ignore[operator]
    assert _digest(index, root) != before


def test_a_project_inside_a_repository_covers_the_repository(
    index: TreeIndex, tmp_path: Path
) -> None:
    repo = _git_tree(tmp_path / "repo")
    project = _tree(repo / "sub" / "project")
    before = _digest(index, project)
    # A tag, and an edit outside the project: both reach its version's dirt.
    (repo / ".git" / "refs" / "tags" / "v1").write_text("b" * 40 + "\n")
    tagged = _digest(index, project)
    assert tagged != before
    (repo / "elsewhere.txt").write_text("dirty")
    assert _digest(index, project) != tagged


def test_a_linked_worktree_reads_its_gitdir(index: TreeIndex, tmp_path: Path) -> None:
    main = _git_tree(tmp_path / "main")
    gitdir = main / ".git" / "worktrees" / "wt"
    gitdir.mkdir(parents=True)
    (gitdir / "HEAD").write_text("ref: refs/heads/topic\n")
    (gitdir / "commondir").write_text("../..\n")
    worktree = _tree(tmp_path / "wt")
    (worktree / ".git").write_text(f"gitdir: {gitdir}\n")
    before = _digest(index, worktree)
    (main / ".git" / "refs" / "heads" / "topic").write_text("a" * 40 + "\n")
    moved = _digest(index, worktree)
    assert moved != before
    (gitdir / "HEAD").write_text("b" * 40 + "\n")
    assert _digest(index, worktree) != moved


def test_the_daemons_environment_counts(
    index: TreeIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _tree(tmp_path / "p")
    before = _digest(index, root)
    monkeypatch.setenv("SETUPTOOLS_SCM_PRETEND_VERSION", "9.9")
    assert _digest(index, root) != before


def test_user_configuration_outside_the_tree_counts(
    index: TreeIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    root = _tree(tmp_path / "p")
    before = _digest(index, root)
    monkeypatch.setenv("HOME", str(home))  # same environment, only the file is new
    (home / ".pydistutils.cfg").write_text("[egg_info]\ntag_build = .dev\n")
    assert _digest(index, root) != before


def test_only_changed_files_are_read_again(tmp_path: Path) -> None:
    index = TreeIndex(racy_ns=0)  # every stat trusted at once
    root = _tree(tmp_path / "p")
    first = index.fingerprint(root)
    assert first is not None
    assert first.hashed == first.files
    again = index.fingerprint(root)
    assert again is not None
    assert again.hashed == 0
    (root / "README.md").write_text("changed\n")
    third = index.fingerprint(root)
    assert third is not None
    assert third.hashed == 1


def test_a_recently_written_file_is_read_on_every_walk(index: TreeIndex, tmp_path: Path) -> None:
    # Written within the racy window: a second write in the same clock tick
    # could keep its size and times, so its stat proves nothing yet.
    root = _tree(tmp_path / "p")
    first = index.fingerprint(root)
    again = index.fingerprint(root)
    assert first is not None
    assert again is not None
    assert again.hashed >= 4
    assert again.digest == first.digest


def test_a_tree_too_large_is_not_fingerprinted(tmp_path: Path) -> None:
    root = _tree(tmp_path / "p")
    for i in range(10):
        (root / f"f{i}").write_text(str(i))
    assert TreeIndex(max_files=5).fingerprint(root) is None
    assert TreeIndex(max_files=50).fingerprint(root) is not None


def test_a_symlink_loop_ends(index: TreeIndex, tmp_path: Path) -> None:
    root = _tree(tmp_path / "p")
    (root / "pkg" / "loop").symlink_to("..")
    assert _digest(index, root)


def test_find_vcs_walks_up(tmp_path: Path) -> None:
    repo = _git_tree(tmp_path / "repo")
    inner = repo / "a" / "b"
    inner.mkdir(parents=True)
    assert fingerprints.find_vcs(str(inner)) == ("git", str(repo / ".git"), str(repo))
    assert fingerprints.find_vcs(str(tmp_path)) is None or not str(tmp_path).startswith(str(repo))
