"""How the client proves who it is: TLS (optionally with a client certificate) and a token.

Every option has an environment variable, so CI jobs configure the client once:

=================  ====================  =========================================
option             variable              meaning
=================  ====================  =========================================
``tls_ca``         ``BUILDD_TLS_CA``     CA bundle (PEM) that signed the daemon's
                                         certificate; turns TLS on
``tls_cert``       ``BUILDD_TLS_CERT``   client certificate for mutual TLS
``tls_key``        ``BUILDD_TLS_KEY``    its private key
``token_file``     ``BUILDD_TOKEN_FILE`` file whose first token line is sent
(token itself)     ``BUILDD_TOKEN``      the token, when no file is given
=================  ====================  =========================================

The token travels as ``authorization: Bearer <token>`` on every call. It is
never sent in clear text to a non-local address: without TLS, only a Unix
socket or a loopback address may carry it. With no token given, a loopback
TCP address gets the token its daemon left for this user
(``addresses.local_token_path``), when there is one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from buildd_client.addresses import Address

__all__ = ["Credentials", "read_token"]


def read_token(path: str | os.PathLike[str]) -> str:
    """The token of a token file: its first line that is not blank or a ``#`` comment.

    ``name:token`` lines (the daemon's format) give their token part.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"token file {os.fspath(path)}: cannot be read: {exc}") from exc
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            token = line.partition(":")[2].strip() if ":" in line else line
            if token:
                return token
    raise ValueError(f"token file {os.fspath(path)}: holds no token")


def _local_token(port: int) -> str | None:
    """The token a local daemon on ``port`` left for this user; None when there is none."""
    from buildd_client.addresses import local_token_path

    try:
        return read_token(local_token_path(port))
    except ValueError:
        return None


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ValueError(f"{what} {path}: cannot be read: {exc.strerror}") from exc


@dataclass(frozen=True)
class Credentials:
    """TLS material (PEM bytes) and a bearer token; all optional."""

    tls_ca: bytes | None = None
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    token: str | None = None

    @classmethod
    def from_options(
        cls,
        *,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        token_file: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Credentials:
        """Options first, then ``BUILDD_*`` variables; ValueError names a bad file."""
        env = os.environ if environ is None else environ
        tls_ca = tls_ca or env.get("BUILDD_TLS_CA")
        tls_cert = tls_cert or env.get("BUILDD_TLS_CERT")
        tls_key = tls_key or env.get("BUILDD_TLS_KEY")
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        token_file = token_file or env.get("BUILDD_TOKEN_FILE")
        token = read_token(token_file) if token_file else (env.get("BUILDD_TOKEN") or None)
        if token is not None and any(c.isspace() for c in token.strip()):
            raise ValueError("the token holds spaces: check BUILDD_TOKEN or the token file")
        return cls(
            tls_ca=_read(tls_ca, "--tls-ca"),
            tls_cert=_read(tls_cert, "--tls-cert"),
            tls_key=_read(tls_key, "--tls-key"),
            token=token.strip() if token else None,
        )

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None

    def channel(self, address: Address, options: Sequence[tuple[str, Any]]) -> grpc.Channel:
        """A channel to ``address`` carrying these credentials."""
        if self.tls:
            if address.kind == "unix":
                raise ValueError(f"{address.target}: TLS (--tls-ca) is for TCP addresses")
            secure = grpc.ssl_channel_credentials(
                root_certificates=self.tls_ca,
                private_key=self.tls_key,
                certificate_chain=self.tls_cert,
            )
            channel = grpc.secure_channel(address.target, secure, options=list(options))
        else:
            if self.token is not None and not address.is_local:
                raise ValueError(
                    f"refusing to send the token in clear text to {address.target}: "
                    "give --tls-ca (TLS) or use a local address"
                )
            channel = grpc.insecure_channel(address.target, options=list(options))
        token = self.token
        if token is None and not self.tls and address.kind == "tcp" and address.is_local:
            token = _local_token(address.port)
        if token is None:
            return channel
        return grpc.intercept_channel(channel, _BearerToken(token))


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> _CallDetails:
        return _CallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), self._header],
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)
