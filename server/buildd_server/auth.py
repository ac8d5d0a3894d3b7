"""Who is calling, and what they may do: TLS, bearer tokens, principals, paths.

A daemon with ``--token-file`` knows one principal per token. Every call but
health checking and reflection must carry ``authorization: Bearer <token>``;
the interceptor answers UNAUTHENTICATED before the servicer runs otherwise.
The servicer then asks ``Authenticator.principal(context)`` who the caller is
(an interceptor sees only the method and the metadata, not the call's
context, so nothing is handed over between them: the servicer reads the
metadata again). Tokens are compared as SHA-256 digests with
``hmac.compare_digest`` against every entry, so the time taken says nothing
about which token, or how much of one, matched.

Without tokens there is no identity: callers on a Unix socket are the
principal ``local`` (an admin, allowed to name any path), anyone else (only
possible with ``--insecure``) is ``anonymous``. On loopback TCP without a
token file the daemon makes a token of its own user's (access.py): whoever
presents it is ``local``; with ``--insecure`` instead, every loopback caller is.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import structlog

from . import errors
from .error_details import status_of

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence

    from buildd_client.addresses import Address

    from .config import Config

log = structlog.get_logger("buildd.auth")

LOCAL = "local"
ANONYMOUS = "anonymous"
# Health checking and reflection answer without a token: load balancers and
# grpcurl need them, and they tell nothing about sessions.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class Principal:
    """The caller of one RPC."""

    name: str
    # True when local paths are not the caller's to name (see ``check_path``).
    remote: bool
    admin: bool


@dataclass(frozen=True)
class Token:
    """One line of the token file; only the token's SHA-256 is kept."""

    name: str
    digest: bytes
    line: int


