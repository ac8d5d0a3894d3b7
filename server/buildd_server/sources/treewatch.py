"""Watching source trees for changes: one watchfiles watcher per tree, shared.

However many metadata watches (of any session) follow one tree, the daemon
holds one ``watchfiles.RustNotify`` for it: one inotify instance (Linux
allows 128 per user by default, shared with every other program of that
user) and one thread, started with the first watch and stopped with the
last. The number of trees watched at once is capped (``--max-watched-trees``)
so that the daemon alone never uses the user's instances up. A batch of
changes is what watchfiles groups: events until 50 ms pass without another,
at most one second.

When the system refuses a watcher (no inotify instance left, or no inotify
watch left for a folder, now or when a folder is created later), the watches
of that tree end with RESOURCE_EXHAUSTED naming the tree and the sysctl to
raise; nothing falls back to polling (docs/configuration.md says why).

Only changes that can reach a hook's answer are passed on: the same rules
as the source fingerprint (fingerprints.py) leave out caches and build
outputs, and inside a repository's metadata folder only HEAD, the index,
refs and the other files the fingerprint reads count.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import stat
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import structlog

from .. import errors
from . import inotifyinfo
from .fingerprints import GIT_FILES, HG_SKIPPED, SKIPPED_AT_ROOT, find_vcs, skipped

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

log = structlog.get_logger("buildd.treewatch")

# watchfiles' grouping: a batch ends after this much quiet, or this long at most.
STEP_MS = 50
DEBOUNCE_MS = 1000
# How often the watcher thread looks at its stop event while nothing happens.
_TIMEOUT_MS = 1000
# The default of --max-watched-trees: a quarter of Linux's default 128
# inotify instances per user, which the user's editors and tools share.
MAX_TREES = 32
# A new folder's watch is looked for this many times, 50 ms apart: notify
# adds it right after passing the folder's event on, but its thread may be
# descheduled on a busy machine, and a false alarm would end every watch of
# the tree. At most this many folders are checked per batch.
_CHECKS = 20
_MAX_CHECKED = 10_000
_ADDED = 1  # watchfiles.Change.added


class Notifier(Protocol):
    """What the daemon uses of ``watchfiles._rust_notify.RustNotify``."""

    def watch(
        self, debounce_ms: int, step_ms: int, timeout_ms: int, stop_event: threading.Event
    ) -> set[tuple[int, str]] | str: ...

    def close(self) -> None: ...


def rust_notify(paths: Sequence[str], ignore_permission_denied: bool) -> Notifier:
    """watchfiles' native watcher (inotify on Linux) of ``paths``, recursively."""
    from watchfiles._rust_notify import RustNotify

    notifier: Notifier = RustNotify(list(paths), False, False, 300, True, ignore_permission_denied)
    return notifier


@dataclass(frozen=True)
class _Listener:
    changed: Callable[[frozenset[str], float], None]
    failed: Callable[[errors.BuilddError], None]


