"""A client in a process of its own, for tests that kill it mid-call.

``python -m support.client_process ADDRESS SESSION_ID SOURCE`` joins the
session, asks for the metadata of SOURCE through the client library and prints
one line per event as it arrives ("phase N", "log TEXT", "result", "failure").
"""

from __future__ import annotations

import sys

from buildd_client import Client


def main(argv: list[str]) -> int:
    address, session_id, source = argv[1:4]
    with Client(address, autostart=False) as client:
        session = client.join_session(session_id)
        call = session.metadata(source)
        for event in call:
            kind = event.WhichOneof("kind")
            detail = {"phase": str(event.phase.kind), "log": event.log.text}.get(kind, "")
            print(kind, detail, flush=True)
        call.result()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