def parse_tokens(text: str, origin: str) -> tuple[Token, ...]:
    """Parse a token file: ``token`` or ``name:token`` per line; blanks and ``#`` lines skipped.

    An unnamed token on line N is the principal ``token-N``. Errors name the
    file and line, never the token.
    """
    found: list[Token] = []
    names: dict[str, int] = {}
    digests: dict[bytes, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{origin}:{number}"
        name, sep, token = line.partition(":")
        if sep:
            name, token = name.strip(), token.strip()
            if not _NAME.fullmatch(name):
                raise errors.DaemonStartupError(
                    f"{where}: principal name {name[:64]!r} must be 1-64 characters from "
                    "A-Z, a-z, 0-9, '.', '_', '@', '-' (a token holding ':' must be named: "
                    "name:token)"
                )
        else:
            name, token = f"token-{number}", line
        if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
            raise errors.DaemonStartupError(
                f"{where}: the token of {name!r} must be at least {MIN_TOKEN_LENGTH} characters "
                "without spaces (make one with: python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))')"
            )
        digest = hashlib.sha256(token.encode()).digest()
        if name in names:
            raise errors.DaemonStartupError(
                f"{where}: principal {name!r} is already named on line {names[name]}"
            )
        if digest in digests:
            raise errors.DaemonStartupError(
                f"{where}: the token of {name!r} repeats the one on line {digests[digest]}"
            )
        names[name], digests[digest] = number, number
        found.append(Token(name, digest, number))
    if not found:
        raise errors.DaemonStartupError(f"{origin}: holds no token")
    return tuple(found)


def load_tokens(path: Path) -> tuple[Token, ...]:
    try:
        text = path.read_text(encoding="utf-8")
        mode = stat.S_IMODE(path.stat().st_mode)
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.DaemonStartupError(f"--token-file: cannot read {path}: {exc}") from exc
    if mode & 0o077:
        log.warning("token_file_readable_by_others", path=str(path), mode=f"{mode:04o}")
    return parse_tokens(text, str(path))


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of the ``authorization: Bearer <token>`` metadata, if any."""
    for key, value in metadata or ():
        if key != "authorization":
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def is_local_peer(peer: str) -> bool:
    """True for gRPC peers on a Unix socket or a loopback address."""
    kind, _, rest = peer.partition(":")
    if kind == "unix":
        return True
    if kind == "ipv4":
        host = rest.rpartition(":")[0]
    elif kind == "ipv6":
        host = rest.rpartition(":")[0].strip("[]")
    else:
        return False
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


class Authenticator:
    """Tokens, admins and allowed paths of one daemon."""

    def __init__(
        self,
        tokens: Sequence[Token] = (),
        admins: Sequence[str] = (),
        allow_paths: Sequence[Path] = (),
    ) -> None:
        self._tokens = tuple(tokens)
        known = {token.name for token in self._tokens}
        if admins and not self._tokens:
            raise errors.DaemonStartupError(
                "--admin: without --token-file every local caller is an admin already"
            )
        for name in admins:
            if name not in known:
                raise errors.DaemonStartupError(
                    f"--admin: {name!r} is not a principal of the token file "
                    f"(known: {', '.join(sorted(known))})"
                )
        self._admins = frozenset(admins)
        self.allow_paths = tuple(Path(os.path.realpath(p)) for p in allow_paths)
        # The loopback daemon's own token (access.LocalToken): its holder is ``local``.
        self._local: bytes | None = None

    def add_local_token(self, token: str) -> None:
        """Require tokens, and let this one (the daemon's user's) stand for ``local``."""
        if self._tokens:
            raise errors.DaemonStartupError("a local token goes only with no --token-file")
        digest = hashlib.sha256(token.encode()).digest()
        self._local = digest
        self._tokens = (Token(LOCAL, digest, 0),)

    @classmethod
    def from_config(cls, config: Config) -> Authenticator:
        tokens = load_tokens(config.token_file) if config.token_file is not None else ()
        return cls(tokens, config.admins, config.allow_paths)

    @property
    def tokens_configured(self) -> bool:
        return bool(self._tokens)

    @property
    def principals(self) -> list[str]:
        return [token.name for token in self._tokens]

    @property
    def local_token(self) -> bool:
        """True when the only token is the daemon's own user's (loopback TCP)."""
        return self._local is not None

    def match(self, token: str | None) -> str | None:
        """The principal whose token this is; every entry is compared, in constant time."""
        if token is None:
            return None
        given = hashlib.sha256(token.encode()).digest()
        found: str | None = None
        for entry in self._tokens:
            if hmac.compare_digest(entry.digest, given):
                found = entry.name
        return found

    def identify(
        self, metadata: Iterable[tuple[str, str | bytes]] | None, peer: str
    ) -> Principal | None:
        """The caller, or None when tokens are configured and none matched."""
        if self._tokens:
            name = self.match(bearer_token(metadata))
            if name is None:
                return None
            if self._local is not None:
                return Principal(LOCAL, remote=False, admin=True)
            return Principal(name, remote=True, admin=name in self._admins)
        if is_local_peer(peer):
            return Principal(LOCAL, remote=False, admin=True)
        return Principal(ANONYMOUS, remote=True, admin=False)

    def principal(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        """The caller of the RPC behind ``context``; Unauthenticated when unknown."""
        who = self.identify(context.invocation_metadata(), context.peer())
        if who is None:
            raise errors.Unauthenticated(_refusal(context.invocation_metadata()))
        return who

    def check_path(self, who: Principal, path: str, field: str) -> None:
        """Refuse a remote principal a daemon path outside every --allow-path root."""
        if not who.remote or not path:
            return
        real = os.path.realpath(path)
        for root in self.allow_paths:
            if real == str(root) or real.startswith(str(root).rstrip(os.sep) + os.sep):
                return
        roots = ", ".join(str(r) for r in self.allow_paths) or "none"
        raise errors.PermissionDenied(
            f"{field}: principal {who.name!r} may not use the daemon path {path!r}: it is not "
            f"under an --allow-path root ({roots}); upload the source instead "
            "(buildd-client --upload)",
            path=path,
        )

    def check_interpreter(self, who: Principal, spec: str) -> None:
        """Refuse a remote principal an interpreter path the daemon did not find itself.

        An interpreter runs outside every sandbox (the daemon probes it and
        virtualenv runs it to make the environment), so a remote principal may
        name only one of the daemon's own (``ListInterpreters``), or a version.
        """
        if not who.remote or not os.path.isabs(spec):
            return
        from .interpreter_discovery import candidates

        known = {os.path.realpath(path) for path, _ in candidates()}
        if os.path.realpath(spec) in known:
            return
        raise errors.PermissionDenied(
            f"context.python: principal {who.name!r} may not name the interpreter {spec[:200]!r}: "
            "it is none of the daemon's interpreters (ListInterpreters); name one of those, "
            'or a version such as "3.12"',
            field="context.python",
        )

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        return _TokenInterceptor(self)


def _refusal(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    if bearer_token(metadata) is None:
        return (
            "this daemon requires a token: send the metadata 'authorization: Bearer <token>' "
            "(buildd-client --token-file FILE, or BUILDD_TOKEN)"
        )
    return "the bearer token was not accepted by this daemon"


class _TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a known token before any servicer code runs."""

    def __init__(self, auth: Authenticator) -> None:
        self._auth = auth

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method
        if not self._auth.tokens_configured or method.startswith(OPEN_SERVICES):
            return await continuation(handler_call_details)
        metadata: Any = handler_call_details.invocation_metadata
        if self._auth.match(bearer_token(metadata)) is not None:
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        message = _refusal(metadata)
        log.info("call_unauthenticated", method=method, reason=message)
        return _refusing(handler, message)


def _refusing(
    handler: grpc.RpcMethodHandler[Any, Any], message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as ``handler`` that answers UNAUTHENTICATED."""

    async def refuse(_request: object, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        status = status_of(errors.Unauthenticated(message))
        await context.abort(status.code, status.details, status.trailing_metadata)

    deserialize = handler.request_deserializer
    serialize = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, deserialize, serialize)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, deserialize, serialize)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, deserialize, serialize)
    return grpc.unary_unary_rpc_method_handler(refuse, deserialize, serialize)


def server_credentials(config: Config) -> grpc.ServerCredentials | None:
    """TLS credentials from --tls-cert/--tls-key (and --tls-client-ca), or None."""
    if config.tls_cert is None and config.tls_key is None:
        if config.tls_client_ca is not None:
            raise errors.DaemonStartupError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if config.tls_cert is None or config.tls_key is None:
        raise errors.DaemonStartupError("--tls-cert and --tls-key go together")
    cert = _read_pem(config.tls_cert, "--tls-cert", "CERTIFICATE")
    key = _read_pem(config.tls_key, "--tls-key", "PRIVATE KEY")
    ca = None
    if config.tls_client_ca is not None:
        ca = _read_pem(config.tls_client_ca, "--tls-client-ca", "CERTIFICATE")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def _read_pem(path: Path, flag: str, label: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise errors.DaemonStartupError(f"{flag}: cannot read {path}: {exc.strerror}") from exc
    if b"-----BEGIN " not in data or label.encode() not in data:
        raise errors.DaemonStartupError(f"{flag}: {path} holds no PEM {label.lower()}")
    return data


def check_listen(address: Address, auth: Authenticator, tls: bool, insecure: bool) -> None:
    """Refuse a non-loopback TCP address without TLS and tokens unless --insecure; log it."""
    if address.kind == "unix":
        if tls:
            raise errors.DaemonStartupError(
                "--tls-cert: TLS is for TCP addresses; a Unix socket is protected by its "
                "file mode (0600)"
            )
        return
    if address.is_local:
        if not auth.tokens_configured and insecure:
            log.warning(
                "insecure_listen",
                address=address.target,
                tls=tls,
                tokens=False,
                reason="--insecure: every local user can use the daemon as its own user",
            )
        return
    missing = [what for what, ok in (("TLS", tls), ("tokens", auth.tokens_configured)) if not ok]
    if not missing:
        return
    if not insecure:
        raise errors.DaemonStartupError(
            f"--address: {address.target} is not a loopback address; serving it without "
            f"{' and '.join(missing)} is refused (give --tls-cert/--tls-key and --token-file, "
            "or --insecure to accept the risk)"
        )
    log.warning(
        "insecure_listen",
        address=address.target,
        tls=tls,
        tokens=auth.tokens_configured,
        reason="--insecure: anyone who can reach this address can use the daemon",
    )
