"""Metadata watches: a source's metadata, prepared again after each change, pushed on change.

A watch follows one project directory for one session. It prepares the
metadata once, delivers it, then after each batch of relevant changes
(treewatch.py) prepares again through the service, exactly as a
PrepareMetadata request: the session's instance for the source, the usual
exclusive lease, the metadata cache. It delivers an update only when the
METADATA bytes differ from the last ones delivered, when preparing fails
(not twice the same failure in a row), and once more when preparing works
again after a failure.

Nothing here holds a thread while a watch waits: the tree watcher's thread
calls in, and preparing runs on a small shared pool whose threads end when
there is nothing to prepare. A watch prepares at most once at a time; changes
arriving meanwhile lead to one more run after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import structlog

from .. import errors
from ..events import Event, Phase

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..sources.treewatch import TreeWatchers
    from .requests import MetadataOutcome, Request
    from .sessions import SessionRegistry

log = structlog.get_logger("buildd.watches")

# Threads preparing metadata for watches at once, in the whole daemon.
MAX_RUNNING = 4
MAX_CHANGED_PATHS = 100


@dataclass(frozen=True)
class WatchUpdate:
    """What a watch delivers: metadata, a failure, or its end (``final``)."""

    sequence: int
    metadata: MetadataOutcome | None = None
    error: errors.BuilddError | None = None
    changed: tuple[str, ...] = ()
    latency: float = 0.0
    hook_seconds: float = 0.0
    # The watch ended; ``error`` says why (None: the client cancelled).
    final: bool = False


class Runner:
    """A bounded pool whose threads end when the queue is empty."""

    def __init__(self, limit: int = MAX_RUNNING) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._queue: deque[Callable[[], None]] = deque()
        self.threads = 0

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            self._queue.append(job)
            if self.threads >= self.limit:
                return
            self.threads += 1
        threading.Thread(target=self._work, name="buildd-watch-prepare", daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self.threads -= 1
                    return
                job = self._queue.popleft()
            try:
                job()
            except Exception:
                log.exception("watch_job_failed")


class MetadataWatch:
    """One client's watch of one source."""

    def __init__(
        self,
        request: Request,
        dist: Literal["wheel", "editable"],
        root: str,
        prepare: Callable[..., MetadataOutcome],
        deliver: Callable[[WatchUpdate], None],
        runner: Runner,
    ) -> None:
        self.request = request
        self.dist = dist
        self.root = root
        self._prepare = prepare
        self._deliver = deliver
        self._runner = runner
        self.cancel_event = threading.Event()
        self._lock = threading.Lock()
        self._running = False
        self._again = False
        self._changed: set[str] = set()
        self._first_seen: float | None = None
        self._sequence = 0
        self._last_metadata: bytes | None = None
        self._last_failure: tuple[int, str] | None = None
        self.ended = False
        self.on_end: list[Callable[[], None]] = []

    def start(self) -> None:
        """Prepare and deliver the current metadata (in the pool)."""
        self.changed(frozenset(), None)

    def changed(self, paths: frozenset[str], seen: float | None) -> None:
        """A batch of changes: prepare again (once more after a run in progress)."""
        with self._lock:
            if self.ended:
                return
            self._changed.update(paths)
            if self._first_seen is None:
                self._first_seen = seen
            if self._running:
                self._again = True
                return
            self._running = True
        self._runner.submit(self._run)

    def end(self, error: errors.BuilddError | None = None) -> None:
        """Stop the watch (a running hook is killed); deliver ``error`` as its end, if any."""
        with self._lock:
            if self.ended:
                return
            self.ended = True
            sequence = self._next()
        self.cancel_event.set()
        for undo in self.on_end:
            with contextlib.suppress(Exception):
                undo()
        if error is not None:
            self._deliver(WatchUpdate(sequence, error=error, final=True))

    # ------------------------------------------------------------ internals --

    def _next(self) -> int:
        self._sequence += 1
        return self._sequence

    def _run(self) -> None:
        while True:
            with self._lock:
                if self.ended:
                    self._running = False
                    return
                changed, self._changed = self._changed, set()
                first_seen, self._first_seen = self._first_seen, None
                self._again = False
            self._once(changed, first_seen)
            with self._lock:
                if not (self._again and not self.ended):
                    self._running = False
                    return

    def _once(self, changed: set[str], first_seen: float | None) -> None:
        hook_seconds = 0.0

        def emit(event: Event) -> None:
            nonlocal hook_seconds
            if isinstance(event, Phase) and event.name == "hook_finished":
                hook_seconds += event.step_seconds

        try:
            outcome = self._prepare(self.request, self.dist, emit, self.cancel_event)
        except (errors.SessionNotFound, errors.Unavailable) as exc:
            self.end(exc)
            return
        except errors.BuilddError as exc:
            if self.ended:
                return
            failure = (int(exc.kind), exc.message)
            if self._last_failure == failure:
                return
            self._last_failure = failure
            self._send(WatchUpdate(0, error=exc), changed, first_seen, hook_seconds)
            return
        except Exception as exc:  # a bug: say so, and keep watching
            log.exception("watch_prepare_failed", source=self.root)
            error = errors.BuilddError(f"internal error preparing metadata: {exc!r}")
            self._send(WatchUpdate(0, error=error), changed, first_seen, hook_seconds)
            return
        if self._last_failure is None and outcome.metadata == self._last_metadata:
            return  # nothing a client would see changed
        self._last_failure = None
        self._last_metadata = outcome.metadata
        self._send(WatchUpdate(0, metadata=outcome), changed, first_seen, hook_seconds)

    def _send(
        self, update: WatchUpdate, changed: set[str], first_seen: float | None, hook_seconds: float
    ) -> None:
        with self._lock:
            if self.ended:
                return
            sequence = self._next()
        latency = 0.0 if first_seen is None else time.monotonic() - first_seen
        self._deliver(
            dataclasses.replace(
                update,
                sequence=sequence,
                changed=self._show(changed),
                latency=latency,
                hook_seconds=hook_seconds,
            )
        )

    def _show(self, paths: set[str]) -> tuple[str, ...]:
        prefix = self.root + os.sep
        shown = sorted(p[len(prefix) :] if p.startswith(prefix) else p for p in paths)
        return tuple(shown[:MAX_CHANGED_PATHS])