class _Tree:
    """One watched tree: its watchfiles watcher, its thread, its listeners."""

    def __init__(
        self,
        root: str,
        make: Callable[[Sequence[str], bool], Notifier],
        on_failure: Callable[[_Tree, errors.BuilddError], None],
    ) -> None:
        self.root = root
        self.vcs = find_vcs(root)
        paths = [root]
        meta = self.vcs[1] if self.vcs is not None else None
        if meta is not None and not meta.startswith(root + os.sep):
            paths.append(meta)  # a repository above the project, or a linked worktree
        self.listeners: dict[int, _Listener] = {}
        self.stop = threading.Event()
        self._on_failure = on_failure
        before = inotifyinfo.instance_fds()
        self.notify = _create(root, paths, make)
        # Its instance in /proc, to check that new folders get a watch (None: cannot).
        self.fd = inotifyinfo.find_instance(root, before) if make is rust_notify else None
        self.thread = threading.Thread(
            target=self._loop, name=f"buildd-watch-{os.path.basename(root)[:20]}", daemon=True
        )
        try:
            self.thread.start()
        except RuntimeError as exc:  # no thread left: the inotify instance must not stay
            self.notify.close()
            raise errors.ResourceExhausted(
                f"cannot watch {root}: no thread for its watcher: {exc}", path=root
            ) from exc

    def relevant(self, path: str) -> bool:
        if path.startswith(self.root + os.sep):
            parts = path[len(self.root) + 1 :].split(os.sep)
            if parts[0] in SKIPPED_AT_ROOT:
                return False
            if parts[0] not in (".git", ".hg"):
                return not any(skipped(part, False) for part in parts[:-1]) and not skipped(
                    parts[-1], False
                )
        if self.vcs is None:
            return False
        kind, meta, _top = self.vcs
        if not path.startswith(meta + os.sep):
            return False
        rel = path[len(meta) + 1 :]
        if kind == "hg":
            return rel.split(os.sep)[0] not in HG_SKIPPED
        return rel in GIT_FILES or rel.startswith("refs" + os.sep) or rel == "refs"

    def _loop(self) -> None:
        try:
            while not self.stop.is_set():
                result = self.notify.watch(DEBOUNCE_MS, STEP_MS, _TIMEOUT_MS, self.stop)
                if isinstance(result, str):
                    continue  # "timeout", "stop" or "signal"
                seen = time.monotonic()
                changed = frozenset(path for _kind, path in result if self.relevant(path))
                if not changed:
                    continue
                added = [path for kind, path in result if kind == _ADDED and path in changed]
                if added and self.fd is not None:
                    self._check_watched(added)
                for listener in list(self.listeners.values()):
                    try:
                        listener.changed(changed, seen)
                    except Exception:
                        log.exception("watch_listener_failed", root=self.root)
        except Exception as exc:
            # The watcher saw an error it cannot recover from (typically no
            # inotify watch left for a new folder): changes may go unseen
            # from now on, so its watches must end rather than wait forever.
            error = refusal(self.root, exc)
            log.warning("tree_watch_failed", root=self.root, error=error.message)
            self._on_failure(self, error)
        finally:
            self.notify.close()

    def _check_watched(self, added: list[str]) -> None:
        """Raise ResourceExhausted when a new folder in ``added`` got no inotify watch."""
        assert self.fd is not None
        folders = _new_folders(added)
        for attempt in range(_CHECKS):
            if not folders:
                return
            inodes = inotifyinfo.watched_inodes(self.fd)
            if inodes is None:
                return
            folders = [(path, ino) for path, ino in folders if ino not in inodes and _is(path, ino)]
            if folders and attempt < _CHECKS - 1:
                self.stop.wait(STEP_MS / 1000)
        if folders:
            raise errors.ResourceExhausted(
                f"cannot watch {self.root}: the system refused an inotify watch for the new "
                f"folder {folders[0][0]}: this user's fs.inotify.max_user_watches is used up; "
                "raise it (sysctl fs.inotify.max_user_watches=524288)",
                path=self.root,
                metadata={"limit": "fs.inotify.max_user_watches"},
            )


def _new_folders(paths: list[str]) -> list[tuple[str, int]]:
    """The readable real folders among ``paths`` and below them, with their inodes."""
    found: list[tuple[str, int]] = []
    stack = list(paths)
    while stack and len(found) < _MAX_CHECKED:
        path = stack.pop()
        try:
            st = os.lstat(path)
        except OSError:
            continue  # gone already
        if not stat.S_ISDIR(st.st_mode) or not os.access(path, os.R_OK | os.X_OK):
            continue  # inotify needs read access: an unreadable folder is not watched
        found.append((path, st.st_ino))
        try:
            with os.scandir(path) as entries:
                stack.extend(
                    e.path
                    for e in entries
                    if e.is_dir(follow_symlinks=False) and not skipped(e.name, False)
                )
        except OSError:
            continue
    return found


def _is(path: str, inode: int) -> bool:
    try:
        return os.lstat(path).st_ino == inode
    except OSError:
        return False


def _create(
    root: str, paths: Sequence[str], make: Callable[[Sequence[str], bool], Notifier]
) -> Notifier:
    # watchfiles' ignore_permission_denied ignores every error of adding a
    # folder, inotify's watch limit included: ask for errors first, and
    # ignore them only when an unreadable folder is what failed.
    try:
        return make(paths, False)
    except FileNotFoundError as exc:
        raise errors.SourceNotFound(f"{root}: does not exist: {exc}", path=root) from exc
    except PermissionError as exc:
        log.warning("tree_watch_partial", root=root, error=str(exc))
    except Exception as exc:
        raise refusal(root, exc) from exc
    try:
        return make(paths, True)
    except FileNotFoundError as exc:
        raise errors.SourceNotFound(f"{root}: does not exist: {exc}", path=root) from exc
    except Exception as exc:
        raise refusal(root, exc) from exc


