"""What each ``buildd-client`` command does (``cli.py`` parses the command line).

Like the parser, this imports grpc and the generated code only inside the
commands that talk to the daemon.
"""

from __future__ import annotations

import contextlib
import os
import sys

from buildd import __version__

# Not typing.TYPE_CHECKING: importing typing costs a few ms of every start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from buildd_client._output import Progress
    from buildd_client.client import Client
    from buildd_client.session import Session

PROG = "buildd-client"
CLIENT_NAME = f"{PROG}/{__version__}"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130


def parse_config_settings(pairs: Sequence[tuple[str, str]]) -> dict[str, str | list[str]]:
    """``-C`` pairs to PEP 517 config settings: a key given twice becomes a list."""
    settings: dict[str, str | list[str]] = {}
    for key, value in pairs:
        previous = settings.get(key)
        if previous is None:
            settings[key] = value
        elif isinstance(previous, list):
            previous.append(value)
        else:
            settings[key] = [previous, value]
    return settings


class UsageError(Exception):
    """Bad input found after parsing (exit code 2)."""


def _client(args: argparse.Namespace, *, autostart: bool) -> Client:
    from buildd_client.client import Client
    from buildd_client.credentials import Credentials

    credentials = Credentials.from_options(
        tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key, token_file=args.token_file
    )
    return Client(args.address, autostart=autostart, credentials=credentials)


def _session(client: Client, args: argparse.Namespace) -> Session:
    session_id = args.session or os.environ.get("BUILDD_SESSION")
    if session_id:
        return client.join_session(session_id)
    return client.default_session(CLIENT_NAME)


def _progress(args: argparse.Namespace) -> Progress:
    from buildd_client._output import Progress

    phases = not args.quiet and (args.verbose or sys.stderr.isatty())
    return Progress(sys.stderr, phases=phases, logs=not args.quiet)


def session_open(args: argparse.Namespace) -> int:
    with _client(args, autostart=True) as client:
        session = client.open_session(CLIENT_NAME)
    sys.stdout.write(session.id + "\n")
    return EXIT_OK


def session_close(args: argparse.Namespace) -> int:
    # No auto-start: a daemon started now would have no session to close.
    with _client(args, autostart=False) as client:
        session_id = (
            args.id
            or args.session
            or os.environ.get("BUILDD_SESSION")
            or client.default_session_id()
        )
        if not session_id:
            raise UsageError("no session to close: give its ID, --session or BUILDD_SESSION")
        response = client.close_session(session_id)
    if not args.quiet:
        sys.stderr.write(
            f"closed session {session_id}: {response.environments_stored} environments "
            f"kept in the store, {response.environments_deleted} deleted, "
            f"{response.environments_pending} still running a hook\n"
        )
    return EXIT_OK


def _python(args: argparse.Namespace) -> str | None:
    return args.python if args.python else None


def metadata(args: argparse.Namespace) -> int:
    if args.watch:
        from buildd_client._watching import watch_metadata

        return watch_metadata(args, _client(args, autostart=True), _session, _python(args))
    from buildd_client._uploads import packed_source, run_call
    from buildd_client.metadata_json import metadata_json

    with _client(args, autostart=True) as client, contextlib.ExitStack() as stack:
        session = _session(client, args)
        packed = packed_source(args, session, stack)
        result = run_call(
            args,
            session,
            packed,
            _progress(args),
            lambda source: session.metadata(
                source,
                config_settings=parse_config_settings(args.config_settings),
                python=_python(args),
                quiet=args.quiet,
            ),
        )
    if args.json:
        sys.stdout.write(metadata_json(result.metadata) + "\n")
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(result.metadata)
        sys.stdout.buffer.flush()
    return EXIT_OK


def build(args: argparse.Namespace) -> int:
    chosen = [name for name in ("sdist", "wheel", "editable") if getattr(args, name)]
    # Like python -m build: no flag means an sdist, then a wheel built from it;
    # explicit flags build exactly those, each from the tree.
    distributions = chosen or ["sdist", "wheel"]
    source = os.path.abspath(args.source)
    if args.outdir:
        outdir: str | None = os.path.abspath(args.outdir)
    elif os.path.isdir(source):
        outdir = os.path.join(source, "dist")
    else:
        outdir = None  # an sdist, or a path only the daemon sees: its default
    from buildd_client._uploads import packed_source, run_call

    with _client(args, autostart=True) as client, contextlib.ExitStack() as stack:
        session = _session(client, args)
        packed = packed_source(args, session, stack)
        result = run_call(
            args,
            session,
            packed,
            _progress(args),
            lambda source: session.build(
                source,
                distributions=distributions,
                wheel_from_sdist=not chosen,
                # Uploaded: the daemon keeps them in the session; we download.
                output_directory=None if packed else outdir,
                config_settings=parse_config_settings(args.config_settings),
                python=_python(args),
                quiet=args.quiet,
            ),
        )
        if packed is None:
            paths = [artifact.path for artifact in result.artifacts]
        else:
            local = outdir or os.path.dirname(source)  # an sdist: next to it
            paths = [str(p) for p in session.download(result.artifacts, local)]
    for path in paths:
        sys.stdout.write(path + "\n")
    return EXIT_OK


def status(args: argparse.Namespace) -> int:
    import json

    from buildd_client import _output

    # No auto-start: "no daemon" is the answer, not a reason to start one.
    with _client(args, autostart=False) as client:
        status = client.status(args.session or "")
    if args.json:
        sys.stdout.write(json.dumps(_output.status_to_json(status), indent=2) + "\n")
    else:
        sys.stdout.write(_output.status_text(status))
    return EXIT_OK


def store_prune(args: argparse.Namespace) -> int:
    import json

    from buildd_client import _output

    # No auto-start: a daemon started now would have nothing to prune.
    with _client(args, autostart=False) as client:
        response = client.prune_store(args.older_than)
    if args.json:
        sys.stdout.write(json.dumps(_output.prune_to_json(response), indent=2) + "\n")
    else:
        sys.stdout.write(
            f"removed {response.environments_removed} environments "
            f"({_output.size_text(response.bytes_freed)}), "
            f"{response.environments_kept} kept\n"
        )
    return EXIT_OK


def health(args: argparse.Namespace) -> int:
    with _client(args, autostart=False) as client:
        serving = client.health()
    if not args.quiet:
        sys.stderr.write(f"{PROG}: {'serving' if serving else 'not serving'}\n")
    return EXIT_OK if serving else EXIT_FAILED


def shutdown(args: argparse.Namespace) -> int:
    import time

    from buildd_client.errors import DaemonUnavailable

    if args.grace < 0:
        raise UsageError(f"--grace {args.grace} is negative")
    with _client(args, autostart=False) as client:
        answer = client.shutdown(args.grace)
        if not args.quiet:
            sys.stderr.write(f"{PROG}: draining, {answer.active_calls} call(s) running\n")
        if args.no_wait:
            return EXIT_OK
        # The daemon answers NOT_SERVING while it drains, then stops
        # answering; a Unix socket is removed only after the environments
        # were deleted, so wait for that too: "stopped" means cleaned up.
        socket_path = client.address.path if client.address.kind == "unix" else ""
        while True:
            try:
                client.health()
            except DaemonUnavailable:
                if not socket_path or not os.path.exists(socket_path):
                    return EXIT_OK
            time.sleep(0.1)
