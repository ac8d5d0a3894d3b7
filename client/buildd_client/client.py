"""The client: a channel to one daemon; the sessions on it are in ``session.py``."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, TypeVar

import grpc

from buildd import __version__
from buildd.v1 import buildd_pb2 as pb
from buildd.v1 import buildd_pb2_grpc
from buildd_client import _files, autostart
from buildd_client.addresses import Address, default_address, ensure_private_dir, parse_address
from buildd_client.credentials import Credentials
from buildd_client.errors import DaemonUnavailable, RequestFailed
from buildd_client.routing import SessionHeader, new_session_id
from buildd_client.session import ConfigSettings, Session

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from types import TracebackType

    from typing_extensions import Self


__all__ = ["Client", "ConfigSettings", "Session", "resolve_address"]

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
# Unary calls only touch the daemon's bookkeeping (closing may delete a few
# environments); a daemon that does not answer within this is stuck.
_UNARY_TIMEOUT = 60.0
SESSIONS_FILE = "sessions.json"

_R = TypeVar("_R")


def resolve_address(address: str | None = None) -> str:
    """``address``, else ``$BUILDD_ADDRESS``, else the per-user default address."""
    if address:
        return address
    return os.environ.get("BUILDD_ADDRESS") or default_address()


class Client:
    """A connection to one buildd daemon.

    ``address`` defaults to ``$BUILDD_ADDRESS``, else the per-user socket. When
    the address is the per-user default and no daemon answers there, one is
    started in the background (unless ``autostart`` is false or
    ``BUILDD_NO_AUTOSTART=1``) and awaited for up to ``connect_timeout``
    seconds; otherwise a missing Unix socket raises DaemonUnavailable at once.

    ``credentials`` (TLS, token) default to the ``BUILDD_TLS_*`` and
    ``BUILDD_TOKEN[_FILE]`` variables (see ``buildd_client.credentials``).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        autostart: bool = True,
        connect_timeout: float = 20.0,
        credentials: Credentials | None = None,
    ) -> None:
        self.address: Address = parse_address(resolve_address(address))
        self.credentials = credentials or Credentials.from_options()
        # True when this client started the daemon it talks to.
        self.started_daemon = False
        self._connect(autostart, connect_timeout)
        self._channel = self.credentials.channel(self.address, _CHANNEL_OPTIONS)
        # Every call naming a session carries it as the routing header, so a
        # proxy in front of several daemons keeps the session on its daemon.
        self._stub = buildd_pb2_grpc.BuilddStub(
            grpc.intercept_channel(self._channel, SessionHeader())
        )

    @property
    def is_remote(self) -> bool:
        """True when the daemon cannot be assumed to see our files: upload sources."""
        return not self.address.is_local

    @property
    def is_default_address(self) -> bool:
        return self.address.target == parse_address(default_address()).target

    def _connect(self, allow_autostart: bool, timeout: float) -> None:
        # Only a Unix socket can be checked this cheaply; a TCP daemon's absence
        # shows as UNAVAILABLE on the first call.
        if self.address.kind != "unix":
            return
        if self.is_default_address:
            # The fallback folder is in /tmp: another user could have made it
            # first and put their own daemon there. Talk only to our own.
            try:
                ensure_private_dir(os.path.dirname(self.address.path))
            except OSError as exc:
                raise DaemonUnavailable(
                    f"cannot use {self.address.target}: {exc}", address=self.address.target
                ) from exc
        if autostart.is_listening(self.address.path):
            return
        if allow_autostart and self.is_default_address and not autostart.autostart_disabled():
            self.started_daemon = autostart.ensure_daemon(self.address, timeout=timeout)
            return
        why = (
            "auto-start is disabled by BUILDD_NO_AUTOSTART"
            if self.is_default_address and allow_autostart
            else f"start one with: buildd-server --address {self.address.target}"
        )
        raise DaemonUnavailable(
            f"no buildd daemon answers at {self.address.target} ({why})",
            address=self.address.target,
        )

    # ------------------------------------------------------------ sessions --

    def open_session(self, client_name: str = "", *, session_id: str | None = None) -> Session:
        """Open a new session on the daemon.

        The client proposes the id (``session_id``, else a fresh random one) and
        sends it as the routing header already, so that behind a proxy the
        session opens on the daemon that all its later calls will reach.
        """
        request = pb.OpenSessionRequest(
            client_name=client_name or f"buildd_client/{__version__}",
            session_id=session_id or new_session_id(),
        )
        info = self._unary(self._stub.OpenSession, request)
        return Session(self, info)

    def join_session(self, session_id: str) -> Session:
        """Join an existing session; RequestFailed (``session_gone``) when ended or unknown."""
        info = self._unary(self._stub.JoinSession, pb.JoinSessionRequest(session_id=session_id))
        return Session(self, info)

    def default_session(self, client_name: str = "") -> Session:
        """The per-user default session of this address: joined, or opened and remembered.

        The ids live in ``<state dir>/sessions.json`` (one per address), read
        and written under an flock so that concurrent clients agree on one.
        """
        folder = _files.make_state_dir()
        with _files.locked(folder / (SESSIONS_FILE + ".lock")):
            stored = _read_sessions(folder / SESSIONS_FILE)
            session_id = stored.get(self.address.target)
            if session_id:
                try:
                    return self.join_session(session_id)
                except RequestFailed as exc:
                    if not exc.session_gone:
                        raise
            session = self.open_session(client_name)
            stored[self.address.target] = session.id
            _write_sessions(folder / SESSIONS_FILE, stored)
            return session

    def default_session_id(self) -> str | None:
        """The remembered default session id of this address, without asking the daemon."""
        return _read_sessions(_files.state_dir() / SESSIONS_FILE).get(self.address.target)

    def forget_default_session(self, session_id: str) -> None:
        """Forget the remembered default session if it is ``session_id``."""
        folder = _files.state_dir()
        if not (folder / SESSIONS_FILE).exists():
            return
        with _files.locked(folder / (SESSIONS_FILE + ".lock")):
            stored = _read_sessions(folder / SESSIONS_FILE)
            if stored.get(self.address.target) == session_id:
                del stored[self.address.target]
                _write_sessions(folder / SESSIONS_FILE, stored)

    def close_session(self, session_id: str) -> pb.CloseSessionResponse:
        """End a session by id; its environments stay in the store (or are deleted: --no-store)."""
        try:
            response = self._unary(
                self._stub.CloseSession, pb.CloseSessionRequest(session_id=session_id)
            )
        except RequestFailed as exc:
            if exc.session_gone:
                self.forget_default_session(session_id)
            raise
        self.forget_default_session(session_id)
        return response

    def status(self, session_id: str = "") -> pb.StatusResponse:
        """The daemon, its sessions (or only ``session_id``) and their environments."""
        return self._unary(self._stub.GetStatus, pb.GetStatusRequest(session_id=session_id))

    def health(self, service: str = "buildd.v1.Buildd") -> bool:
        """True when the daemon answers the standard gRPC health check with SERVING.

        Spoken with hand-encoded messages so the client needs no
        grpcio-health-checking: the request and reply each hold one field.
        """
        check = self._channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=_encode_health_request,
            response_deserializer=_decode_health_status,
        )
        try:
            status: int = check(service, timeout=_UNARY_TIMEOUT)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise DaemonUnavailable(f"no buildd daemon answers at {self.address}") from exc
            return False
        return status == _SERVING

    def interpreters(self) -> list[pb.InterpreterInfo]:
        """The interpreters the daemon can build with, and where it found each."""
        response = self._unary(self._stub.ListInterpreters, pb.ListInterpretersRequest())
        return list(response.interpreters)

    def prune_store(
        self, older_than: float = 0.0, *, all_principals: bool = False
    ) -> pb.PruneStoreResponse:
        """Delete the idle environments of the caller's store unused for ``older_than`` s.

        0 means every idle one; ``all_principals`` (admins) prunes every store.
        """
        request = pb.PruneStoreRequest(older_than_seconds=older_than, all_principals=all_principals)
        return self._unary(self._stub.PruneStore, request)

    def shutdown(self, grace: float = 0.0) -> pb.ShutdownResponse:
        """Ask the daemon to drain and stop; returns once the drain has begun."""
        return self._unary(self._stub.Shutdown, pb.ShutdownRequest(grace_seconds=grace))

    # -------------------------------------------------------------- plumbing --

    def _unary(self, method: Callable[..., _R], request: object) -> _R:
        try:
            return method(request, timeout=_UNARY_TIMEOUT)
        except grpc.RpcError as exc:
            # Every unary call names a session: NOT_FOUND is about the session.
            raise RequestFailed.from_rpc_error(
                exc, not_found=pb.FAILURE_KIND_SESSION_NOT_FOUND
            ) from exc

    @property
    def stub(self) -> buildd_pb2_grpc.BuilddStub:
        """The raw generated stub, for what this library does not wrap."""
        return self._stub

    def close(self) -> None:
        """Close the channel; calls still running are cancelled."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _read_sessions(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        # Missing or damaged: start over; sessions are cheap to reopen.
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def _write_sessions(path: Path, sessions: dict[str, str]) -> None:
    _files.write_atomic(path, json.dumps(sessions, indent=2, sort_keys=True) + "\n")


_SERVING = 1


def _encode_health_request(service: str) -> bytes:
    data = service.encode()
    if not data:
        return b""
    length = len(data)
    varint = bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        varint.append(byte | (0x80 if length else 0))
        if not length:
            break
    return b"\x0a" + bytes(varint) + data


def _decode_health_status(data: bytes) -> int:
    # HealthCheckResponse: field 1 (varint) is the status; absent means UNKNOWN.
    if len(data) >= 2 and data[0] == 0x08:
        return data[1] & 0x7F
    return 0
