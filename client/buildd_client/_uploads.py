"""``metadata`` and ``build`` against a daemon that cannot read the source: upload it.

Used when the address is not local, or with ``--upload``: the source is packed
(or an sdist taken as it is), uploaded unless the daemon has its digest, and
the request names the digest. An upload evicted from the daemon's cache
between the upload and the request (NOT_FOUND naming the digest) is sent
again, once.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import argparse
    import contextlib
    from collections.abc import Callable

    from buildd.v1 import buildd_pb2 as pb
    from buildd_client.calls import Call
    from buildd_client.client import Session
    from buildd_client.remote import PackedSource

T = TypeVar("T")


def packed_source(
    args: argparse.Namespace, session: Session, stack: contextlib.ExitStack
) -> PackedSource | None:
    """The uploaded source when uploading, else None (the daemon reads the path)."""
    if not (args.upload or session.client.is_remote):
        return None
    import tempfile
    from pathlib import Path

    from buildd_client import remote
    from buildd_client.routing import session_metadata

    work = stack.enter_context(tempfile.TemporaryDirectory(prefix="buildd-upload-"))
    packed = remote.pack_source(args.source, Path(work))
    sent = remote.upload(session.client.stub, packed, metadata=session_metadata(session.id))
    if not args.quiet:
        what = f"{packed.members} files" if packed.kind == "tree" else "sdist"
        sys.stderr.write(
            f"buildd-client: {'uploaded' if sent else 'already on the daemon'}: {args.source} "
            f"({what}, {packed.size} bytes, {packed.digest[:19]}…)\n"
        )
    return packed


def run_call(
    args: argparse.Namespace,
    session: Session,
    packed: PackedSource | None,
    show: Callable[[pb.Event], None],
    start: Callable[[str], Call[T]],
) -> T:
    """Start the call on the source's path or digest, show its events, return its result."""
    from buildd_client import remote
    from buildd_client.errors import RequestFailed
    from buildd_client.routing import session_metadata

    for attempt in (1, 2):
        with start(packed.digest if packed else os.path.abspath(args.source)) as call:
            for event in call:
                show(event)
            try:
                return call.result()
            except RequestFailed as exc:
                if packed is None or attempt == 2 or exc.path != packed.digest:
                    raise
        remote.upload(
            session.client.stub, packed, force=True, metadata=session_metadata(session.id)
        )
    raise AssertionError("unreachable")
