"""What an environment holds on disk: a digest of its files, and its size.

The digest covers every file, link and folder of the instance (relative path,
type, size, mtime, mode; a link's target), except bytecode caches (written in
the background and by hook calls, and regenerated from the sources they
shadow) and buildd's own files at its root. Recorded when the instance is
made, it is compared on every borrow: a file removed, a ``.pth`` added, a
package upgraded or a file edited in place all change it (rule 5).

It runs on every borrow, so it costs one ``scandir`` per folder and one
``lstat`` per entry and nothing else: about 4 µs per file on a busy 2-core
machine (1.6 ms for a setuptools environment of 364 files, 3 ms for 14 MB and
709 files; see docs/performance.md).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass

# Written by buildd itself, not by the installer: the marker is checked on its
# own, the fork server's empty working folder comes and goes.
OWN_FILES = frozenset(
    {"buildd-env.json", "buildd-env.json.tmp", "buildd-env.json.off", "buildd-lease", ".zygote"}
)
_CACHE = "__pycache__"


@dataclass(frozen=True)
class Survey:
    """One walk of an instance: its digest and the bytes it takes on disk."""

    digest: str
    # Allocated bytes of everything in the folder, bytecode included, each
    # file counted in full even when it is a hard link shared with the
    # installer's cache (see docs/architecture.md, "Sizes on disk").
    size_bytes: int
    files: int


def digest(root: str) -> str:
    """The digest of ``root``'s files, as ``survey`` computes it, without sizes."""
    return _walk(root, sizes=False)[0]


def survey(root: str) -> Survey:
    """Digest and size of ``root`` in one walk (bytecode caches are sized, not digested)."""
    value, size, files = _walk(root, sizes=True)
    return Survey(value, size, files)


def _walk(root: str, *, sizes: bool) -> tuple[str, int, int]:
    # Lines joined as text, sorted per folder: measured faster than hashing
    # tuples, and scandir's order is not the same on every file system.
    hasher = hashlib.blake2b(digest_size=20)
    size = 0
    files = 0
    stack = [root]
    caches: list[str] = []
    while stack:
        folder = stack.pop()
        top = folder == root
        lines = [folder[len(root) :]]
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if top and name in OWN_FILES:
                    continue
                info = entry.stat(follow_symlinks=False)
                mode = info.st_mode
                if sizes:
                    size += info.st_blocks * 512
                if stat.S_ISDIR(mode):
                    if name == _CACHE:
                        if sizes:
                            caches.append(entry.path)
                        continue
                    stack.append(entry.path)
                    lines.append(f"{name}/{mode}")
                elif stat.S_ISLNK(mode):
                    lines.append(f"{name}@{os.readlink(entry.path)}")
                else:
                    files += 1
                    lines.append(f"{name}\0{info.st_size}\0{info.st_mtime_ns}\0{mode}")
        lines.sort()
        hasher.update("\n".join(lines).encode("utf-8", "surrogateescape"))
    for folder in caches:
        size += _blocks(folder)
    return hasher.hexdigest(), size, files


def _blocks(folder: str) -> int:
    total = 0
    stack = [folder]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                info = entry.stat(follow_symlinks=False)
                total += info.st_blocks * 512
                if stat.S_ISDIR(info.st_mode):
                    stack.append(entry.path)
    return total


def own_bytes(folder: str) -> int:
    """Allocated bytes of the files under ``folder`` that have a single link.

    For the installer's cache: a file it shares with instances (by hard link)
    is already counted in each of them.
    """
    total = 0
    stack = [folder]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(info.st_mode):
                stack.append(entry.path)
                total += info.st_blocks * 512
            elif info.st_nlink <= 1:
                total += info.st_blocks * 512
    return total
