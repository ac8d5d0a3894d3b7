"""Errors onto the wire, in one place: the in-stream ``Failure`` event and the status.

Every RPC that fails ends through ``abort``; long calls first send
``failure(exc)`` as their last event. Which status and ``FailureKind`` an
error has is decided by its class (``errors.py``); this module only carries
them, so richer details (``google.rpc.Status``) are added here and nowhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

import structlog

from buildd.v1 import buildd_pb2 as pb

from .. import errors

if TYPE_CHECKING:
    import grpc.aio

    from ..metrics import Metrics

log = structlog.get_logger("buildd.servicer")

# A status message travels in an HTTP/2 trailer: one too large for the peer's
# header limit loses the whole reply, so messages are cut well below it.
MAX_STATUS_MESSAGE = 4096


def failure(exc: errors.BuilddError) -> pb.Failure:
    """The ``Failure`` event of a long call that ends with ``exc``."""
    kwargs: dict[str, Any] = {
        "kind": exc.kind,
        "status_code": exc.status.value[0],
        "message": _bounded(exc.message),
        "hook": exc.hook,
        "last_lines": exc.last_lines[-50:],
        "path": exc.path[:MAX_STATUS_MESSAGE],
    }
    return pb.Failure(**kwargs)


def internal(exc: Exception, where: str) -> errors.BuilddError:
    """An unexpected exception as the INTERNAL error the client sees (logged with its trace)."""
    log.error("internal_error", call=where, exc_info=exc)
    error = errors.BuilddError(f"internal error in {where}: {exc!r}")
    error.__cause__ = exc
    return error


async def abort(
    context: grpc.aio.ServicerContext[Any, Any],
    exc: errors.BuilddError,
    metrics: Metrics | None = None,
    **fields: object,
) -> NoReturn:
    """End the RPC with the status of ``exc`` (counted in ``buildd_errors``)."""
    log.info("request_failed", error=type(exc).__name__, message=exc.message[:300], **fields)
    if metrics is not None:
        metrics.errors.labels(code=exc.status.name).inc()
    await context.abort(exc.status, _bounded(exc.message))


def _bounded(message: str) -> str:
    if len(message) <= MAX_STATUS_MESSAGE:
        return message
    return message[:MAX_STATUS_MESSAGE] + f"… (message cut, {len(message)} characters)"