class Watches:
    """The daemon's metadata watches: open, cap per session, end with the session."""

    def __init__(
        self,
        registry: SessionRegistry,
        trees: TreeWatchers,
        prepare: Callable[..., MetadataOutcome],
        *,
        max_per_session: int,
        runner: Runner | None = None,
    ) -> None:
        self._registry = registry
        self.trees = trees
        self._prepare = prepare
        self.max_per_session = max_per_session
        self.runner = runner or Runner()
        self._lock = threading.Lock()
        self._by_session: dict[str, set[MetadataWatch]] = {}

    def open(
        self,
        request: Request,
        dist: Literal["wheel", "editable"],
        deliver: Callable[[WatchUpdate], None],
    ) -> MetadataWatch:
        """Start a watch; it holds its session until it ends. Raises on bad requests."""
        root = _watchable(request.source)
        held = contextlib.ExitStack()
        session = held.enter_context(
            self._registry.keepalive(request.session_id, principal=request.principal)
        )
        watch = MetadataWatch(request, dist, root, self._prepare, deliver, self.runner)
        watch.on_end.append(held.close)
        try:
            with self._lock:
                mine = self._by_session.setdefault(session.id, set())
                if len(mine) >= self.max_per_session:
                    raise errors.ResourceExhausted(
                        f"session {session.id[:8]}… has {len(mine)} metadata watches open, "
                        f"at most {self.max_per_session} are allowed "
                        "(--max-watches-per-session)"
                    )
                mine.add(watch)
            watch.on_end.append(lambda: self._forget(session.id, watch))
            token = self.trees.subscribe(root, watch.changed, watch.end)
            watch.on_end.append(lambda: self.trees.unsubscribe(root, token))
        except BaseException:
            watch.end()
            raise
        log.info("watch_opened", session=session.id[:8], source=root)
        watch.start()
        return watch

    def session_ended(self, session_id: str) -> None:
        with self._lock:
            watches = list(self._by_session.get(session_id, ()))
        for watch in watches:
            watch.end(errors.SessionNotFound(f"session {session_id[:8]}… has ended"))

    def end_all(self, reason: errors.BuilddError) -> None:
        with self._lock:
            watches = [w for mine in self._by_session.values() for w in mine]
        for watch in watches:
            watch.end(reason)

    def count(self, session_id: str) -> int:
        with self._lock:
            return len(self._by_session.get(session_id, ()))

    def _forget(self, session_id: str, watch: MetadataWatch) -> None:
        with self._lock:
            mine = self._by_session.get(session_id)
            if mine is not None:
                mine.discard(watch)
                if not mine:
                    del self._by_session[session_id]


def _watchable(source: str) -> str:
    """The real path of a project directory, or the error that says why it is none."""
    if source.startswith("sha256:"):
        raise errors.InvalidRequest(
            "context.source: an uploaded archive never changes; watch a project directory path"
        )
    if not os.path.isabs(source):
        raise errors.InvalidRequest(f"context.source.path: {source!r} is not an absolute path")
    root = os.path.realpath(source)
    if not os.path.isdir(root):
        if os.path.isfile(root):
            raise errors.InvalidRequest(
                f"context.source.path: {source} is a file; watch a project directory"
            )
        raise errors.SourceNotFound(f"{source}: does not exist", path=source)
    return root
