"""The source fingerprint: one digest of everything a hook's answer may depend on.

A hook's answer (the dynamic requirements, the prepared metadata) may be
reused only while its inputs are unchanged (design.md, "Caches and watches").
Those inputs are, besides the environment instance and the config settings
(the caller keys on those):

- every file of the project tree, by content, except the folders listed in
  docs/performance.md ("Metadata cache"): version-control folders, Python
  caches, virtualenvs, `*.egg-info`, and `build/`, `dist/` and `.eggs/` at the
  project root (backends and buildd write there; what they hold is output);
- the version-control state backends read (setuptools-scm, hatch-vcs,
  versioningit): for the nearest `.git` at or above the project, `HEAD`, the
  index, every ref, `packed-refs`, `shallow` and the repository's config; the
  worktree walked from the repository's top, not only the project, because a
  version's "dirty" suffix depends on all of it. Mercurial's `.hg` likewise,
  its store left out;
- user configuration files backends read outside the tree
  (`~/.pydistutils.cfg`, git's global and system config);
- the daemon's environment variables, which every hook inherits;
- today's date (UTC and local): some versions carry it (setuptools-scm's
  dirty versions, `tag_date`).

Content, not modification times, decides: a fresh copy of an unchanged tree
has the same fingerprint. Reading every file each time would cost too much,
so a stat index (git's index in spirit) keeps each file's digest with the
(size, mtime, ctime, inode, device, mode) it was read under, and re-reads only
files whose stat changed. A file changed within ``RACY_NS`` of a walk is
never trusted from the index (file times are coarse: a second write in the
same tick keeps them), and neither is one that changed while it was read.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

# Folders skipped wherever they are: version control (its state is added on
# its own, below), Python and tool caches, build metadata setuptools rewrites.
SKIPPED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".bzr",
        "_darcs",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".hypothesis",
        ".tox",
        ".nox",
    }
)
SKIPPED_SUFFIXES = (".egg-info",)
# Skipped at the project root only: what backends (and buildd's own default
# output folder) write there. Elsewhere a folder named build is a package.
SKIPPED_AT_ROOT = frozenset({"build", "dist", ".eggs", "pip-wheel-metadata"})
# A folder holding one of these is a virtualenv or conda environment.
ENVIRONMENT_MARKERS = ("pyvenv.cfg", "conda-meta")
# Files of .git that say which commit, tags, branch and dirt a tool sees;
# refs/ is walked on top of these. Objects are immutable and named by refs.
GIT_FILES = ("HEAD", "index", "packed-refs", "shallow", "config", "config.worktree", "commondir")
HG_SKIPPED = frozenset({"store", "cache", "wcache", "undo.desc", "undo.dirstate"})
# Timestamps are coarse (a jiffy on Linux, 2 s on FAT): a file written this
# recently may be written again without its stat changing.
RACY_NS = 2_000_000_000
# Past this many files a tree is not fingerprinted: its answers are not cached.
MAX_FILES = 200_000
# Files indexed in the whole daemon; the least recently walked roots go first.
MAX_INDEXED = 1_000_000

_CHUNK = 1 << 20
StatKey = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class Fingerprint:
    """A tree's digest, with what it took to compute it."""

    digest: str
    files: int  # files and links covered
    hashed: int  # of which were read this time
    seconds: float


class TooLarge(Exception):
    """The tree holds more than MAX_FILES files: it is not fingerprinted."""


