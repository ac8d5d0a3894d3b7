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
    from collections.abc import Sequence


class BuilddError(Exception):
    """Base class; ``message`` must name the file, field or value at fault."""

    status: grpc.StatusCode = grpc.StatusCode.INTERNAL
    kind: int = pb.FAILURE_KIND_INTERNAL

    def __init__(
        self,
        message: str,
        *,
        path: str = "",
        hook: str = "",
        last_lines: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.hook = hook
        self.last_lines: list[str] = list(last_lines)


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


class SourceUnreadable(BuilddError):
    """The daemon is not allowed to read the source."""

    status = grpc.StatusCode.PERMISSION_DENIED
    kind = pb.FAILURE_KIND_SOURCE_UNREADABLE


class SessionNotFound(BuilddError):
    """The session id is unknown, malformed or its session has ended."""

    status = grpc.StatusCode.NOT_FOUND
    kind = pb.FAILURE_KIND_SESSION_NOT_FOUND


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


class PermissionDenied(BuilddError):
    """The caller's principal may not do this (a path outside --allow-path, an admin call)."""

    status = grpc.StatusCode.PERMISSION_DENIED
    kind = pb.FAILURE_KIND_PERMISSION_DENIED


class Unauthenticated(BuilddError):
    """The call carries no token, or one the daemon does not know."""

    status = grpc.StatusCode.UNAUTHENTICATED
    kind = pb.FAILURE_KIND_PERMISSION_DENIED


class StoreDisabled(BuilddError):
    """A store operation on a daemon started with --no-store."""

    status = grpc.StatusCode.FAILED_PRECONDITION
    kind = pb.FAILURE_KIND_INVALID_REQUEST


class DaemonStartupError(Exception):
    """The daemon cannot start (state dir locked or unwritable, address in use...)."""
