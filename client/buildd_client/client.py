"""The client: a channel to one daemon, and sessions on it."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

import grpc

from buildd import __version__
from buildd.v1 import buildd_pb2 as pb
from buildd.v1 import buildd_pb2_grpc
from buildd_client import _files, autostart
from buildd_client.addresses import Address, default_address, ensure_private_dir, parse_address
from buildd_client.calls import Call
from buildd_client.credentials import Credentials
from buildd_client.errors import DaemonUnavailable, RequestFailed
from buildd_client.keepalive import KeepAlive
from buildd_client.routing import SessionHeader, new_session_id, session_metadata

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from types import TracebackType

    from typing_extensions import Self

    from buildd_client.remote import PackedSource
    from buildd_client.watch import Watch

__all__ = ["Client", "ConfigSettings", "Session", "resolve_address"]

# PEP 517 config settings: a key maps to one string or to several (in order).
ConfigSettings = Mapping[str, str | Sequence[str]]

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

_DISTRIBUTIONS: dict[str, pb.Distribution.ValueType] = {
    "wheel": pb.DISTRIBUTION_WHEEL,
    "sdist": pb.DISTRIBUTION_SDIST,
    "editable": pb.DISTRIBUTION_EDITABLE,
}


def resolve_address(address: str | None = None) -> str:
    """``address``, else ``$BUILDD_ADDRESS``, else the per-user default address."""
    if address:
        return address
    return os.environ.get("BUILDD_ADDRESS") or default_address()


def _distribution(name: str, allowed: Sequence[str]) -> pb.Distribution.ValueType:
    if name not in allowed:
        raise ValueError(f"invalid distribution {name!r}: expected one of {', '.join(allowed)}")
    return _DISTRIBUTIONS[name]


def _config_settings(settings: ConfigSettings | None) -> list[pb.ConfigSetting]:
    out: list[pb.ConfigSetting] = []
    for key, value in (settings or {}).items():
        values = [value] if isinstance(value, str) else list(value)
        for item in values:
            if not isinstance(item, str):
                raise TypeError(f"config setting {key!r}: {item!r} is not a string")
        out.append(pb.ConfigSetting(key=key, values=values))
    return out


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


class Session:
    """A session on the daemon: the environments it creates belong to it."""

    def __init__(self, client: Client, info: pb.SessionInfo) -> None:
        self._client = client
        self.info = info

    @property
    def id(self) -> str:
        return self.info.session_id

    @property
    def ttl_seconds(self) -> float:
        return self.info.ttl_seconds

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, address={self.client.address.target!r})"

    @property
    def client(self) -> Client:
        return self._client

    def _context(
        self,
        source: str | os.PathLike[str],
        python: str | None,
        config_settings: ConfigSettings | None,
        quiet: bool,
        no_cache: bool = False,
    ) -> pb.BuildContext:
        text = os.fspath(source)
        if text.startswith("sha256:"):
            # An uploaded archive: our interpreter's path means nothing to the
            # daemon, so its own is the default.
            where = pb.Source(digest=text)
            default_python = ""
        else:
            where = pb.Source(path=os.path.abspath(text))
            default_python = sys.executable
        return pb.BuildContext(
            session_id=self.id,
            source=where,
            python=default_python if python is None else python,
            config_settings=_config_settings(config_settings),
            quiet=quiet,
            no_cache=no_cache,
        )

    def get_requires(
        self,
        source: str | os.PathLike[str],
        *,
        distribution: str = "wheel",
        config_settings: ConfigSettings | None = None,
        python: str | None = None,
        quiet: bool = False,
        timeout: float | None = None,
        no_cache: bool = False,
    ) -> Call[pb.RequiresResult]:
        """Static and dynamic build requirements of ``source`` (wheel, sdist or editable).

        An unchanged source is answered from the daemon's cache (``cached`` in
        the result); ``no_cache`` runs the hook all the same.
        """
        request = pb.GetRequiresRequest(
            context=self._context(source, python, config_settings, quiet, no_cache),
            distribution=_distribution(distribution, ("wheel", "sdist", "editable")),
        )
        rpc = self._client.stub.GetRequires(request, timeout=timeout)
        return Call(rpc, "requires", lambda result: result.requires)

    def metadata(
        self,
        source: str | os.PathLike[str],
        *,
        distribution: str = "wheel",
        config_settings: ConfigSettings | None = None,
        python: str | None = None,
        quiet: bool = False,
        timeout: float | None = None,
        no_cache: bool = False,
    ) -> Call[pb.MetadataResult]:
        """Prepare the core metadata of ``source`` (wheel or editable).

        An unchanged source is answered from the daemon's cache without running
        a hook (``cached`` in the result); ``no_cache`` runs the hooks all the same.
        """
        request = pb.PrepareMetadataRequest(
            context=self._context(source, python, config_settings, quiet, no_cache),
            distribution=_distribution(distribution, ("wheel", "editable")),
        )
        rpc = self._client.stub.PrepareMetadata(request, timeout=timeout)
        return Call(rpc, "metadata", lambda result: result.metadata)

    def watch_metadata(
        self,
        source: str | os.PathLike[str],
        *,
        python: str | None = None,
        config_settings: ConfigSettings | None = None,
        distribution: str = "wheel",
    ) -> Watch:
        """Watch the core metadata of the project directory ``source``.

        The daemon sends the current metadata, then new metadata each time a
        change of the tree changes it, and a failure each time preparing fails
        (the watch goes on). Iterate the returned handle, or ``get(timeout)``;
        ``cancel()`` ends the watch. The watch holds the session open.
        """
        from buildd_client.watch import Watch

        request = pb.WatchMetadataRequest(
            context=self._context(source, python, config_settings, quiet=True),
            distribution=_distribution(distribution, ("wheel", "editable")),
        )
        return Watch(self._client.stub.WatchMetadata(request))

    def build(
        self,
        source: str | os.PathLike[str],
        *,
        distributions: Sequence[str] = ("sdist", "wheel"),
        wheel_from_sdist: bool | None = None,
        output_directory: str | os.PathLike[str] | None = None,
        config_settings: ConfigSettings | None = None,
        python: str | None = None,
        quiet: bool = False,
        timeout: float | None = None,
        no_cache: bool = False,
    ) -> Call[pb.BuildResult]:
        """Build ``distributions`` of ``source``, in order, into ``output_directory``.

        ``wheel_from_sdist`` defaults to True exactly when an sdist comes
        before the wheel (what ``python -m build`` does); ``output_directory``
        defaults to the daemon's choice, ``<source>/dist``. ``get_requires_for_build_*``
        is answered from the daemon's cache for an unchanged source unless ``no_cache``.
        """
        if isinstance(distributions, str) or not distributions:
            raise ValueError(f"distributions must be a non-empty sequence, got {distributions!r}")
        kinds = [_distribution(name, ("sdist", "wheel", "editable")) for name in distributions]
        if wheel_from_sdist is None:
            names = list(distributions)
            wheel_from_sdist = (
                "sdist" in names
                and "wheel" in names
                and names.index("sdist") < names.index("wheel")
            )
        request = pb.BuildRequest(
            context=self._context(source, python, config_settings, quiet, no_cache),
            distributions=kinds,
            wheel_from_sdist=wheel_from_sdist,
            output_directory=(
                "" if output_directory is None else os.path.abspath(os.fspath(output_directory))
            ),
        )
        rpc = self._client.stub.Build(request, timeout=timeout)
        return Call(rpc, "build", lambda result: result.build)

    def upload(self, source: str | os.PathLike[str] | PackedSource, *, force: bool = False) -> str:
        """Pack ``source`` (a tree; an sdist goes as it is) and upload it if the daemon
        lacks it; returns its digest, to pass as the ``source`` of any request.

        The daemon's cache is shared by digest; the upload carries this
        session's routing header so that, behind a proxy, it reaches the
        daemon that holds the session (and fails when that session is gone).
        """
        import tempfile
        from pathlib import Path

        from buildd_client import remote

        routing = session_metadata(self.id)
        if isinstance(source, remote.PackedSource):
            remote.upload(self._client.stub, source, force=force, metadata=routing)
            return source.digest

        with tempfile.TemporaryDirectory(prefix="buildd-upload-") as work:
            packed = remote.pack_source(source, Path(work))
            remote.upload(self._client.stub, packed, force=force, metadata=routing)
        return packed.digest

    def download(
        self, artifacts: Sequence[pb.Artifact], outdir: str | os.PathLike[str]
    ) -> list[Path]:
        """Fetch artifacts this session built into ``outdir`` (atomically, digest-checked)."""
        from buildd_client import remote

        return remote.download(self._client.stub, self.id, artifacts, outdir)

    def keepalive(self, interval: float = 0.0) -> KeepAlive:
        """A context manager holding the session open from a background thread."""
        return KeepAlive(self._client.stub, self.id, interval)

    def close(self) -> pb.CloseSessionResponse:
        """End the session now; the daemon deletes its environments."""
        return self._client.close_session(self.id)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Already gone (expired, closed elsewhere) is what we wanted anyway.
        with contextlib.suppress(RequestFailed):
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