class _RootIndex:
    """The stat index of one walked root."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[str, tuple[StatKey, bytes]] = {}


class TreeIndex:
    """Fingerprints source trees, re-reading only files whose stat changed."""

    def __init__(
        self,
        *,
        max_files: int = MAX_FILES,
        max_indexed: int = MAX_INDEXED,
        racy_ns: int = RACY_NS,
    ) -> None:
        self.max_files = max_files
        self.racy_ns = racy_ns
        self.max_indexed = max_indexed
        self._lock = threading.Lock()
        self._roots: OrderedDict[str, _RootIndex] = OrderedDict()

    def fingerprint(self, root: Path, extra: bytes = b"") -> Fingerprint | None:
        """The fingerprint of the project at ``root``; None when it cannot be computed.

        ``extra`` is mixed in (the caller's other inputs). None: too many
        files, or the tree is unreadable; the answer must then not be cached.
        """
        started = time.monotonic()
        project = os.path.realpath(root)
        vcs = find_vcs(project)
        # A version's dirt depends on the whole worktree, not only the project.
        top = project if vcs is None else vcs[2]
        index = self._index_for(top)
        walker = _Walker(index, time.time_ns() - self.racy_ns, self.max_files)
        try:
            with index.lock:
                walker.walk_tree(top, project)
                if vcs is not None:
                    walker.add_vcs(vcs)
                walker.add_outside(_outside_files())
                index.entries = walker.seen
        except (TooLarge, OSError):
            return None
        self._trim()
        digest = hashlib.sha256()
        for item in (project.encode("utf-8", "surrogateescape"), environment_digest(), _dates()):
            digest.update(item + b"\0")
        digest.update(extra + b"\0")
        for line in sorted(walker.lines):
            digest.update(line)
        return Fingerprint(
            digest.hexdigest(), len(walker.lines), walker.hashed, time.monotonic() - started
        )

    def forget(self, root: Path) -> None:
        with self._lock:
            self._roots.pop(os.path.realpath(root), None)

    def indexed(self) -> int:
        with self._lock:
            return sum(len(r.entries) for r in self._roots.values())

    def _index_for(self, top: str) -> _RootIndex:
        with self._lock:
            index = self._roots.get(top)
            if index is None:
                index = self._roots[top] = _RootIndex()
            self._roots.move_to_end(top)
            return index

    def _trim(self) -> None:
        with self._lock:
            total = sum(len(r.entries) for r in self._roots.values())
            while total > self.max_indexed and len(self._roots) > 1:
                _, dropped = self._roots.popitem(last=False)
                total -= len(dropped.entries)


class _Walker:
    """One walk: the lines of the fingerprint, and the index entries it confirmed."""

    def __init__(self, index: _RootIndex, racy_after: int, max_files: int) -> None:
        self.old = index.entries
        self.seen: dict[str, tuple[StatKey, bytes]] = {}
        self.lines: list[bytes] = []
        self.hashed = 0
        self.racy_after = racy_after
        self.max_files = max_files

    def walk_tree(self, top: str, project: str) -> None:
        # The hot loop of every cached request: one scandir per folder, one
        # lstat per file, a dict lookup; everything else only when it changed.
        visited: set[tuple[int, int]] = set()
        stack = [top]
        cut = len(top) + 1
        old, seen, lines = self.old, self.seen, self.lines
        while stack:
            folder = stack.pop()
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in visited:
                continue  # a symlink loop, or a folder reached twice through links
            visited.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = list(it)
            if folder not in (top, project) and any(
                entry.name in ENVIRONMENT_MARKERS for entry in entries
            ):
                lines.append(_line("venv", folder[cut:], ""))
                continue
            at_root = folder == project
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if not skipped(entry.name, at_root):
                        stack.append(entry.path)
                    continue
                if entry.is_symlink():
                    self._link(entry.path, cut, stack, at_root)
                    continue
                path = entry.path
                fst = entry.stat(follow_symlinks=False)
                known = old.get(path)
                if known is not None and known[0] == (
                    fst.st_size,
                    fst.st_mtime_ns,
                    fst.st_ctime_ns,
                    fst.st_ino,
                    fst.st_dev,
                    fst.st_mode,
                ):
                    seen[path] = known
                    lines.append(known[1])
                else:
                    self._file(path, path[cut:], fst)
            if len(lines) > self.max_files:
                raise TooLarge(folder)

    def _link(self, path: str, cut: int, stack: list[str], at_root: bool) -> None:
        target = os.readlink(path)
        try:
            st = os.stat(path)
        except OSError:
            self.lines.append(_line("link", path[cut:], target))  # dangling
            return
        if stat.S_ISDIR(st.st_mode):
            self.lines.append(_line("link", path[cut:], target))
            if not skipped(os.path.basename(path), at_root):
                stack.append(path)
            return
        self.lines.append(_line("link", path[cut:], target))
        self._file(path, path[cut:], st)

    def _file(self, path: str, name: str, st: os.stat_result) -> None:
        if len(self.lines) >= self.max_files:
            raise TooLarge(path)
        if not stat.S_ISREG(st.st_mode):
            self.lines.append(_line("special", name, oct(stat.S_IFMT(st.st_mode))))
            return
        key: StatKey = (
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_ino,
            st.st_dev,
            st.st_mode,
        )
        known = self.old.get(path)
        if known is not None and known[0] == key:
            self.seen[path] = known
            self.lines.append(known[1])
            return
        digest = _hash_file(path)
        self.hashed += 1
        line = _line("file", name, f"{stat.S_IMODE(st.st_mode):o} {digest}")
        self.lines.append(line)
        try:
            after = os.stat(path)
        except OSError:
            return
        unchanged = (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == key[:3]
        if unchanged and max(st.st_mtime_ns, st.st_ctime_ns) < self.racy_after:
            self.seen[path] = (key, line)

    def add_vcs(self, vcs: tuple[str, str, str]) -> None:
        kind, meta, _top = vcs
        if kind == "hg":
            self._add_folder(meta, "hg", skip=HG_SKIPPED)
            return
        gitdir = meta
        common = gitdir
        try:
            with open(os.path.join(gitdir, "commondir"), encoding="utf-8") as fh:
                common = os.path.normpath(os.path.join(gitdir, fh.read().strip()))
        except OSError:
            pass
        for folder, label in ((gitdir, "git"), (common, "git-common")):
            for name in GIT_FILES:
                self._optional(os.path.join(folder, name), f"{label}/{name}")
            refs = os.path.join(folder, "refs")
            if os.path.isdir(refs):
                self._add_folder(refs, f"{label}/refs", skip=frozenset())
            if common == gitdir:
                break

    def _add_folder(self, folder: str, label: str, skip: frozenset[str]) -> None:
        stack = [folder]
        cut = len(folder) + 1
        while stack:
            current = stack.pop()
            with os.scandir(current) as it:
                for entry in it:
                    if entry.name in skip and current == folder:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        self._file(entry.path, f"{label}/{entry.path[cut:]}", entry.stat())

    def add_outside(self, paths: list[str]) -> None:
        for path in paths:
            self._optional(path, f"outside:{path}")

    def _optional(self, path: str, name: str) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return
        if stat.S_ISREG(st.st_mode):
            self._file(path, name, st)


def skipped(name: str, at_root: bool) -> bool:
    return (
        name in SKIPPED_DIRS
        or name.endswith(SKIPPED_SUFFIXES)
        or (at_root and name in SKIPPED_AT_ROOT)
    )


def _line(kind: str, name: str, value: str) -> bytes:
    return f"{kind}\0{name}\0{value}\n".encode("utf-8", "surrogateescape")


def _hash_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def find_vcs(project: str) -> tuple[str, str, str] | None:
    """(kind, metadata folder, worktree top) of the repository holding ``project``.

    kind is "git" (a .git folder), "git-worktree" (a .git file naming its
    gitdir: linked worktrees, submodules) or "hg". Searched upward, as git
    and hg do themselves.
    """
    current = project
    while True:
        dot_git = os.path.join(current, ".git")
        if os.path.isdir(dot_git):
            return ("git", dot_git, current)
        if os.path.isfile(dot_git):
            gitdir = _read_gitdir(dot_git)
            if gitdir is not None:
                return ("git-worktree", gitdir, current)
        dot_hg = os.path.join(current, ".hg")
        if os.path.isdir(dot_hg):
            return ("hg", dot_hg, current)
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def _read_gitdir(dot_git: str) -> str | None:
    try:
        with open(dot_git, encoding="utf-8") as fh:
            text = fh.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text.startswith("gitdir:"):
        return None
    return os.path.normpath(os.path.join(os.path.dirname(dot_git), text[7:].strip()))


def _outside_files() -> list[str]:
    home = os.environ.get("HOME") or os.path.expanduser("~")
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    return [
        os.path.join(home, ".pydistutils.cfg"),
        os.path.join(home, ".gitconfig"),
        os.path.join(xdg, "git", "config"),
        "/etc/gitconfig",
    ]


def environment_digest() -> bytes:
    """The daemon's variables, which every hook inherits (hooks.hook_environment)."""
    items = sorted(os.environ.items())
    return hashlib.sha256(json.dumps(items).encode("utf-8", "surrogateescape")).digest()


def _dates() -> bytes:
    now = time.time()
    return (
        time.strftime("%Y%m%d", time.gmtime(now)).encode()
        + time.strftime("%Y%m%d", time.localtime(now)).encode()
    )
