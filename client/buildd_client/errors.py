"""Errors raised by the client library, each with the CLI exit code it maps to."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from grpc_status import rpc_status

from buildd.v1 import buildd_pb2 as pb

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from typing_extensions import Self

__all__ = ["BuilddClientError", "DaemonUnavailable", "RequestFailed"]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

# Failures caused by what the user asked for, not by the backend: "bad input".
_USAGE_KINDS = frozenset(
    {
        pb.FAILURE_KIND_INVALID_REQUEST,
        pb.FAILURE_KIND_INVALID_PROJECT,
        pb.FAILURE_KIND_SOURCE_NOT_FOUND,
        pb.FAILURE_KIND_SOURCE_UNREADABLE,
        pb.FAILURE_KIND_SESSION_NOT_FOUND,
        pb.FAILURE_KIND_SESSION_ENDED,
        pb.FAILURE_KIND_BLOB_NOT_FOUND,
        pb.FAILURE_KIND_ARTIFACT_NOT_FOUND,
        pb.FAILURE_KIND_INTERPRETER_NOT_FOUND,
        pb.FAILURE_KIND_PERMISSION_DENIED,
        pb.FAILURE_KIND_UNAUTHENTICATED,
        pb.FAILURE_KIND_SESSION_EXISTS,
    }
)

# What a bare gRPC status most likely means when the daemon sent no Failure
# event (a unary call, a proxy, a daemon that died mid-stream).
_KIND_OF_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: pb.FAILURE_KIND_INVALID_REQUEST,
    grpc.StatusCode.OUT_OF_RANGE: pb.FAILURE_KIND_INVALID_REQUEST,
    grpc.StatusCode.NOT_FOUND: pb.FAILURE_KIND_SOURCE_NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED: pb.FAILURE_KIND_PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED: pb.FAILURE_KIND_UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION: pb.FAILURE_KIND_BACKEND_FAILED,
    grpc.StatusCode.DEADLINE_EXCEEDED: pb.FAILURE_KIND_TIMEOUT,
    grpc.StatusCode.CANCELLED: pb.FAILURE_KIND_CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: pb.FAILURE_KIND_RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE: pb.FAILURE_KIND_UNAVAILABLE,
    # Only OpenSession answers it: the proposed session id is taken.
    grpc.StatusCode.ALREADY_EXISTS: pb.FAILURE_KIND_SESSION_EXISTS,
}


def status_from_number(number: int) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` whose numeric value is ``number`` (UNKNOWN if none)."""
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


def kind_name(kind: int) -> str:
    """``FAILURE_KIND_BACKEND_FAILED`` -> ``"backend_failed"``; unknown numbers stay numeric."""
    try:
        name = pb.FailureKind.Name(kind)  # type: ignore[arg-type]
    except ValueError:
        return str(kind)
    return name.removeprefix("FAILURE_KIND_").lower()


class BuilddClientError(Exception):
    """Base class of the client's errors; ``exit_code`` is what the CLI exits with."""

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED


class DaemonUnavailable(BuilddClientError):
    """No daemon answers at the address, and none could be started."""

    def __init__(self, message: str, *, address: str = "", log_lines: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.address = address
        # The tail of the auto-started daemon's log, when it died while starting.
        self.log_lines: list[str] = list(log_lines)

    @property
    def exit_code(self) -> int:
        return EXIT_UNAVAILABLE


class RequestFailed(BuilddClientError):
    """The daemon refused or failed a request.

    ``kind`` is a ``buildd.v1.FailureKind`` number, ``status`` the RPC's status;
    ``hook``, ``last_lines``, ``path``, ``field`` (the request field at fault,
    e.g. ``"context.source.path"``), ``metadata`` (e.g. ``session_id``,
    ``end_reason``) and ``retry_delay`` (seconds after which a retry may
    succeed; None when it will not) come from the daemon's Failure.
    """

    def __init__(
        self,
        kind: int,
        status: grpc.StatusCode,
        message: str,
        *,
        hook: str = "",
        last_lines: Sequence[str] = (),
        path: str = "",
        field: str = "",
        metadata: Mapping[str, str] | None = None,
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.message = message
        self.hook = hook
        self.last_lines: list[str] = list(last_lines)
        self.path = path
        self.field = field
        self.metadata: dict[str, str] = dict(metadata or {})
        self.retry_delay = retry_delay

    @property
    def reason(self) -> str:
        """The daemon's ``ErrorInfo.reason``: the kind's name, e.g. ``"SESSION_ENDED"``."""
        return self.kind_name.upper()

    @property
    def session_gone(self) -> bool:
        """True when the session named is no more (never known, or ended): open a new one."""
        return self.kind in (pb.FAILURE_KIND_SESSION_NOT_FOUND, pb.FAILURE_KIND_SESSION_ENDED)

    @property
    def kind_name(self) -> str:
        """The kind in words, e.g. ``"backend_failed"``."""
        return kind_name(self.kind)

    @property
    def exit_code(self) -> int:
        if self.kind in _USAGE_KINDS:
            return EXIT_USAGE
        if self.kind == pb.FAILURE_KIND_UNAVAILABLE:
            return EXIT_UNAVAILABLE
        return EXIT_FAILED

    def __str__(self) -> str:
        return f"{self.kind_name}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self.kind_name!r}, status={self.status.name}, "
            f"message={self.message!r})"
        )

    @classmethod
    def from_failure(cls, failure: pb.Failure) -> Self:
        """From the daemon's final Failure event."""
        return cls(
            failure.kind,
            status_from_number(failure.status_code),
            failure.message,
            hook=failure.hook,
            last_lines=list(failure.last_lines),
            path=failure.path,
            field=failure.field,
            metadata=dict(failure.metadata),
            retry_delay=failure.retry_delay_seconds or None,
        )

    @classmethod
    def from_rpc_error(
        cls, error: grpc.RpcError, *, not_found: int = pb.FAILURE_KIND_SOURCE_NOT_FOUND
    ) -> Self:
        """From an RPC that ended with an error status and no Failure event.

        The daemon puts its ``buildd.v1.Failure`` in the standard error
        details of every failed call: that decides. Without details (a proxy
        that dropped the trailer, a status made by gRPC itself) the kind is
        guessed from the code; NOT_FOUND is ambiguous then, and ``not_found``
        names the kind the caller knows it means.
        """
        failure = failure_of(error)
        if failure is not None:
            return cls.from_failure(failure)
        try:
            status = error.code()
            details = error.details() or ""
        except Exception:  # a bare RpcError without the Call interface
            status, details = grpc.StatusCode.UNKNOWN, str(error)
        if status is None:
            status = grpc.StatusCode.UNKNOWN
        kind = not_found if status == grpc.StatusCode.NOT_FOUND else None
        if kind is None:
            kind = _KIND_OF_STATUS.get(status, pb.FAILURE_KIND_INTERNAL)
        message = details or f"the daemon ended the call with status {status.name}"
        return cls(kind, status, message)


def failure_of(error: grpc.RpcError) -> pb.Failure | None:
    """The ``buildd.v1.Failure`` in an error's ``google.rpc.Status`` details, if any."""
    if not isinstance(error, grpc.Call):
        return None
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # a trailer that contradicts the status: trust neither
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(pb.Failure.DESCRIPTOR):
            failure = pb.Failure()
            detail.Unpack(failure)
            return failure
    return None
