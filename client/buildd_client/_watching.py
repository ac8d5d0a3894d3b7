"""``buildd-client metadata --watch``: print the metadata, then again each time it changes.

Text: each version of METADATA on stdout, preceded by a line on stderr saying
which event it is and which files changed. ``--json``: one JSON object per
line on stdout (JSON Lines), ``{"sequence", "changed", "metadata"}`` with the
PEP 566 form of METADATA, or ``{"sequence", "changed", "failure"}``. A failure
is also written to stderr in text mode; the watch goes on. Ctrl-C ends it
(exit 130); the daemon ending it (the session closed, a drain) exits as the
failure says.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from buildd.v1 import buildd_pb2 as pb
    from buildd_client.client import Client, Session

EXIT_USAGE = 2


def watch_metadata(
    args: argparse.Namespace,
    client: Client,
    session_of: Callable[[Client, argparse.Namespace], Session],
    python: str | None,
) -> int:
    from buildd_client.cli import PROG, parse_config_settings

    with client:
        if args.upload or client.is_remote:
            sys.stderr.write(
                f"{PROG}: error: --watch needs a daemon that reads SRC itself; "
                "an uploaded copy never changes\n"
            )
            return EXIT_USAGE
        session = session_of(client, args)
        with session.watch_metadata(
            os.path.abspath(args.source),
            python=python,
            config_settings=parse_config_settings(args.config_settings),
        ) as watch:
            for event in watch:
                _show(event, args, PROG)
    return 0


def _show(event: pb.WatchMetadataEvent, args: argparse.Namespace, prog: str) -> None:
    from buildd_client.metadata_json import metadata_to_json

    changed = list(event.changed_paths)
    if args.json:
        record: dict[str, object] = {"sequence": event.sequence, "changed": changed}
        if event.HasField("metadata"):
            record["metadata"] = metadata_to_json(event.metadata.metadata)
            record["cached"] = event.metadata.cached
        else:
            record["failure"] = {
                "kind": _kind(event.failure.kind),
                "message": event.failure.message,
                "path": event.failure.path,
            }
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    why = f" after changes to {', '.join(changed)}" if changed else ""
    if event.HasField("failure"):
        sys.stderr.write(f"{prog}: #{event.sequence}{why}: {event.failure.message}\n")
        return
    if not args.quiet:
        sys.stderr.write(f"{prog}: #{event.sequence}{why}: metadata\n")
    sys.stdout.flush()
    sys.stdout.buffer.write(event.metadata.metadata)
    sys.stdout.buffer.flush()


def _kind(kind: int) -> str:
    from buildd_client.errors import kind_name

    return kind_name(kind)
