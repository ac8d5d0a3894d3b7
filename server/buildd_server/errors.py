"""Errors of the daemon: one class per way a request can fail.

Each class carries the gRPC status and the wire ``FailureKind`` it maps to, so
the mapping lives here, once; the servicer only reads these attributes.
Raise them with ``raise X(...) from cause`` so the cause stays attached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from buildd.v1 import buildd_pb2 as pb

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


class BuilddError(Exception):
    """Base class; ``message`` must name the file, field or value at fault.

    ``field`` is the request field at fault as a proto path from the request
    root (``context.source.path``, ``distributions[1]``); ``metadata`` adds
    key-value facts for the error details (``session_id``, ``digest``...);
    ``retry_delay`` is the seconds after which the same call may succeed,
    when a retry alone can help (None: it cannot).
    """

    status: grpc.StatusCode = grpc.StatusCode.INTERNAL
    kind: int = pb.FAILURE_KIND_INTERNAL
    # Class default for ``retry_delay``.
    retry_after: float | None = None

    def __init__(
        self,
        message: str,
        *,
        path: str = "",
        hook: str = "",
        last_lines: Sequence[str] = (),
        field: str = "",
        metadata: Mapping[str, str] | None = None,
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.hook = hook
        self.last_lines: list[str] = list(last_lines)
        self.field = field
        self.metadata: dict[str, str] = dict(metadata or {})
        self.retry_delay = self.retry_after if retry_delay is None else retry_delay

    @property
    def reason(self) -> str:
        """The failure kind's name without its prefix: ``ErrorInfo.reason``."""
        return pb.FailureKind.Name(self.kind).removeprefix("FAILURE_KIND_")  # type: ignore[arg-type]


class InvalidRequest(BuilddError):
    """A request field has a value the daemon cannot accept."""

    status = grpc.StatusCode.INVALID_ARGUMENT
    kind = pb.FAILURE_KIND_INVALID_REQUEST


class InvalidProject(BuilddError):
    """pyproject.toml, ``[build-system]`` or ``backend-path`` is malformed."""

    status = grpc.StatusCode.INVALID_ARGUMENT
    kind = pb.FAILURE_KIND_INVALID_PROJECT


class SourceNotFound(BuilddError):
    """The source path does not exist or is not a project."""

    status = grpc.StatusCode.NOT_FOUND
    kind = pb.FAILURE_KIND_SOURCE_NOT_FOUND


class BlobNotFound(SourceNotFound):
    """An uploaded archive named by digest is not (or no longer) cached: upload again."""

    kind = pb.FAILURE_KIND_BLOB_NOT_FOUND


class ArtifactNotFound(BuilddError):
    """A download names no artifact of the session, or the file is gone or changed."""

    status = grpc.StatusCode.NOT_FOUND
    kind = pb.FAILURE_KIND_ARTIFACT_NOT_FOUND


class SourceUnreadable(BuilddError):
    """The daemon is not allowed to read the source."""

    status = grpc.StatusCode.PERMISSION_DENIED
    kind = pb.FAILURE_KIND_SOURCE_UNREADABLE


class SessionNotFound(BuilddError):
    """The session id is malformed or unknown (never known, or another principal's)."""

    status = grpc.StatusCode.NOT_FOUND
    kind = pb.FAILURE_KIND_SESSION_NOT_FOUND


class SessionEnded(SessionNotFound):
    """The session existed and has ended (closed, expired, daemon shutdown): reopen."""

    kind = pb.FAILURE_KIND_SESSION_ENDED


class SessionExists(BuilddError):
    """The session id proposed to OpenSession is taken by the caller's own session."""

    status = grpc.StatusCode.ALREADY_EXISTS
    kind = pb.FAILURE_KIND_SESSION_EXISTS


class InterpreterNotFound(BuilddError):
    """The requested Python interpreter cannot be found or run."""

    status = grpc.StatusCode.FAILED_PRECONDITION
    kind = pb.FAILURE_KIND_INTERPRETER_NOT_FOUND


class InstallFailed(BuilddError):
    """Creating an environment or installing requirements into it failed."""

    status = grpc.StatusCode.FAILED_PRECONDITION
    kind = pb.FAILURE_KIND_INSTALL_FAILED


class BackendUnavailable(BuilddError):
    """The build backend could not be imported in the environment."""

    status = grpc.StatusCode.FAILED_PRECONDITION
    kind = pb.FAILURE_KIND_BACKEND_UNAVAILABLE


class BackendFailed(BuilddError):
    """The hook raised, or its process exited non-zero or died by a signal."""

    status = grpc.StatusCode.FAILED_PRECONDITION
    kind = pb.FAILURE_KIND_BACKEND_FAILED


class ArtifactInvalid(BackendFailed):
    """A hook exited 0 but what it produced fails the artifact checks (checks.py)."""


class HookMissing(BuilddError):
    """A mandatory hook is missing from the backend."""

    status = grpc.StatusCode.FAILED_PRECONDITION
    kind = pb.FAILURE_KIND_HOOK_MISSING


class Timeout(BuilddError):
    """A hook ran past the hook timeout, or a deadline passed while waiting."""

    status = grpc.StatusCode.DEADLINE_EXCEEDED
    kind = pb.FAILURE_KIND_TIMEOUT


class Cancelled(BuilddError):
    """The client cancelled the request (or went away)."""

    status = grpc.StatusCode.CANCELLED
    kind = pb.FAILURE_KIND_CANCELLED


class ResourceExhausted(BuilddError):
    """The disk is full, or a cap cannot be met."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED
    kind = pb.FAILURE_KIND_RESOURCE_EXHAUSTED


class Unavailable(BuilddError):
    """The daemon is draining and takes no new work."""

    status = grpc.StatusCode.UNAVAILABLE
    kind = pb.FAILURE_KIND_UNAVAILABLE
    # A draining daemon is gone within its grace; a client that auto-starts
    # one (or a proxy with siblings) succeeds on retry.
    retry_after = 1.0


class PermissionDenied(BuilddError):
    """The caller's principal may not do this (a path outside --allow-path, an admin call)."""

    status = grpc.StatusCode.PERMISSION_DENIED
    kind = pb.FAILURE_KIND_PERMISSION_DENIED


class BlobCorrupt(BuilddError):
    """A cached upload no longer matches its digest; it has been evicted."""

    status = grpc.StatusCode.DATA_LOSS
    kind = pb.FAILURE_KIND_BLOB_CORRUPT


class Unauthenticated(BuilddError):
    """The call carries no token, or one the daemon does not know."""

    status = grpc.StatusCode.UNAUTHENTICATED
    kind = pb.FAILURE_KIND_UNAUTHENTICATED


class StoreDisabled(BuilddError):
    """A store operation on a daemon started with --no-store."""

    status = grpc.StatusCode.FAILED_PRECONDITION
    kind = pb.FAILURE_KIND_INVALID_REQUEST


class DaemonStartupError(Exception):
    """The daemon cannot start (state dir locked or unwritable, address in use...)."""
