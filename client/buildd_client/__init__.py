"""buildd's thin client: talk to a buildd daemon over gRPC.

Typical use::

    from buildd_client import Client

    with Client() as client:              # starts the per-user daemon if needed
        session = client.default_session()
        wheel = session.build(".", distributions=["wheel"]).result().artifacts[0].path

Names are imported on first use (PEP 562) so that ``import buildd_client`` and
the CLI's ``--version`` do not pay for grpc and protobuf.
"""

from __future__ import annotations

import importlib

# Not typing.TYPE_CHECKING: importing typing costs a few ms of every start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from buildd_client.addresses import default_address
    from buildd_client.calls import Call
    from buildd_client.client import Client
    from buildd_client.errors import BuilddClientError, DaemonUnavailable, RequestFailed
    from buildd_client.session import Session
    from buildd_client.watch import Watch

__all__ = [
    "BuilddClientError",
    "Call",
    "Client",
    "DaemonUnavailable",
    "RequestFailed",
    "Session",
    "Watch",
    "default_address",
]

_LAZY = {
    "BuilddClientError": "buildd_client.errors",
    "Call": "buildd_client.calls",
    "Client": "buildd_client.client",
    "DaemonUnavailable": "buildd_client.errors",
    "RequestFailed": "buildd_client.errors",
    "Session": "buildd_client.session",
    "Watch": "buildd_client.watch",
    "default_address": "buildd_client.addresses",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'buildd_client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
