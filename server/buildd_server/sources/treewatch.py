"""Watching source trees for changes: one watchfiles watcher per tree, shared.

However many metadata watches (of any session) follow one tree, the daemon
holds one ``watchfiles.RustNotify`` for it: one inotify instance (Linux
allows 128 per user by default) and one thread, started with the first
watch and stopped with the last. A batch of changes is what watchfiles
groups: events until 50 ms pass without another, at most one second.

Only changes that can reach a hook's answer are passed on: the same rules
as the source fingerprint (fingerprints.py) leave out caches and build
outputs, and inside a repository's metadata folder only HEAD, the index,
refs and the other files the fingerprint reads count.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING

import structlog

from .. import errors
from .fingerprints import GIT_FILES, HG_SKIPPED, SKIPPED_AT_ROOT, find_vcs, skipped

if TYPE_CHECKING:
    from collections.abc import Callable

log = structlog.get_logger("buildd.treewatch")

# watchfiles' grouping: a batch ends after this much quiet, or this long at most.
STEP_MS = 50
DEBOUNCE_MS = 1000
# How often the watcher thread looks at its stop event while nothing happens.
_TIMEOUT_MS = 1000


class _Tree:
    """One watched tree: its watchfiles watcher, its thread, its listeners."""

    def __init__(self, root: str) -> None:
        from watchfiles._rust_notify import RustNotify

        self.root = root
        self.vcs = find_vcs(root)
        paths = [root]
        meta = self.vcs[1] if self.vcs is not None else None
        if meta is not None and not meta.startswith(root + os.sep):
            paths.append(meta)  # a repository above the project, or a linked worktree
        self.listeners: dict[int, Callable[[frozenset[str], float], None]] = {}
        self.stop = threading.Event()
        try:
            self.notify = RustNotify(paths, False, False, 300, True, True)
        except FileNotFoundError as exc:
            raise errors.SourceNotFound(f"{root}: does not exist: {exc}", path=root) from exc
        except Exception as exc:
            # inotify's instance or watch limits (fs.inotify.max_user_*).
            raise errors.ResourceExhausted(f"cannot watch {root}: {exc}", path=root) from exc
        self.thread = threading.Thread(
            target=self._loop, name=f"buildd-watch-{os.path.basename(root)[:20]}", daemon=True
        )
        self.thread.start()

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
                for listener in list(self.listeners.values()):
                    try:
                        listener(changed, seen)
                    except Exception:
                        log.exception("watch_listener_failed", root=self.root)
        except Exception:
            log.exception("tree_watch_failed", root=self.root)
        finally:
            self.notify.close()


class TreeWatchers:
    """The daemon's tree watchers, keyed by the tree's real path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._trees: dict[str, _Tree] = {}
        self._next = 0

    def subscribe(self, root: str, listener: Callable[[frozenset[str], float], None]) -> int:
        """Call ``listener(paths, monotonic time)`` for each batch of relevant changes.

        Returns a token for ``unsubscribe``. The watcher is in place when this
        returns: a change made afterwards is seen.
        """
        with self._lock:
            tree = self._trees.get(root)
            if tree is None:
                tree = self._trees[root] = _Tree(root)
                log.info("tree_watch_started", root=root)
            self._next += 1
            tree.listeners[self._next] = listener
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
        with self._lock:
            return len(self._trees)
