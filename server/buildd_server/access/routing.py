"""The routing header: which session a call is for, as a proxy sees it.

Behind a proxy that pins sessions to daemons by hashing the metadata
``x-buildd-session`` (docs/scale-out.md), a call whose header and request
named two different sessions would be routed by one and served for the other:
a session created or used on the wrong daemon, silently. So a call carrying
the header must name the same session in its request (INVALID_ARGUMENT
otherwise); the header is optional, so that clients that do not route keep
working. Uploads, whose messages name no session, take it from the header
alone (transfers.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from buildd_client.routing import SESSION_HEADER

from .. import errors
from ..service.sessions import _show

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["SESSION_HEADER", "check_session_header", "header_session"]


def header_session(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The session named by the ``x-buildd-session`` metadata; None when absent."""
    values = {
        value.decode("latin-1") if isinstance(value, bytes) else value
        for key, value in metadata or ()
        if key == SESSION_HEADER
    }
    if len(values) > 1:
        shown = ", ".join(sorted(_show(v) for v in values)[:4])
        raise errors.InvalidRequest(
            f"metadata {SESSION_HEADER}: given {len(values)} different values ({shown}); "
            "a call is for one session"
        )
    return next(iter(values), None)


def check_session_header(
    metadata: Iterable[tuple[str, str | bytes]] | None, session_id: str, field: str
) -> None:
    """Refuse a call whose routing header names another session than its ``field``."""
    header = header_session(metadata)
    if header is None or header == session_id:
        return
    said = f"is {_show(session_id)}" if session_id else "is empty"
    raise errors.InvalidRequest(
        f"{field} {said} but the metadata {SESSION_HEADER} names {_show(header)}: a proxy "
        "routes the call by the header, so both must name the same session",
        field=field,
        metadata={SESSION_HEADER: header[:64]},
    )