def refusal(root: str, exc: Exception) -> errors.BuilddError:
    """The error a watch of ``root`` ends with when its watcher failed with ``exc``.

    watchfiles passes the system's error on as text only (``... (os error
    24)``, notify's ``OS file watch limit reached``), so the text is read.
    """
    if isinstance(exc, errors.BuilddError):
        return exc
    text = str(exc)
    found = re.search(r"os error (\d+)", text)
    code = int(found.group(1)) if found else None
    if code == errno.ENFILE:
        why = "the system's open-file table is full (fs.file-max)"
        sysctl = "fs.file-max"
    elif code == errno.EMFILE:
        if _open_files() >= resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1:
            why = (
                "the daemon has used up its open-file limit (RLIMIT_NOFILE, `ulimit -n`); "
                "raise it for the daemon"
            )
            sysctl = "RLIMIT_NOFILE"
        else:
            why = (
                "the system refused another inotify instance: this user's "
                "fs.inotify.max_user_instances is used up "
                f"(this daemon holds {len(inotifyinfo.instance_fds())}); raise it "
                "(sysctl fs.inotify.max_user_instances=512) or close other watchers"
            )
            sysctl = "fs.inotify.max_user_instances"
    elif code == errno.ENOSPC or "watch limit" in text or "MaxFilesWatch" in text:
        why = (
            "the system refused another inotify watch (one per folder): this user's "
            "fs.inotify.max_user_watches is used up; raise it "
            "(sysctl fs.inotify.max_user_watches=524288)"
        )
        sysctl = "fs.inotify.max_user_watches"
    else:
        return errors.BuilddError(f"cannot watch {root}: {text}", path=root)
    return errors.ResourceExhausted(
        f"cannot watch {root}: {why} ({text})", path=root, metadata={"limit": sysctl}
    )


def _open_files() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


class TreeWatchers:
    """The daemon's tree watchers, keyed by the tree's real path, at most ``max_trees``."""

    def __init__(
        self,
        max_trees: int = MAX_TREES,
        make: Callable[[Sequence[str], bool], Notifier] = rust_notify,
    ) -> None:
        self.max_trees = max_trees
        self._make = make
        self._lock = threading.Lock()
        self._trees: dict[str, _Tree] = {}
        self._next = 0

    def subscribe(
        self,
        root: str,
        changed: Callable[[frozenset[str], float], None],
        failed: Callable[[errors.BuilddError], None],
    ) -> int:
        """Call ``changed(paths, monotonic time)`` for each batch of relevant changes.

        ``failed(error)`` is called instead, once, when the tree's watcher
        fails; the listener is then gone. Returns a token for
        ``unsubscribe``. The watcher is in place when this returns: a change
        made afterwards is seen. Raises ResourceExhausted when the tree would
        be one over the cap, or the system refuses a watcher.
        """
        with self._lock:
            tree = self._trees.get(root)
            if tree is None:
                if len(self._trees) >= self.max_trees:
                    raise errors.ResourceExhausted(
                        f"cannot watch {root}: the daemon already watches {len(self._trees)} "
                        f"trees, at most {self.max_trees} are allowed "
                        f"(--max-watched-trees={self.max_trees}); end watches of other trees, "
                        "or ask the operator to raise --max-watched-trees",
                        path=root,
                        metadata={"limit": "--max-watched-trees"},
                        # Another tree's last watch ending frees a place.
                        retry_delay=1.0,
                    )
                tree = self._trees[root] = _Tree(root, self._make, self._failed)
                log.info("tree_watch_started", root=root, trees=len(self._trees))
            self._next += 1
            tree.listeners[self._next] = _Listener(changed, failed)
            return self._next

    def unsubscribe(self, root: str, token: int) -> None:
        """Stop calling that listener; the last one's leaving stops the watcher.

        Never waits: the watcher's thread sees its stop event within 50 ms,
        closes the watcher (its inotify instance) and ends by itself.
        """
        with self._lock:
            tree = self._trees.get(root)
            if tree is None or tree.listeners.pop(token, None) is None or tree.listeners:
                return
            del self._trees[root]
        tree.stop.set()
        log.info("tree_watch_stopped", root=root)

    def watched(self) -> int:
        # No lock: GetStatus asks from the event loop, and subscribe holds the
        # lock while a new tree's folders are walked (a second for a big one).
        return len(self._trees)

    def _failed(self, tree: _Tree, error: errors.BuilddError) -> None:
        with self._lock:
            if self._trees.get(tree.root) is tree:
                del self._trees[tree.root]  # the next watch of it starts afresh
            listeners, tree.listeners = list(tree.listeners.values()), {}
        for listener in listeners:
            try:
                listener.failed(error)
            except Exception:
                log.exception("watch_listener_failed", root=tree.root)
