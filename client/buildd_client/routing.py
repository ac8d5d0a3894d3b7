"""Session-affine routing: every call that names a session says so in a header.

Several daemons may stand behind one address, a proxy (nginx, Envoy) pinning
each session to the daemon that holds it by hashing the gRPC metadata
``x-buildd-session``. So the client sends that header on every call naming a
session, OpenSession included: there the client proposes the new session's id
itself (``OpenSessionRequest.session_id``), so that the very first call is
routed where all the later ones will be (docs/scale-out.md).

``SessionHeader`` is a channel interceptor that reads the session id out of
each request message (``session_id``, or ``context.session_id``) and adds the
header; uploads, whose messages name no session, pass ``session_metadata``
themselves. Standard library and grpcio only.
"""

from __future__ import annotations

import re
import secrets
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = [
    "SESSION_HEADER",
    "SessionHeader",
    "new_session_id",
    "session_metadata",
    "session_of",
]

# gRPC metadata keys are lowercase; proxies see it as the HTTP/2 header
# ``x-buildd-session`` (nginx: ``$http_x_buildd_session``).
SESSION_HEADER = "x-buildd-session"
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
# What the daemon could accept as an id at all. Anything else (empty, huge,
# non-ASCII: not even a legal header value) travels without the header and
# gets its NOT_FOUND from whichever daemon the call reaches.
_ROUTABLE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def new_session_id() -> str:
    """A session id to propose: 32 URL-safe characters (192 random bits).

    The same shape as the daemon's own ids, never beginning with '-' or '_' so
    that it works as a command-line argument.
    """
    while True:
        candidate = secrets.token_urlsafe(24)
        if candidate[0] in _ALNUM:
            return candidate


def session_metadata(session_id: str) -> tuple[tuple[str, str], ...]:
    """The routing header for ``session_id`` (nothing for an empty or malformed id)."""
    return ((SESSION_HEADER, session_id),) if _ROUTABLE.fullmatch(session_id) else ()


def session_of(request: object) -> str:
    """The session a request message names: ``session_id`` or ``context.session_id``."""
    direct = getattr(request, "session_id", None)
    if isinstance(direct, str):
        return direct
    context = getattr(request, "context", None)
    nested = getattr(context, "session_id", None)
    return nested if isinstance(nested, str) else ""


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class SessionHeader(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds ``x-buildd-session`` to every call whose request names a session.

    A header the caller set already is left as it is. Client-streaming calls
    (UploadBlob) carry no message to read before the call starts: their caller
    passes ``session_metadata`` explicitly.
    """

    def _details(self, details: Any, request: object) -> Any:
        header = session_metadata(session_of(request))
        metadata = list(details.metadata or ())
        if not header or any(key == SESSION_HEADER for key, _ in metadata):
            return details
        return _CallDetails(
            details.method,
            details.timeout,
            [*metadata, *header],
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details, request), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details, request), request)
