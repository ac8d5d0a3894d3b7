"""Request decoding: wire messages into service requests, every field checked first.

A bad field is an ``InvalidRequest`` (INVALID_ARGUMENT) whose message names
the field by its proto path from the request root (``context.source.path``,
``context.config_settings[3].key``, ``distributions[1]``) and shows at most a
short, quoted prefix of the value: a message never carries a client's
megabytes back, and never a NUL or a control character.
"""

from __future__ import annotations

import math
import os
import re
from typing import TYPE_CHECKING, Literal

from buildd.v1 import buildd_pb2 as pb

from .. import errors
from ..service.requests import Dist, Request
from ..sources.blobs import parse_digest

if TYPE_CHECKING:
    from collections.abc import Sequence

DISTS: dict[int, Dist] = {
    pb.DISTRIBUTION_WHEEL: "wheel",
    pb.DISTRIBUTION_SDIST: "sdist",
    pb.DISTRIBUTION_EDITABLE: "editable",
}
DIST_NUMBERS = {name: number for number, name in DISTS.items()}

# Linux's PATH_MAX and NAME_MAX: a longer path or name fails in the kernel anyway.
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
MAX_SETTINGS = 256
MAX_SETTING_BYTES = 64 * 1024
# All config settings of one request together.
MAX_SETTINGS_BYTES = 1 << 20
# OpenSessionRequest.client_name, in bytes of UTF-8.
MAX_CLIENT_NAME_BYTES = 256
# KeepAliveRequest.interval_seconds when not 0, and the default (a third of
# the session TTL, at most 30 s).
MIN_KEEPALIVE_INTERVAL = 0.05
MAX_KEEPALIVE_INTERVAL = 3600.0
DEFAULT_KEEPALIVE_INTERVAL = 30.0
# Characters of a client value a message shows.
SHOWN = 80
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def show(value: str, limit: int = SHOWN) -> str:
    """A bounded, quoted form of a client value, safe for messages and logs."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} characters)"


def check_path(value: str, field: str, *, what: str = "path") -> None:
    """Refuse NUL and control characters, and lengths the kernel would refuse."""
    bad = _CONTROL.search(value)
    if bad is not None:
        name = "a NUL byte" if bad.group() == "\0" else f"the control character {bad.group()!r}"
        raise errors.InvalidRequest(
            f"{field}: the {what} {show(value)} contains {name} at offset {bad.start()}"
        )
    size = len(os.fsencode(value))
    if size > MAX_PATH_BYTES:
        raise errors.InvalidRequest(
            f"{field}: the {what} is {size} bytes long ({show(value, 40)}); "
            f"at most {MAX_PATH_BYTES} are accepted"
        )
    for index, part in enumerate(value.split("/")):
        length = len(os.fsencode(part))
        if length > MAX_NAME_BYTES:
            raise errors.InvalidRequest(
                f"{field}: component {index} of the {what} is {length} bytes long "
                f"({show(part, 40)}); a file name holds at most {MAX_NAME_BYTES}"
            )


def check_absolute_path(value: str, field: str) -> None:
    """A checked path that must be absolute."""
    check_path(value, field)
    if not value.startswith("/"):
        raise errors.InvalidRequest(f"{field}: {show(value)} is not an absolute path")


def context(wire: pb.BuildContext, deadline: float | None, principal: str) -> Request:
    """The ``context`` of a long call as a service ``Request``; InvalidRequest naming the field."""
    where = wire.source.WhichOneof("location") if wire.HasField("source") else None
    if where == "digest":
        parse_digest(wire.source.digest, "context.source.digest")
        source = wire.source.digest
    elif not wire.source.path:
        raise errors.InvalidRequest(
            "context.source: a source path or the digest of an uploaded archive is required"
        )
    else:
        check_absolute_path(wire.source.path, "context.source.path")
        source = wire.source.path
    if wire.python:
        check_path(wire.python, "context.python", what="interpreter")
    return Request(
        session_id=wire.session_id,
        source=source,
        principal=principal,
        python=wire.python,
        config_settings=config_settings(wire.config_settings),
        quiet=wire.quiet,
        deadline=deadline,
        no_cache=wire.no_cache,
    )


def config_settings(items: Sequence[pb.ConfigSetting]) -> dict[str, str | list[str]]:
    """PEP 517 ``config_settings``: a repeated key gathers its values in order."""
    if len(items) > MAX_SETTINGS:
        raise errors.InvalidRequest(
            f"context.config_settings: {len(items)} entries, at most {MAX_SETTINGS} are accepted"
        )
    settings: dict[str, str | list[str]] = {}
    total = 0
    for index, item in enumerate(items):
        field = f"context.config_settings[{index}]"
        size = len(item.key) + sum(len(v) for v in item.values)
        total += size
        if not item.key:
            raise errors.InvalidRequest(f"{field}.key is empty")
        if size > MAX_SETTING_BYTES:
            raise errors.InvalidRequest(
                f"{field} ({show(item.key, 40)}) is {size} bytes, "
                f"at most {MAX_SETTING_BYTES} are accepted"
            )
        if total > MAX_SETTINGS_BYTES:
            raise errors.InvalidRequest(
                f"context.config_settings: more than {MAX_SETTINGS_BYTES} bytes in all "
                f"(passed at entry {index})"
            )
        if "\0" in item.key:
            raise errors.InvalidRequest(f"{field}.key ({show(item.key, 40)}) contains a NUL byte")
        for number, value in enumerate(item.values):
            if "\0" in value:
                raise errors.InvalidRequest(
                    f"{field}.values[{number}] (of {show(item.key, 40)}) contains a NUL byte"
                )
        values = list(item.values)
        previous = settings.get(item.key)
        if previous is None:
            settings[item.key] = values[0] if len(values) == 1 else values
        else:
            merged = [previous] if isinstance(previous, str) else list(previous)
            settings[item.key] = merged + values
    return settings


def distribution(number: int, field: str = "distribution") -> Dist:
    """One ``Distribution`` of a request: UNSPECIFIED and unknown numbers are refused.

    Zero is what protobuf decodes from a forgotten field or a misspelt enum
    name (JavaScript's proto-loader does so silently), so it never means a
    default: a request for EDITABLE metadata must not quietly get a wheel's.
    """
    name = DISTS.get(number)
    if name is not None:
        return name
    if number == pb.DISTRIBUTION_UNSPECIFIED:
        problem = "DISTRIBUTION_UNSPECIFIED (0) is not a distribution"
    else:
        problem = f"{number} is not a Distribution this daemon knows"
    known = ", ".join(pb.Distribution.Name(n) for n in DISTS)  # type: ignore[arg-type]
    raise errors.InvalidRequest(f"{field}: {problem}; expected one of {known}", field=field)


def metadata_distribution(number: int) -> Literal["wheel", "editable"]:
    """``PrepareMetadataRequest.distribution``: WHEEL or EDITABLE."""
    name = distribution(number)
    if name == "sdist":
        raise errors.InvalidRequest(
            "distribution: metadata is prepared for DISTRIBUTION_WHEEL or "
            f"DISTRIBUTION_EDITABLE, not {pb.Distribution.Name(number)}",  # type: ignore[arg-type]
            field="distribution",
        )
    return name


def distributions(numbers: Sequence[int]) -> list[Dist]:
    """``BuildRequest.distributions``, each checked (empty: the service's SDIST, WHEEL)."""
    return [distribution(number, f"distributions[{index}]") for index, number in enumerate(numbers)]


def client_name(value: str) -> str:
    """``OpenSessionRequest.client_name`` as sent; refused when longer than the limit."""
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_CLIENT_NAME_BYTES:
        raise errors.InvalidRequest(
            f"client_name: {size} bytes ({show(value, 40)}); at most "
            f"{MAX_CLIENT_NAME_BYTES} bytes of UTF-8 are accepted",
            field="client_name",
        )
    return value


def keepalive_interval(value: float, session_ttl: float) -> float:
    """Seconds between KeepAlive heartbeats: 0 means the default, else within the bounds."""
    if value == 0:
        return max(MIN_KEEPALIVE_INTERVAL, min(DEFAULT_KEEPALIVE_INTERVAL, session_ttl / 3))
    if not math.isfinite(value) or not MIN_KEEPALIVE_INTERVAL <= value <= MAX_KEEPALIVE_INTERVAL:
        raise errors.InvalidRequest(
            f"interval_seconds: {value!r} is outside the accepted range: 0 (the daemon's "
            f"default) or {MIN_KEEPALIVE_INTERVAL} to {MAX_KEEPALIVE_INTERVAL:.0f} seconds",
            field="interval_seconds",
        )
    return value
