"""Errors onto the wire, in one place: the in-stream ``Failure`` event and the status.

Every RPC that fails ends through ``abort``; long calls first send
``failure(exc)`` as their last event. Which status and ``FailureKind`` an
error has is decided by its class (``errors.py``); the ``google.rpc.Status``
with its details (ErrorInfo, BadRequest, RetryInfo, the Failure) is built by
``error_details.py`` from the same error, so event and trailer agree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

import structlog

from .. import errors
from ..error_details import MAX_MESSAGE, failure, status_of

if TYPE_CHECKING:
    import grpc.aio

    from ..metrics import Metrics

__all__ = ["MAX_STATUS_MESSAGE", "abort", "failure", "internal"]

log = structlog.get_logger("buildd.servicer")

# How long a status message (and Failure.message) may be.
MAX_STATUS_MESSAGE = MAX_MESSAGE


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
    """End the RPC with the status of ``exc`` and its details (counted in ``buildd_errors``)."""
    log.info(
        "request_failed",
        error=type(exc).__name__,
        reason=exc.reason,
        message=exc.message[:300],
        **fields,
    )
    if metrics is not None:
        metrics.errors.labels(code=exc.status.name).inc()
    status = status_of(exc)
    await context.abort(status.code, status.details, status.trailing_metadata)
