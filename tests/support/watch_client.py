"""A watching client in a process of its own, for tests that kill it.

``python -m support.watch_client ADDRESS SESSION_ID SOURCE`` joins the
session, watches SOURCE through the client library and prints one line per
event ("metadata" or "failure"), until it is killed.
"""

from __future__ import annotations

import sys

from buildd_client import Client


def main(argv: list[str]) -> int:
    address, session_id, source = argv[1:4]
    with (
        Client(address, autostart=False) as client,
        client.join_session(session_id).watch_metadata(source) as watch,
    ):
        for event in watch:
            print(event.WhichOneof("kind"), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
