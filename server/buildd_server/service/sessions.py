"""Sessions: one client's working period, owning environments and prepared metadata.

A session ends by ``close`` or by idle expiry. While a keep-alive holds it
(an IDE's KeepAlive stream, or a running request) it never expires; when the
last hold goes away its idle clock starts again. Ending calls ``on_end``
exactly once, never under the registry lock, because ending drops the
session's pool owner and deletes its directory: slow work that must not stall
every other request's ``get``.

A session belongs to the principal that opened it. Every lookup made for a
caller passes the caller's principal, and a session of another principal is
answered exactly like an unknown id (NOT_FOUND, same message), so that ids,
states and even the existence of other principals' sessions never leak.

A client may propose the id of its new session (so that a proxy can route the
OpenSession call by it, docs/scale-out.md). Ids are therefore scoped per
principal: two principals may hold sessions with the same id, and a proposal
that equals another principal's id simply opens a separate session, revealing
nothing. ``Session.id`` stays unique within the daemon (pool owner, folder
name): it is the proposed id, or a fresh one in that rare case, and
``Session.wire_id`` is what the client knows.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import structlog

from buildd_server import errors

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

_log = structlog.get_logger("buildd.sessions")

# token_urlsafe(24) gives 32 characters; accept a range so ids stay opaque.
_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
# A proposed id has exactly the shape of the daemon's own (new_session_id).
_PROPOSED = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{31}")
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
# Ids of ended sessions kept to say "has ended" rather than "unknown".
_ENDED_MEMORY = 1024

EndReason = Literal["closed", "expired", "shutdown"]


def _show(session_id: str) -> str:
    """A bounded, quoted form of a client-supplied id, safe for messages and logs."""
    if len(session_id) > 40:
        return repr(session_id[:40]) + f"... ({len(session_id)} characters)"
    return repr(session_id)


def new_session_id() -> str:
    """32 URL-safe characters (192 random bits) that never begin with '-' or '_'.

    An id is passed on command lines (``buildd-client --session ID``), where a
    leading '-' reads as an option; redrawing the 1 in 32 such ids keeps the
    rest uniformly random.
    """
    while True:
        candidate = secrets.token_urlsafe(24)
        if candidate[0] in _ALNUM:
            return candidate


@dataclass(eq=False)
class Session:
    """One session. ``lock`` guards ``sources``; the registry guards the rest."""

    id: str
    client_name: str
    # Owned by the session: deleted by ``on_end``.
    directory: Path
    # Wall time (Unix seconds), for status.
    created_at: float
    # Registry clock (monotonic), for expiry.
    last_active: float
    # Wall time of the last activity, for status.
    last_active_at: float
    keepalives: int = 0
    # Requests running in the session: an in-flight request holds it open too.
    in_flight: int = 0
    ended: bool = False
    end_reason: EndReason | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Per-source state of the service (affinity, prepared metadata), keyed by source.
    sources: dict[str, object] = field(default_factory=dict, repr=False)
    # Who opened it: only this principal may use it (see auth.py).
    principal: str = "local"
    # Artifacts built in the session, path -> (size, sha256); guarded by ``lock``.
    # Only these can be downloaded (DownloadArtifact).
    artifacts: dict[str, tuple[int, str]] = field(default_factory=dict, repr=False)
    # The id the client names the session by; ``id`` unless another principal
    # holds a session with the same id (ids are scoped per principal).
    wire_id: str = ""

    def __post_init__(self) -> None:
        if not self.wire_id:
            self.wire_id = self.id


class SessionRegistry:
    """All live sessions of the daemon; thread-safe."""

    def __init__(
        self,
        root: Path,
        ttl: float,
        on_end: Callable[[Session], None],
        clock: Callable[[], float] = time.monotonic,
        daemon_id: str = "",
    ) -> None:
        self._root = root
        self._ttl = ttl
        self._on_end = on_end
        self._clock = clock
        self._daemon = f" ({daemon_id})" if daemon_id else ""
        self._lock = threading.Lock()
        # By Session.id, unique in the daemon.
        self._sessions: dict[str, Session] = {}
        # By (principal, wire id): what lookups for a caller use.
        self._named: dict[tuple[str, str], Session] = {}
        # (principal, wire id) -> why it ended.
        self._ended: OrderedDict[tuple[str, str], EndReason] = OrderedDict()
        self._closed = False
        self._reaper: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def ttl(self) -> float:
        return self._ttl

    def open(self, client_name: str, principal: str = "local", session_id: str = "") -> Session:
        """Start a session of ``principal`` with a private directory.

        Its id is ``session_id`` when the client proposed one (checked: the
        shape of ``new_session_id``, not taken by a live or remembered session
        of the same principal), else an unguessable new one.
        """
        if session_id and not _PROPOSED.fullmatch(session_id):
            raise errors.InvalidRequest(
                f"session_id: the proposed id {_show(session_id)} must be exactly 32 "
                "characters from A-Z, a-z, 0-9, '-' and '_', not beginning with '-' or '_' "
                "(for example secrets.token_urlsafe(24), redrawn when it begins with either)",
                field="session_id",
            )
        wire_id = session_id or new_session_id()
        self._root.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self._closed:
                raise errors.Unavailable("the daemon is shutting down and opens no new session")
            name = (principal, wire_id)
            if name in self._named or name in self._ended:
                raise errors.SessionExists(
                    f"session_id: {_show(wire_id)} is already the id of a session of principal "
                    f"{principal!r} on this daemon{self._daemon}; propose a new random id",
                    field="session_id",
                    metadata={"session_id": wire_id},
                )
            internal = wire_id
            # Another principal's session (or a folder left by one) has this id:
            # this session gets a fresh internal id; the caller never sees it.
            while internal in self._sessions or (self._root / internal).exists():
                internal = new_session_id()
            directory = self._root / internal
            # Under the lock so that two proposals of one id cannot both pass;
            # a mkdir is quick.
            directory.mkdir(mode=0o700)
            # mkdir's mode is filtered by the umask; make it exactly private.
            directory.chmod(0o700)
            now = self._clock()
            wall = time.time()
            session = Session(
                internal,
                client_name,
                directory,
                wall,
                now,
                wall,
                principal=principal,
                wire_id=wire_id,
            )
            self._sessions[internal] = session
            self._named[name] = session
        return session

    def get(self, session_id: str, principal: str | None = None) -> Session:
        """The live session with this id (of ``principal``, when given); counts as activity."""
        with self._lock:
            session = self._lookup(session_id, principal)
            self._touch(session)
            return session

    def peek(self, session_id: str, principal: str | None = None) -> Session:
        """The live session with this id, without counting as activity (for status)."""
        with self._lock:
            return self._lookup(session_id, principal)

    def touch(self, session: Session) -> None:
        """Restart the idle clock (a request used the session)."""
        with self._lock:
            self._touch(session)

    def close(self, session_id: str, principal: str | None = None) -> Session:
        """End the session now; ``on_end`` has run when this returns."""
        with self._lock:
            session = self._lookup(session_id, principal)
            self._detach(session, "closed")
        self._on_end(session)
        return session

    @contextlib.contextmanager
    def keepalive(self, session_id: str, principal: str | None = None) -> Iterator[Session]:
        """Hold the session open for the duration of the block.

        Use it for KeepAlive streams and around every request, so a build that
        runs longer than the TTL cannot see its session expire under it.
        """
        with self._lock:
            session = self._lookup(session_id, principal)
            self._touch(session)
            session.keepalives += 1
        try:
            yield session
        finally:
            with self._lock:
                session.keepalives -= 1
                self._touch(session)

    @contextlib.contextmanager
    def using(self, session_id: str, principal: str | None = None) -> Iterator[Session]:
        """Hold the session for one request: a build longer than the TTL keeps it.

        Unlike ``keepalive`` this is not shown as a KeepAlive stream in status.
        """
        with self._lock:
            session = self._lookup(session_id, principal)
            self._touch(session)
            session.in_flight += 1
        try:
            yield session
        finally:
            with self._lock:
                session.in_flight -= 1
                self._touch(session)

    def expire_idle(self) -> list[Session]:
        """End sessions idle for longer than the TTL and not held; returns them."""
        with self._lock:
            now = self._clock()
            idle = [
                s
                for s in self._sessions.values()
                if s.keepalives == 0 and s.in_flight == 0 and now - s.last_active > self._ttl
            ]
            for session in idle:
                self._detach(session, "expired")
        self._end_all_quietly(idle)
        return idle

    def end_all(self) -> list[Session]:
        """End every session and refuse new ones (daemon shutdown)."""
        with self._lock:
            self._closed = True
            sessions = list(self._sessions.values())
            for session in sessions:
                self._detach(session, "shutdown")
        self._end_all_quietly(sessions)
        return sessions

    def named(self, session_id: str, principal: str | None = None) -> list[Session]:
        """Live sessions with this wire id (of ``principal``, when given), for status."""
        with self._lock:
            return [
                s
                for (owner, wire_id), s in self._named.items()
                if wire_id == session_id and principal in (None, owner)
            ]

    def all(self, principal: str | None = None) -> list[Session]:
        """Every live session, or only those of ``principal``."""
        with self._lock:
            return [
                s for s in self._sessions.values() if principal is None or s.principal == principal
            ]

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def start_reaper(self, interval: float) -> None:
        """Run ``expire_idle`` every ``interval`` seconds on a daemon thread."""
        if self._reaper is not None:
            raise RuntimeError("the session reaper is already running")
        self._stop.clear()
        self._reaper = threading.Thread(
            target=self._reap, args=(interval,), name="buildd-session-reaper", daemon=True
        )
        self._reaper.start()

    def stop_reaper(self) -> None:
        """Stop the reaper and wait for it (an expiry in progress completes)."""
        reaper, self._reaper = self._reaper, None
        if reaper is None:
            return
        self._stop.set()
        reaper.join()

    # ------------------------------------------------------------- internals --

    def _reap(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.expire_idle()
            except Exception:
                # The reaper must outlive any one failure, or sessions never expire.
                _log.exception("expiry_failed")

    def _lookup(self, session_id: str, principal: str | None = None) -> Session:
        """Lock held. Another principal's session is reported as unknown."""
        if not session_id:
            raise errors.SessionNotFound("session id is empty", metadata={"session_id": ""})
        if not _ID.fullmatch(session_id):
            raise errors.SessionNotFound(
                f"session id {_show(session_id)} is malformed: "
                "expected 16 to 64 characters from A-Z, a-z, 0-9, '_' and '-'",
                metadata={"session_id": session_id[:64]},
            )
        if principal is not None:
            session = self._named.get((principal, session_id))
            reason = None if session is not None else self._ended.get((principal, session_id))
        else:
            # Internal and admin lookups: any principal's session of that id.
            session = next(
                (s for (_, wire_id), s in self._named.items() if wire_id == session_id), None
            )
            reason = next(
                (r for (_, wire_id), r in self._ended.items() if wire_id == session_id), None
            )
        if session is not None:
            return session
        if reason is not None:
            how = {"closed": "was closed", "expired": "expired", "shutdown": "ended at shutdown"}
            raise errors.SessionEnded(
                f"session {_show(session_id)} has ended: {how[reason]}; open a new session",
                metadata={"session_id": session_id, "end_reason": reason},
            )
        # Behind a proxy this is what the sessions of a daemon that stopped or
        # was lost get from the daemon their calls reach now (docs/scale-out.md).
        raise errors.SessionNotFound(
            f"session {_show(session_id)} is unknown to this daemon{self._daemon}: open a "
            "new session (the daemon that held it may have stopped or been lost, or it "
            "ended long ago)",
            metadata={"session_id": session_id},
        )

    def _touch(self, session: Session) -> None:
        """Lock held."""
        if not session.ended:
            session.last_active = self._clock()
            session.last_active_at = time.time()

    def _detach(self, session: Session, reason: EndReason) -> None:
        """Mark ended and forget; the caller runs ``on_end`` after unlocking."""
        session.ended = True
        session.end_reason = reason
        del self._sessions[session.id]
        name = (session.principal, session.wire_id)
        del self._named[name]
        self._ended[name] = reason
        while len(self._ended) > _ENDED_MEMORY:
            self._ended.popitem(last=False)

    def _end_all_quietly(self, sessions: list[Session]) -> None:
        # One failing on_end must not keep the other sessions alive forever.
        for session in sessions:
            try:
                self._on_end(session)
            except Exception:
                _log.exception("session_end_failed", session=session.id[:8])
