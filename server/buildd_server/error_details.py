"""Errors as the standard ``google.rpc.Status`` of a failed call, built once.

Every failing call, unary or streaming, ends with the status this module
makes from a ``BuilddError``: the code of its class, its message, and in the
``grpc-status-details-bin`` trailer (via grpcio-status) an ``ErrorInfo``
(reason = the failure kind's name, domain ``buildd``, metadata naming the
field, file, hook or session), a ``BadRequest`` when one request field is at
fault, a ``RetryInfo`` when retrying helps, and the ``buildd.v1.Failure``
itself, the very message a long call sends as its final event, so the two
can never disagree.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

# Imported as modules: mypy finds google.rpc's stubs only this way (the
# google-stubs of types-protobuf hide the package otherwise).
import google.rpc.error_details_pb2 as error_details_pb2  # noqa: PLR0402
import google.rpc.status_pb2 as status_pb2  # noqa: PLR0402
from google.protobuf import any_pb2, duration_pb2
from grpc_status import rpc_status

from buildd.v1 import buildd_pb2 as pb

from . import errors

if TYPE_CHECKING:
    import grpc

    from .errors import BuilddError

DOMAIN = "buildd"
# A status message travels in an HTTP/2 trailer: one too large for the peer's
# header limit loses the whole reply, so messages are cut well below it.
MAX_MESSAGE = 4096
MAX_LAST_LINES = 50


def bounded(message: str) -> str:
    """``message`` cut to what a status and a Failure carry."""
    if len(message) <= MAX_MESSAGE:
        return message
    return message[:MAX_MESSAGE] + f"… (message cut, {len(message)} characters)"


# A bad-input message names its field first, as a proto path ("context.
# config_settings[3].key is empty", "output_directory: ... is not absolute").
_FIELD_FIRST = re.compile(r"([a-z_]+(?:\[\d+\])?(?:\.[a-z_]+(?:\[\d+\])?)*)(?=[:\s])")
# The top-level field names of every request message: what such a path starts with.
_REQUEST_FIELDS = frozenset(
    field.name
    for message in pb.DESCRIPTOR.message_types_by_name.values()
    if message.name.endswith("Request") or message.name.endswith("Header")
    for field in message.fields
)


def field_of(exc: BuilddError) -> str:
    """The request field at fault: as raised, or for bad input the path its message starts with."""
    if exc.field or not isinstance(exc, errors.InvalidRequest):
        return exc.field
    match = _FIELD_FIRST.match(exc.message)
    if match is None:
        return ""
    path = match.group(1)
    return path if path.split(".")[0].split("[")[0] in _REQUEST_FIELDS else ""


def failure(exc: BuilddError) -> pb.Failure:
    """The ``buildd.v1.Failure`` of ``exc``: a long call's final event, and a status detail."""
    kwargs: dict[str, Any] = {
        "kind": exc.kind,
        "status_code": exc.status.value[0],
        "message": bounded(exc.message),
        "hook": exc.hook,
        "last_lines": exc.last_lines[-MAX_LAST_LINES:],
        "path": exc.path[:MAX_MESSAGE],
        "field": field_of(exc),
        "metadata": info_metadata(exc),
        "retry_delay_seconds": exc.retry_delay or 0.0,
    }
    return pb.Failure(**kwargs)


def info_metadata(exc: BuilddError) -> dict[str, str]:
    """``ErrorInfo.metadata``: what is at fault, by name."""
    found = {"field": field_of(exc), "path": exc.path[:MAX_MESSAGE], "hook": exc.hook}
    found.update(exc.metadata)
    return {key: value for key, value in found.items() if value}


def status_of(exc: BuilddError, failure_message: pb.Failure | None = None) -> grpc.Status:
    """The ``grpc.Status`` (code, message, details trailer) of a call failing with ``exc``."""
    sent = failure_message if failure_message is not None else failure(exc)
    details: list[Any] = [
        error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN, metadata=dict(sent.metadata))
    ]
    if sent.field:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=sent.field, description=sent.message
                    )
                ]
            )
        )
    if exc.retry_delay is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(exc.retry_delay * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    details.append(sent)
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    status = status_pb2.Status(code=exc.status.value[0], message=sent.message, details=packed)
    return rpc_status.to_status(status)
