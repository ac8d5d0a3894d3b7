"""Checks of single request fields whose limits the .proto documents.

Each refusal is an ``InvalidRequest`` naming the field by its proto path from
the request root, with ``field`` set so the error details carry it too.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, TypeVar

from buildd.v1 import buildd_pb2 as pb

from . import errors

if TYPE_CHECKING:
    from collections.abc import Mapping

T = TypeVar("T")

# OpenSessionRequest.client_name, in bytes of UTF-8.
MAX_CLIENT_NAME_BYTES = 256
# KeepAliveRequest.interval_seconds, when not 0 (the default).
MIN_KEEPALIVE_INTERVAL = 0.05
MAX_KEEPALIVE_INTERVAL = 3600.0
# The default interval: a third of the TTL, at most this.
DEFAULT_KEEPALIVE_INTERVAL = 30.0


def client_name(value: str) -> str:
    """``client_name`` as sent; refused when longer than the documented limit."""
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_CLIENT_NAME_BYTES:
        raise errors.InvalidRequest(
            f"client_name: {size} bytes ({value[:40]!r}...); at most "
            f"{MAX_CLIENT_NAME_BYTES} bytes of UTF-8 are accepted",
            field="client_name",
        )
    return value


def keepalive_interval(value: float, session_ttl: float) -> float:
    """Seconds between heartbeats: 0 means the default, else within the bounds."""
    if value == 0:
        return max(MIN_KEEPALIVE_INTERVAL, min(DEFAULT_KEEPALIVE_INTERVAL, session_ttl / 3))
    if not math.isfinite(value) or not MIN_KEEPALIVE_INTERVAL <= value <= MAX_KEEPALIVE_INTERVAL:
        raise errors.InvalidRequest(
            f"interval_seconds: {value!r} is outside the accepted range: 0 (the daemon's "
            f"default) or {MIN_KEEPALIVE_INTERVAL} to {MAX_KEEPALIVE_INTERVAL:.0f} seconds",
            field="interval_seconds",
        )
    return value


def distribution(number: int, field: str, names: Mapping[int, T]) -> T:
    """One ``Distribution`` of a request: UNSPECIFIED and unknown numbers are refused.

    Zero is what protobuf decodes from a forgotten field or a misspelt enum
    name (JavaScript's proto-loader does so silently), so it never means a
    default: a request for EDITABLE metadata must not quietly get a wheel's.
    """
    name = names.get(number)
    if name is not None:
        return name
    if number == pb.DISTRIBUTION_UNSPECIFIED:
        problem = "DISTRIBUTION_UNSPECIFIED (0) is not a distribution"
    else:
        problem = f"{number} is not a Distribution this daemon knows"
    known = ", ".join(pb.Distribution.Name(n) for n in names)  # type: ignore[arg-type]
    raise errors.InvalidRequest(f"{field}: {problem}; expected one of {known}", field=field)
