"""What a session keeps per source, and its folders on disk.

Each source of a session has a ``SourceState`` (its lock, affinity instance,
prepared metadata, cached answers, unpacked sdist or upload); the session's
``work/`` folder holds what its requests unpack, prepare and stage. Both go
when the session ends.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from .. import errors
from ..artifacts import checks
from ..sources.blobs import BlobStore, is_digest, unpack_upload
from ..sources.sources import is_sdist, unpack_sdist
from .requests import SourceState

if TYPE_CHECKING:
    from ..environments.environments import Environment
    from .sessions import Session


class Workspace:
    """Per-session source states and work folders."""

    def __init__(self, blobs: BlobStore | None) -> None:
        # Uploaded sources (digest sources); None: this service takes none.
        self._blobs = blobs
        self._lock = threading.Lock()
        self._sources: dict[str, dict[str, SourceState]] = {}

    def state(self, session_id: str, source: str) -> SourceState:
        with self._lock:
            per_session = self._sources.setdefault(session_id, {})
            return per_session.setdefault(source, SourceState())

    def forget(self, session_id: str, source: str) -> None:
        with self._lock:
            self._sources.get(session_id, {}).pop(source, None)

    def session_ended(self, session_id: str) -> None:
        with self._lock:
            self._sources.pop(session_id, None)

    def sources_of(self, session_id: str, env: Environment) -> list[str]:
        """The sources of a session whose affinity points at ``env``."""
        with self._lock:
            states = list(self._sources.get(session_id, {}).items())
        return sorted(src for src, state in states if state.environment is env and "\0" not in src)

    def work_dir(self, session: Session) -> Path:
        work = session.directory / "work"
        work.mkdir(mode=0o700, parents=True, exist_ok=True)
        return work

    def remove_session_dir(self, session: Session) -> None:
        shutil.rmtree(session.directory / "work", ignore_errors=True)
        # Environments still leased live under envs/ and are removed at release.
        remove_empty(session.directory / "envs", session.directory)

    def project_root(self, source: str, session: Session, state: SourceState) -> Path:
        """The tree to build: the path itself, or an sdist or upload unpacked once."""
        if is_digest(source):
            return unpack_upload(self._blobs, source, self.work_dir(session), state)
        path = Path(source)
        if not path.is_absolute():
            raise errors.InvalidRequest(f"source.path: {source!r} is not an absolute path")
        if not is_sdist(path):
            return path
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if state.unpacked is not None and state.unpacked[0] == stamp and state.unpacked[1].is_dir():
            return state.unpacked[1]
        dest = Path(tempfile.mkdtemp(prefix="sdist-", dir=self.work_dir(session)))
        try:
            root = unpack_sdist(path, dest)
            checks.check_sdist_source(path, root)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        if state.unpacked is not None:
            # An older unpacking of this sdist (the file changed since).
            shutil.rmtree(state.unpacked[1].parent, ignore_errors=True)
        state.unpacked = (stamp, root)
        return root


def artifact_folder(requested: str, source: Path) -> Path:
    """Where a build's artifacts go: the folder asked for, else next to the source."""
    if not requested:
        # <source>/dist for a tree; for an sdist, the folder it lies in
        # (its unpacked tree is the session's and goes away with it).
        return source.parent if is_sdist(source) else source / "dist"
    path = Path(requested)
    if not path.is_absolute():
        raise errors.InvalidRequest(f"output_directory: {requested!r} is not an absolute path")
    if path.exists() and not path.is_dir():
        raise errors.InvalidRequest(f"output_directory: {requested} exists and is not a folder")
    return path


def remove_empty(*folders: Path) -> None:
    """Remove each folder in turn while it is empty; stop at the first that is not."""
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            break
